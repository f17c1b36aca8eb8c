"""Run policy: from what is observed now to what should change. Pure; no API calls.

    plan = decide(Observed(job=body, pods=pods, has_service=True, now=now, clock=12))
    plan.status, plan.create, plan.delete_pods, plan.events, plan.delete_job

The reconciler reads the job, its pods and its service, calls decide(), and carries
the plan out; it remembers nothing between calls, so any reconcile may be repeated
or interrupted and the next one picks up from what the API shows.

Rules (see also DESIGN.md, "The operator"):
- restartPolicy per role. Never: a failed pod fails the job. OnFailure: any failed
  pod is replaced. ExitCode: replaced only if the failure looks transient: exit codes
  128-255 (killed by a signal: OOM kill 137, SIGTERM 143...), 75 (EX_TEMPFAIL), no
  exit code at all, or a pod the node gave up on (Evicted, Preempting, NodeLost,
  Shutdown, Terminated); any other code (1-127) is the program's own verdict and fails
  the job at once. A server exits only when stopped from outside, so a server pod that
  ends while the job runs is a failure whatever its exit code.
- A pod deleted from outside (a lost node, an eviction, a drain, kubectl delete) is a
  failure of the infrastructure (reason Deleted): replaced under OnFailure and
  ExitCode, fatal under Never. status.trackedPods holds the pod each slot had when
  last seen alive; one that is terminating or gone without the operator having
  deleted it was lost. (A pod created and deleted between two reconciles is replaced
  but not counted: nothing saw it alive.)
- Every replacement counts once against runPolicy.backoffLimit (shared by roles, as
  in Kubernetes Jobs); the failure past it fails the job (BackoffLimitExceeded). The
  counted pod's uid is kept in status.countedFailures until the pod is gone, so a
  repeated reconcile never counts it twice. While a replacement is pending the phase
  is Restarting; status.restartCount says how many there were.
- Made with the headless service, before the first pods: the CurveZMQ Secret (unless
  spec.security.insecure, which gets a Warning Event instead), the NetworkPolicy, and,
  when checkpoints are on without a volume, a Warning Event and the condition
  CheckpointsDurable=False (an emptyDir dies with its pod, so a replaced server
  starts its shard afresh).
- activeDeadlineSeconds counts from status.startTime (reset on resume, as Jobs do).
- All workers succeeded -> Succeeded, and the servers are stopped whatever the
  cleanPodPolicy: a shard never exits by itself, and a finished job must not hold
  servers.
- cleanPodPolicy on every path to Succeeded or Failed, and again on every later
  reconcile (so a crash between the status write and the deletes is repaired):
  All deletes every pod, Running deletes pending and running pods, None keeps them
  (except servers of a succeeded job).
- Succeeded and Failed are terminal: no pod is ever created again for the job.
- ttlSecondsAfterFinished counts from status.completionTime; then the job is deleted
  (its children go with it through their owner references).
- suspend: true deletes every pod (phase Suspended); false brings them back.
- A spec that does not validate fails the job at once (InvalidSpec, naming the field);
  a pod the API server refuses as invalid (HTTP 422) fails it too (Rejected, with the
  API server's message), since no retry can fix either.
"""
from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import dataclass, field

from geeps.job import spec as _spec

from . import manifests as m
from . import status as s

TERMINAL = ("Succeeded", "Failed")
RETRYABLE_CODES = frozenset([75]) | frozenset(range(128, 256))
INFRA_REASONS = frozenset(["Evicted", "Preempting", "NodeLost", "Shutdown", "Terminated",
                           "UnexpectedAdmissionError", "NodeAffinity", "OOMKilled",
                           "Deleted"])
# status keys this operator owns; others (kopf's) are left alone.
OWNED = ("phase", "conditions", "replicaStatuses", "restartCount", "clock", "startTime",
         "completionTime", "countedFailures", "trackedPods")


@dataclass(frozen=True)
class Observed:
    job: dict                           # the GeePSJob as read from the API
    pods: list[dict]                    # pods labelled with the job's name
    has_service: bool                   # the headless service exists
    now: _dt.datetime                   # timezone-aware
    clock: int | None = None            # worker 0's last reported clock, if learned


@dataclass(frozen=True)
class Event:
    type: str                           # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict                        # the operator-owned status the job should have
    create: list[dict] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False

    def emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))


