"""A job that cannot run says why: each way a pod fails to start, or the API server
refuses the operator's writes, reaches the condition Blocked with its reason and a
Warning Event, then (past the operator's --blocked-deadline-seconds, short here) a
Failed job with that reason. Lost nodes and evictions are replaced, the second
without counting against backoffLimit.

The test kubelet shows these failures on request (kubelet.py): an image named
.../ErrImagePull or .../ImagePullBackOff, a nodeSelector no node matches, an env
source it cannot resolve; the emulator enforces a ResourceQuota's pod count with 403."""
from __future__ import annotations

import pytest

from tests.helpers import wait_for

from .harness import Operator
from .jobs import WAIT_FOR_GO, env, job

pytestmark = pytest.mark.e2e


def _events(cluster, ns: str, name: str, reason: str) -> list[dict]:
    return [e for e in cluster.api.events(ns, name) if e.get("reason") == reason]


def _cannot_start(ns: str, mode: str) -> dict:
    body = job(ns, "blocked")
    workers = body["spec"]["workers"]
    if mode == "Unschedulable":
        workers["nodeSelector"] = {"pool": "tpu"}
    elif mode == "CreateContainerConfigError":
        body["spec"]["env"] = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {
            "name": "missing", "key": "token"}}}]
    else:
        body["spec"]["image"] = f"registry.example.com/geeps/{mode}"
    return body


@pytest.mark.parametrize("mode", ["Unschedulable", "ErrImagePull", "ImagePullBackOff",
                                  "CreateContainerConfigError"])
def test_a_pod_that_cannot_start_blocks_then_fails_the_job(cluster, operator, ns, mode):
    cluster.api.create_job(_cannot_start(ns, mode))
    blocked = cluster.wait_job(ns, "blocked", lambda j: any(
        c["type"] == "Blocked" and c["status"] == "True"
        for c in (j.get("status") or {}).get("conditions", [])), 10, "Blocked")
    c = next(c for c in blocked["status"]["conditions"] if c["type"] == "Blocked")
    assert c["reason"] == mode and " (pod blocked-" in c["message"], c
    assert blocked["status"]["phase"] == "Pending"
    done = cluster.wait_phase(ns, "blocked", "Failed", timeout=Operator.BLOCKED_DEADLINE + 10)
    failed = next(c for c in done["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == mode and "--blocked-deadline-seconds" in failed["message"]
    wait_for(lambda: len(_events(cluster, ns, "blocked", mode)) == 2, 10,
             what=f"one Warning Event {mode} when blocked, one when failed")
    assert all(e["type"] == "Warning" for e in _events(cluster, ns, "blocked", mode))


def test_a_quota_refusing_pods_blocks_then_fails_the_job(cluster, operator, ns, tmp_path):
    cluster.api.create(cluster.api.path("resourcequotas", ns), {
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "two-pods", "namespace": ns}, "spec": {"hard": {"pods": "2"}}})
    cluster.api.create_job(job(ns, "quota", WAIT_FOR_GO, workers=2, env=env(MARKS=tmp_path)))
    blocked = cluster.wait_job(ns, "quota", lambda j: any(
        c["type"] == "Blocked" and c["status"] == "True"
        for c in (j.get("status") or {}).get("conditions", [])), 10, "Blocked")
    c = next(c for c in blocked["status"]["conditions"] if c["type"] == "Blocked")
    assert c["reason"] == "Forbidden" and "exceeded quota: two-pods" in c["message"]
    done = cluster.wait_phase(ns, "quota", "Failed", timeout=Operator.BLOCKED_DEADLINE + 10)
    assert next(c for c in done["status"]["conditions"]
                if c["type"] == "Failed")["reason"] == "Forbidden"
    wait_for(lambda: len(_events(cluster, ns, "quota", "Forbidden")) == 2, 10,
             what="one Warning Event when blocked, one when failed")
    assert len(cluster.api.pods(ns, "quota")) <= 2


def test_a_pod_on_a_lost_node_is_force_deleted_and_replaced(cluster, operator, ns, tmp_path):
    cluster.api.create_job(job(ns, "lost", WAIT_FOR_GO, env=env(MARKS=tmp_path),
                               run_policy={"backoffLimit": 1}))
    cluster.wait_phase(ns, "lost", "Running")
    worker = next(p for p in cluster.api.pods(ns, "lost")
                  if p["metadata"]["name"] == "lost-worker-0")
    cluster.lose_node(ns, "lost-worker-0")
    # The node controller evicts the pods of a node gone NotReady: a deletion no
    # kubelet will ever confirm.
    cluster.api.send("DELETE", cluster.api.path("pods", ns, "lost-worker-0"))
    wait_for(lambda: _events(cluster, ns, "lost", "ForceDeleted"),
             Operator.TERMINATING_GRACE + 10, what="the ForceDeleted Event")
    wait_for(lambda: any(p["metadata"]["name"] == "lost-worker-0"
                         and p["metadata"]["uid"] != worker["metadata"]["uid"]
                         and (p.get("status") or {}).get("phase") == "Running"
                         for p in cluster.api.pods(ns, "lost")), 15,
             what="a replacement worker 0 running")
    (tmp_path / "go").write_text("")
    done = cluster.wait_phase(ns, "lost", "Succeeded", timeout=30)
    assert done["status"]["restartCount"] == 1


def test_an_eviction_does_not_count_against_backoff_limit(cluster, operator, ns, tmp_path):
    cluster.api.create_job(job(ns, "evict", WAIT_FOR_GO, env=env(MARKS=tmp_path),
                               run_policy={"backoffLimit": 0}))
    cluster.wait_phase(ns, "evict", "Running")
    pod = cluster.api.path("pods", ns, "evict-worker-0")
    old = cluster.api.get(pod)["metadata"]["uid"]
    # What the eviction API does: mark the pod, then delete it.
    cluster.api.send("PATCH", pod + "/status", {"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting"}]}}, content_type="application/merge-patch+json")
    cluster.api.send("DELETE", pod)
    wait_for(lambda: _events(cluster, ns, "evict", "Disrupted"), 15, what="Disrupted Event")
    wait_for(lambda: (cluster.api.get(pod) or {}).get("metadata", {}).get("uid") not in
             (None, old), 20, what="the replacement pod")
    (tmp_path / "go").write_text("")
    done = cluster.wait_phase(ns, "evict", "Succeeded", timeout=30)
    assert done["status"]["restartCount"] == 0


