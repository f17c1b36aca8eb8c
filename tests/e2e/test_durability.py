"""Lose nothing: a server pod killed mid-run comes back from its checkpoints on the
job's volume and the job still succeeds; a deleted worker pod (a lost node) is
recreated and counted. The phases are recorded from a watch, so the pass through
Restarting is seen, not inferred."""
from __future__ import annotations

import os
import signal

import pytest
import yaml

from geeps.server import checkpoint
from tests.helpers import REPO, wait_for

from .jobs import WAIT_FOR_GO, env, job
from .phases import PhaseRecorder

pytestmark = pytest.mark.e2e


def _events(cluster, ns: str, name: str) -> list[dict]:
    return cluster.api.events(ns, name)


def test_a_killed_server_restores_its_checkpoint_and_the_job_succeeds(cluster, operator, ns):
    with open(os.path.join(REPO, "examples", "01-minimal", "job.yaml")) as f:
        body = yaml.safe_load(f)
    body["metadata"] = {"name": "durable", "namespace": ns}
    body["spec"]["args"] = ["--epochs", "6"]               # 126 clocks
    body["spec"]["checkpoint"] = {"everyClocks": 5,
                                  "volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}
    body["spec"]["runPolicy"] = {"backoffLimit": 2}
    # The claim outlives pods; the job's checkpoints sit in a directory named for it.
    shards = os.path.join(cluster.kubelet.claim_dir(ns, "ckpt"), "durable")
    with PhaseRecorder(cluster, ns, "durable") as seen:
        cluster.api.create_job(body)
        wait_for(lambda: (checkpoint.clocks(shards, 0) or [0])[0] >= 20, 60,
                 what="shard 0 to checkpoint clock 20")
        first = next(p for p in cluster.processes(ns) if p.name == "durable-server-0")
        os.kill(first.process.pid, signal.SIGKILL)         # the kubelet reports it Failed
        done = cluster.wait_phase(ns, "durable", "Succeeded", timeout=60)
        phases = seen.wait("Succeeded")
    assert "Restarting" in phases, phases
    assert phases.index("Running") < phases.index("Restarting") < phases.index("Succeeded")
    assert phases[-1] == "Succeeded"
    assert done["status"]["restartCount"] == 1

    # The servers are stopped once the workers are done; wait for their exits.
    wait_for(lambda: all(p.exit_code is not None for p in cluster.processes(ns)), 15,
             what="every process to exit")
    procs = cluster.processes(ns)
    server0 = [p for p in procs if p.name == "durable-server-0"]
    assert [p.exit_code for p in server0] == [137, 0]       # killed; stopped at the end
    assert server0[0].uid != server0[1].uid                  # a new pod, the same name
    with open(server0[1].log_path) as f:
        assert "restored checkpoint clock" in f.read()
    # The workers were never restarted: they rolled back and went on.
    workers = [p for p in procs if "-worker-" in p.name]
    assert sorted(p.name for p in workers) == ["durable-worker-0", "durable-worker-1"]
    assert all(p.exit_code == 0 for p in workers)
    restarting = next(e for e in _events(cluster, ns, "durable") if e["reason"] == "Restarting")
    assert "server 0" in restarting["message"] and "exit code 137" in restarting["message"]


def test_a_deleted_worker_pod_is_recreated_and_counted(cluster, operator, ns, tmp_path):
    cluster.api.create_job(job(ns, "lost", WAIT_FOR_GO, workers=2, env=env(MARKS=tmp_path),
                               run_policy={"backoffLimit": 1}))
    with PhaseRecorder(cluster, ns, "lost") as seen:
        cluster.wait_phase(ns, "lost", "Running", timeout=20)
        old = next(p for p in cluster.api.pods(ns, "lost")
                   if p["metadata"]["name"] == "lost-worker-1")["metadata"]["uid"]
        # A drained or lost node: the pod is deleted from outside the operator.
        cluster.api.http.delete(cluster.api.base + cluster.api.path("pods", ns, "lost-worker-1"),
                                timeout=10).raise_for_status()
        cluster.wait_job(ns, "lost", lambda j: j["status"].get("restartCount") == 1, 20,
                         "the deleted pod to be counted")

        def replaced():
            return any(p["metadata"]["name"] == "lost-worker-1" and p["metadata"]["uid"] != old
                       and p.get("status", {}).get("phase") == "Running"
                       for p in cluster.api.pods(ns, "lost"))
        wait_for(replaced, 20, what="a new lost-worker-1 pod running")
        cluster.wait_phase(ns, "lost", "Running", timeout=20)
        (tmp_path / "go").touch()
        done = cluster.wait_phase(ns, "lost", "Succeeded", timeout=20)
        phases = seen.wait("Succeeded")
    assert phases.index("Running") < phases.index("Restarting") < phases.index("Succeeded")
    assert done["status"]["restartCount"] == 1
    worker1 = [p for p in cluster.processes(ns) if p.name == "lost-worker-1"]
    assert [p.exit_code for p in worker1] == [143, 0]       # SIGTERM on deletion; then done
    restarting = next(e for e in _events(cluster, ns, "lost") if e["reason"] == "Restarting")
    assert restarting["type"] == "Warning"
    assert "worker 1 (pod lost-worker-1) was deleted" in restarting["message"]
