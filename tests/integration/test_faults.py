"""Faults in real jobs: a server or a worker SIGKILLed mid-run, and a crash between
writing and renaming a checkpoint. Nothing is lost and nothing is applied twice."""
import glob
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

import geeps
from geeps.server import checkpoint
from tests.cluster import Cluster
from tests.helpers import REPO, kill_group, wait_for

pytestmark = pytest.mark.integration
EPOCHS = 20          # 420 clocks of the digits example: long enough to kill something


def manifest(tmp_path, **spec_extra) -> str:
    with open(os.path.join(REPO, "examples", "01-minimal", "job.yaml")) as f:
        job = yaml.safe_load(f)
    job["spec"]["args"] = ["--epochs", str(EPOCHS), "--save", str(tmp_path / "params.npy")]
    job["spec"]["checkpoint"] = {"everyClocks": 10}
    job["spec"]["metrics"] = {"port": 9400}
    job["spec"].update(spec_extra)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def find_pid(ckpt, role: str, rank: str) -> int:
    """The pid of the job's process with that role and rank (found by its environment;
    the checkpoint directory is unique to the test)."""
    want = {b"GEEPS_ROLE=" + role.encode(), b"GEEPS_RANK=" + rank.encode(),
            b"GEEPS_CHECKPOINT_DIR=" + str(ckpt).encode()}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            return int(pid)
    raise AssertionError(f"no {role}-{rank} process found")


def run_job(tmp_path, kill: str | None = None, **spec_extra):
    """Run the example with `geeps run`; SIGKILL process `kill` once the shards have
    checkpointed clock 30. Returns (exit code, launcher output, final parameters)."""
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geeps", "run", "--quiet", "--metrics-port", "0",
         "--checkpoint-dir", str(ckpt), manifest(tmp_path, **spec_extra)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        if kill:
            wait_for(lambda: checkpoint.clocks(str(ckpt), 0) and
                     checkpoint.clocks(str(ckpt), 0)[0] >= 30, 60,
                     what="a checkpoint of clock 30")
            role, rank = kill.split("-")
            os.kill(find_pid(ckpt, role, rank), signal.SIGKILL)
        text, _ = proc.communicate(timeout=180)
    finally:
        kill_group(proc)
    params = tmp_path / "params.npy"
    return proc.returncode, text, (np.load(params) if params.exists() else None)


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory):
    code, text, params = run_job(tmp_path_factory.mktemp("clean"))
    assert code == 0, text
    return params


def test_server_killed_mid_run_job_finishes_with_the_fault_free_result(tmp_path, fault_free):
    code, text, params = run_job(tmp_path, kill="server-1")
    assert code == 0, text
    assert "server-1" in text and "restarting it" in text
    assert "restored checkpoint clock" in text
    assert "rolled back to clock" in text
    # Under BSP the replay from the checkpoint is the same computation, in the same
    # order: the result equals the run that never failed.
    np.testing.assert_array_equal(params, fault_free)


def test_worker_killed_mid_run_job_finishes(tmp_path, fault_free):
    code, text, params = run_job(tmp_path, kill="worker-1")
    assert code == 0, text
    assert "worker-1" in text and "restarting it" in text
    assert "rejoined at clock" in text
    # The replacement redoes the clock its predecessor died in; what the dead one had
    # pushed for it was dropped, so nothing counts twice.
    np.testing.assert_array_equal(params, fault_free)


def test_colocated_worker_killed_with_its_shard_job_rolls_back_to_the_fault_free_result(
        tmp_path, fault_free):
    """Co-located, a worker's death takes its shard too: the replacement restores the
    shard's newest checkpoint, every worker rolls back to it, and the replay under BSP
    ends on the bits of the run that never failed (and of separate servers)."""
    code, text, params = run_job(tmp_path, kill="worker-1",
                                 servers={"replicas": 2, "colocate": True})
    assert code == 0, text
    assert "worker-1" in text and "restarting it" in text
    assert "restored checkpoint clock" in text and "rolled back to clock" in text
    np.testing.assert_array_equal(params, fault_free)


