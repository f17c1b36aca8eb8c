"""Reconcile one GeePSJob: read it and its children, decide (policy.decide), act.

    await Reconciler(kube, cfg).reconcile("default", "digits", trigger="timer")

Reads fresh state from the API on every call (no cache to go stale), serialises calls
per job with a lock (kopf may fire a pod event and the timer at once), and writes in
the order that keeps a crash harmless: status first (it records counted restarts and
terminal phases), then creates and deletes, then events.

The CurveZMQ Secret is the one object not built whole by a pure function: its keys
are random, so the policy asks for it empty and _create_keys() fills it as it is
created. The operator never reads a Secret back (and has no RBAC to).

The job's clock is learned from worker 0's log through the pods/log API: workers
print `geeps:progress {"clock": ...}` lines (geeps.job.progress), so the operator needs
no network path to the pods and no protocol of its own, only RBAC on pods/log.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
from typing import Callable

import kopf

from geeps.job import progress
from geeps.job import spec as _spec

from . import manifests as m
from . import metrics
from .config import OperatorConfig
from .kube import ApiError, Kube, path, path_of
from .policy import OWNED, REFUSALS, Actions, Observed, decide, refused

log = logging.getLogger(__name__)


def job_path(ns: str, name: str, sub: str | None = None) -> str:
    return path(_spec.GROUP, _spec.VERSION, _spec.PLURAL, ns, name, sub)


def status_patch(old: dict, new: dict) -> dict | None:
    """The merge patch turning the operator-owned part of `old` into `new` (None: equal)."""
    patch = {}
    for key in OWNED:
        if key in new and old.get(key) != new[key]:
            patch[key] = new[key]
        elif key not in new and key in old:
            patch[key] = None          # merge-patch null removes the key
    return patch or None


def last_clock(text: str) -> int | None:
    """The clock of the last progress line in a log excerpt."""
    for line in reversed(text.splitlines()):
        fields = progress.parse(line.strip())
        if fields and isinstance(fields.get("clock"), int) and not isinstance(
                fields["clock"], bool):
            return fields["clock"]
    return None


class Reconciler:
    def __init__(self, kube: Kube, cfg: OperatorConfig,
                 now: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc)):
        self.kube = kube
        self.cfg = cfg
        self.now = now
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def known(self) -> list[tuple[str, str]]:
        """(namespace, name) of every job seen and not yet gone."""
        return list(self._locks)

    def forget(self, ns: str, name: str) -> None:
        self._locks.pop((ns, name), None)
        metrics.observe_phase(f"{ns}/{name}", None)

    async def reconcile(self, ns: str, name: str, *, trigger: str) -> Actions | None:
        lock = self._locks.setdefault((ns, name), asyncio.Lock())
        async with lock:
            with metrics.reconciling(trigger):
                return await self._reconcile(ns, name, trigger)

    async def _reconcile(self, ns: str, name: str, trigger: str) -> Actions | None:
        job = await self.kube.get(job_path(ns, name))
        if job is None:
            self.forget(ns, name)
            return None
        await self._drop_legacy_finalizer(job)
        if job.get("metadata", {}).get("deletionTimestamp"):
            return None
        pods = await self.kube.list(path("", "v1", "pods", ns),
                                    label_selector=f"{m.LABEL_JOB}={name}")
        # An API server filters by label; checking again costs nothing and keeps us
        # correct against one that does not.
        pods = [p for p in pods
                if (p.get("metadata", {}).get("labels") or {}).get(m.LABEL_JOB) == name]
        has_service = await self.kube.get(
            path("", "v1", "services", ns, m.service_name(name))) is not None
        phase = (job.get("status") or {}).get("phase")
        clock = None if phase in ("Succeeded", "Failed") else \
            await self._clock(ns, name, pods, periodic=trigger == "timer")
        observed = Observed(job=job, pods=pods, has_service=has_service, now=self.now(),
                            clock=clock, limits=self.cfg.limits)
        actions = decide(observed)
        try:
            await self._apply(job, actions)
        except ApiError as e:
            if e.status not in REFUSALS:       # conflicts, outages: retried later
                raise
            # The API server refused one of our writes (Pod Security, a quota, an
            # object it finds invalid, even our own status): say so on the job, where
            # the user looks, and let the deadline decide (policy.refused).
            log.info("%s/%s: %s", ns, name, e)
            job = await self.kube.get(job_path(ns, name)) or job
            actions = refused(Observed(job=job, pods=pods, has_service=has_service,
                                       now=self.now(), limits=self.cfg.limits),
                              e.status, f"the API server refused {e}")
            await self._apply(job, actions)
        metrics.observe_phase(f"{ns}/{name}", actions.status.get("phase"))
        return actions

    async def _drop_legacy_finalizer(self, job: dict) -> None:
        """Remove the finalizer earlier versions put on jobs (kopf's, for its timer):
        with the operator uninstalled it would keep the job, and the CRD, from ever
        being deleted. The resourceVersion test keeps others' finalizers safe."""
        meta = job.get("metadata") or {}
        finalizers = meta.get("finalizers") or []
        if self.cfg.finalizer not in finalizers:
            return
        try:
            await self.kube.json_patch(job_path(meta["namespace"], meta["name"]), [
                {"op": "test", "path": "/metadata/resourceVersion",
                 "value": meta.get("resourceVersion")},
                {"op": "replace", "path": "/metadata/finalizers",
                 "value": [f for f in finalizers if f != self.cfg.finalizer]}])
        except ApiError as e:
            if e.status != 422:                # 422: the job moved on; next reconcile
                raise

    async def _clock(self, ns: str, name: str, pods: list[dict], *,
                     periodic: bool) -> int | None:
        """Worker 0's clock: read on periodic reconciles while it runs (pod events can
        come in bursts; one log read per resync is enough), and once more when it ends."""
        worker0 = m.pod_name(name, "worker", 0)
        pod = next((p for p in pods if p["metadata"].get("name") == worker0), None)
        phase = (pod or {}).get("status", {}).get("phase")
        if not (phase == "Succeeded" or (phase == "Running" and periodic)):
            return None
        try:
            text = await self.kube.text(path("", "v1", "pods", ns, worker0, "log"),
                                        {"container": m.CONTAINER,
                                         "tailLines": str(self.cfg.clock_log_lines)})
        except (ApiError, OSError, asyncio.TimeoutError) as e:
            log.debug("no clock from %s/%s: %s", ns, worker0, e)
            return None
        return last_clock(text or "")

    async def _apply(self, job: dict, actions: Actions) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        patch = status_patch(job.get("status") or {}, actions.status)
        if patch is not None:
            await self.kube.patch(job_path(ns, name, "status"), {"status": patch})
        for manifest in actions.create:
            if manifest["kind"] == "PodMonitor":
                await self._create_optional(manifest)
            elif manifest["kind"] == "Secret":
                await self._create_keys(manifest)
            else:
                await self.kube.create(path_of(manifest), manifest)
        for pod in actions.delete_pods:
            await self.kube.delete(path("", "v1", "pods", ns, pod))
        for pod in actions.force_delete:
            await self.kube.force_delete(path("", "v1", "pods", ns, pod))
        for ev in actions.events:
            kopf.event(job, type=ev.type, reason=ev.reason, message=ev.message)
        if actions.delete_job:
            await self.kube.delete(job_path(ns, name))

    async def _create_keys(self, manifest: dict) -> None:
        """Create the job's CurveZMQ Secret with fresh keys. If it already exists (409: a
        reconcile that stopped before creating the service), the existing keys stay:
        pods hold them. The operator never reads a Secret (no RBAC to): it needs not."""
        # Imported here: geeps.wire.curve needs pyzmq, which the rest of the operator does not.
        from geeps.wire import curve
        secret = dict(manifest, stringData=curve.keys_as_files())
        if await self.kube.create(path_of(secret), secret) is not None:
            log.info("created CurveZMQ keys in secret %s/%s",
                     secret["metadata"]["namespace"], secret["metadata"]["name"])

    async def _create_optional(self, manifest: dict) -> None:
        """Monitoring is a nicety: no Prometheus Operator (404) or no RBAC for it (403)
        must not stop the job."""
        try:
            await self.kube.create(path_of(manifest), manifest, ok_missing=True)
        except ApiError as e:
            log.warning("skipping %s %s: %s", manifest["kind"],
                        manifest["metadata"]["name"], e)
