"""Reconcile one GeePSJob: read it and its children, decide (policy.decide), act.

    await Reconciler(kube, cfg).reconcile("default", "digits", trigger="timer")

Reads fresh state from the API on every call (no cache to go stale), serialises calls
per job with a lock (kopf may fire a pod event and the timer at once), and writes in
the order that keeps a crash harmless: status first (it records counted restarts and
terminal phases), then creates and deletes, then events.

The CurveZMQ Secret is the one object not built whole by a pure function: its keys
are random, so the policy asks for it empty and _create_keys() fills it as it is
created. The operator never reads a Secret back (and has no RBAC to).

The job's clock, loss, samples/s and ETA come from worker 0's metrics endpoint over
HTTP (geeps_operator.progress): what geeps.report() exports there. The operator needs
a network path to that port (the job's NetworkPolicy admits it from anywhere) and no
RBAC on pods/log.

A coordinated job's coordinator is read and asked the same way, over HTTP on its pod
IP (geeps_operator.coordinator): its membership on every reconcile (a change waits on
it), the joins and drains the policy asks for after the creates and deletes.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time
from typing import Callable

import kopf

import aiohttp

from geeps.job import spec as _spec

from . import manifests as m
from . import coordinator, metrics, progress
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


class Reconciler:
    def __init__(self, kube: Kube, cfg: OperatorConfig,
                 now: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc)):
        self.kube = kube
        self.cfg = cfg
        self.now = now
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tracked: dict[tuple[str, str], progress.Progress] = {}   # worker 0's progress
        self._session: aiohttp.ClientSession | None = None

    def known(self) -> list[tuple[str, str]]:
        """(namespace, name) of every job seen and not yet gone."""
        return list(self._locks)

    def forget(self, ns: str, name: str) -> None:
        self._locks.pop((ns, name), None)
        self._tracked.pop((ns, name), None)
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
        job = m.with_default_image(job, self.cfg.runtime_image)
        pods = await self.kube.list(path("", "v1", "pods", ns),
                                    label_selector=f"{m.LABEL_JOB}={name}")
        # An API server filters by label; checking again costs nothing and keeps us
        # correct against one that does not.
        pods = [p for p in pods
                if (p.get("metadata", {}).get("labels") or {}).get(m.LABEL_JOB) == name]
        has_service = await self.kube.get(
            path("", "v1", "services", ns, m.service_name(name))) is not None
        phase = (job.get("status") or {}).get("phase")
        tracked = None
        if phase not in ("Succeeded", "Failed"):
            tracked = await self._progress(ns, name, pods) if trigger == "timer" or \
                self._worker0_done(name, pods) else self._tracked.get((ns, name))
        coordinator_pod = self._coordinator_pod(name, pods)
        answer = None
        if coordinator_pod is not None and phase not in ("Succeeded", "Failed"):
            answer = await coordinator.state(self._http(), coordinator_pod)
        observed = Observed(job=job, pods=pods, has_service=has_service, now=self.now(),
                            clock=tracked.clock if tracked else None,
                            progress=tracked.status() if tracked else None,
                            coordinator=answer, limits=self.cfg.limits)
        actions = decide(observed)
        try:
            await self._apply(job, actions)
            for address in actions.join:
                await coordinator.join(self._http(), coordinator_pod, address)
            for sid in actions.drain:
                await coordinator.drain(self._http(), coordinator_pod, sid)
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

    async def _progress(self, ns: str, name: str, pods: list[dict]) -> Progress | None:
        """Worker 0's progress, scraped from its metrics endpoint over HTTP on periodic
        reconciles while it runs (pod events come in bursts; one scrape per resync is
        enough). None until something was read."""
        worker0 = m.pod_name(name, "worker", 0)
        by_name = {p["metadata"].get("name"): p for p in pods}
        tracked = self._tracked.get((ns, name))
        pod = by_name.get(worker0)
        if (pod or {}).get("status", {}).get("phase") == "Succeeded":
            # Worker 0 is done: a shard server that still runs knows the final clock.
            pod = by_name.get(m.pod_name(name, "server", 0))
        st = (pod or {}).get("status") or {}
        ip = st.get("podIP")
        port = next((pt.get("containerPort") for c in (pod or {}).get("spec", {}).get(
            "containers", []) for pt in c.get("ports") or []
            if pt.get("name") == m.METRICS_PORT_NAME), None)
        if st.get("phase") != "Running" or not ip or not port or \
                (pod or {}).get("metadata", {}).get("deletionTimestamp"):
            return tracked
        host = f"[{ip}]" if ":" in ip else ip
        try:
            async with self._http().get(f"http://{host}:{port}/metrics") as r:
                text = await r.text() if r.status == 200 else ""
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            log.debug("no progress from %s/%s: %s", ns, pod["metadata"]["name"], e)
            return tracked
        fields = progress.parse(text)
        if fields:
            tracked = self._tracked.setdefault((ns, name), progress.Progress())
            tracked.feed(fields, time.monotonic())
        return tracked

    @staticmethod
    def _coordinator_pod(name: str, pods: list[dict]) -> dict | None:
        return next((p for p in pods if p["metadata"].get("name") ==
                     m.pod_name(name, m.COORDINATOR, 0)), None)

    @staticmethod
    def _worker0_done(name: str, pods: list[dict]) -> bool:
        """Worker 0 has just finished: the last chance to read the final clock (from a
        server) before the job's servers are stopped, whatever triggered us."""
        return any(p["metadata"].get("name") == m.pod_name(name, "worker", 0) and
                   (p.get("status") or {}).get("phase") == "Succeeded" for p in pods)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.progress_timeout_seconds))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.kube.close()

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
