"""Run policy as a pure function: observed job + pods -> status, creates, deletes, events."""
from __future__ import annotations

import datetime as dt

import pytest

from geeps.job import spec as _spec
from geeps_operator import manifests as m
from geeps_operator import policy
from geeps_operator.policy import Observed, decide
from geeps_operator.reconcile import status_patch
from geeps_operator.status import set_condition, timestamp

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def job(status: dict | None = None, *, servers=1, workers=2, restart="OnFailure",
        server_restart="OnFailure", **run_policy) -> dict:
    body = {"apiVersion": _spec.API_VERSION, "kind": _spec.KIND,
            "metadata": {"name": "j", "namespace": "ns", "uid": "job-uid"},
            "spec": {"command": ["python", "t.py"],
                     "servers": {"replicas": servers, "restartPolicy": server_restart},
                     "workers": {"replicas": workers, "restartPolicy": restart},
                     "runPolicy": run_policy}}
    if status is not None:
        body["status"] = status
    return body


def pod(role: str, index: int, phase: str = "Running", *, code: int | None = None,
        reason: str = "", uid: str | None = None, terminating: bool = False) -> dict:
    meta = {"name": f"j-{role}-{index}", "namespace": "ns",
            "uid": uid or f"{role}-{index}-uid",
            "labels": {m.LABEL_JOB: "j", m.LABEL_ROLE: role, m.LABEL_INDEX: str(index)}}
    if terminating:
        meta["deletionTimestamp"] = timestamp(T0)
    st: dict = {"phase": phase}
    if reason:
        st["reason"] = reason
    if code is not None:
        st["containerStatuses"] = [{"name": "geeps", "state": {"terminated": {
            "exitCode": code}}}]
    return {"metadata": meta, "status": st}


def active(phase: str = "Running", **extra) -> dict:
    """The status of a job that has been created and reached `phase`."""
    conds = set_condition([], "Created", "Created", "created", T0)
    if phase != "Pending":
        conds = set_condition(conds, phase, phase, phase.lower(), T0)
    return {"phase": phase, "startTime": timestamp(T0), "conditions": conds, **extra}


def running(servers=1, workers=2) -> list[dict]:
    return [pod("server", i) for i in range(servers)] + \
        [pod("worker", i) for i in range(workers)]


def run(body, pods, *, now=T0, service=True, clock=None) -> policy.Actions:
    return decide(Observed(job=body, pods=pods, has_service=service, now=now, clock=clock))


def cond(plan, type_):
    return next((c for c in plan.status["conditions"] if c["type"] == type_), None)


def reasons(plan):
    return [e.reason for e in plan.events]


def then(body, plan):
    """The job as the API shows it after the plan's status was written."""
    return dict(body, status=plan.status)


# ---- creation and phases -----------------------------------------------------------------

def test_a_new_job_gets_service_and_pods_and_is_pending():
    p = run(job(), [], service=False)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in p.create]
    # The Secret first (pods mount it), the Service after what it marks as made.
    assert kinds == [("Secret", "j-curve"), ("NetworkPolicy", "j-geeps"),
                     ("PodDisruptionBudget", "j-shards"), ("PodMonitor", "j"),
                     ("Service", "j-server"), ("Pod", "j-server-0"),
                     ("Pod", "j-worker-0"), ("Pod", "j-worker-1")]
    assert p.create[0]["stringData"] == {}          # the reconciler adds the keys
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "job-uid" for o in p.create)
    assert p.status["phase"] == "Pending"
    assert p.status["startTime"] == timestamp(T0)
    assert cond(p, "Created")["status"] == "True"
    assert reasons(p) == ["Created"]


def test_existing_pods_are_not_recreated_and_all_running_is_running():
    p = run(job(active("Pending")), running())
    assert p.create == [] and p.delete_pods == []
    assert p.status["phase"] == "Running"
    assert cond(p, "Running")["reason"] == "AllPodsRunning"
    assert "Running" in reasons(p)
    assert p.status["replicaStatuses"]["workers"] == {"active": 2, "succeeded": 0, "failed": 0,
                                                       "ready": 2}
    assert p.status["workers"] == "2/2"
    again = run(then(job(), p), running())
    assert status_patch(p.status, again.status) is None and again.events == []


