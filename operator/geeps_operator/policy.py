"""Run policy: from what is observed now to what should change. Pure; no API calls.

    actions = decide(Observed(job=body, pods=pods, has_service=True, now=now, clock=12))
    actions.status, actions.create, actions.delete_pods, actions.events, actions.delete_job

The reconciler reads the job, its pods and its service, calls decide(), and carries
the actions out; it remembers nothing between calls, so any reconcile may be repeated
or interrupted and the next one picks up from what the API shows.

Rules (see also README.md, "Kubernetes"):
- restartPolicy per role, as `geeps run` applies it (geeps.job.exits). Never: a failed
  pod fails the job. OnFailure: any failed pod is replaced. ExitCode: replaced only if
  the failure looks transient: exit codes 128-255 (killed by a signal: OOM kill 137,
  SIGTERM 143...), 75 (EX_TEMPFAIL), no exit code at all, or a pod the node gave up on
  (Evicted, Preempting, NodeLost, Shutdown, Terminated); any other code (1-127) is the
  program's own verdict and fails the job at once. A server exits only when stopped
  from outside, so a server pod that ends while the job runs is a failure whatever its
  exit code.
- A pod deleted from outside (a lost node, an eviction, a drain, kubectl delete) is a
  failure of the infrastructure (reason Deleted): replaced under OnFailure and
  ExitCode, fatal under Never. status.trackedPods holds the pod each slot had when
  last seen alive; one that is terminating or gone without the operator having
  deleted it was lost. (A pod created and deleted between two reconciles is replaced
  but not counted: nothing saw it alive.)
- A pod with the condition DisruptionTarget (an eviction, a node drain, preemption) is
  replaced without counting against backoffLimit (Event Disrupted). A pod terminating
  for longer than Limits.terminating_grace past its deletionTimestamp (its node is
  lost, so no kubelet confirms the deletion) is force-deleted (Event ForceDeleted).
- A pod that cannot start (status.BLOCKING: Unschedulable, ErrImagePull,
  ImagePullBackOff, CreateContainerConfigError...) or a write the API server refuses
  (403, 422; see `refused`) sets the condition Blocked with the reason and a Warning
  Event; Blocked for longer than Limits.blocked_deadline fails the job with that
  reason. Blocked turns False once nothing blocks.
- Every replacement counts once against runPolicy.backoffLimit (shared by roles, as
  in Kubernetes Jobs); the failure past it fails the job (BackoffLimitExceeded). The
  counted pod's uid is kept in status.countedFailures until the pod is gone, so a
  repeated reconcile never counts it twice. While a replacement is pending the phase
  is Restarting; status.restartCount says how many there were.
- Made with the headless service, before the first pods: the CurveZMQ Secret (unless
  spec.security.insecure, which gets a Warning Event instead), the NetworkPolicy, the
  PodDisruptionBudget of the shard-serving pods (maxUnavailable 1), and,
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
- A coordinated job (GeePSJob.coordinated) has a coordinator pod, replaced whenever it
  ends (not counted: a restarted coordinator recovers the membership from the
  servers). From its answer (Observed.coordinator, GET /membership) the operator keeps
  status.membership (epoch, which pod is which server id, settled) and posts
  MembershipChanged and ServerFailedOver Events (see `_membership`):
  - a server pod made once the membership exists is a joiner (GEEPS_JOIN=1), made
    only once no member holds its slot's addresses (a lost server's replacement waits
    for the coordinator to fail the old one over, so the new pod is never taken for
    it), and POSTed to the coordinator once Running, by its pod IP (its DNS name
    outlives it; the IP names this pod only, and needs no resolver where the
    coordinator runs);
  - spec.servers.replicas falling drains the highest-ranked servers at the
    coordinator (DELETE) and deletes each pod only once the membership no longer holds
    it; a pod whose server the coordinator failed over (silent) is deleted (fencing).
- spec.servers.replicas changed while a job that is not coordinated runs is refused:
  its servers stay as they are (status.servers), with the condition ScaleRefused and
  a Warning Event naming spec.servers.elastic.
- A spec that does not validate fails the job at once (InvalidSpec, naming the field);
  so does one with a hostPath volume, unless the operator runs with --allow-host-path
  (HostPathNotAllowed, naming the field: see host_access);
  a write the API server refuses blocks it (above).
"""
from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import dataclass, field

from geeps.job import exits
from geeps.job import membership as _ms
from geeps.job import spec as _spec

from . import manifests as m
from . import status as s

TERMINAL = ("Succeeded", "Failed")
# Pod and container reasons of a pod the node gave up on: worth a retry whatever its code.
INFRA_REASONS = frozenset(["Evicted", "Preempting", "NodeLost", "Shutdown", "Terminated",
                           "UnexpectedAdmissionError", "NodeAffinity", "OOMKilled",
                           "Deleted"])
