"""The pure parts of `geeps run`: the launch plan, argument parsing, the progress board,
the restart rules."""
from __future__ import annotations

import socket

import pytest

from geeps.job import env as config
from geeps.job import exits, spec
from geeps.job.consistency import Consistency, parse
from geeps.job.exits import describe_exit
from geeps.job.board import ProgressBoard
from geeps.launch.launcher import UsageError, load_job, parse_args, pick_ports
from geeps.launch.plan import (Options, Ports, apply_overrides, command_argv,
                               job_from_command, plan)


def manifest(**spec_fields) -> dict:
    s = {"command": ["python", "examples/01-minimal/train.py"], "args": ["--epochs", "2"],
         "servers": {"replicas": 2}, "workers": {"replicas": 3}}
    s.update(spec_fields)
    return {"apiVersion": spec.API_VERSION, "kind": spec.KIND,
            "metadata": {"name": "digits"}, "spec": s}


def make_plan(m=None, *, metrics=(), **opts):
    job = spec.validate(m or manifest())
    n = job.servers.replicas
    return plan(job, Ports(tuple(range(7000, 7000 + n)), tuple(metrics)),
                Options(cwd="/repo", python="/venv/bin/python", **opts))


def test_servers_come_first_then_workers_by_rank():
    p = make_plan()
    assert [x.name for x in p.processes] == \
        ["server-0", "server-1", "worker-0", "worker-1", "worker-2"]
    assert [x.rank for x in p.role("worker")] == [0, 1, 2]


def test_every_process_gets_the_contract_and_it_loads():
    p = make_plan()
    for x in p.processes:
        cfg = config.load(x.env)        # the child's own view must validate
        assert cfg.servers == ("127.0.0.1:7000", "127.0.0.1:7001")
        assert cfg.num_workers == 3 and cfg.job == "digits"
        assert (cfg.role, cfg.rank) == (x.role, x.rank)
        assert x.env["PYTHONUNBUFFERED"] == "1"
    assert all(x.env["GEEPS_BIND_HOST"] == "127.0.0.1" for x in p.role("server"))


def test_server_command_defaults_to_geeps_server_of_this_interpreter():
    assert make_plan().role("server")[0].argv == ("/venv/bin/python", "-m", "geeps", "server")
    p = make_plan(server_command=("/bin/fake", "--x"))
    assert p.role("server")[1].argv == ("/bin/fake", "--x")


@pytest.mark.parametrize("cmd,want0", [("python", "/venv/bin/python"),
                                       ("python3", "/venv/bin/python"),
                                       ("/usr/bin/env", "/usr/bin/env")])
def test_python_in_the_command_means_this_interpreter(cmd, want0):
    job = spec.validate(manifest(command=[cmd, "train.py"]))
    assert command_argv(job, "/venv/bin/python") == (want0, "train.py", "--epochs", "2")


def test_workers_run_command_plus_args_relative_to_cwd():
    w = make_plan().role("worker")[0]
    assert w.argv == ("/venv/bin/python", "examples/01-minimal/train.py", "--epochs", "2")


def test_metrics_ports_one_per_process_or_none():
    p = make_plan(metrics=(9400, 9401, 9402, 9403, 9404))
    assert [x.env["GEEPS_METRICS_PORT"] for x in p.processes] == \
        ["9400", "9401", "9402", "9403", "9404"]
    assert {x.env["GEEPS_METRICS_PORT"] for x in make_plan().processes} == {"0"}
    with pytest.raises(ValueError, match="5 metrics ports"):
        make_plan(metrics=(9400,))


def test_wrong_number_of_server_ports_is_refused():
    job = spec.validate(manifest())
    with pytest.raises(ValueError, match="2 server ports"):
        plan(job, Ports((7000,)))


