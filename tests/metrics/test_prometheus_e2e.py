"""A real Prometheus scrapes a running local job and the operator; every query of the
Grafana dashboard returns data through Prometheus' HTTP API.

    apt-get install prometheus && pytest tests/metrics -q

Parts: Debian's `prometheus` (1 s scrapes); `geeps run tests/metrics/cached-job.yaml`
(2 servers replicating each other under the launcher's coordinator, 2 workers on the
GPU-specialized worker under a device budget, SSP; about 10 s) with every process and
the coordinator serving metrics; and `geeps operator` serving its own metrics while it
handles the same job, against kmock's Kubernetes API emulator (the one
stand-in: no cluster can run here). The test fails, never skips, in CI (CI=true) when
prometheus is missing.
"""
from __future__ import annotations

import math
import os

import pytest

from tests.chart.support import find_binary
from tests.helpers import REPO
from tools.promstack import concrete, finite, load_dashboard, observed_run, panel_queries

pytestmark = pytest.mark.integration

JOB = os.path.join(REPO, "tests", "metrics", "cached-job.yaml")
JOB_TIMEOUT = 120          # s; the job runs for about 10 s


def series_points(result: list[dict]) -> list[tuple[float, dict, float]]:
    """(time, labels, value) of every finite point of a query_range result."""
    return [(float(t), s["metric"], float(v)) for s in result for t, v in s["values"]
            if math.isfinite(float(v))]


@pytest.fixture(scope="module")
def run_with_prometheus(tmp_path_factory):
    """Run the job under Prometheus; yield (prometheus, job, job name, targets)."""
    binary = find_binary("prometheus", "PROMETHEUS")
    workdir = str(tmp_path_factory.mktemp("prometheus"))
    with observed_run(workdir, JOB, servers=2, workers=2, timeout=JOB_TIMEOUT,
                      prometheus=binary) as run:
        yield run


def test_every_process_was_scraped(run_with_prometheus):
    prom, job, _, targets = run_with_prometheus
    assert len(targets) == 1 + 2 + 2 + 1      # operator, 2 servers, 2 workers, coordinator
    up = series_points(prom.query_range("up", job.started, job.ended + 2))
    scraped = {labels["instance"] for _, labels, v in up if v == 1}
    assert set(targets) <= scraped, f"never scraped: {set(targets) - scraped}"


def test_every_dashboard_query_returns_data(run_with_prometheus):
    prom, job, name, _ = run_with_prometheus
    queries = panel_queries(load_dashboard())
    assert len(queries) >= 10
    empty = []
    for q in queries:
        expr = concrete(q["expr"], {"job": name})
        # Find when during the run the query had data, then ask /api/v1/query at that
        # moment (after the run, "now" would find only stale series).
        points = series_points(prom.query_range(expr, job.started, job.ended + 2))
        if not points:
            empty.append(f"{q['panel']} [{q['refId']}] (no data in the run): {expr}")
            continue
        at = max(t for t, _, _ in points)
        if not finite(prom.query(expr, at=at)):
            empty.append(f"{q['panel']} [{q['refId']}] (/api/v1/query empty at {at}): {expr}")
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)


def _max(prom, job, expr: str) -> float:
    points = series_points(prom.query_range(expr, job.started, job.ended + 2))
    return max((v for _, _, v in points), default=float("nan"))


def test_values_are_plausible(run_with_prometheus):
    # Data is not enough: it must mean what the panels say.
    prom, job, name, _ = run_with_prometheus
    sel = f'job="{name}"'
    assert _max(prom, job, f'max(geeps_clock{{{sel}, role="worker"}})') >= 2
    assert _max(prom, job, f'count(geeps_clock{{{sel}, role="worker"}})') == 2
    for direction in ("push", "pull"):
        assert _max(prom, job, f'sum(geeps_transfer_bytes_total{{{sel}, direction="{direction}"}})') > 0, direction
    (hit_ratio,) = [q for q in panel_queries(load_dashboard())
                    if q["panel"] == "Cache hit ratio per worker"]
    ratio = series_points(prom.query_range(concrete(hit_ratio["expr"], {"job": name}),
                                           job.started, job.ended + 2))
    assert ratio and all(0 <= v <= 1 for _, _, v in ratio)
    assert _max(prom, job, "sum(geeps_operator_jobs)") == 1