# status keys this operator owns; others (kopf's) are left alone.
OWNED = ("phase", "conditions", "replicaStatuses", "restartCount", "clock", "startTime",
         "completionTime", "countedFailures", "trackedPods", "observedGeneration", "workers",
         "progress", "servers", "membership")


# API server refusals of the operator's own writes (HTTP 403 and 422), as Blocked reasons.
REFUSALS = {403: "Forbidden", 422: "Invalid"}


@dataclass(frozen=True)
class Limits:
    """The operator's settings the policy reads (flags of `geeps operator`)."""
    allow_host_path: bool = False       # the chart's jobPods.allowHostPath
    blocked_deadline: float = 600.0     # s a job may stay Blocked before it fails
    terminating_grace: float = 300.0    # s past its deletionTimestamp a pod may stay
    #                                     terminating before it is force-deleted


@dataclass(frozen=True)
class Observed:
    job: dict                           # the GeePSJob as read from the API
    pods: list[dict]                    # pods labelled with the job's name
    has_service: bool                   # the headless service exists
    now: _dt.datetime                   # timezone-aware
    clock: int | None = None            # worker 0's last reported clock, if learned
    progress: dict | None = None        # status.progress from worker 0 (progress.Progress)
    # A coordinated job's coordinator, GET /membership (geeps.launch.coordinator_http);
    # None when it was not reached (not up yet, restarting): nothing membership-related
    # is decided then.
    coordinator: dict | None = None
    limits: Limits = Limits()


@dataclass(frozen=True)
class Event:
    type: str                           # Normal | Warning
    reason: str
    message: str


@dataclass
class Actions:
    """What one reconcile should do: the status to write, then the objects to create,
    the pods to delete, the events to post, and whether to delete the job."""
    status: dict                        # the operator-owned status the job should have
    create: list[dict] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    force_delete: list[str] = field(default_factory=list)   # stuck terminating: grace 0
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    # Requests to a coordinated job's coordinator, made after the creates and deletes:
    join: list[str] = field(default_factory=list)     # POST /servers: these addresses
    drain: list[int] = field(default_factory=list)    # DELETE /servers/<id>: these ids

    def emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))


def restartable(policy: str, pod: s.PodView) -> tuple[bool, str]:
    """Whether restartPolicy `policy` replaces this ended pod, and why not if it does not."""
    if policy == "Never":
        return False, "restartPolicy Never"
    if pod.role == "server" and pod.phase == "Succeeded":
        return True, ""             # a server that ends while the job runs was stopped
    if pod.reason in INFRA_REASONS or exits.retryable(policy, pod.exit_code):
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


def decide(obs: Observed) -> Actions:
    """What this reconcile should do about the job, as observed now."""
    actions = _decide(obs)
    _summary(actions.status, obs.job)
    return actions


def _summary(st: dict, body: dict) -> None:
    """observedGeneration, and the Workers column's ready/desired."""
    generation = (body.get("metadata") or {}).get("generation")
    if isinstance(generation, int):
        st["observedGeneration"] = generation
    desired = ((body.get("spec") or {}).get("workers") or {}).get("replicas", 1)
    workers = (st.get("replicaStatuses") or {}).get("workers")
    if workers is not None and isinstance(desired, int):
        st["workers"] = f"{workers.get('ready', 0) + workers.get('succeeded', 0)}/{desired}"


def _decide(obs: Observed) -> Actions:
    body = obs.job
    actions = _begin(body)
    st = actions.status
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return actions
    views = s.observe(obs.pods, body["metadata"]["name"])
    if st.get("phase") in TERMINAL:
        _finished(actions, body, views, obs.now)
        return actions
    if obs.clock is not None:
        st["clock"] = obs.clock
    if obs.progress:
        st["progress"] = obs.progress
    try:
        job = _spec.validate(body)
    except _spec.SpecError as e:
        field_, message = e.problems[0]
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        _fail(actions, body, views, obs.now, "InvalidSpec", f"{field_}: {message}{more}")
        return actions
    job = _fixed_servers(actions, body, job, obs.now)
    refused = host_access(job) if not obs.limits.allow_host_path else []
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        _fail(actions, body, views, obs.now, "HostPathNotAllowed",
              f"{refused[0]}: hostPath volumes are not allowed by this operator "
              f"(chart value jobPods.allowHostPath is false){more}; a cluster's Pod "
              f"Security admission would refuse the pods")
        return actions
    if job.run_policy["suspend"]:
        _suspend(actions, views, obs.now)
        return actions
    _active(actions, body, job, views, obs)
    return actions