def test_a_refused_status_write_blocks_the_job_with_the_api_servers_message(cluster, operator,
                                                                          ns):
    """A CRD older than the operator (its condition enum lacks CheckpointsDurable)
    refuses the status write a checkpointing job gets: the job says so (Blocked,
    Invalid, the field) instead of failing as Rejected or staying silent."""
    import copy
    from geeps_operator.crd import build_crd
    old = copy.deepcopy(build_crd())
    enum = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"][
        "properties"]["conditions"]["items"]["properties"]["type"]["enum"]
    enum.remove("CheckpointsDurable")
    with cluster.crd_admission(old):
        cluster.api.create_job(job(ns, "oldcrd", checkpoint={"everyClocks": 10}))
        blocked = cluster.wait_job(ns, "oldcrd", lambda j: any(
            c["type"] == "Blocked" and c["status"] == "True"
            for c in (j.get("status") or {}).get("conditions", [])), 10, "Blocked")
        c = next(c for c in blocked["status"]["conditions"] if c["type"] == "Blocked")
        assert c["reason"] == "Invalid" and "status.conditions" in c["message"], c
        assert "HTTP 422" in c["message"]
        wait_for(lambda: _events(cluster, ns, "oldcrd", "Invalid"), 10, what="the Event")
        done = cluster.wait_phase(ns, "oldcrd", "Failed",
                                  timeout=Operator.BLOCKED_DEADLINE + 10)
    assert next(c for c in done["status"]["conditions"]
                if c["type"] == "Failed")["reason"] == "Invalid"
