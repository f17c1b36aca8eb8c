"""`geeps run` with real processes: failures end the job as a unit, nothing outlives it.

Most tests run stand-in servers and workers (tests/integration/scripts) that record
their pid and environment in a temporary directory; the last ones run the real
`geeps run` command with real `geeps server` shards and workers that train through them.
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import yaml

from geeps.job import env as config
from tests.helpers import REPO, kill_group, wait_for

pytestmark = pytest.mark.integration

SCRIPTS = os.path.join(REPO, "tests", "integration", "scripts")
WORKER = os.path.join(SCRIPTS, "worker.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper here may be slow to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Job:
    """One `geeps run` under test, its recorded pids, and cleanup whatever happens."""

    def __init__(self, tmp_path):
        self.dir = tmp_path / "rec"
        self.dir.mkdir()
        self.cwd = tmp_path
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str, real: bool = False, env: dict | None = None,
              stderr=subprocess.PIPE) -> subprocess.Popen:
        """`geeps run ARGS` as a user types it (real=True), or with stand-in servers."""
        entry = [sys.executable, "-m", "geeps", "run"] if real else \
            [sys.executable, os.path.join(SCRIPTS, "launch.py")]
        self.proc = subprocess.Popen(
            entry + list(args), cwd=self.cwd, text=True, stdout=subprocess.PIPE,
            stderr=stderr, start_new_session=True,
            env={**os.environ, "TEST_DIR": str(self.dir), **(env or {})})
        return self.proc

    def run(self, *args: str, timeout: float = 20, **kw) -> tuple[int, str, str]:
        self.start(*args, **kw)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def pids(self) -> dict[str, int]:
        return {f[:-4]: int((self.dir / f).read_text()) for f in os.listdir(self.dir)
                if f.endswith(".pid")}

    def env(self, name: str) -> dict:
        return json.loads((self.dir / f"{name}.env.json").read_text())

    def has(self, name: str) -> bool:
        return (self.dir / name).exists()

    def cleanup(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            if self.proc.stdout:
                self.proc.stdout.close()
            if self.proc.stderr:
                self.proc.stderr.close()
        for pid in self.pids().values():     # a failed test must not leak its children
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def job(tmp_path):
    j = Job(tmp_path)
    yield j
    j.cleanup()


def write_manifest(path, **spec) -> str:
    m = {"apiVersion": "geeps.dev/v1alpha1", "kind": "GeePSJob",
         "metadata": {"name": "tiny"}, "spec": spec}
    path.write_text(yaml.safe_dump(m))
    return str(path)


def test_invalid_manifest_names_every_field_without_a_traceback(job, tmp_path):
    path = write_manifest(tmp_path / "bad.yaml", command=["python", "x.py"],
                          workers={"replicas": 0}, consistency={"model": "Eventual"})
    code, out, err = job.run(path, real=True)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert f"geeps run: {path}: spec.workers.replicas: must be >= 1 (got 0)" in lines
    assert any(line.startswith(f"geeps run: {path}: spec.consistency.model: 'Eventual'")
               for line in lines)
    assert "Traceback" not in out + err
    assert job.pids() == {}                      # nothing was started


def test_missing_manifest_and_bad_usage_exit_2(job, tmp_path):
    code, _, err = job.run("nope.yaml", real=True)
    assert code == 2 and "cannot read nope.yaml: No such file or directory" in err
    assert "Traceback" not in err
    code, _, err = job.run("--servers", "2")
    assert code == 2 and "nothing to run" in err
    code, _, err = job.run("--workers", "0", "--", "python", "x.py")
    assert code == 2 and "--workers: must be an integer >= 1 (got 0)" in err


def test_crashing_worker_stops_the_job_and_leaves_nothing_behind(job):
    # worker-1 exits 3 once every peer runs; the others would run forever and each
    # has a grandchild in its process group that would outlive it.
    job.start("--servers", "2", "--workers", "3", "--",
              "python", WORKER, "--crash-rank", "1", "--code", "3", "--grandchild")
    wait_for(lambda: len(job.pids()) == 8, timeout=15, what="8 processes to start")
    t0 = time.monotonic()
    out, err = job.proc.communicate(timeout=15)
    assert job.proc.returncode == 1, err
    assert time.monotonic() - t0 < 5, "the crash was noticed late"
    pids = job.pids()
    assert f"geeps run: worker-1 (pid {pids['worker-1']}) failed with exit code 3" in err
    assert "[worker-1] worker 1 crashing on purpose" in err
    assert "Traceback" not in err
    left = [name for name, pid in pids.items() if alive(pid)]
    assert left == [], f"still alive after geeps run exited: {left}"


def test_success_stops_servers_and_relays_output_and_progress(job):
    code, out, err = job.run("--servers", "2", "--workers", "2", "--",
                             "python", WORKER, "--clocks", "5", "--say", "hello")
    assert code == 0, err
    # Servers got SIGTERM once the workers were done, and stopped cleanly.
    assert job.has("server-0.stopped") and job.has("server-1.stopped")
    assert not any(alive(p) for p in job.pids().values())
    assert "[worker-0] hello" in out.splitlines() and "[worker-1] hello" in out.splitlines()
    assert "[worker-1] hello" in err.splitlines()        # stderr stays stderr
    assert "geeps:progress" not in out + err             # parsed, not relayed
    # Not a terminal: a plain progress line, and a summary with the last clock.
    assert re.search(r"geeps run: \[\d\d:\d\d\] clock \d", err), err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("geeps run: job local succeeded in ")
    assert "clock 5" in summary and "320 samples" in summary and "final loss" in summary


def test_quiet_shows_no_progress_but_the_summary(job):
    code, out, err = job.run("--quiet", "--", "python", WORKER, "--clocks", "5")
    assert code == 0, err
    assert not re.search(r"\[\d\d:\d\d\]", err), err
    assert "job local succeeded" in err and "clock 5" in err


def test_live_status_line_on_a_terminal(job):
    primary, secondary = pty.openpty()
    try:
        job.start("--workers", "2", "--", "python", WORKER, "--clocks", "50",
                  stderr=secondary)
        os.close(secondary)
        secondary = -1
        seen, deadline = b"", time.monotonic() + 20
        while time.monotonic() < deadline:
            if not select.select([primary], [], [], deadline - time.monotonic())[0]:
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:                       # EIO: every writer is gone
                break
            if not chunk:
                break
            seen += chunk
        job.proc.wait(10)
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    text = seen.decode()
    assert job.proc.returncode == 0, text
    # samples/s needs two reports of a worker apart in time (the rate starts at the
    # first): the stand-in's burst of 50 may arrive in one read.
    assert re.search(r"\r\x1b\[K\[\d\d:\d\d\] clock \d+(\.\.\d+)? \| ([\d,]+ samples/s \| )?"
                     r"loss [\d.]+ \| accuracy 0.5", text), text
    assert "job local succeeded" in text


def test_env_contract_each_process_saw(job, tmp_path):
    path = write_manifest(
        tmp_path / "job.yaml", command=["python", WORKER], args=["--clocks", "1"],
        env=[{"name": "TEST_LR", "value": "0.05"},
             {"name": "TEST_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        servers={"replicas": 2}, workers={"replicas": 1},
        checkpoint={"everyClocks": 7}, metrics={"port": 9400})
    code, out, err = job.run(path, "--workers", "3", "--consistency", "ssp:2")
    assert code == 0, err
    assert "valueFrom is ignored" in err and "TEST_SECRET" in err
    names = ["server-0", "server-1", "worker-0", "worker-1", "worker-2"]
    envs = {n: job.env(n) for n in names}
    servers = envs["server-0"]["GEEPS_SERVERS"].split(",")
    assert len(servers) == 2 and all(s.startswith("127.0.0.1:") for s in servers)
    ckpt = str(tmp_path / ".geeps" / "tiny" / "checkpoints")
    for n, e in envs.items():
        cfg = config.load(e)
        role, rank = n.split("-")
        assert (cfg.role, cfg.rank, cfg.job, cfg.num_workers) == (role, int(rank), "tiny", 3)
        assert cfg.servers == tuple(servers) and str(cfg.consistency) == "ssp:2"
        assert (cfg.checkpoint_dir, cfg.checkpoint_every) == (ckpt, 7)
        assert e["TEST_LR"] == "0.05" and "TEST_SECRET" not in e
        assert e["PYTHONUNBUFFERED"] == "1"
        assert e["cwd"] == str(tmp_path) and e["argv0"] == sys.executable
        if role == "server":
            assert cfg.bind_host == "127.0.0.1"
    assert os.path.isdir(ckpt)
    ports = [int(e["GEEPS_METRICS_PORT"]) for e in envs.values()]
    assert len(set(ports)) == 5 and 0 not in ports
    for n in names:
        assert f"{n} {envs[n]['GEEPS_METRICS_PORT']}" in err     # where metrics are


def test_sigint_is_forwarded_and_everything_stops(job):
    job.start("--servers", "1", "--workers", "2", "--", "python", WORKER, "--hang",
              "--grandchild")
    wait_for(lambda: len(job.pids()) == 5, timeout=15, what="5 processes to start")
    job.proc.send_signal(signal.SIGINT)
    out, err = job.proc.communicate(timeout=15)
    assert job.proc.returncode == 130, err
    assert "got SIGINT" in err
    assert job.has("worker-0.sigint") and job.has("worker-1.sigint")   # forwarded
    assert job.has("server-0.stopped")
    left = [n for n, pid in job.pids().items() if alive(pid)]
    assert left == [], f"still alive after geeps run exited: {left}"


def test_sigterm_to_the_launcher_exits_143(job):
    job.start("--workers", "2", "--", "python", WORKER, "--hang")
    wait_for(lambda: len(job.pids()) == 3, timeout=15, what="3 processes to start")
    job.proc.send_signal(signal.SIGTERM)
    out, err = job.proc.communicate(timeout=15)
    assert job.proc.returncode == 143, err
    assert job.has("server-0.stopped")          # the fake server saw SIGTERM
    assert not any(alive(p) for p in job.pids().values())


def test_children_die_with_a_sigkilled_launcher(job):
    # No handler runs on SIGKILL: the children must go by themselves.
    job.start("--workers", "2", "--", "python", WORKER, "--hang")
    wait_for(lambda: len(job.pids()) == 3, timeout=15, what="3 processes to start")
    job.proc.kill()
    job.proc.wait(10)
    wait_for(lambda: not any(running(p) for p in job.pids().values()), timeout=5,
             what="the children of a killed launcher to die")


def test_process_ignoring_sigterm_is_killed_after_the_grace(job):
    job.start("--grace", "0.5", "--workers", "2", "--",
              "python", WORKER, "--crash-rank", "0", "--ignore-term")
    out, err = job.proc.communicate(timeout=15)
    assert job.proc.returncode == 1, err
    assert "worker-0" in err and "failed with exit code 3" in err
    assert not alive(job.pids()["worker-1"])


def test_server_exit_while_workers_run_fails_the_job(job):
    job.start("--workers", "2", "--", "python", WORKER, "--hang",
              env={"FAKE_SERVER_EXIT": "0"})
    out, err = job.proc.communicate(timeout=15)
    assert job.proc.returncode == 1, err
    pid = job.pids()["server-0"]
    assert f"server-0 (pid {pid}) exited while 2 workers were running" in err
    assert not any(alive(p) for p in job.pids().values())


def test_timeout_from_the_manifest_stops_the_job(job, tmp_path):
    path = write_manifest(tmp_path / "job.yaml", command=["python", WORKER, "--hang"],
                          runPolicy={"activeDeadlineSeconds": 1})
    code, out, err = job.run(path)
    assert code == 124, err
    assert "time limit of 1 s (spec.runPolicy.activeDeadlineSeconds)" in err
    assert not any(alive(p) for p in job.pids().values())


def test_a_command_that_does_not_exist_is_named(job):
    code, out, err = job.run("--", "no-such-program-here")
    assert code == 1
    assert "worker-0: cannot start no-such-program-here" in err
    assert not any(alive(p) for p in job.pids().values())       # the server too


PS_WORKER = os.path.join(SCRIPTS, "ps_worker.py")


def test_real_servers_train_from_a_manifest_and_stop_cleanly(job, tmp_path):
    path = write_manifest(tmp_path / "job.yaml", command=["python", PS_WORKER],
                          args=["--clocks", "5"], servers={"replicas": 2},
                          workers={"replicas": 2})
    code, out, err = job.run(path, "--metrics-port", "0", real=True, timeout=60)
    assert code == 0, err
    assert out.count("sum ok 15") == 2          # 5 clocks x (1 + 2)
    assert re.search(r"job tiny succeeded in .*: clock 5; 80 samples", err), err
    assert "server 0 stopped" in err and "server 1 stopped" in err    # SIGTERM, exit 0


def test_real_job_with_a_crashing_worker_fails_fast_and_cleans_up(job):
    # worker-1 dies at clock 3 while worker-0 waits for it in a BSP read.
    job.start("--servers", "2", "--workers", "2", "--metrics-port", "0", "--",
              "python", PS_WORKER, "--clocks", "50", "--crash-at", "3", real=True)
    out, err = job.proc.communicate(timeout=60)
    assert job.proc.returncode == 1, err
    m = re.search(r"geeps run: worker-1 \(pid (\d+)\) failed with exit code 3", err)
    assert m, err
    pids = dict(re.findall(r"(\w+-\d) (\d+)", re.search(r"pids: (.*)", err).group(1)))
    assert sorted(pids) == ["server-0", "server-1", "worker-0", "worker-1"]
    assert pids["worker-1"] == m.group(1)
    left = [n for n, pid in pids.items() if alive(int(pid))]
    assert left == [], f"still alive after geeps run exited: {left}"