def _fixed_servers(actions: Actions, body: dict, job: _spec.GeePSJob,
                   now: _dt.datetime) -> _spec.GeePSJob:
    """The job to run: `job`, or, when its spec changed the server count of a running
    job that is not coordinated, the same job with the count it runs with
    (status.servers). Only a coordinator can move rows between servers while workers
    train; without one a new shard count would re-partition every table under them."""
    st = actions.status
    running = st.get("servers")
    wanted = job.processes("server")
    c = s.condition(st["conditions"], "ScaleRefused")
    if job.coordinated or not isinstance(running, int) or running == wanted or \
            job.colocate or running == 0:
        if c is not None and c.get("status") == "True":
            st["conditions"] = s.set_condition(
                st["conditions"], "ScaleRefused", "Accepted",
                f"spec.servers.replicas is {wanted}, the servers the job runs with",
                now, status="False")
        return job
    msg = (f"spec.servers.replicas changed from {running} to {wanted} while the job runs, "
           f"but its servers are not elastic (spec.servers.elastic is false and "
           f"spec.servers.replication is 1): it keeps {running} servers. Set "
           f"spec.servers.elastic: true (or replication >= 2) to add and remove servers "
           f"live, or delete and resubmit the job")
    if c is None or c.get("status") != "True" or c.get("message") != msg:
        actions.emit("Warning", "ScaleRefused", msg)
    st["conditions"] = s.set_condition(st["conditions"], "ScaleRefused", "NotElastic", msg,
                                       now)
    fixed = copy.deepcopy(body)
    fixed["spec"]["servers"]["replicas"] = running
    return _spec.validate(fixed)


def host_access(job: _spec.GeePSJob) -> list[str]:
    """The spec's fields that would give pods the node's filesystem (hostPath volumes).

    These are the only host access a spec can carry: the operator writes every pod's
    securityContext itself (non-root, no privilege escalation, no capabilities) and the
    spec has no field for privileged, hostNetwork, hostPID or hostIPC (an unknown field
    is refused under Strict validation and pruned otherwise). A cluster's Pod Security
    admission (baseline) refuses hostPath with a 403 the job could never get past, so
    the operator refuses it first, with the field, unless the chart allows it."""
    out = []
    for role in ("servers", "workers"):
        for i, vol in enumerate((job.spec.get(role) or {}).get("volumes") or []):
            if isinstance(vol, dict) and "hostPath" in vol:
                out.append(f"spec.{role}.volumes[{i}].hostPath")
    volume = (job.spec.get("checkpoint") or {}).get("volume")
    if isinstance(volume, dict) and "hostPath" in volume:
        out.append("spec.checkpoint.volume.hostPath")
    return out


def refused(obs: Observed, status_code: int, message: str) -> Actions:
    """The API server refused one of the operator's writes (403: Pod Security
    admission, a quota; 422: an object it finds invalid). Retrying may help (a quota
    frees up) or not, so the job is Blocked with the API server's message and a Warning
    Event, and fails once Blocked for longer than Limits.blocked_deadline."""
    body = obs.job
    actions = _begin(body)
    if actions.status.get("phase") not in TERMINAL:
        _block(actions, body, s.observe(obs.pods, body["metadata"]["name"]), obs,
               REFUSALS[status_code], message)
    _summary(actions.status, body)
    return actions


def _blocked(actions: Actions, body: dict, views: list[s.PodView], obs: Observed) -> bool:
    """Set or clear the Blocked condition from the pods that cannot start; True if the
    job failed for having been blocked too long."""
    st = actions.status
    stuck = [v for v in views if v.active and v.blocked]
    if stuck:
        v = stuck[0]
        more = f" (and {len(stuck) - 1} more pods)" if len(stuck) > 1 else ""
        return _block(actions, body, views, obs, v.blocked,
                      f"{v.role} {v.index} (pod {v.name}): {v.blocked}: "
                      f"{v.blocked_message}{more}")
    c = s.condition(st["conditions"], "Blocked")
    if c is None or c.get("status") != "True":
        return False
    if c.get("reason") in REFUSALS.values() and actions.create:
        # The refused creates are about to be tried again: still blocked, same clock.
        return _block(actions, body, views, obs, c["reason"], c.get("message", ""))
    st["conditions"] = s.set_condition(st["conditions"], "Blocked", "Unblocked",
                                       f"no longer blocked (was {c.get('reason')})", obs.now,
                                       status="False")
    return False