def test_crash_between_write_and_rename_keeps_the_previous_checkpoint(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    with Cluster(servers=1, workers=1, GEEPS_CHECKPOINT_DIR=ckpt, GEEPS_CHECKPOINT_EVERY="2",
                 GEEPS_TEST_CRASH_BEFORE_RENAME="4") as cl:
        c = cl.client(0)
        t = c.create_table("w", 4, 2, rule="add")
        one = np.ones((4, 2), np.float32)
        for _ in range(3):
            c.push(t, None, one)
            c.clock()
        assert checkpoint.clocks(ckpt, 0) == [2]
        c.push(t, None, one)
        c.clock_async()                      # clock 4 completes: the server dies renaming
        wait_for(lambda: cl.procs[0].poll() is not None, 20, what="the server to crash")
        assert glob.glob(os.path.join(ckpt, ".tmp-*clock-000000004*")), \
            "the crash should leave the unrenamed file behind"
        assert checkpoint.clocks(ckpt, 0) == [2]
        cl.extra_env.pop("GEEPS_TEST_CRASH_BEFORE_RENAME")
        cl.start_server(0)                   # as the launcher or the operator would
        with pytest.raises(geeps.RolledBack) as e:
            c.pull(t)
        assert e.value.clock == 2 and c.clock_value == 2
        values, clock = c.pull(t)
        assert clock == 2
        np.testing.assert_array_equal(values, 2 * one)   # the state of clock 2, intact


def example_with_a_kill(tmp_path, example: str, args: list[str], role: str, rank: str,
                        at_clock: int) -> tuple[int, str]:
    """Run examples/`example` with `args` (checkpoints every 10 clocks) and SIGKILL one
    of its processes once clock `at_clock` is checkpointed; (exit code, launcher
    output)."""
    with open(os.path.join(REPO, "examples", example, "job.yaml")) as f:
        job = yaml.safe_load(f)
    job["spec"]["args"] = args
    job["spec"]["checkpoint"] = {"everyClocks": 10}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geeps", "run", "--quiet", "--metrics-port", "0",
         "--checkpoint-dir", str(ckpt), str(path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        wait_for(lambda: checkpoint.clocks(str(ckpt), 1) and
                 checkpoint.clocks(str(ckpt), 1)[0] >= at_clock, 90,
                 what=f"a checkpoint of clock {at_clock}")
        os.kill(find_pid(ckpt, role, rank), signal.SIGKILL)
        text, _ = proc.communicate(timeout=240)
    finally:
        kill_group(proc)
    return proc.returncode, text


def digits_cnn_with_a_kill(tmp_path, role: str, rank: str) -> tuple[int, str]:
    return example_with_a_kill(tmp_path, "02-digits-cnn",
                               ["--epochs", "10", "--min-accuracy", "0.95"], role, rank, 40)


# examples/04-sparse-lr at CI size: 80 clocks an epoch, 240 in all; exits 1 when the
# held-out log-loss ends above the bound.
SPARSE = ["--samples", "40000", "--features", "200000", "--informative", "5000",
          "--batch", "250", "--epochs", "3", "--device-fraction", "0.5",
          "--report-every", "5", "--max-logloss", "0.40"]


def test_server_killed_under_pytorch_training_the_job_rolls_back_and_finishes(tmp_path):
    """geeps.torch follows the rollback: the loader goes back to the checkpoint's batch
    and training still reaches the example's accuracy bar (its exit code)."""
    code, text = digits_cnn_with_a_kill(tmp_path, "server", "1")
    assert code == 0, text
    assert "restarting it" in text and "rolled back to clock" in text
    assert "test accuracy" in text


def test_worker_killed_under_pytorch_training_is_replaced_and_the_job_finishes(tmp_path):
    """The replacement joins at its predecessor's clock, its loader positioned there."""
    code, text = digits_cnn_with_a_kill(tmp_path, "worker", "1")
    assert code == 0, text
    assert "worker-1" in text and "restarting it" in text and "rejoined at clock" in text


def test_worker_killed_under_the_operation_api_is_replaced_and_the_job_converges(tmp_path):
    """examples/04-sparse-lr (the GPU-specialized worker): the replacement records its
    cycle again and trains from its predecessor's clock; the log-loss bound holds."""
    code, text = example_with_a_kill(tmp_path, "04-sparse-lr", SPARSE, "worker", "1", 40)
    assert code == 0, text
    assert "restarting it" in text and "worker 1: resuming at clock" in text
    assert "held-out log-loss" in text


def test_server_killed_under_the_operation_api_the_workers_restart_at_the_checkpoint(
        tmp_path):
    code, text = example_with_a_kill(tmp_path, "04-sparse-lr", SPARSE, "server", "1", 40)
    assert code == 0, text
    assert "rolled back to clock" in text and "exiting so that the restart policy" in text
    assert "resuming at clock" in text and "held-out log-loss" in text