def test_clock_is_recorded_when_learned_and_kept_when_not():
    p = run(job(active()), running(), clock=7)
    assert p.status["clock"] == 7
    assert run(then(job(), p), running(), clock=None).status["clock"] == 7


# ---- restarts and backoff ----------------------------------------------------------------

def test_onfailure_restart_is_counted_once_then_replaced():
    body = job(active(), backoffLimit=2)
    pods = [pod("server", 0), pod("worker", 0, "Failed", code=1), pod("worker", 1)]
    p = run(body, pods)
    assert p.delete_pods == ["j-worker-0"]
    assert p.status["restartCount"] == 1
    assert p.status["countedFailures"] == ["worker-0-uid"]
    assert p.status["phase"] == "Restarting"
    assert reasons(p) == ["Restarting"]
    assert "exit code 1" in p.events[0].message and "backoffLimit=2" in p.events[0].message
    # The same observation again (delete not yet visible): no second count.
    p2 = run(then(body, p), pods)
    assert p2.status["restartCount"] == 1 and p2.delete_pods == ["j-worker-0"]
    # While the old pod terminates, nothing is created in its place.
    pods3 = [pod("server", 0), pod("worker", 0, "Failed", code=1, terminating=True),
             pod("worker", 1)]
    assert run(then(body, p2), pods3).create == []
    # Once it is gone, the replacement is created under the same name.
    p4 = run(then(body, p2), [pod("server", 0), pod("worker", 1)])
    assert [o["metadata"]["name"] for o in p4.create] == ["j-worker-0"]
    assert "countedFailures" not in p4.status
    assert p4.status["phase"] == "Restarting"
    p5 = run(then(body, p4), [pod("server", 0), pod("worker", 0, uid="new"), pod("worker", 1)])
    assert p5.status["phase"] == "Running" and p5.status["restartCount"] == 1


def test_past_backoff_limit_the_job_fails_and_clean_pod_policy_applies():
    body = job(active(restartCount=1),
               backoffLimit=1, cleanPodPolicy="Running")
    pods = [pod("server", 0), pod("worker", 0, "Failed", code=1), pod("worker", 1)]
    p = run(body, pods)
    assert p.status["phase"] == "Failed"
    c = cond(p, "Failed")
    assert c["reason"] == "BackoffLimitExceeded" and "runPolicy.backoffLimit=1" in c["message"]
    assert sorted(p.delete_pods) == ["j-server-0", "j-worker-1"]   # the failed pod is kept
    assert p.status["completionTime"] == timestamp(T0)
    assert p.status["replicaStatuses"]["servers"]["active"] == 0
    assert reasons(p) == ["BackoffLimitExceeded", "CleanPodPolicy"]
    assert p.create == []


@pytest.mark.parametrize("clean,deleted", [
    ("All", ["j-server-0", "j-worker-0", "j-worker-1"]),
    ("Running", ["j-server-0", "j-worker-1"]),
    ("None", []),
])
def test_clean_pod_policy_on_failure(clean, deleted):
    body = job(active(), restart="Never",
               cleanPodPolicy=clean)
    pods = [pod("server", 0), pod("worker", 0, "Failed", code=2), pod("worker", 1)]
    p = run(body, pods)
    assert cond(p, "Failed")["reason"] == "WorkerFailed"
    assert sorted(p.delete_pods) == deleted