def _block(actions: Actions, body: dict, views: list[s.PodView], obs: Observed,
           reason: str, message: str) -> bool:
    """Blocked=True for `reason` (a Warning Event when the reason is new); past the
    deadline, counted from when the job became Blocked, fail it and say True."""
    st, now, deadline = actions.status, obs.now, obs.limits.blocked_deadline
    c = s.condition(st["conditions"], "Blocked")
    was = c is not None and c.get("status") == "True"
    since = (s.parse_time(c.get("lastTransitionTime")) if was else None) or now
    if now >= since + _dt.timedelta(seconds=deadline):
        _fail(actions, body, views, now, reason,
              f"{message}; blocked for {deadline:g} s (the operator's "
              f"--blocked-deadline-seconds)")
        return True
    st["conditions"] = s.set_condition(st["conditions"], "Blocked", reason, message, now)
    if not (was and c.get("reason") == reason):
        actions.emit("Warning", reason, message)
    return False


def _begin(body: dict) -> Actions:
    """No actions yet, and the status as this operator last wrote it (its own keys)."""
    old = body.get("status") or {}
    st = {k: copy.deepcopy(old[k]) for k in OWNED if k in old}
    st.setdefault("conditions", [])
    st.setdefault("restartCount", 0)
    return Actions(status=st)


def _cleanup(actions: Actions, views: list[s.PodView], phase: str, policy: str) -> None:
    doomed = []
    for v in views:
        if v.terminating or v.name in actions.delete_pods:
            continue
        if (policy == "All" or (policy == "Running" and v.active)
                or (phase == "Succeeded" and v.role != "worker" and v.active)):
            doomed.append(v.name)
    if doomed:
        actions.delete_pods.extend(doomed)
        actions.emit("Normal", "CleanPodPolicy",
                     f"deleting pods {', '.join(sorted(doomed))} (job {phase}, "
                     f"cleanPodPolicy {policy})")


def _finish(actions: Actions, body: dict, views: list[s.PodView], now: _dt.datetime,
            phase: str, reason: str, message: str) -> None:
    st = actions.status
    actions.create.clear()                         # nothing new for a finished job
    st["phase"] = phase
    st["conditions"] = s.set_condition(st["conditions"], phase, reason, message, now)
    st["completionTime"] = s.timestamp(now)
    st.setdefault("startTime", s.timestamp(now))
    st.pop("countedFailures", None)
    st.pop("trackedPods", None)
    actions.emit("Normal" if phase == "Succeeded" else "Warning", reason, message)
    _cleanup(actions, views, phase, run_policy(body)["cleanPodPolicy"])
    # Frozen from here on, as the outcome: pods being deleted are no longer active.
    final = s.counts([v for v in views if not v.active or v.name not in actions.delete_pods])
    st["replicaStatuses"] = final


def _fail(actions: Actions, body: dict, views: list[s.PodView], now: _dt.datetime,
          reason: str, message: str) -> None:
    _finish(actions, body, views, now, "Failed", reason, message)


def _finished(actions: Actions, body: dict, views: list[s.PodView], now: _dt.datetime) -> None:
    rp = run_policy(body)
    _cleanup(actions, views, actions.status["phase"], rp["cleanPodPolicy"])
    ttl, done = rp["ttlSecondsAfterFinished"], s.parse_time(actions.status.get("completionTime"))
    if ttl is not None and done is not None and now >= done + _dt.timedelta(seconds=ttl):
        actions.delete_job = True
        actions.emit("Normal", "TTLExpired", f"deleting the job {ttl} s after it finished "
                                             f"(runPolicy.ttlSecondsAfterFinished)")


def _suspend(actions: Actions, views: list[s.PodView], now: _dt.datetime) -> None:
    st = actions.status
    doomed = [v.name for v in views if not v.terminating]
    actions.delete_pods.extend(doomed)
    st["replicaStatuses"] = s.counts([v for v in views if v.name not in doomed])
    st.pop("startTime", None)          # the deadline restarts on resume
    st.pop("countedFailures", None)
    st.pop("trackedPods", None)        # deleted by us, not lost
    st.pop("servers", None)            # a suspended job may come back with other counts
    st.pop("membership", None)         # and a fresh coordinator, membership and servers
    if st.get("phase") != "Suspended":
        msg = "runPolicy.suspend is true: pods deleted" + (
            f" ({', '.join(sorted(doomed))})" if doomed else "")
        st["phase"] = "Suspended"
        st["conditions"] = s.set_condition(st["conditions"], "Suspended", "Suspended", msg, now)
        actions.emit("Normal", "Suspended", msg)


