"""Leader election through a coordination.k8s.io Lease: one operator replica reconciles.

    elector = LeaseElector(kube, "geeps-system", "geeps-operator", identity="pod-a")
    await elector.acquire()            # blocks while another replica holds the lease
    lost = asyncio.Event()
    holder = asyncio.ensure_future(elector.hold(lost))   # renews; sets `lost` if it cannot
    ...                                # reconcile until `lost` or shutdown
    await elector.release()            # on a clean stop: the standby takes over at once

Why a Lease and not kopf's peering: kopf's peering pauses an operator for a peer of
higher priority, and when peers share a priority (as two replicas of one Deployment
do) it pauses *all* of them, itself included, until only one is left: a warm standby
would stop the leader instead of waiting behind it. Distinct priorities per replica
would need a per-pod flag a Deployment cannot give, and peering needs its own CRDs. A Lease is the built-in object every
Kubernetes controller elects with (client-go's leaderelection), needs three verbs on
one namespaced resource, and lets a standby replica stay off the API entirely: it
neither watches nor reconciles until it holds the lease.

Expiry is judged as client-go does, by the local clock: a lease is free once its
record has not changed for leaseDurationSeconds *as this replica observed it*, so
clock skew between nodes does not matter. Every write is a JSON patch that first
tests the resourceVersion it read, so two candidates cannot both win.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time

from .kube import ApiError, Kube, path

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "coordination.k8s.io", "v1", "leases"


def _micro_time() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *,
                 lease_seconds: float = 15.0, renew_seconds: float = 5.0,
                 retry_seconds: float = 2.0):
        if not renew_seconds < lease_seconds:
            raise ValueError("the lease must be renewed more often than it lasts")
        self.kube = kube
        self.path = path(GROUP, VERSION, PLURAL, namespace, name)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.retry_seconds = retry_seconds
        self._seen: tuple[str, float] | None = None     # (record, monotonic when it changed)

    def _spec(self, transitions: int, acquired: str | None = None) -> dict:
        now = _micro_time()
        return {"holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.lease_seconds)),
                "acquireTime": acquired or now, "renewTime": now,
                "leaseTransitions": transitions}

    def _expired(self, spec: dict) -> bool:
        """Whether the holder has let the lease lapse, by this replica's clock."""
        record = repr(sorted(spec.items()))
        now = time.monotonic()
        if self._seen is None or self._seen[0] != record:
            self._seen = (record, now)
        return now - self._seen[1] >= self.lease_seconds

    async def try_acquire(self) -> bool:
        """One attempt: True if this replica holds the lease now."""
        lease = await self.kube.get(self.path)
        if lease is None:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(0)}
            return await self.kube.create(
                path(GROUP, VERSION, PLURAL, self.namespace), body) is not None
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        mine = holder == self.identity
        if holder and not mine and not self._expired(spec):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        new = self._spec(transitions, spec.get("acquireTime") if mine else None)
        ok = await self._write(lease, new)
        if ok and not mine:
            log.info("acquired lease %s/%s (previous holder: %s)", self.namespace, self.name,
                     holder or "none")
        return ok

    async def _write(self, lease: dict, spec: dict) -> bool:
        version = (lease.get("metadata") or {}).get("resourceVersion")
        try:
            out = await self.kube.json_patch(self.path, [
                {"op": "test", "path": "/metadata/resourceVersion", "value": version},
                {"op": "replace", "path": "/spec", "value": spec}])
        except ApiError as e:
            if e.status in (409, 422):      # someone wrote first: their lease now
                return False
            raise
        return out is not None

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Wait until this replica holds the lease (True), or `stop` is set (False)."""
        while not (stop is not None and stop.is_set()):
            try:
                if await self.try_acquire():
                    return True
            except (ApiError, OSError, asyncio.TimeoutError) as e:
                log.warning("lease %s/%s: %s", self.namespace, self.name, e)
            try:
                await asyncio.wait_for(stop.wait() if stop else asyncio.Event().wait(),
                                       self.retry_seconds)
            except asyncio.TimeoutError:
                pass                      # retry period over: try again
        return False

    async def hold(self, lost: asyncio.Event) -> None:
        """Renew every renew_seconds; if the lease cannot be renewed before it would
        lapse (or another replica holds it), set `lost` and return."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_seconds)   # the renew period, not a sync wait
            try:
                lease = await self.kube.get(self.path)
                spec = (lease or {}).get("spec") or {}
                if lease is not None and spec.get("holderIdentity") == self.identity and \
                        await self._write(lease, dict(spec, renewTime=_micro_time())):
                    renewed = time.monotonic()
                    continue
                if lease is None or spec.get("holderIdentity") != self.identity:
                    log.error("lease %s/%s taken by %s", self.namespace, self.name,
                              spec.get("holderIdentity"))
                    lost.set()
                    return
            except (ApiError, OSError, asyncio.TimeoutError) as e:
                log.warning("renewing lease %s/%s: %s", self.namespace, self.name, e)
            if time.monotonic() - renewed >= self.lease_seconds - self.renew_seconds:
                log.error("lease %s/%s not renewed for %.0f s: stepping down", self.namespace,
                          self.name, time.monotonic() - renewed)
                lost.set()
                return

    async def release(self) -> None:
        """Give the lease up on a clean stop, so a standby need not wait for it to lapse."""
        try:
            lease = await self.kube.get(self.path)
            spec = (lease or {}).get("spec") or {}
            if lease is not None and spec.get("holderIdentity") == self.identity:
                await self._write(lease, dict(spec, holderIdentity="",
                                              renewTime=_micro_time()))
        except (ApiError, OSError, asyncio.TimeoutError) as e:
            log.warning("releasing lease %s/%s: %s", self.namespace, self.name, e)
