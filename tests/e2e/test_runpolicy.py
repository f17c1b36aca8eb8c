"""Run policy end to end: restarts, backoffLimit, ExitCode, cleanPodPolicy, deadline,
TTL, suspend/resume, and Failed staying Failed; real pods run by the test kubelet."""
from __future__ import annotations

import os

import pytest

from tests.helpers import wait_for

from .jobs import ALWAYS_FAIL, CRASH_ONCE, WAIT_FOR_GO, env, job

pytestmark = pytest.mark.e2e


def _reasons(cluster, ns, name) -> list[str]:
    return [e["reason"] for e in cluster.api.events(ns, name)]


def _condition(job_body, type_):
    return next(c for c in job_body["status"]["conditions"] if c["type"] == type_)


def _wait_events(cluster, ns, name, *reasons_):
    """Events are posted by kopf asynchronously: wait for them, do not assume."""
    return wait_for(lambda: set(reasons_) <= set(_reasons(cluster, ns, name)), 10,
                    what=f"events {reasons_} on {ns}/{name} (have {_reasons(cluster, ns, name)})")


def test_a_crashing_worker_is_recreated_and_the_job_succeeds(cluster, operator, ns, tmp_path):
    cluster.api.create_job(job(ns, "crash", CRASH_ONCE, workers=2,
                               env=env(MARKS=tmp_path), run_policy={"backoffLimit": 2}))
    done = cluster.wait_phase(ns, "crash", "Succeeded", timeout=40)
    st = done["status"]
    assert st["restartCount"] == 1
    assert st["replicaStatuses"]["workers"]["succeeded"] == 2
    worker0 = [p for p in cluster.processes(ns) if p.name == "crash-worker-0"]
    assert [p.exit_code for p in worker0] == [3, 0]            # same name, a new pod
    assert worker0[0].uid != worker0[1].uid
    _wait_events(cluster, ns, "crash", "Restarting", "AllWorkersSucceeded")
    restarting = next(e for e in cluster.api.events(ns, "crash") if e["reason"] == "Restarting")
    assert "worker 0" in restarting["message"] and "exit code 3" in restarting["message"]
    assert _condition(done, "Restarting")["status"] == "False"
    # servers are stopped at the end: the pod is gone and its process exited
    wait_for(lambda: not [p for p in cluster.api.pods(ns, "crash")
                          if p["metadata"]["labels"]["geeps.dev/role"] == "server"], 10,
             what="server pods deleted")
    servers = [p for p in cluster.processes(ns) if "-server-" in p.name]
    # Ended: 0 from the server's SIGTERM handler, or 143 if the job was over before
    # the server had installed it (this job takes well under a second).
    assert servers and all(p.exit_code in (0, 143) for p in servers), servers


def test_past_backoff_limit_the_job_fails_cleans_up_and_stays_failed(cluster, operator, ns):
    cluster.api.create_job(job(ns, "doomed", ALWAYS_FAIL,
                               run_policy={"backoffLimit": 1, "cleanPodPolicy": "All"}))
    failed = cluster.wait_phase(ns, "doomed", "Failed", timeout=40)
    st = failed["status"]
    assert st["restartCount"] == 1
    c = _condition(failed, "Failed")
    assert c["reason"] == "BackoffLimitExceeded"
    assert "runPolicy.backoffLimit=1" in c["message"] and "exit code 1" in c["message"]
    assert st["completionTime"]
    # cleanPodPolicy All: every pod goes, the failed ones included; every process ended
    wait_for(lambda: cluster.api.pods(ns, "doomed") == [], 15, what="all pods deleted")
    procs = cluster.processes(ns)
    assert [p.exit_code for p in procs if "-worker-" in p.name] == [1, 1]
    assert all(p.exit_code is not None for p in procs)
    _wait_events(cluster, ns, "doomed", "Restarting", "BackoffLimitExceeded", "CleanPodPolicy")
    # Failed stays Failed: several reconciles later, and after a spec edit, nothing comes back.
    before = operator.metric("geeps_operator_reconciles_total", {"trigger": "timer"})
    cluster.api.patch(cluster.api.job_path(ns, "doomed"),
                      {"spec": {"runPolicy": {"backoffLimit": 5}}})
    wait_for(lambda: operator.metric("geeps_operator_reconciles_total",
                                     {"trigger": "timer"}) >= before + 4, 15,
             what="four more periodic reconciles")
    assert cluster.api.job(ns, "doomed")["status"]["phase"] == "Failed"
    assert cluster.api.pods(ns, "doomed") == []
    assert len(cluster.processes(ns)) == len(procs)