def _active(actions: Actions, body: dict, job: _spec.GeePSJob, views: list[s.PodView],
            obs: Observed) -> None:
    """A job that runs, or should: its children, its deadline, a walk over its pod
    slots (create, count, replace), then its phase."""
    st, now = actions.status, obs.now
    owner = m.owner_reference(body)
    was = st.get("phase")
    if was == "Suspended":
        _resumed(actions, now)
    if not obs.has_service:
        _create_children(actions, job, owner)
    if _past_deadline(actions, body, job, views, now):
        return
    if s.condition(st["conditions"], "Created") is None:
        _created(actions, job, now)
    if job.coordinated:
        _coordinator_slot(actions, job, views, owner, obs)
    pods = _walk_pods(actions, body, job, views, owner, obs)
    if pods is None:                                # a failure failed the job
        return
    if job.server_processes:
        st["servers"] = job.server_processes
    if job.coordinated:
        _membership(actions, job, views, obs)
    if _blocked(actions, body, views, obs):
        return
    st["replicaStatuses"] = s.counts(views)
    if pods.done == job.workers.replicas:
        _finish(actions, body, views, now, "Succeeded", "AllWorkersSucceeded",
                f"all {pods.done} workers succeeded; servers stopped")
        return
    st["phase"] = _phase(actions, job, pods, was, now)


def _resumed(actions: Actions, now: _dt.datetime) -> None:
    c = s.condition(actions.status["conditions"], "Suspended")
    if c is not None:
        c.update(status="False", reason="Resumed", message="runPolicy.suspend is false",
                 lastTransitionTime=s.timestamp(now))
    actions.emit("Normal", "Resumed", "runPolicy.suspend is false: recreating pods")


def _create_children(actions: Actions, job: _spec.GeePSJob, owner: dict) -> None:
    """The objects made before the first pods. The service last: if we stop before it,
    its absence brings the others back (each create of an existing object is a
    harmless 409)."""
    if not job.insecure:
        # Without keys: they are random, so the reconciler adds them (see manifests).
        actions.create.append(m.curve_secret(job, owner))
    actions.create.append(m.network_policy(job, owner))
    actions.create.append(m.disruption_budget(job, owner))
    actions.create.append(m.pod_monitor(job, owner))
    actions.create.append(m.service(job, owner))


def _past_deadline(actions: Actions, body: dict, job: _spec.GeePSJob,
                   views: list[s.PodView], now: _dt.datetime) -> bool:
    """Start the job's clock (status.startTime) if it has not started; past
    runPolicy.activeDeadlineSeconds, fail the job and say True."""
    st = actions.status
    start = s.parse_time(st.get("startTime"))
    if start is None:
        start = now
        st["startTime"] = s.timestamp(now)
    deadline = job.run_policy.get("activeDeadlineSeconds")
    if deadline is not None and now >= start + _dt.timedelta(seconds=deadline):
        _fail(actions, body, views, now, "DeadlineExceeded",
              f"the job ran longer than runPolicy.activeDeadlineSeconds={deadline}")
        return True
    return False


@dataclass
class _Pods:
    """The pod slots of a running job, as _walk_pods finds them."""
    counted: list[str]                  # uids of failed pods counted, not yet gone
    tracked: dict[str, str]             # pod name -> uid of the slot's pod last seen alive
    up: int = 0                         # pods running, and workers that succeeded
    done: int = 0                       # workers that succeeded
    restarted: bool = False             # this reconcile counted a restart


def _walk_pods(actions: Actions, body: dict, job: _spec.GeePSJob, views: list[s.PodView],
               owner: dict, obs: Observed) -> _Pods | None:
    """Every (role, index) slot of the job: None if a failure failed the job.
    Records status.countedFailures and status.trackedPods for the next reconcile."""
    st = actions.status
    live_uids = {v.uid for v in views}
    pods = _Pods(counted=[u for u in st.get("countedFailures", []) if u in live_uids],
                 tracked={t["name"]: t["uid"] for t in st.get("trackedPods", [])})
    for v in views:   # left over from a larger spec: not part of this job any more
        if v.role == s.COORDINATOR:
            if not job.coordinated and not v.terminating:
                actions.delete_pods.append(v.name)
            continue
        if v.role == "server" and job.coordinated:
            continue        # drained at the coordinator first (_membership)
        if v.index >= job.processes(v.role) and not v.terminating:
            actions.delete_pods.append(v.name)
    for role in s.ROLES:
        for i in range(job.processes(role)):
            if not _slot(actions, body, job, views, owner, obs, pods, role, i):
                return None
    if pods.counted:
        st["countedFailures"] = pods.counted
    else:
        st.pop("countedFailures", None)
    if pods.tracked:
        st["trackedPods"] = [{"name": k, "uid": pods.tracked[k]} for k in sorted(pods.tracked)]
    else:
        st.pop("trackedPods", None)
    return pods


