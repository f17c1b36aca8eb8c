"""Servers lost, added and removed while a `geeps run` job trains (issue 16): with
replicas a SIGKILLed server fails over and no worker rolls back; `geeps servers add`
and `remove` move rows mid-run; every run ends with the bits of a run that never
changed (BSP: the sum of a clock does not depend on where its rows live)."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.helpers import REPO, kill_group, wait_for

pytestmark = pytest.mark.integration
SCRIPT = os.path.join(REPO, "tests", "integration", "scripts", "ring_worker.py")
CLOCKS = 120


def manifest(tmp_path, servers: dict, workers: int = 2) -> str:
    job = {"apiVersion": "geeps.dev/v1alpha1", "kind": "GeePSJob",
           "metadata": {"name": "ring"},
           "spec": {"command": ["python", SCRIPT],
                    "args": ["--clocks", str(CLOCKS), "--save", str(tmp_path / "params.npy"),
                             "--times", str(tmp_path / "times.txt"), "--pace", "0.02"],
                    "servers": {"restartPolicy": "OnFailure", **servers},
                    "workers": {"replicas": workers},
                    "runPolicy": {"backoffLimit": 3}}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def clock_of(tmp_path) -> int:
    try:
        with open(tmp_path / "times.txt") as f:
            lines = f.read().split("\n")
        return int(lines[-2].split()[0]) if len(lines) > 1 else 0
    except (OSError, ValueError, IndexError):
        return 0


def start(tmp_path, servers: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "geeps", "run", "--quiet", "--metrics-port", "0",
         manifest(tmp_path, servers)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [os.path.join(REPO, "runtime"), REPO, os.environ.get("PYTHONPATH", "")])})


def finish(proc, tmp_path):
    text, _ = proc.communicate(timeout=240)
    params = tmp_path / "params.npy"
    return proc.returncode, text, (np.load(params) if params.exists() else None)


def server_pid(proc: subprocess.Popen, rank: int) -> int:
    """The pid of the job's server `rank`: a child of the launcher with that rank."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == proc.pid and {b"GEEPS_ROLE=server", f"GEEPS_RANK={rank}".encode()} <= env:
            return int(pid)
    raise AssertionError(f"no server-{rank} under launcher {proc.pid}")


def servers_cmd(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geeps", "servers", *args, "--job", "ring"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """The same job on two servers that never change: the reference bits."""
    tmp = tmp_path_factory.mktemp("fixed")
    proc = start(tmp, {"replicas": 2})
    try:
        code, text, params = finish(proc, tmp)
    finally:
        kill_group(proc)
    assert code == 0, text
    return params


def test_a_killed_server_fails_over_to_its_replica_without_rollback(tmp_path, fixed):
    proc = start(tmp_path, {"replicas": 3, "replication": 2})
    try:
        wait_for(lambda: clock_of(tmp_path) >= 30, 90, what="clock 30")
        os.kill(server_pid(proc, 1), signal.SIGKILL)
        code, text, params = finish(proc, tmp_path)
    finally:
        kill_group(proc)
    assert code == 0, text
    assert "failing over to its replicas" in text, text
    assert "rolled back" not in text and " 0 rollbacks" in text, text
    np.testing.assert_array_equal(params, fixed)


def test_servers_two_three_two_during_one_run(tmp_path, fixed):
    proc = start(tmp_path, {"replicas": 2, "elastic": True})
    try:
        wait_for(lambda: clock_of(tmp_path) >= 20, 90, what="clock 20")
        added = servers_cmd(tmp_path, "add", "--wait", "60")
        assert added.returncode == 0, added.stderr
        assert "server 2" in added.stdout and "epoch" in added.stdout
        at = clock_of(tmp_path)
        wait_for(lambda: clock_of(tmp_path) >= at + 10, 90, what="10 clocks on 3 servers")
        removed = servers_cmd(tmp_path, "remove", "2", "--wait", "60")
        assert removed.returncode == 0, removed.stderr
        listing = servers_cmd(tmp_path, "list")
        assert "server 2" not in listing.stdout and "server 0" in listing.stdout
        code, text, params = finish(proc, tmp_path)
    finally:
        kill_group(proc)
    assert code == 0, text
    assert "restarting" not in text, text        # no worker (or server) was restarted
    assert clock_of(tmp_path) == CLOCKS
    np.testing.assert_array_equal(params, fixed)