@pytest.mark.parametrize("code,reason,restarts", [
    (2, "", False), (1, "", False), (75, "", True), (137, "", True), (143, "", True),
    (None, "", True), (1, "Evicted", True),
])
def test_exit_code_policy(code, reason, restarts):
    body = job(active(), restart="ExitCode")
    pods = [pod("server", 0), pod("worker", 0, "Failed", code=code, reason=reason),
            pod("worker", 1)]
    p = run(body, pods)
    if restarts:
        assert p.status["phase"] == "Restarting" and p.status["restartCount"] == 1
    else:
        assert p.status["phase"] == "Failed" and p.status["restartCount"] == 0
        assert f"exit code {code} is not retryable" in cond(p, "Failed")["message"]


def test_a_server_that_ends_while_the_job_runs_is_a_failure():
    body = job(active())
    pods = [pod("server", 0, "Succeeded", code=0), pod("worker", 0), pod("worker", 1)]
    p = run(body, pods)
    assert p.status["restartCount"] == 1 and p.delete_pods == ["j-server-0"]
    never = job(active(), server_restart="Never")
    assert cond(run(never, pods), "Failed")["reason"] == "ServerFailed"


# ---- success, terminal phases, TTL, deadline ---------------------------------------------

@pytest.mark.parametrize("clean,deleted", [
    ("None", ["j-server-0"]),                      # servers are stopped whatever the policy
    ("Running", ["j-server-0"]),
    ("All", ["j-server-0", "j-worker-0", "j-worker-1"]),
])
def test_all_workers_succeeded_stops_servers(clean, deleted):
    body = job(active(), cleanPodPolicy=clean)
    pods = [pod("server", 0), pod("worker", 0, "Succeeded", code=0),
            pod("worker", 1, "Succeeded", code=0)]
    p = run(body, pods, clock=40)
    assert p.status["phase"] == "Succeeded"
    assert cond(p, "Succeeded")["reason"] == "AllWorkersSucceeded"
    assert cond(p, "Running")["status"] == "False"
    assert sorted(p.delete_pods) == deleted
    assert p.status["clock"] == 40
    assert p.status["replicaStatuses"] == {
        "servers": {"active": 0, "succeeded": 0, "failed": 0, "ready": 0},
        "workers": {"active": 0, "succeeded": 2, "failed": 0, "ready": 0}}


def test_failed_stays_failed_and_cleanup_is_repeated():
    body = job({"phase": "Failed", "completionTime": timestamp(T0),
                "conditions": [{"type": "Failed", "status": "True"}]})
    p = run(body, [], service=False, now=T0 + dt.timedelta(hours=1))
    assert p.create == [] and p.status["phase"] == "Failed"
    # A pod left over (say the operator died between status and delete) is cleaned now.
    p2 = run(body, [pod("server", 0)])
    assert p2.delete_pods == ["j-server-0"] and p2.create == []
    # Even with the spec edited to something invalid or suspended.
    edited = job(dict(body["status"]), suspend=True)
    assert run(edited, []).status["phase"] == "Failed"


def test_ttl_after_finished():
    done = {"phase": "Succeeded", "completionTime": timestamp(T0)}
    assert not run(job(done, ttlSecondsAfterFinished=60), [],
                   now=T0 + dt.timedelta(seconds=30)).delete_job
    p = run(job(done, ttlSecondsAfterFinished=60), [], now=T0 + dt.timedelta(seconds=61))
    assert p.delete_job and reasons(p) == ["TTLExpired"]
    assert not run(job(done), [], now=T0 + dt.timedelta(days=30)).delete_job