def _slot(actions: Actions, body: dict, job: _spec.GeePSJob, views: list[s.PodView],
          owner: dict, obs: Observed, pods: _Pods, role: str, i: int) -> bool:
    """Slot (role, i): count its pod as lost if it vanished, create it if missing,
    count and delete it if it failed, force-delete it if stuck terminating. False if a
    failure failed the job."""
    now = obs.now
    name = m.pod_name(job.name, role, i)
    policy = job.servers.restart_policy if role == "server" else job.workers.restart_policy
    v = s.current(views, role, i)
    last_uid = pods.tracked.pop(name, None)
    if v is not None and not v.terminating and not v.ended:
        pods.tracked[name] = v.uid             # alive: should it vanish, it was lost
    if last_uid is not None and (v is None or v.uid != last_uid or v.terminating):
        lost = s.PodView(name=name, uid=last_uid, role=role, index=i, phase="Unknown",
                         terminating=True, exit_code=None, reason="Deleted",
                         disrupted=v.disrupted if v is not None and v.uid == last_uid
                         else "")
        if not _count(actions, body, views, job, policy, lost, now,
                      f"{role} {i} (pod {name}) was deleted (a lost node, an "
                      f"eviction or a deletion from outside)"):
            return False
        pods.restarted = True
    if v is None:
        # A joiner once the job has a membership, or for a rank above the servers it
        # started with (the coordinator may not have answered yet: it waits for it).
        # (Also a slot that was never alive while other server slots were: a rank a
        # scale-up added, even when an earlier reconcile already wrote the new count.)
        had = actions.status.get("servers")
        name_ = m.pod_name(job.name, role, i)
        others_seen = any(k != name_ and k.startswith(f"{job.name}-server-")
                          for k in pods.tracked)
        joiner = role == "server" and job.coordinated and (
            "membership" in actions.status or (isinstance(had, int) and i >= had)
            or (others_seen and name_ not in pods.tracked))
        if joiner and not _address_free(job, i, obs, actions.status):
            pass    # the lost server's id still holds this address: it is failed over first
        else:
            actions.create.append(m.role_pod(job, role, i, owner, join=joiner))
    elif v.terminating:
        # Its replacement waits for the name. A pod whose node is lost never finishes
        # terminating (no kubelet confirms it): past the grace period it is
        # force-deleted, as `kubectl delete --force` would, so the slot comes back.
        since = s.parse_time(v.deleted_at)
        grace = obs.limits.terminating_grace
        if since is not None and now >= since + _dt.timedelta(seconds=grace):
            actions.force_delete.append(v.name)
            actions.emit("Warning", "ForceDeleted",
                         f"{role} {i} (pod {v.name}) still terminating {grace:g} s after "
                         f"its deletion (a lost node?): force-deleted so its replacement "
                         f"can start")
    elif role == "worker" and v.phase == "Succeeded":
        pods.done += 1
        pods.up += 1
    elif not v.ended:
        pods.up += v.phase == "Running"
    elif v.uid in pods.counted:                # counted by an earlier reconcile
        actions.delete_pods.append(v.name)
    else:
        if not _count(actions, body, views, job, policy, v, now, v.describe()):
            return False
        pods.counted.append(v.uid)
        actions.delete_pods.append(v.name)
        pods.restarted = True
    return True


def _phase(actions: Actions, job: _spec.GeePSJob, pods: _Pods, was: str | None,
           now: _dt.datetime) -> str:
    """The phase of a job still running (conditions and events set on the way)."""
    st = actions.status
    total = job.processes()
    if pods.restarted:
        st["conditions"] = s.set_condition(st["conditions"], "Restarting", "PodRestarting",
                                           actions.events[-1].message, now)
        return "Restarting"
    if pods.up == total:
        if was != "Running":
            msg = f"all {total} pods running ({pods.done} workers already succeeded)" \
                if pods.done else f"all {total} pods running"
            st["conditions"] = s.set_condition(st["conditions"], "Running", "AllPodsRunning",
                                               msg, now)
            actions.emit("Normal", "Running", msg)
        return "Running"
    return "Restarting" if was == "Restarting" else "Pending"


