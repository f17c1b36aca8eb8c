"""Pure reading of observed pods, and the status conditions of a GeePSJob.

    views = observe(pods, "digits")                # a PodView per pod of job digits
    current(views, "worker", 0)                    # the pod standing for worker 0
    counts(views)                                  # {"servers": {...}, "workers": {...}}
    set_condition(conditions, "Running", "AllPodsRunning", "2 servers, 4 workers", now)

A pod being deleted (deletionTimestamp set) still holds its name, so the reconciler
must wait for it to go before creating the replacement; PodView.terminating says so.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from . import manifests as m

ROLES = ("server", "worker")
# A coordinated job's coordinator pod (one, index 0): seen, but outside the slots of ROLES
# (it is replaced whenever it ends, not counted: it holds nothing a restart loses).
COORDINATOR = "coordinator"

# Every condition type the operator writes, and what it means: the CRD's enum
# (geeps_operator.crd), set_condition and the docs' table read this one list, so the
# API server never refuses a status write for a condition it was not told of.
CONDITIONS: dict[str, str] = {
    "Created": "the service, Secret, network policy and first pods were made",
    "Running": "every server and worker pod is running",
    "Restarting": "a failed or lost pod is being replaced (counted against backoffLimit)",
    "Succeeded": "every worker exited 0; the servers were stopped",
    "Failed": "the job ended without success; the reason and message say why",
    "Suspended": "runPolicy.suspend is true: the pods were deleted",
    "CheckpointsDurable": "False when checkpoints are on without spec.checkpoint.volume "
                          "(an emptyDir dies with its pod)",
    "ScaleRefused": "True while spec.servers.replicas differs from the servers of a running "
                    "job that is not elastic (spec.servers.elastic false, replication 1): "
                    "its servers stay as they are",
    "Blocked": "True while a pod cannot start (Unschedulable, ErrImagePull, "
               "ImagePullBackOff, CreateContainerConfigError) or the API server refuses "
               "the operator's writes (Forbidden, Invalid); past the operator's "
               "--blocked-deadline-seconds the job fails with that reason",
}
CONDITION_TYPES = tuple(CONDITIONS)
PLURAL = {"server": "servers", "worker": "workers"}
# Why a pod stays Pending that waiting will not fix by itself: the scheduler's
# Unschedulable and the kubelet's waiting reasons of a container that cannot start.
BLOCKING = frozenset(["Unschedulable", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                      "CreateContainerConfigError", "CreateContainerError"])


@dataclass(frozen=True)
class PodView:
    name: str
    uid: str
    role: str
    index: int
    phase: str                  # Pending | Running | Succeeded | Failed | Unknown
    terminating: bool           # deletionTimestamp is set: on its way out
    exit_code: int | None       # of the container, once terminated
    reason: str                 # pod or container reason (Evicted, OOMKilled, Error...)
    # Why a pod that should start does not (scheduler or kubelet), with their message.
    blocked: str = ""           # Unschedulable | ErrImagePull | ImagePullBackOff | ...
    blocked_message: str = ""
    disrupted: str = ""         # the DisruptionTarget condition's reason (eviction, drain)
    deleted_at: str = ""        # metadata.deletionTimestamp
    ip: str = ""                # status.podIP, once it runs

    @property
    def active(self) -> bool:
        return not self.terminating and self.phase in ("Pending", "Running", "Unknown")

    @property
    def ended(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def describe(self) -> str:
        why = f"exit code {self.exit_code}" if self.exit_code is not None else "no exit code"
        if self.reason:
            why += f", {self.reason}"
        return f"{self.role} {self.index} (pod {self.name}) {self.phase.lower()} ({why})"


def view(pod: dict) -> PodView | None:
    """The operator's reading of one pod; None for a pod without our labels."""
    meta = pod.get("metadata") or {}
    lab = meta.get("labels") or {}
    role, index = lab.get(m.LABEL_ROLE), lab.get(m.LABEL_INDEX)
    if role not in ROLES + (COORDINATOR,) or not str(index).isdigit():
        return None
    st = pod.get("status") or {}
    exit_code, reason = None, st.get("reason") or ""
    for cs in st.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            exit_code = term.get("exitCode")
            reason = reason or term.get("reason") or ""
    blocked, blocked_message = "", ""
    for cs in st.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in BLOCKING:
            blocked, blocked_message = waiting["reason"], waiting.get("message") or ""
    disrupted = ""
    for c in st.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and \
                c.get("reason") == "Unschedulable" and not blocked:
            blocked, blocked_message = "Unschedulable", c.get("message") or ""
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            disrupted = c.get("reason") or "DisruptionTarget"
    return PodView(name=meta.get("name", ""), uid=meta.get("uid", ""), role=role,
                   index=int(index), phase=st.get("phase") or "Pending",
                   terminating=bool(meta.get("deletionTimestamp")),
                   exit_code=exit_code, reason=reason, blocked=blocked,
                   blocked_message=blocked_message, disrupted=disrupted,
                   deleted_at=meta.get("deletionTimestamp") or "",
                   ip=st.get("podIP") or "")


def observe(pods: list[dict], job_name: str) -> list[PodView]:
    out = []
    for pod in pods:
        lab = (pod.get("metadata") or {}).get("labels") or {}
        v = view(pod)
        if v is not None and lab.get(m.LABEL_JOB) == job_name:
            out.append(v)
    return out


def current(views: list[PodView], role: str, index: int) -> PodView | None:
    """The pod that stands for (role, index): the live one if any, else a terminating one."""
    mine = [v for v in views if v.role == role and v.index == index]
    live = [v for v in mine if not v.terminating]
    return (live or mine or [None])[0]


def counts(views: list[PodView]) -> dict:
    out = {}
    for role in ROLES:
        mine = [v for v in views if v.role == role]
        out[PLURAL[role]] = {
            "active": sum(v.active for v in mine),
            "succeeded": sum(v.phase == "Succeeded" for v in mine),
            "failed": sum(v.phase == "Failed" for v in mine),
            "ready": sum(v.phase == "Running" and not v.terminating for v in mine),
        }
    return out


def timestamp(now: _dt.datetime) -> str:
    return now.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


# Only one of these is True at a time; Created stays True once reached.
EXCLUSIVE = ("Running", "Restarting", "Suspended", "Succeeded", "Failed")


def set_condition(conditions: list[dict], type_: str, reason: str, message: str,
                  now: _dt.datetime, status: str = "True") -> list[dict]:
    """A new conditions list with `type_` at `status` (and, when True, the other
    exclusive ones False).

    lastTransitionTime moves only when a condition's status flips, as Kubernetes
    clients expect; reason and message always reflect the latest cause, so a condition
    turned False by another one says so instead of keeping its stale reason."""
    if type_ not in CONDITIONS:
        raise ValueError(f"condition {type_!r} is not in status.CONDITIONS (the CRD's enum)")
    ts = timestamp(now)
    out = [dict(c) for c in conditions]
    by_type = {c["type"]: c for c in out}
    if type_ in EXCLUSIVE and status == "True":
        for other in EXCLUSIVE:
            c = by_type.get(other)
            if other != type_ and c and c.get("status") == "True":
                c.update(status="False", lastTransitionTime=ts, reason=type_,
                         message=f"superseded: the job is {type_}")
    c = by_type.get(type_)
    if c is None:
        out.append({"type": type_, "status": status, "reason": reason, "message": message,
                    "lastTransitionTime": ts})
    else:
        if c.get("status") != status:
            c["lastTransitionTime"] = ts
        c.update(status=status, reason=reason, message=message)
    return out


def condition(conditions: list[dict], type_: str) -> dict | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None
