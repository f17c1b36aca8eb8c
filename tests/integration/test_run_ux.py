"""`geeps run` as a user sees it: what it prints, its exit code, how fast it exits,
and that nothing is left running; for a re-run, Ctrl-C, a busy metrics port, the
wrong directory and a failure a restart would only repeat.

Stand-in servers (tests/integration/scripts/fake_server.py) and a stand-in worker
(scripts/ux_worker.py) keep these fast; the busy-port cases run the real processes.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers import REPO, kill_group, wait_for

pytestmark = pytest.mark.integration

SCRIPTS = os.path.join(REPO, "tests", "integration", "scripts")
UX = os.path.join(SCRIPTS, "ux_worker.py")
METRICS = re.compile(r"metrics at http://127\.0\.0\.1:PORT/metrics: (.*)$", re.M)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Run:
    """`geeps run` (stand-in servers unless real=True), cleaned up whatever happens."""

    def __init__(self, tmp_path):
        self.dir = tmp_path / "rec"
        self.dir.mkdir(exist_ok=True)
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, real: bool = False, cwd: str = REPO) -> subprocess.Popen:
        entry = [sys.executable, "-m", "geeps", "run"] if real else \
            [sys.executable, os.path.join(SCRIPTS, "launch.py")]
        proc = subprocess.Popen(entry + list(args), cwd=cwd, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True,
                                env={**os.environ, "TEST_DIR": str(self.dir)})
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 30, **kw) -> tuple[int, str, str, float]:
        t0 = time.monotonic()
        proc = self.start(*args, **kw)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err, time.monotonic() - t0

    def pids(self) -> dict[str, int]:
        return {f[:-4]: int((self.dir / f).read_text()) for f in os.listdir(self.dir)
                if f.endswith(".pid")}

    def left(self) -> list[str]:
        return [n for n, pid in self.pids().items() if _alive(pid)]

    def cleanup(self) -> None:
        for proc in self.procs:
            kill_group(proc)
        for pid in self.pids().values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path)
    yield r
    r.cleanup()


def manifest(tmp_path, command, **workers) -> str:
    m = {"apiVersion": "geeps.dev/v1alpha1", "kind": "GeePSJob",
         "metadata": {"name": "ux"},
         "spec": {"command": command, "servers": {"replicas": 1},
                  "workers": {"replicas": 1, "restartPolicy": "OnFailure", **workers},
                  "runPolicy": {"backoffLimit": 3}}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(m))
    return str(path)


# ---- deterministic failures: one traceback, no retries -----------------------------

def test_an_import_error_is_not_retried_and_shown_once(run, tmp_path):
    job = manifest(tmp_path, ["python", "-c", "import geeps_no_such_module"], replicas=2)
    code, _, err, took = run.run(job)
    assert code == 1, err
    # Two workers, one traceback; the other, if it got that far, refers to it.
    assert err.count("Traceback (most recent call last)") == 1, err
    assert re.search(r"^\[worker-\d\] ModuleNotFoundError: No module named "
                     r"'geeps_no_such_module'$", err, re.M), err
    assert re.search(r"worker-\d \(pid \d+\) failed with exit code 1; not restarting it "
                     r"\(OnFailure\): an import failed, a restart would fail the same way$",
                     err, re.M), err
    assert "; restarting it" not in err
    assert took < 15 and run.left() == []


def test_an_exit_before_the_first_clock_is_not_retried(run, tmp_path):
    job = manifest(tmp_path, ["python", UX, "--fail-after"])
    code, _, err, _ = run.run(job)
    assert code == 1, err
    assert err.count("RuntimeError: step 0 went wrong") == 1, err
    assert "not restarting it (OnFailure): it exited before any worker reported a " \
           "clock, a restart would fail the same way" in err


def test_a_failure_after_progress_is_retried_until_it_repeats(run, tmp_path):
    # Step 5 fails every time: the first failure is retried (a lost peer looks the
    # same), the restart that gets no further is not.
    job = manifest(tmp_path, ["python", UX, "--clocks", "5", "--fail-after"])
    code, _, err, _ = run.run(job)
    assert code == 1, err
    assert err.count("RuntimeError: step 5 went wrong") == 2, err
    assert "restarting it (OnFailure, restart 1 of 3)" in err
    assert "not restarting it (OnFailure): the job got no further than clock 5 since " \
           "it was restarted" in err


# ---- the wrong directory -----------------------------------------------------------

def test_a_manifest_run_from_its_own_directory_says_where_to_run_it(run):
    where = os.path.join(REPO, "examples", "02-digits-cnn")
    code, out, err, took = run.run("--quiet", "job.yaml", real=True, cwd=where)
    assert code == 2
    assert err.strip() == (
        f"geeps run: examples/02-digits-cnn/train.py (spec.command/args) does not exist "
        f"in {where}: geeps run resolves commands against the current directory; it is "
        f"in {REPO}: run there (cd ../..)")
    assert took < 15


# ---- Ctrl-C ------------------------------------------------------------------------

def _started(run, *extra: str) -> subprocess.Popen:
    proc = run.start("--servers", "1", "--workers", "2", "--", "python", UX,
                     "--clocks", "3", "--wait", *extra)
    wait_for(lambda: len(run.pids()) == 3, timeout=20, what="3 processes to start")
    return proc


def test_ctrl_c_stops_everything_within_a_second_and_sums_up(run):
    proc = _started(run)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = err.strip().splitlines()
    assert "geeps run: got SIGINT; stopping 3 processes (Ctrl-C again kills them at " \
           "once)" in lines
    assert re.fullmatch(r"geeps run: job local interrupted by SIGINT after \d+\.\d s "
                        r"\(2 workers, 1 servers\): reached clock 3", lines[-1]), lines[-1]
    # 1 s of grace, and the launcher's own start-up and shut-down on a shared machine.
    assert took < 3.0, took
    assert run.left() == []


def test_a_second_ctrl_c_kills_at_once(run):
    proc = _started(run, "--ignore-int")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: _has_line(proc), timeout=5, what="the launcher to react")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert time.monotonic() - t0 < 1.0
    assert run.left() == []


def _has_line(proc) -> bool:
    # The launcher has started stopping when the workers, ignoring SIGINT, still run
    # and it printed "got SIGINT": read stderr without blocking.
    import select
    r, _, _ = select.select([proc.stderr], [], [], 0)
    if not r:
        return False
    return "got SIGINT" in os.read(proc.stderr.fileno(), 65536).decode()


# ---- progress -----------------------------------------------------------------------

def test_a_slow_start_says_what_it_waits_for(run, tmp_path):
    go = tmp_path / "go"
    proc = run.start("--workers", "2", "--", "python", UX, "--clocks", "3",
                     "--start-when", str(go))
    seen = []

    def waiting() -> bool:
        seen.append(proc.stderr.readline())
        return "waiting for the first progress line" in seen[-1]
    wait_for(waiting, timeout=20, what="the start-up line")
    assert re.fullmatch(r"geeps run: \[00:0\d\] waiting for the first progress line of 2 "
                        r"workers \(they start, import and connect to the servers\)\n",
                        seen[-1]), seen
    go.write_text("")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "job local succeeded" in err and err.count("waiting for the first") == 0


# ---- metrics ports -----------------------------------------------------------------

def test_a_rerun_keeps_its_metrics_ports_and_binds_loopback(run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
    args = ("--metrics-port", str(base), "--quiet", "--servers", "1", "--workers", "1",
            "--", "python", UX, "--serve-metrics")
    code, _, first, _ = run.run(*args)
    assert code == 0, first
    # The worker scraped itself: its port now has a TIME_WAIT connection.
    assert (run.dir / "worker-0.metrics").read_text() == "127.0.0.1"
    code, _, second, _ = run.run(*args)
    assert code == 0, second
    assert METRICS.search(second).group(1) == METRICS.search(first).group(1) == \
        f"server-0 {base}, worker-0 {base + 1}"
    assert "moved" not in second


def test_a_taken_metrics_port_moves_and_the_banner_says_so(run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        base = busy.getsockname()[1]
        code, _, err, _ = run.run("--metrics-port", str(base), "--quiet", "--workers", "1",
                                  "--", "python", UX)
    assert code == 0, err
    moved = re.search(rf"metrics ports taken by another program, moved: server-0 {base} "
                      rf"-> (\d+)$", err, re.M)
    assert moved and int(moved.group(1)) != base, err


def test_a_busy_metrics_port_in_a_worker_names_the_variable(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = {**os.environ, "GEEPS_ROLE": "worker", "GEEPS_METRICS_PORT": str(port),
               "GEEPS_METRICS_ADDR": "127.0.0.1", "GEEPS_INSECURE": "1"}
        proc = subprocess.run([sys.executable, "-c", "import geeps.torch as gt; gt.init()"],
                              env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert f"cannot serve metrics on 127.0.0.1:{port} (GEEPS_METRICS_PORT={port}): " \
           f"Address already in use" in last, proc.stderr


def test_geeps_server_names_the_busy_metrics_port(tmp_path):
    with socket.socket() as busy, socket.socket() as shard:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        shard.bind(("127.0.0.1", 0))
        port, shard_port = busy.getsockname()[1], shard.getsockname()[1]
        shard.close()
        env = {**os.environ, "GEEPS_ROLE": "server", "GEEPS_METRICS_PORT": str(port),
               "GEEPS_METRICS_ADDR": "127.0.0.1", "GEEPS_INSECURE": "1",
               "GEEPS_SERVERS": f"127.0.0.1:{shard_port}"}
        proc = subprocess.run([sys.executable, "-m", "geeps", "server"], env=env,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"geeps server: cannot serve metrics on 127.0.0.1:{port} (GEEPS_METRICS_PORT="
        f"{port}): Address already in use; pick another port or 0 to turn metrics off")


@pytest.mark.parametrize("command", ["run", "server", "env", "bench"])
def test_every_subcommand_has_help(command):
    proc = subprocess.run([sys.executable, "-m", "geeps", command, "--help"],
                          capture_output=True, text=True, timeout=60, env={
                              k: v for k, v in os.environ.items()
                              if not k.startswith("GEEPS_")})
    assert proc.returncode == 0, proc.stderr
    assert f"geeps {command}" in proc.stdout.splitlines()[0], proc.stdout[:200]