def test_active_deadline():
    body = job(active(), activeDeadlineSeconds=60)
    assert run(body, running(), now=T0 + dt.timedelta(seconds=59)).status["phase"] == "Running"
    p = run(body, running(), now=T0 + dt.timedelta(seconds=60))
    assert cond(p, "Failed")["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds=60" in cond(p, "Failed")["message"]
    assert sorted(p.delete_pods) == ["j-server-0", "j-worker-0", "j-worker-1"]


# ---- suspend and resume ------------------------------------------------------------------

def test_suspend_deletes_pods_and_resume_recreates_them():
    body = job(active(), suspend=True)
    p = run(body, running())
    assert sorted(p.delete_pods) == ["j-server-0", "j-worker-0", "j-worker-1"]
    assert p.status["phase"] == "Suspended" and "startTime" not in p.status
    assert cond(p, "Suspended")["status"] == "True" and cond(p, "Running")["status"] == "False"
    assert reasons(p) == ["Suspended"]
    resumed = job(p.status, suspend=False)
    later = T0 + dt.timedelta(minutes=5)
    p2 = run(resumed, [], now=later)
    assert [o["metadata"]["name"] for o in p2.create] == ["j-server-0", "j-worker-0",
                                                            "j-worker-1"]
    assert p2.status["phase"] == "Pending" and p2.status["startTime"] == timestamp(later)
    assert cond(p2, "Suspended")["status"] == "False"
    assert reasons(p2) == ["Resumed"]


# ---- invalid specs and deletion ----------------------------------------------------------

def test_an_invalid_spec_fails_naming_the_field():
    body = job()
    body["spec"]["workers"]["replicas"] = 0
    p = run(body, [], service=False)
    assert p.status["phase"] == "Failed" and p.create == []
    c = cond(p, "Failed")
    assert c["reason"] == "InvalidSpec" and c["message"].startswith("spec.workers.replicas:")
    assert p.events[0].type == "Warning" and "spec.workers.replicas" in p.events[0].message


def test_a_refused_write_blocks_the_job_until_the_deadline():
    body = job(active("Pending"), cleanPodPolicy="Running")
    msg = 'POST pods: HTTP 403: pods "j-worker-1" is forbidden: exceeded quota'
    limits = policy.Limits(blocked_deadline=60)
    p = policy.refused(Observed(job=body, pods=[pod("server", 0)], has_service=True, now=T0,
                                limits=limits), 403, msg)
    assert p.status["phase"] == "Pending" and p.create == [] and p.delete_pods == []
    assert cond(p, "Blocked")["reason"] == "Forbidden" and cond(p, "Blocked")["message"] == msg
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "Forbidden")]
    # The next reconcile tries the create again: still Blocked, no second Event.
    later = T0 + dt.timedelta(seconds=30)
    again = decide(Observed(job=job(p.status), pods=[pod("server", 0)], has_service=True,
                            now=later, limits=limits))
    assert any(o["metadata"]["name"] == "j-worker-0" for o in again.create)
    assert cond(again, "Blocked")["status"] == "True" and again.events == []
    # Past the deadline: Failed with the refusal's reason.
    end = T0 + dt.timedelta(seconds=61)
    p = policy.refused(Observed(job=job(again.status), pods=[pod("server", 0)],
                                has_service=True, now=end, limits=limits), 403, msg)
    assert p.status["phase"] == "Failed" and cond(p, "Failed")["reason"] == "Forbidden"
    assert p.delete_pods == ["j-server-0"]
    terminal = job(dict(p.status))
    assert policy.refused(Observed(job=terminal, pods=[], has_service=True, now=end),
                          422, "again").events == []


def _waiting(p: dict, reason: str, message: str = "m") -> dict:
    p["status"]["phase"] = "Pending"
    p["status"]["containerStatuses"] = [{"name": "geeps", "state": {"waiting": {
        "reason": reason, "message": message}}}]
    return p


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff",
                                    "CreateContainerConfigError", "Unschedulable"])
def test_a_pod_that_cannot_start_blocks_then_fails_the_job(reason):
    limits = policy.Limits(blocked_deadline=60)
    stuck = pod("worker", 1, "Pending")
    if reason == "Unschedulable":
        stuck["status"]["conditions"] = [{"type": "PodScheduled", "status": "False",
                                          "reason": "Unschedulable", "message": "0/1 nodes"}]
    else:
        _waiting(stuck, reason)
    pods = [pod("server", 0), pod("worker", 0), stuck]
    p = decide(Observed(job=job(active("Pending")), pods=pods, has_service=True, now=T0,
                        limits=limits))
    c = cond(p, "Blocked")
    assert (c["status"], c["reason"]) == ("True", reason)
    assert c["message"].startswith("worker 1 (pod j-worker-1): " + reason)
    assert [(e.type, e.reason) for e in p.events] == [("Warning", reason)]
    p = decide(Observed(job=job(p.status), pods=pods, has_service=True,
                        now=T0 + dt.timedelta(seconds=60), limits=limits))
    assert p.status["phase"] == "Failed" and cond(p, "Failed")["reason"] == reason


