"""The operator's own Prometheus metrics, on a registry of their own.

    metrics.serve(9090)                 # GET :9090/metrics
    with metrics.reconciling("timer"): ...          # trigger: job | pod | timer
    metrics.observe_phase("ns/job", "Running")

Separate from the runtime's metrics (a different CollectorRegistry and the
geeps_operator_ prefix), so importing both in one process never collides.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from .crd import PHASES

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("geeps_operator_reconciles_total",
                     "Reconciles of GeePSJobs, by what triggered them",
                     ["trigger"], registry=REGISTRY)
ERRORS = Counter("geeps_operator_reconcile_errors_total",
                 "Reconciles that raised (retried at the next trigger or resync)",
                 ["kind"], registry=REGISTRY)
DURATION = Histogram("geeps_operator_reconcile_duration_seconds",
                     "Wall time of one reconcile, API calls included", registry=REGISTRY,
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
TRANSITIONS = Counter("geeps_operator_phase_transitions_total",
                      "Phase changes seen by this operator process (after a restart, "
                      "each job counts once)", ["phase"], registry=REGISTRY)


class _JobsByPhase:
    """geeps_operator_jobs{phase}: jobs this operator last saw in each phase."""

    def __init__(self) -> None:
        self.phase: dict[str, str] = {}

    def collect(self):
        g = GaugeMetricFamily("geeps_operator_jobs", "GeePSJobs by phase", labels=["phase"])
        for p in PHASES:
            g.add_metric([p], sum(1 for v in self.phase.values() if v == p))
        yield g

    def describe(self):
        return []


JOBS = _JobsByPhase()
REGISTRY.register(JOBS)


def observe_phase(key: str, phase: str | None) -> None:
    """Record `key`'s phase (None: the job is gone)."""
    before = JOBS.phase.get(key)
    if phase is None:
        JOBS.phase.pop(key, None)
        return
    JOBS.phase[key] = phase
    if phase != before:
        TRANSITIONS.labels(phase).inc()


@contextlib.contextmanager
def reconciling(trigger: str) -> Iterator[None]:
    RECONCILES.labels(trigger).inc()
    t0 = time.perf_counter()
    try:
        yield
    except Exception as e:
        ERRORS.labels(type(e).__name__).inc()
        raise
    finally:
        DURATION.observe(time.perf_counter() - t0)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics from a daemon thread (0 = do not serve)."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