def restartable(policy: str, pod: s.PodView) -> tuple[bool, str]:
    """Whether restartPolicy `policy` replaces this ended pod, and why not if it does not."""
    if policy == "Never":
        return False, "restartPolicy Never"
    if policy == "OnFailure" or (pod.role == "server" and pod.phase == "Succeeded"):
        return True, ""
    if pod.reason in INFRA_REASONS or pod.exit_code is None or pod.exit_code in RETRYABLE_CODES:
        return True, ""
    return False, f"restartPolicy ExitCode: exit code {pod.exit_code} is not retryable"


def run_policy(body: dict) -> dict:
    """runPolicy with defaults, even from a spec that no longer validates."""
    raw = (body.get("spec") or {}).get("runPolicy")
    rp = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    _spec.apply_defaults(rp, _spec.SCHEMA["properties"]["runPolicy"])
    if rp.get("cleanPodPolicy") not in ("All", "Running", "None"):
        rp["cleanPodPolicy"] = "Running"
    ttl = rp.get("ttlSecondsAfterFinished")
    rp["ttlSecondsAfterFinished"] = ttl if isinstance(ttl, int) and ttl >= 0 else None
    return rp


def decide(obs: Observed) -> Plan:
    body = obs.job
    old = body.get("status") or {}
    st = {k: copy.deepcopy(old[k]) for k in OWNED if k in old}
    st.setdefault("conditions", [])
    st.setdefault("restartCount", 0)
    plan = Plan(status=st)
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return plan
    views = s.observe(obs.pods, body["metadata"]["name"])
    if old.get("phase") in TERMINAL:
        _finished(plan, body, views, obs.now)
        return plan
    if obs.clock is not None:
        st["clock"] = obs.clock
    try:
        job = _spec.validate(body)
    except _spec.SpecError as e:
        field_, message = e.problems[0]
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        _fail(plan, body, views, obs.now, "InvalidSpec", f"{field_}: {message}{more}")
        return plan
    if job.run_policy["suspend"]:
        _suspend(plan, views, obs.now)
        return plan
    _active(plan, body, job, views, obs)
    return plan


def reject(obs: Observed, reason: str, message: str) -> Plan:
    """Fail the job for a cause found while acting, e.g. the API server refusing a pod
    the spec produced (an invalid resource quantity): retrying cannot fix it."""
    body = obs.job
    old = body.get("status") or {}
    st = {k: copy.deepcopy(old[k]) for k in OWNED if k in old}
    st.setdefault("conditions", [])
    st.setdefault("restartCount", 0)
    plan = Plan(status=st)
    if old.get("phase") not in TERMINAL:
        _fail(plan, body, s.observe(obs.pods, body["metadata"]["name"]), obs.now, reason,
              message)
    return plan


def _cleanup(plan: Plan, views: list[s.PodView], phase: str, policy: str) -> None:
    doomed = []
    for v in views:
        if v.terminating or v.name in plan.delete_pods:
            continue
        if (policy == "All" or (policy == "Running" and v.active)
                or (phase == "Succeeded" and v.role == "server" and v.active)):
            doomed.append(v.name)
    if doomed:
        plan.delete_pods.extend(doomed)
        plan.emit("Normal", "CleanPodPolicy",
                  f"deleting pods {', '.join(sorted(doomed))} (job {phase}, "
                  f"cleanPodPolicy {policy})")


def _finish(plan: Plan, body: dict, views: list[s.PodView], now: _dt.datetime, phase: str,
            reason: str, message: str) -> None:
    st = plan.status
    plan.create.clear()                            # nothing new for a finished job
    st["phase"] = phase
    st["conditions"] = s.set_condition(st["conditions"], phase, reason, message, now)
    st["completionTime"] = s.timestamp(now)
    st.setdefault("startTime", s.timestamp(now))
    st.pop("countedFailures", None)
    st.pop("trackedPods", None)
    plan.emit("Normal" if phase == "Succeeded" else "Warning", reason, message)
    _cleanup(plan, views, phase, run_policy(body)["cleanPodPolicy"])
    # Frozen from here on, as the outcome: pods being deleted are no longer active.
    final = s.counts([v for v in views if not v.active or v.name not in plan.delete_pods])
    st["replicaStatuses"] = final


