"""Every kopf handler of the operator, registered in one place; each is a thin trigger.

    registry = kopf.OperatorRegistry()
    register(registry, cfg, Reconciler(Kube(cfg.connection), cfg))
    await kopf.operator(registry=registry, settings=settings(cfg), ...)

All three triggers (a job changed, one of its pods changed, the periodic resync) call
the same level-triggered Reconciler.reconcile(), which reads the current state and
acts on it. The timer is what makes TTL and activeDeadlineSeconds hold when nothing
else happens (Kubeflow's operator misses TTL for want of one).
"""
from __future__ import annotations

import asyncio
import logging

import kopf

from geeps.job import spec as _spec

from . import manifests as m
from .config import OperatorConfig
from .reconcile import Reconciler

JOBS = (_spec.GROUP, _spec.VERSION, _spec.PLURAL)


def settings(cfg: OperatorConfig) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    s.persistence.finalizer = cfg.finalizer
    s.posting.reporting_component = "geeps-operator"
    # Our Events come from the reconciler; kopf's own INFO lines ("Timer succeeded")
    # every resync would bury them.
    s.posting.level = logging.WARNING
    # Watch only our pods, filtered by the API server, not every pod of the cluster.
    s.watching.label_selectors["v1", "pods"] = m.LABEL_JOB
    return s


def register(registry: kopf.OperatorRegistry, cfg: OperatorConfig,
             reconciler: Reconciler) -> None:

    @kopf.on.login(registry=registry)
    def login(**_) -> kopf.ConnectionInfo:
        """The API endpoint and credentials main() resolved (flags, kubeconfig or the
        pod's service account); the reconciler's client uses the same."""
        return cfg.connection

    @kopf.on.cleanup(registry=registry)
    async def close(**_) -> None:
        """Close the reconciler's HTTP sessions on shutdown."""
        await reconciler.close()

    @kopf.on.event(*JOBS, registry=registry)
    async def job_event(type: str | None, name: str, namespace: str, **_) -> None:
        """A job appeared, changed (spec or status) or went away."""
        start_resync()
        if type == "DELETED":
            reconciler.forget(namespace, name)
            return
        await reconciler.reconcile(namespace, name, trigger="job")

    @kopf.on.event("v1", "pods", labels={m.LABEL_JOB: kopf.PRESENT}, registry=registry)
    async def pod_event(labels: kopf.Labels, namespace: str, **_) -> None:
        """One of a job's pods changed phase, appeared or went away."""
        await reconciler.reconcile(namespace, labels[m.LABEL_JOB], trigger="pod")

    tasks: list[asyncio.Task] = []

    def start_resync() -> None:
        """Periodic reconcile: deadlines, TTL and the clock advance without events.

        Our own loop over the jobs the watch has shown, not kopf.timer: kopf puts a
        finalizer on every object a timer serves, and a finalizer nobody removes (the
        operator uninstalled first) leaves `kubectl delete crd` hanging forever.
        Started from inside a handler, so the task inherits the context kopf.event()
        posts Events through."""
        if not tasks:
            tasks.append(asyncio.ensure_future(_resync(reconciler, cfg.resync_seconds)))

    @kopf.on.cleanup(registry=registry)
    async def stop_resync(**_) -> None:
        for t in tasks:
            t.cancel()


async def _resync(reconciler: Reconciler, interval: float) -> None:
    log = logging.getLogger(__name__)
    while True:
        await asyncio.sleep(interval)          # the resync period, not a sync wait
        for ns, name in reconciler.known():
            try:
                await reconciler.reconcile(ns, name, trigger="timer")
            except Exception as e:              # one job's outage must not stop the others
                log.warning("resync of %s/%s: %s", ns, name, e)