def test_exit_code_policy_retries_transient_codes_only(cluster, operator, ns, tmp_path):
    common = dict(workers=1, restart="ExitCode", run_policy={"backoffLimit": 3})
    cluster.api.create_job(job(ns, "transient", CRASH_ONCE,
                               env=env(MARKS=tmp_path, FIRST_EXIT=75), **common))
    (tmp_path / "p").mkdir()
    cluster.api.create_job(job(ns, "permanent", CRASH_ONCE,
                               env=env(MARKS=tmp_path / "p", FIRST_EXIT=2), **common))
    ok = cluster.wait_phase(ns, "transient", "Succeeded", timeout=40)
    assert ok["status"]["restartCount"] == 1
    bad = cluster.wait_phase(ns, "permanent", "Failed", timeout=40)
    assert bad["status"]["restartCount"] == 0
    c = _condition(bad, "Failed")
    assert c["reason"] == "WorkerFailed" and "exit code 2 is not retryable" in c["message"]


def test_active_deadline_fails_a_job_that_runs_too_long(cluster, operator, ns, tmp_path):
    cluster.api.create_job(job(ns, "slow", WAIT_FOR_GO, env=env(MARKS=tmp_path),
                               run_policy={"activeDeadlineSeconds": 5}))
    failed = cluster.wait_phase(ns, "slow", "Failed", timeout=30)
    c = _condition(failed, "Failed")
    assert c["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds=5" in c["message"]
    assert failed["status"]["clock"] == 5          # the worker was running and reporting
    # cleanPodPolicy Running (the default): the running worker and server are stopped
    wait_for(lambda: cluster.api.pods(ns, "slow") == [], 15, what="running pods deleted")
    wait_for(lambda: all(p.exit_code is not None for p in cluster.processes(ns)), 15,
             what="every process to end")
    worker = next(p for p in cluster.processes(ns) if p.name == "slow-worker-0")
    assert worker.exit_code == 128 + 15                           # stopped by SIGTERM


def test_ttl_deletes_a_finished_job(cluster, operator, ns):
    cluster.api.create_job(job(ns, "brief", "pass", run_policy={"ttlSecondsAfterFinished": 1}))
    cluster.wait_phase(ns, "brief", "Succeeded", timeout=30)
    wait_for(lambda: cluster.api.job(ns, "brief") is None, 15, what="the TTL to delete the job")
    assert "TTLExpired" in _reasons(cluster, ns, "brief")


def test_suspend_removes_pods_and_resume_brings_the_job_back(cluster, operator, ns, tmp_path):
    cluster.api.create_job(job(ns, "pausable", WAIT_FOR_GO, workers=2, env=env(MARKS=tmp_path)))
    cluster.wait_phase(ns, "pausable", "Running", timeout=20)
    first = {p["metadata"]["uid"] for p in cluster.api.pods(ns, "pausable")}
    path = cluster.api.job_path(ns, "pausable")

    cluster.api.patch(path, {"spec": {"runPolicy": {"suspend": True}}})
    suspended = cluster.wait_phase(ns, "pausable", "Suspended", timeout=20)
    assert "startTime" not in suspended["status"]
    # The spec change moved metadata.generation; the status says it saw it.
    assert suspended["metadata"]["generation"] == 2
    assert suspended["status"]["observedGeneration"] == 2
    wait_for(lambda: cluster.api.pods(ns, "pausable") == [], 15, what="pods deleted")
    wait_for(lambda: all(p.exit_code is not None for p in cluster.processes(ns)), 15,
             what="every process to end")
    assert _condition(suspended, "Suspended")["status"] == "True"

    cluster.api.patch(path, {"spec": {"runPolicy": {"suspend": False}}})
    resumed = cluster.wait_phase(ns, "pausable", "Running", timeout=20)
    assert _condition(resumed, "Suspended")["status"] == "False"
    second = {p["metadata"]["uid"] for p in cluster.api.pods(ns, "pausable")}
    assert len(second) == 3 and not first & second
    (tmp_path / "go").touch()
    cluster.wait_phase(ns, "pausable", "Succeeded", timeout=20)
    _wait_events(cluster, ns, "pausable", "Suspended", "Resumed", "AllWorkersSucceeded")