def _fail(plan, body, views, now, reason, message) -> None:
    _finish(plan, body, views, now, "Failed", reason, message)


def _finished(plan: Plan, body: dict, views: list[s.PodView], now: _dt.datetime) -> None:
    rp = run_policy(body)
    _cleanup(plan, views, plan.status["phase"], rp["cleanPodPolicy"])
    ttl, done = rp["ttlSecondsAfterFinished"], s.parse_time(plan.status.get("completionTime"))
    if ttl is not None and done is not None and now >= done + _dt.timedelta(seconds=ttl):
        plan.delete_job = True
        plan.emit("Normal", "TTLExpired", f"deleting the job {ttl} s after it finished "
                                          f"(runPolicy.ttlSecondsAfterFinished)")


def _suspend(plan: Plan, views: list[s.PodView], now: _dt.datetime) -> None:
    st = plan.status
    doomed = [v.name for v in views if not v.terminating]
    plan.delete_pods.extend(doomed)
    st["replicaStatuses"] = s.counts([v for v in views if v.name not in doomed])
    st.pop("startTime", None)          # the deadline restarts on resume
    st.pop("countedFailures", None)
    st.pop("trackedPods", None)        # deleted by us, not lost
    if st.get("phase") != "Suspended":
        msg = "runPolicy.suspend is true: pods deleted" + (
            f" ({', '.join(sorted(doomed))})" if doomed else "")
        st["phase"] = "Suspended"
        st["conditions"] = s.set_condition(st["conditions"], "Suspended", "Suspended", msg, now)
        plan.emit("Normal", "Suspended", msg)


def _active(plan: Plan, body: dict, job: _spec.GeePSJob, views: list[s.PodView],
            obs: Observed) -> None:
    st, now = plan.status, obs.now
    owner = m.owner_reference(body)
    was = st.get("phase")
    if was == "Suspended":
        c = s.condition(st["conditions"], "Suspended")
        if c is not None:
            c.update(status="False", reason="Resumed", message="runPolicy.suspend is false",
                     lastTransitionTime=s.timestamp(now))
        plan.emit("Normal", "Resumed", "runPolicy.suspend is false: recreating pods")
    if not obs.has_service:
        # The service last: if we stop before it, its absence brings the others back
        # (each create of an existing object is a harmless 409).
        if not job.insecure:
            # Without keys: they are random, so the reconciler adds them (see manifests).
            plan.create.append(m.curve_secret(job, owner))
        plan.create.append(m.network_policy(job, owner))
        plan.create.append(m.pod_monitor(job, owner))
        plan.create.append(m.service(job, owner))
    start = s.parse_time(st.get("startTime"))
    if start is None:
        start = now
        st["startTime"] = s.timestamp(now)
    deadline = job.run_policy.get("activeDeadlineSeconds")
    if deadline is not None and now >= start + _dt.timedelta(seconds=deadline):
        _fail(plan, body, views, now, "DeadlineExceeded",
              f"the job ran longer than runPolicy.activeDeadlineSeconds={deadline}")
        return
    if s.condition(st["conditions"], "Created") is None:
        _created(plan, job, now)

    live_uids = {v.uid for v in views}
    counted = [u for u in st.get("countedFailures", []) if u in live_uids]
    tracked = {t["name"]: t["uid"] for t in st.get("trackedPods", [])}
    limit = job.run_policy["backoffLimit"]
    replicas = {"server": job.server_processes, "worker": job.workers.replicas}
    policies = {"server": job.servers.restart_policy, "worker": job.workers.restart_policy}
    up = done = 0
    restarted = False
    for v in views:   # left over from a larger spec: not part of this job any more
        if v.index >= replicas[v.role] and not v.terminating:
            plan.delete_pods.append(v.name)
    for role in s.ROLES:
        for i in range(replicas[role]):
            name = m.pod_name(job.name, role, i)
            v = s.current(views, role, i)
            last_uid = tracked.pop(name, None)
            if v is not None and not v.terminating and not v.ended:
                tracked[name] = v.uid          # alive: should it vanish, it was lost
            if last_uid is not None and (v is None or v.uid != last_uid or v.terminating):
                lost = s.PodView(name=name, uid=last_uid, role=role, index=i, phase="Unknown",
                                 terminating=True, exit_code=None, reason="Deleted")
                if not _count(plan, body, views, job, policies[role], lost, now,
                              f"{role} {i} (pod {name}) was deleted (a lost node, an "
                              f"eviction or a deletion from outside)"):
                    return
                restarted = True
            if v is None:
                plan.create.append(m.role_pod(job, role, i, owner))
                continue
            if v.terminating:
                continue
            if role == "worker" and v.phase == "Succeeded":
                done += 1
                up += 1
                continue
            if not v.ended:
                up += v.phase == "Running"
                continue
            if v.uid in counted:               # counted by an earlier reconcile
                plan.delete_pods.append(v.name)
                continue
            if not _count(plan, body, views, job, policies[role], v, now, v.describe()):
                return
            counted.append(v.uid)
            plan.delete_pods.append(v.name)
            restarted = True
    if counted:
        st["countedFailures"] = counted
    else:
        st.pop("countedFailures", None)
    if tracked:
        st["trackedPods"] = [{"name": k, "uid": tracked[k]} for k in sorted(tracked)]
    else:
        st.pop("trackedPods", None)
    st["replicaStatuses"] = s.counts(views)
    if done == job.workers.replicas:
        _finish(plan, body, views, now, "Succeeded", "AllWorkersSucceeded",
                f"all {done} workers succeeded; servers stopped")
        return
    total = job.server_processes + job.workers.replicas
    if restarted:
        phase = "Restarting"
        st["conditions"] = s.set_condition(st["conditions"], "Restarting", "PodRestarting",
                                           plan.events[-1].message, now)
    elif up == total:
        phase = "Running"
        if was != "Running":
            msg = f"all {total} pods running ({done} workers already succeeded)" if done \
                else f"all {total} pods running"
            st["conditions"] = s.set_condition(st["conditions"], "Running", "AllPodsRunning",
                                               msg, now)
            plan.emit("Normal", "Running", msg)
    elif was == "Restarting":
        phase = "Restarting"
    else:
        phase = "Pending"
    st["phase"] = phase