def test_checkpoints_off_by_default_and_under_cwd_when_on():
    assert make_plan().checkpoint_dir == ""
    assert all(x.env["GEEPS_CHECKPOINT_DIR"] == "" for x in make_plan().processes)
    p = make_plan(manifest(checkpoint={"everyClocks": 10}))
    assert p.checkpoint_dir == "/repo/.geeps/digits/checkpoints"
    for x in p.processes:
        assert x.env["GEEPS_CHECKPOINT_DIR"] == p.checkpoint_dir
        assert x.env["GEEPS_CHECKPOINT_EVERY"] == "10"
    p = make_plan(manifest(checkpoint={"everyClocks": 10}), checkpoint_dir="ck")
    assert p.checkpoint_dir == "/repo/ck"


def test_env_values_pass_and_value_from_is_warned_about():
    m = manifest(env=[{"name": "LR", "value": "0.05"},
                      {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                 workingDir="/app")
    p = make_plan(m)
    for x in p.processes:
        assert x.env["LR"] == "0.05" and "TOKEN" not in x.env
    assert any("spec.env[1] (TOKEN)" in w and "valueFrom" in w for w in p.warnings)
    assert any("spec.workingDir" in w for w in p.warnings)
    assert make_plan().warnings == ()


def test_overrides_go_through_the_schema():
    job = spec.validate(manifest())
    j = apply_overrides(job, servers=1, workers=4, consistency=parse("ssp:2"))
    assert (j.servers.replicas, j.workers.replicas, str(j.consistency)) == (1, 4, "ssp:2")
    assert j.command == job.command and j.args == job.args
    assert apply_overrides(job) is job
    with pytest.raises(spec.SpecError) as e:
        apply_overrides(job, workers=0)
    assert e.value.field == "spec.workers.replicas"
    with pytest.raises(ValueError):
        apply_overrides(job, consistency=Consistency("ssp", 0))
    assert j.spec["consistency"] == {"model": "SSP", "slack": 2}     # as a manifest says it


def test_a_command_becomes_a_job_named_local():
    j = job_from_command(["python", "x.py", "--lr", "1"], servers=2, workers=2,
                         consistency=parse("async"))
    assert j.name == "local" and j.command == ("python", "x.py", "--lr", "1")
    assert (j.servers.replicas, j.workers.replicas, str(j.consistency)) == (2, 2, "async")
    d = job_from_command(["python", "x.py"])
    assert (d.servers.replicas, d.workers.replicas, str(d.consistency)) == (1, 1, "bsp")


def test_parse_args_splits_at_double_dash():
    args, cmd = parse_args(["--servers", "2", "--", "python", "x.py", "--workers", "9"])
    assert args.servers == 2 and args.workers is None
    assert cmd == ["python", "x.py", "--workers", "9"]
    args, cmd = parse_args(["job.yaml", "--workers", "3", "--consistency", "SSP:2"])
    assert (args.manifest, args.workers, args.consistency, cmd) == \
        ("job.yaml", 3, Consistency("ssp", 2), [])
    with pytest.raises(UsageError, match="not both"):
        parse_args(["job.yaml", "--", "python"])
    with pytest.raises(UsageError, match="nothing to run"):
        parse_args(["--servers", "2"])


@pytest.mark.parametrize("bad", [["--workers", "0", "j.yaml"], ["--consistency", "ssp", "j"],
                                 ["--timeout", "-1", "j"], ["--metrics-port", "70000", "j"]])
def test_bad_options_are_usage_errors(bad, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(bad)
    assert e.value.code == 2
    assert "geeps run: error: argument" in capsys.readouterr().err


def test_pick_ports_are_distinct_and_prefer_the_metrics_base():
    with socket.socket() as busy:
        busy.bind(("", 0))
        base = busy.getsockname()[1]    # the base itself is taken: it must be skipped
        ports = pick_ports(3, 5, base)
    assert len(ports.servers) == 3 and len(ports.metrics) == 5
    assert len(set(ports.servers) | set(ports.metrics)) == 8
    assert base not in ports.metrics
    assert pick_ports(2, 4, 0).metrics == ()


def _time_wait_port() -> int:
    """A port whose only socket is a TIME_WAIT connection, as a finished scrape of the
    last run's metrics endpoint leaves it (the side that closes first keeps it)."""
    with socket.socket() as lsn:
        # As prometheus-client's server: its TIME_WAIT ends inherit SO_REUSEADDR.
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(1)
        port = lsn.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = lsn.accept()
            conn.close()                # the server closes first: its end waits
            client.recv(1)
    with open("/proc/net/tcp") as f:
        states = [line.split()[3] for line in f.readlines()[1:]
                  if line.split()[1].endswith(f":{port:04X}")]
    assert "06" in states, f"no TIME_WAIT on port {port}: {states}"
    return port


def test_pick_ports_keeps_a_port_in_time_wait():
    # A re-run within a minute: the requested ports must not move.
    port = _time_wait_port()
    assert pick_ports(1, 1, port).metrics == (port,)
    from prometheus_client import start_http_server
    server, thread = start_http_server(port, addr="127.0.0.1")   # and the child binds it
    server.shutdown()
    server.server_close()
    thread.join()


def test_pick_ports_moves_from_a_listening_port_and_keeps_the_others():
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        base = busy.getsockname()[1]
        ports = pick_ports(1, 2, base)
    assert ports.metrics[0] != base


def test_board_clock_range_rate_and_means():
    b = ProgressBoard(2, window=10.0)
    b.started(0, 0.0)
    b.started(1, 0.0)
    assert b.status() == "waiting for the first progress line of 2 workers (they " \
                         "start, import and connect to the servers)" and b.rate() is None
    b.update(0, {"clock": 1, "samples": 100, "loss": 2.0}, 1.0)
    b.update(0, {"clock": 2, "samples": 100, "loss": 1.0}, 2.0)
    b.update(1, {"clock": 1, "samples": 50, "loss": 3.0, "accuracy": 0.25}, 1.0)
    b.update(1, {"clock": 2, "samples": 50}, 1.5)
    assert b.clocks() == (2, 2)
    # From each worker's first report on: the start-up before it is not training.
    assert b.rate() == pytest.approx(100.0 + 100.0)  # 100 in 1 s, 50 in 0.5 s
    assert b.status() == "clock 2 | 200 samples/s | loss 2 | accuracy 0.25"
    assert b.total_samples == 300


def test_board_totals_epoch_and_eta():
    b = ProgressBoard(2)
    for rank in (0, 1):
        b.update(rank, {"clock": 10, "epoch": 0, "epochs": 5, "clocks": 110}, 100.0)
    assert b.status() == "clock 10/110 | epoch 0/5"
    assert b.eta() is None                           # one clock seen: no speed yet
    b.update(0, {"clock": 30, "epoch": 1}, 110.0)    # 2 clocks/s: 40 s left
    b.update(1, {"clock": 20, "epoch": 1}, 110.0)    # 1 clock/s: 90 s left
    assert b.eta() == pytest.approx(90.0)
    assert b.status() == "clock 20..30/110 | epoch 1/5 | ETA 1m30s"


def test_board_rate_forgets_reports_older_than_the_window():
    b = ProgressBoard(1, window=5.0)
    b.started(0, 0.0)
    b.update(0, {"samples": 5}, 0.5)                 # start-up: not in the rate
    b.update(0, {"samples": 1000}, 1.0)              # a fast start...
    for t in range(2, 20):
        b.update(0, {"samples": 10}, float(t))       # ...then 10 samples/s
    assert b.rate() == pytest.approx(10.0)


def test_board_ignores_junk_fields():
    b = ProgressBoard(1)
    b.update(0, {"clock": "x", "samples": -5, "loss": True}, 1.0)
    assert b.clocks() is None and b.rate() is None and b.total_samples == 0


def test_describe_exit():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by signal SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"


@pytest.mark.parametrize("policy,returncode,want", [
    ("Never", -9, False), ("Never", 75, False),
    ("OnFailure", 1, True), ("OnFailure", -9, True),
    ("ExitCode", 1, False), ("ExitCode", 2, False), ("ExitCode", 127, False),
    ("ExitCode", 75, True), ("ExitCode", 137, True), ("ExitCode", 255, True),
    ("ExitCode", -9, True), ("ExitCode", -15, True),
])
def test_restart_rules_of_a_local_process(policy, returncode, want):
    assert exits.retryable(policy, exits.shell_code(returncode)) is want


def test_colocate_runs_no_servers_and_each_worker_hosts_its_shard():
    job = apply_overrides(spec.validate(manifest()), colocate=True)    # what --colocate does
    p = plan(job, Ports((7000, 7001, 7002), (9400, 9401, 9402)),
             Options(cwd="/repo", python="/venv/bin/python"))
    assert [x.name for x in p.processes] == ["worker-0", "worker-1", "worker-2"]
    assert p.servers == ("127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002")
    for x in p.processes:
        cfg = config.load(x.env)
        assert cfg.colocate and cfg.bind_host == "127.0.0.1" and len(cfg.servers) == 3
    with pytest.raises(ValueError, match="3 server ports"):     # one shard per worker
        plan(job, Ports((7000, 7001)))


def test_the_colocate_flag_makes_the_job_colocated():
    args, cmd = parse_args(["--colocate", "--servers", "2", "--workers", "3", "--",
                            "python", "x.py"])
    job = load_job(args, cmd)
    assert job.colocate and job.shard_role == "worker"
    assert (job.shards, job.processes("server"), job.processes()) == (3, 0, 3)
    plain = load_job(*parse_args(["--servers", "2", "--workers", "3", "--", "python", "x.py"]))
    assert not plain.colocate and plain.shard_role == "server"
    assert (plain.shards, plain.processes("server"), plain.processes()) == (2, 2, 5)


def test_a_manifest_asking_for_colocation_gets_it_without_the_flag():
    job = spec.validate(manifest(servers={"colocate": True}))
    assert job.colocate and job.shards == 3 and job.server_processes == 0
    p = plan(job, Ports((7000, 7001, 7002)), Options(cwd="/repo"))
    assert not p.role("server") and all(config.load(x.env).colocate for x in p.processes)


def test_replication_reaches_every_process_and_is_checked():
    p = make_plan(manifest(servers={"replicas": 3, "replication": 2}))
    assert {config.load(x.env).replication for x in p.processes} == {2}
    assert spec.validate(manifest()).replication == 1
    for bad, field in (({"replicas": 2, "replication": 3}, "must not exceed"),
                       ({"replicas": 2, "replication": 2, "colocate": True},
                        "must be 1 when spec.servers.colocate"),
                       ({"replication": 0}, "replication")):
        with pytest.raises(ValueError, match=f"spec.servers.replication.*{field}|{field}"):
            spec.validate(manifest(servers=bad))
    with pytest.raises(config.ConfigError, match="GEEPS_REPLICATION"):
        config.load({"GEEPS_SERVERS": "a:1", "GEEPS_REPLICATION": "2"})


def test_a_joining_server_waits_for_the_membership():
    from geeps.launch.plan import joiner
    p = make_plan(manifest(servers={"replicas": 2, "replication": 2}))
    j = joiner(p, ["127.0.0.1:7100", "127.0.0.1:7101"], Options(cwd="/repo"))
    cfg = config.load(j.env)
    assert (j.name, cfg.role, cfg.rank, cfg.join, cfg.replication) == \
        ("server-3", "server", 3, True, 2)
    assert cfg.servers[cfg.rank] == "127.0.0.1:7101" and cfg.servers[:2] == p.servers
    assert not any(config.load(x.env).join for x in p.processes)
    with pytest.raises(config.ConfigError, match="GEEPS_JOIN"):
        config.load({"GEEPS_JOIN": "1"})            # a worker


def test_replicas_and_elastic_servers_need_clocks():
    for servers in ({"replicas": 2, "replication": 2}, {"replicas": 2, "elastic": True}):
        with pytest.raises(ValueError, match="under Async"):
            spec.validate(manifest(servers=servers, consistency={"model": "Async"}))
        assert spec.validate(manifest(servers=servers,
                                      consistency={"model": "SSP", "slack": 2})).coordinated