def _created(actions: Actions, job: _spec.GeePSJob, now: _dt.datetime) -> None:
    st = actions.status
    secret = "no CurveZMQ Secret" if job.insecure else \
        f"secret {m.curve_secret_name(job.name)}"
    msg = (f"service {m.service_name(job.name)}, {secret}, network policy "
           f"{m.network_policy_name(job.name)}, {job.server_processes} server and "
           f"{job.workers.replicas} worker pods"
           + (" (each worker serves one shard)" if job.colocate else ""))
    st["conditions"] = s.set_condition(st["conditions"], "Created", "Created", msg, now)
    actions.emit("Normal", "Created", msg)
    if job.insecure:
        actions.emit("Warning", "Insecure",
                  "spec.security.insecure is true: traffic between workers and servers is "
                  "unencrypted and unauthenticated (no CurveZMQ); anyone who reaches the "
                  "servers can read and change the model")
    if not m.checkpoints_durable(job):
        why = ("spec.checkpoint.volume is not set: checkpoints go to an emptyDir, which "
               "dies with its pod; a replaced server (a crash, a lost node) starts its "
               "shard afresh. Set a persistentVolumeClaim to keep them")
        st["conditions"] = s.set_condition(st["conditions"], "CheckpointsDurable",
                                           "EmptyDir", why, now, status="False")
        actions.emit("Warning", "CheckpointsNotDurable", why)


def _count(actions: Actions, body: dict, views: list[s.PodView], job: _spec.GeePSJob,
           policy: str, v: s.PodView, now: _dt.datetime, what: str) -> bool:
    """Count failed or lost pod `v` as a restart; False if it fails the job instead."""
    st = actions.status
    limit = job.run_policy["backoffLimit"]
    ok, why = restartable(policy, v)
    if ok and v.disrupted:
        # An eviction or a drain is the cluster's doing, not the job's: replaced, not
        # counted (as a Job's podFailurePolicy Ignore on DisruptionTarget).
        actions.emit("Warning", "Disrupted",
                     f"{what}; DisruptionTarget ({v.disrupted}): replaced, not counted "
                     f"against runPolicy.backoffLimit")
        return True
    if not ok:
        _fail(actions, body, views, now, f"{v.role.capitalize()}Failed", f"{what}; {why}")
        return False
    if st["restartCount"] >= limit:
        _fail(actions, body, views, now, "BackoffLimitExceeded",
              f"{what}; {st['restartCount']} restarts already reached "
              f"runPolicy.backoffLimit={limit}")
        return False
    st["restartCount"] += 1
    actions.emit("Warning", "Restarting",
              f"{what}; restart {st['restartCount']} of runPolicy.backoffLimit={limit}")
    return True


# ---- a coordinated job's coordinator and membership ---------------------------------
def _coordinator_slot(actions: Actions, job: _spec.GeePSJob, views: list[s.PodView],
                      owner: dict, obs: Observed) -> None:
    """The coordinator pod: made if missing, replaced when it ends. Not counted against
    backoffLimit: it holds nothing a restart loses (it recovers the membership from the
    servers), and the job trains on while it is away (only changes wait)."""
    v = s.current(views, s.COORDINATOR, 0)
    if v is None:
        actions.create.append(m.coordinator_pod(job, owner))
    elif v.ended and not v.terminating:
        actions.delete_pods.append(v.name)
        actions.emit("Warning", "CoordinatorRestarted",
                     f"{v.describe()}: replaced (not counted against "
                     f"runPolicy.backoffLimit); the new one recovers the membership from "
                     f"the servers")


def _answer(obs: Observed) -> tuple[_ms.Membership, dict] | None:
    """The coordinator's membership and answer, when it gave one."""
    answer = obs.coordinator
    if not isinstance(answer, dict) or not isinstance(answer.get("membership"), dict):
        return None
    try:
        return _ms.Membership.from_json(answer["membership"]), answer
    except ValueError:
        return None


def _queued(answer: dict, kind: str) -> list:
    return [arg for item in answer.get("queued") or []
            if isinstance(item, list) and len(item) == 2 and item[0] == kind
            for arg in item[1:]]


def _address_free(job: _spec.GeePSJob, index: int, obs: Observed, st: dict) -> bool:
    """Whether a joiner may be made for server slot `index`: the coordinator answered
    and no member holds (or is queued to take) an address of the slot: its DNS name,
    or the address recorded for its last pod. A pod that replaces a lost one has its
    DNS name (and may get its IP); made before the coordinator failed the old server
    over, it would answer that server's pings with none of its rows."""
    got = _answer(obs)
    if got is None:
        return False
    mem, answer = got
    name = m.pod_name(job.name, "server", index)
    mine = {m.server_address(job, index)} | {
        r.get("address") for r in (st.get("membership") or {}).get("servers") or []
        if isinstance(r, dict) and r.get("pod") == name}
    taken = set(mem.servers.values()) | set(_queued(answer, "join"))
    return not mine & taken


def _ip_address(ip: str) -> str:
    """host:port of a server pod on its IP (bracketed when IPv6)."""
    return f"[{ip}]:{m.SERVER_PORT}" if ":" in ip else f"{ip}:{m.SERVER_PORT}"