def _created(plan: Plan, job: _spec.GeePSJob, now: _dt.datetime) -> None:
    st = plan.status
    secret = "no CurveZMQ Secret" if job.insecure else \
        f"secret {m.curve_secret_name(job.name)}"
    msg = (f"service {m.service_name(job.name)}, {secret}, network policy "
           f"{m.network_policy_name(job.name)}, {job.server_processes} server and "
           f"{job.workers.replicas} worker pods"
           + (" (each worker serves one shard)" if job.colocate else ""))
    st["conditions"] = s.set_condition(st["conditions"], "Created", "Created", msg, now)
    plan.emit("Normal", "Created", msg)
    if job.insecure:
        plan.emit("Warning", "Insecure",
                  "spec.security.insecure is true: traffic between workers and servers is "
                  "unencrypted and unauthenticated (no CurveZMQ); anyone who reaches the "
                  "servers can read and change the model")
    if not m.checkpoints_durable(job):
        why = ("spec.checkpoint.volume is not set: checkpoints go to an emptyDir, which "
               "dies with its pod; a replaced server (a crash, a lost node) starts its "
               "shard afresh. Set a persistentVolumeClaim to keep them")
        st["conditions"] = s.set_condition(st["conditions"], "CheckpointsDurable",
                                           "EmptyDir", why, now, status="False")
        plan.emit("Warning", "CheckpointsNotDurable", why)


def _count(plan: Plan, body: dict, views: list[s.PodView], job: _spec.GeePSJob, policy: str,
           v: s.PodView, now: _dt.datetime, what: str) -> bool:
    """Count failed or lost pod `v` as a restart; False if it fails the job instead."""
    st = plan.status
    limit = job.run_policy["backoffLimit"]
    ok, why = restartable(policy, v)
    if not ok:
        _fail(plan, body, views, now, f"{v.role.capitalize()}Failed", f"{what}; {why}")
        return False
    if st["restartCount"] >= limit:
        _fail(plan, body, views, now, "BackoffLimitExceeded",
              f"{what}; {st['restartCount']} restarts already reached "
              f"runPolicy.backoffLimit={limit}")
        return False
    st["restartCount"] += 1
    plan.emit("Warning", "Restarting",
              f"{what}; restart {st['restartCount']} of runPolicy.backoffLimit={limit}")
    return True