def test_blocked_clears_when_the_pod_starts():
    limits = policy.Limits(blocked_deadline=60)
    stuck = _waiting(pod("worker", 1, "Pending"), "ImagePullBackOff")
    p = decide(Observed(job=job(active("Pending")), pods=[pod("server", 0), pod("worker", 0),
                        stuck], has_service=True, now=T0, limits=limits))
    p = decide(Observed(job=job(p.status), pods=running(), has_service=True,
                        now=T0 + dt.timedelta(seconds=5), limits=limits))
    assert p.status["phase"] == "Running"
    c = cond(p, "Blocked")
    assert (c["status"], c["reason"]) == ("False", "Unblocked")


def test_an_evicted_pod_is_replaced_without_counting():
    evicted = pod("worker", 0, "Failed", reason="Evicted", code=137)
    evicted["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                        "reason": "EvictionByEvictionAPI"}]
    p = run(job(active("Running"), backoffLimit=0), [pod("server", 0), evicted,
                                                      pod("worker", 1)])
    assert p.status["phase"] != "Failed" and p.status["restartCount"] == 0
    assert p.delete_pods == ["j-worker-0"] and "Disrupted" in reasons(p)


def test_a_pod_stuck_terminating_is_force_deleted_after_the_grace():
    limits = policy.Limits(terminating_grace=30)
    stuck = pod("worker", 0, terminating=True)           # deletionTimestamp T0
    body = job(active("Running", trackedPods=[{"name": "j-worker-0", "uid": "other"}]))
    p = decide(Observed(job=body, pods=[pod("server", 0), stuck, pod("worker", 1)],
                        has_service=True, now=T0 + dt.timedelta(seconds=29), limits=limits))
    assert p.force_delete == []
    p = decide(Observed(job=job(p.status), pods=[pod("server", 0), stuck, pod("worker", 1)],
                        has_service=True, now=T0 + dt.timedelta(seconds=30), limits=limits))
    assert p.force_delete == ["j-worker-0"] and "ForceDeleted" in reasons(p)


def test_a_job_being_deleted_is_left_alone():
    body = job()
    body["metadata"]["deletionTimestamp"] = timestamp(T0)
    p = run(body, [], service=False)
    assert p.create == [] and p.delete_pods == [] and p.events == []


def test_pods_of_other_jobs_and_extra_indexes():
    other = pod("worker", 0)
    other["metadata"]["labels"][m.LABEL_JOB] = "someone-else"
    p = run(job(active(), workers=1), running(1, 1) + [pod("worker", 5)] + [other])
    assert p.delete_pods == ["j-worker-5"]


# ---- helpers -----------------------------------------------------------------------------

def test_conditions_move_transition_time_only_on_flips():
    c1 = set_condition([], "Running", "A", "a", T0)
    c2 = set_condition(c1, "Running", "B", "b", T0 + dt.timedelta(seconds=5))
    assert c2[0]["lastTransitionTime"] == timestamp(T0) and c2[0]["reason"] == "B"
    c3 = set_condition(c2, "Restarting", "R", "r", T0 + dt.timedelta(seconds=9))
    running_c = next(c for c in c3 if c["type"] == "Running")
    assert running_c["status"] == "False"
    assert running_c["lastTransitionTime"] == timestamp(T0 + dt.timedelta(seconds=9))


def test_status_patch_removes_what_is_gone_and_ignores_foreign_keys():
    old = {"phase": "Running", "countedFailures": ["u"], "kopf": {"x": 1}}
    new = {"phase": "Running"}
    assert status_patch(old, new) == {"countedFailures": None}
    assert status_patch(new, dict(new)) is None


# ---- security and durability set up with the job ----------------------------------------

def test_insecure_jobs_get_no_secret_and_a_warning():
    body = job()
    body["spec"]["security"] = {"insecure": True}
    p = run(body, [], service=False)
    assert "Secret" not in [o["kind"] for o in p.create]
    assert "NetworkPolicy" in [o["kind"] for o in p.create]
    warning = next(e for e in p.events if e.reason == "Insecure")
    assert warning.type == "Warning" and "unencrypted" in warning.message
    # Said once, when the job is created.
    assert "Insecure" not in reasons(run(then(body, p), running()))


def test_checkpoints_without_a_volume_are_flagged_not_durable():
    body = job()
    body["spec"]["checkpoint"] = {"everyClocks": 10}
    p = run(body, [], service=False)
    c = cond(p, "CheckpointsDurable")
    assert c["status"] == "False" and c["reason"] == "EmptyDir"
    assert "emptyDir" in c["message"]
    assert next(e for e in p.events if e.reason == "CheckpointsNotDurable").type == "Warning"
    # Not an exclusive condition: the job still becomes Running.
    p2 = run(then(body, p), running())
    assert p2.status["phase"] == "Running"
    assert cond(p2, "CheckpointsDurable")["status"] == "False"
    body["spec"]["checkpoint"]["volume"] = {"persistentVolumeClaim": {"claimName": "c"}}
    assert cond(run(body, [], service=False), "CheckpointsDurable") is None


# ---- pods deleted from outside (a lost node) --------------------------------------------

def test_a_deleted_pod_is_counted_once_and_replaced():
    seen = run(job(active(), backoffLimit=2), running())
    assert {t["name"] for t in seen.status["trackedPods"]} == {
        "j-server-0", "j-worker-0", "j-worker-1"}
    body = then(job(active(), backoffLimit=2), seen)
    # Seen terminating (deleted by someone else): counted, nothing deleted by us.
    pods = [pod("server", 0, terminating=True), pod("worker", 0), pod("worker", 1)]
    p = run(body, pods)
    assert p.status["restartCount"] == 1 and p.status["phase"] == "Restarting"
    assert p.delete_pods == [] and p.create == []
    ev = next(e for e in p.events if e.reason == "Restarting")
    assert "server 0 (pod j-server-0) was deleted" in ev.message
    # Still terminating, then gone: no second count; the replacement is created.
    p2 = run(then(body, p), pods)
    assert p2.status["restartCount"] == 1 and p2.create == []
    p3 = run(then(body, p2), running()[1:])
    assert p3.status["restartCount"] == 1
    assert [o["metadata"]["name"] for o in p3.create] == ["j-server-0"]
    assert p3.status["phase"] == "Restarting"
    p4 = run(then(body, p3), [pod("server", 0, uid="new")] + running()[1:])
    assert p4.status["phase"] == "Running" and p4.status["restartCount"] == 1
    assert {"name": "j-server-0", "uid": "new"} in p4.status["trackedPods"]


def test_a_pod_that_vanished_unseen_while_terminating_is_counted_too():
    body = then(job(active()), run(job(active()), running()))
    p = run(body, running()[:2])                      # worker 1 gone (force-deleted)
    assert p.status["restartCount"] == 1
    assert [o["metadata"]["name"] for o in p.create] == ["j-worker-1"]


def test_a_deleted_pod_under_restart_policy_never_fails_the_job():
    body = job(active(), restart="Never")
    body = then(body, run(body, running()))
    p = run(body, [pod("server", 0), pod("worker", 0), pod("worker", 1, terminating=True)])
    assert p.status["phase"] == "Failed"
    c = cond(p, "Failed")
    assert c["reason"] == "WorkerFailed" and "was deleted" in c["message"]
    assert "restartPolicy Never" in c["message"]


def test_a_deleted_pod_past_the_backoff_limit_fails_the_job():
    body = job(active(restartCount=1), backoffLimit=1)
    body = then(body, run(body, running()))
    p = run(body, running()[:2])
    assert cond(p, "Failed")["reason"] == "BackoffLimitExceeded"


def test_pods_the_operator_deletes_are_not_lost_pods():
    # A failed pod counted and deleted by the operator: one count, not two.
    body = then(job(active()), run(job(active()), running()))
    failed = [pod("server", 0), pod("worker", 0, "Failed", code=1), pod("worker", 1)]
    p = run(body, failed)
    assert p.status["restartCount"] == 1
    p2 = run(then(body, p), [pod("server", 0), pod("worker", 1)])
    assert p2.status["restartCount"] == 1
    # Suspended: every pod deleted by us; resumed while they still terminate: no count.
    body = then(job(active()), run(job(active()), running()))
    body["spec"]["runPolicy"]["suspend"] = True
    s1 = run(body, running())
    assert "trackedPods" not in s1.status
    resumed = then(job(), s1)
    s2 = run(resumed, [pod("server", 0, terminating=True)])
    assert s2.status["restartCount"] == 0
    # A succeeded worker is not tracked: removing it is no loss.
    body = then(job(active()), run(job(active()), running()))
    done = [pod("server", 0), pod("worker", 0, "Succeeded", code=0), pod("worker", 1)]
    p = run(body, done)
    assert "j-worker-0" not in {t["name"] for t in p.status["trackedPods"]}


# --- hostPath gate ----------------------------------------------------------------------

def _with_host_path(body: dict) -> dict:
    body["spec"]["workers"]["volumes"] = [{"name": "data", "persistentVolumeClaim":
                                           {"claimName": "d"}},
                                          {"name": "host", "hostPath": {"path": "/data"}}]
    body["spec"]["checkpoint"] = {"everyClocks": 5, "volume": {"hostPath": {"path": "/c"}}}
    return body


def test_host_path_fails_the_job_naming_the_field():
    plan = run(_with_host_path(job()), [])
    assert plan.status["phase"] == "Failed" and plan.create == []
    c = cond(plan, "Failed")
    assert c["reason"] == "HostPathNotAllowed"
    assert c["message"].startswith("spec.workers.volumes[1].hostPath: ")
    assert "(and 1 more)" in c["message"] and "jobPods.allowHostPath" in c["message"]


def test_host_path_allowed_by_the_operator_flag_reaches_the_pods():
    plan = decide(Observed(job=_with_host_path(job()), pods=[], has_service=True, now=T0,
                           limits=policy.Limits(allow_host_path=True)))
    assert plan.status["phase"] == "Pending"
    worker = next(p for p in plan.create if p["metadata"]["name"] == "j-worker-0")
    assert {"name": "host", "hostPath": {"path": "/data"}} in worker["spec"]["volumes"]


def test_host_access_lists_only_host_paths():
    body = job()
    assert policy.host_access(_spec.validate(body)) == []
    assert policy.host_access(_spec.validate(_with_host_path(body))) == [
        "spec.workers.volumes[1].hostPath", "spec.checkpoint.volume.hostPath"]


def test_observed_generation_and_the_workers_column():
    body = job(active("Pending"))
    body["metadata"]["generation"] = 3
    p = run(body, [pod("server", 0), pod("worker", 0), pod("worker", 1, "Pending")])
    assert p.status["observedGeneration"] == 3
    assert p.status["workers"] == "1/2"


def test_a_superseded_condition_loses_its_stale_reason():
    conds = set_condition([], "Running", "AllPodsRunning", "all 3 pods running", T0)
    conds = set_condition(conds, "Restarting", "PodRestarting", "worker 0 failed", T0)
    running_ = next(c for c in conds if c["type"] == "Running")
    assert running_["status"] == "False" and running_["reason"] == "Restarting"
    assert "all 3 pods running" not in running_["message"]