def _membership(actions: Actions, job: _spec.GeePSJob, views: list[s.PodView],
                obs: Observed) -> None:
    """From the coordinator's answer: which pod is which server (status.membership),
    the joins and drains to ask for, the pods to delete (drained, or fenced after a
    failover), and the Events of what changed. Without an answer, nothing changes."""
    st = actions.status
    got = _answer(obs)
    if got is None:
        return
    mem, answer = got
    old = st.get("membership") if isinstance(st.get("membership"), dict) else {}
    records = {r["pod"]: dict(r) for r in old.get("servers") or []
               if isinstance(r, dict) and isinstance(r.get("pod"), str)
               and isinstance(r.get("server"), int)}
    by_address = {a: sid for sid, a in mem.servers.items()}
    joins, leaves = _queued(answer, "join"), _queued(answer, "leave")
    wanted = job.processes("server")
    live = {v.name: v for v in views if v.role == "server" and not v.terminating}
    kept: list[dict] = []
    joining: list[str] = []             # posted, waiting for their turn at the coordinator
    for name, v in sorted(live.items(), key=lambda kv: kv[1].index):
        rec = records.pop(name, None)
        if rec is not None and rec.get("uid") != v.uid:
            records[name + "/" + rec.get("uid", "")] = rec   # an earlier pod of the slot
            rec = None
        if rec is None:
            dns = m.server_address(job, v.index)
            ip = _ip_address(v.ip) if v.ip else None
            sid = by_address.get(dns, by_address.get(ip))
            if sid is None:
                if v.index >= wanted and v.name not in actions.delete_pods:
                    actions.delete_pods.append(v.name)      # never joined: nothing to drain
                elif v.phase == "Running" and ip and not v.ended:
                    joining.append(name)
                    if ip not in joins:
                        actions.join.append(ip)
                continue
            rec = {"pod": name, "uid": v.uid, "server": sid, "address": mem.servers[sid]}
        if rec["server"] in mem.servers:
            if v.index >= wanted:
                rec["draining"] = True
                if rec["server"] not in mem.leaving and rec["server"] not in leaves:
                    actions.drain.append(rec["server"])
            kept.append(rec)
        else:
            records[name] = rec         # gone from the membership: below
    for key, rec in records.items():
        sid, pod = rec["server"], rec["pod"]
        if sid in mem.servers:
            kept.append(rec)            # its pod is lost; the coordinator fails it over
            continue
        alive = key in live
        if alive and pod not in actions.delete_pods:
            actions.delete_pods.append(pod)
            # deleted by the operator, not lost: no restart to count (_slot)
            st["trackedPods"] = [t for t in st.get("trackedPods", []) if t["name"] != pod]
            if not st["trackedPods"]:
                st.pop("trackedPods")
        if rec.get("draining"):
            actions.emit("Normal", "ServerDrained",
                         f"server {sid} (pod {pod}) drained: the others hold its rows "
                         f"from epoch {mem.epoch}" + ("; pod deleted" if alive else ""))
        else:
            actions.emit("Warning", "ServerFailedOver",
                         f"server {sid} (pod {pod}) failed over: its replicas serve its "
                         f"rows from epoch {mem.epoch}, no worker rolls back"
                         + ("; its pod is deleted so that it never serves again, and a "
                            "joiner takes its place" if alive else
                            "; a joiner takes its place"))
    kept.sort(key=lambda r: r["server"])
    # Every key is written every time, empty when there is nothing: the status is
    # written as a merge patch, in which a key left out keeps its old value.
    error = answer.get("error")
    new = {"epoch": mem.epoch, "settled": bool(answer.get("settled")),
           "failovers": int(answer.get("failovers") or 0), "servers": kept,
           "joining": joining, "error": error[:1024] if isinstance(error, str) else ""}
    if new["error"] and old.get("error") != new["error"]:
        actions.emit("Warning", "MembershipError", new["error"])
    if old.get("epoch") != mem.epoch:
        actions.emit("Normal", "MembershipChanged", _describe(mem, kept, old.get("epoch")))
    st["membership"] = new


def _describe(mem: _ms.Membership, records: list[dict], was: int | None) -> str:
    pods = {r["server"]: r["pod"] for r in records}
    ring = sum(r.end - r.start for r in mem.runs)
    parts = []
    for sid in sorted(mem.servers):
        who = f"{sid} ({pods.get(sid, mem.servers[sid])})"
        catching = sum(p.end - p.start for p in mem.pending if p.sid == sid)
        if catching:
            who += f" catching up on {catching / ring:.0%} of the rows"
        if sid in mem.leaving:
            who += " leaving"
        parts.append(who)
    head = f"epoch {mem.epoch}" if was is None else f"epoch {was} -> {mem.epoch}"
    return f"{head}: servers {', '.join(parts)}"
