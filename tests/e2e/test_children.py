"""What the operator creates for a job: every child owned by it, labelled, with the
environment contract; the job's status while it runs (counts, clock, times); the
operator's health and metrics endpoints."""
from __future__ import annotations

import pytest
import requests

from geeps.job import env as config
from tests.helpers import wait_for

from .jobs import WAIT_FOR_GO, env, job

pytestmark = pytest.mark.e2e


def _children(cluster, ns: str) -> list[dict]:
    """Every object in the namespace that is not the job itself or an Event."""
    out = []
    for plural, group, version in (("pods", "", "v1"), ("services", "", "v1"),
                                   ("secrets", "", "v1"),
                                   ("networkpolicies", "networking.k8s.io", "v1"),
                                   ("poddisruptionbudgets", "policy", "v1"),
                                   ("podmonitors", "monitoring.coreos.com", "v1")):
        out += cluster.api.items(cluster.api.path(plural, ns, group=group, version=version))
    return out


def test_every_child_is_owned_labelled_and_wired(cluster, operator, ns, tmp_path):
    manifest = job(ns, "wired", WAIT_FOR_GO, servers=2, workers=2, env=env(MARKS=tmp_path),
                   run_policy={"cleanPodPolicy": "None"})
    manifest["spec"]["workers"].update(nodeSelector={"pool": "gpu"},
                                       priorityClassName="training", gpus=1)
    created = cluster.api.create_job(manifest)
    uid = created["metadata"]["uid"]
    running = cluster.wait_phase(ns, "wired", "Running", timeout=30)

    kids = _children(cluster, ns)
    kinds = sorted((k["kind"] if "kind" in k else "?", k["metadata"]["name"]) for k in kids)
    assert kinds == [("NetworkPolicy", "wired-geeps"),
                     ("Pod", "wired-server-0"), ("Pod", "wired-server-1"),
                     ("Pod", "wired-worker-0"), ("Pod", "wired-worker-1"),
                     ("PodDisruptionBudget", "wired-shards"),
                     ("PodMonitor", "wired"), ("Secret", "wired-curve"),
                     ("Service", "wired-server")]
    for k in kids:
        # No garbage collector here: assert the references a real one would follow.
        assert k["metadata"]["ownerReferences"] == [{
            "apiVersion": "geeps.dev/v1alpha1", "kind": "GeePSJob", "name": "wired",
            "uid": uid, "controller": True, "blockOwnerDeletion": True}], k["metadata"]["name"]
        assert k["metadata"]["labels"]["geeps.dev/job-name"] == "wired"
    pods = {p["metadata"]["name"]: p for p in kids if p["kind"] == "Pod"}
    for name, p in pods.items():
        role, index = name.split("-")[1:]
        assert p["metadata"]["labels"]["geeps.dev/role"] == role
        assert p["metadata"]["labels"]["geeps.dev/index"] == index
        assert p["spec"]["restartPolicy"] == "Never"
        plain = {e["name"]: e["value"] for e in p["spec"]["containers"][0]["env"] if "value" in e}
        cfg = config.load(plain)
        assert (cfg.role, cfg.rank, cfg.num_workers) == (role, int(index), 2)
        assert cfg.servers == ("wired-server-0.wired-server." + ns + ".svc:7777",
                               "wired-server-1.wired-server." + ns + ".svc:7777")
    worker = pods["wired-worker-0"]["spec"]
    assert worker["nodeSelector"] == {"pool": "gpu"}
    assert worker["priorityClassName"] == "training"
    assert worker["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert pods["wired-server-1"]["spec"]["subdomain"] == "wired-server"

    st = running["status"]
    assert st["replicaStatuses"]["servers"] == {"active": 2, "succeeded": 0, "failed": 0,
                                              "ready": 2}
    assert st["startTime"] and "completionTime" not in st
    # The clock: worker 0 called geeps.report(clock=5, loss=0.5); the operator read it
    # from the worker's metrics endpoint (no pods/log).
    cluster.wait_job(ns, "wired", lambda j: j["status"].get("clock") == 5, 15,
                     "status.clock to be 5")
    assert cluster.api.job(ns, "wired")["status"]["progress"]["loss"] == 0.5

    (tmp_path / "go").touch()
    done = cluster.wait_phase(ns, "wired", "Succeeded", timeout=30)
    assert done["status"]["completionTime"] >= done["status"]["startTime"]
    # cleanPodPolicy None keeps the finished workers, but the servers are stopped.
    wait_for(lambda: sorted(p["metadata"]["name"] for p in cluster.api.pods(ns, "wired"))
             == ["wired-worker-0", "wired-worker-1"], 15, what="only the workers left")


# Reports a clock every 0.1 s towards a total of 10000, 32 samples each, until $MARKS/go.
STEADY = """
import os, time, geeps
k = 0
while not os.path.exists(os.path.join(os.environ["MARKS"], "go")):
    k += 1
    geeps.report(clock=k, clocks=10000, samples=32, loss=1.0 / k)
    time.sleep(0.1)
"""


def test_progress_rate_and_eta_come_from_worker_0_over_http(cluster, operator, ns,
                                                            tmp_path):
    cluster.api.create_job(job(ns, "eta", STEADY, env=env(MARKS=tmp_path)))
    st = cluster.wait_job(ns, "eta", lambda j: "etaSeconds" in (
        (j.get("status") or {}).get("progress") or {}), 20, "an ETA in status.progress")
    p = st["status"]["progress"]
    assert p["clocks"] == 10000 and p["samplesPerSecond"] > 0
    # ~10 clocks/s with ~9990 left: minutes, not seconds or days.
    assert 60 < p["etaSeconds"] < 10000, p
    (tmp_path / "go").touch()
    cluster.wait_phase(ns, "eta", "Succeeded", timeout=30)


def test_operator_health_and_metrics(cluster, operator, ns):
    r = requests.get(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5)
    assert r.status_code == 200
    cluster.api.create_job(job(ns, "counted", "pass"))
    cluster.wait_phase(ns, "counted", "Succeeded", timeout=30)
    wait_for(lambda: operator.metric("geeps_operator_jobs", {"phase": "Succeeded"}) >= 1, 10,
             what="the jobs-by-phase gauge to count a Succeeded job")
    assert operator.metric("geeps_operator_reconciles_total", {"trigger": "pod"}) > 0
    assert operator.metric("geeps_operator_reconciles_total", {"trigger": "timer"}) > 0
    assert operator.metric("geeps_operator_reconcile_duration_seconds_count") > 0
    text = requests.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text
    assert "geeps_operator_reconcile_errors_total" in text
