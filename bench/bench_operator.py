"""Operator under a burst: N GeePSJobs applied at once on the Kubernetes API emulator.

    python bench/bench_operator.py                 # 50 jobs, 2 servers + 2 workers each
    python bench/bench_operator.py --jobs 10 --json

`geeps operator` runs as a subprocess against the e2e API emulator (a real HTTP API
server, watches included), exactly as in the e2e tests. N jobs are created from a
pool of client threads; a poller lists pods, services and PodMonitors every 20 ms.
Reported:
- time until every child of every job exists (4 pods, a headless Service, a
  PodMonitor, a NetworkPolicy and the CurveZMQ key Secret per job), from the first
  create;
- per job, create -> all its children: p50 and p99;
- the operator's own reconcile duration (its histogram
  geeps_operator_reconcile_duration_seconds; p50/p99 interpolated in the buckets).
The baseline is the emulator's own round trip: the same pool creating as many
headless Services as the jobs have children and listing them, i.e. what the API
server alone costs for the same number of writes.

The test kubelet is replaced by one that starts nothing: pods stay Pending, as on a
cluster whose nodes are full. That measures the control plane, not hundreds of
process starts competing for the cores with the operator.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# 2 server pods + 2 worker pods, headless Service, PodMonitor, NetworkPolicy, the
# job's CurveZMQ key Secret
CHILDREN = 8
KINDS = (("pods", ""), ("services", ""), ("podmonitors", "monitoring.coreos.com"),
         ("networkpolicies", "networking.k8s.io"), ("secrets", ""))


def _idle_kubelet():
    from tests.e2e import harness

    class IdleKubelet(harness.Kubelet):
        """Watches nothing, starts nothing."""

        async def run(self) -> None:
            await asyncio.Event().wait()
    return IdleKubelet


def quantile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return prev_le


def _reconcile_buckets(port: int) -> tuple[list[tuple[float, float]], float, float]:
    import requests
    from prometheus_client.parser import text_string_to_metric_families
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    buckets, count, total = [], 0.0, 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "geeps_operator_reconcile_duration_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == "geeps_operator_reconcile_duration_seconds_count":
                count = s.value
            elif s.name == "geeps_operator_reconcile_duration_seconds_sum":
                total = s.value
    return buckets, count, total


def _children_by_job(api, ns: str) -> dict[str, int]:
    n: dict[str, int] = {}
    for plural, group in KINDS:
        for obj in api.items(api.path(plural, ns, group=group)):
            job = (obj["metadata"].get("labels") or {}).get("geeps.dev/job-name")
            if job:
                n[job] = n.get(job, 0) + 1
    return n


def run(jobs: int = 50, timeout: float = 300.0) -> dict:
    from tests.e2e import harness
    from tests.e2e.jobs import job
    harness.Kubelet = _idle_kubelet()
    ns = "bench"
    with tempfile.TemporaryDirectory() as tmp:
        with harness.Cluster(tmp) as cluster, harness.Operator(cluster, tmp) as op:
            api = cluster.api
            # Baseline: the API server alone, the same number of writes from the same pool.
            svc = lambda i: {"apiVersion": "v1", "kind": "Service",        # noqa: E731
                             "metadata": {"name": f"base-{i}", "namespace": "baseline"},
                             "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: api.create(api.path("services", "baseline"), svc(i)),
                              range(jobs * CHILDREN)))
            api.items(api.path("services", "baseline"))
            base_s = time.perf_counter() - t0

            created: dict[str, float] = {}
            done: dict[str, float] = {}

            def create(i: int) -> None:
                name = f"burst-{i:03d}"
                body = job(ns, name, servers=2, workers=2)
                body["spec"].pop("security", None)      # production default: CurveZMQ on
                api.create_job(body)
                created[name] = time.perf_counter()
            start = time.perf_counter()
            with cf.ThreadPoolExecutor(8) as pool:
                list(pool.map(create, range(jobs)))
            applied_s = time.perf_counter() - start
            while len(done) < jobs and time.perf_counter() - start < timeout:
                now = time.perf_counter()
                for name, k in _children_by_job(api, ns).items():
                    if k >= CHILDREN and name not in done:
                        done[name] = now
                time.sleep(0.02)
            all_s = max(done.values()) - start if len(done) == jobs else float("nan")
            per_job = sorted(done[n] - created[n] for n in done)
            buckets, count, total = _reconcile_buckets(op.metrics_port)
    return {"jobs": jobs, "children": CHILDREN, "complete": len(done), "applied_s": applied_s,
            "all_children_s": all_s, "job_p50_s": quantile(per_job, 0.5),
            "job_p99_s": quantile(per_job, 0.99),
            "reconciles": count, "reconcile_mean_s": total / count if count else float("nan"),
            "reconcile_p50_s": histogram_quantile(buckets, 0.5),
            "reconcile_p99_s": histogram_quantile(buckets, 0.99),
            "baseline_writes": jobs * CHILDREN, "baseline_s": base_s,
            "load": os.getloadavg()[0]}


def report(r: dict) -> str:
    return (f"{r['jobs']} GeePSJobs applied at once ({r['children']} children each), operator "
            f"subprocess on the API emulator, this machine (load {r['load']:.1f}):\n"
            f"  all {r['jobs']} created in          {r['applied_s']:7.2f} s\n"
            f"  every child exists after     {r['all_children_s']:7.2f} s "
            f"({r['complete']}/{r['jobs']} jobs complete)\n"
            f"  per job create -> children   p50 {r['job_p50_s']:.2f} s, "
            f"p99 {r['job_p99_s']:.2f} s\n"
            f"  reconcile duration           p50 {r['reconcile_p50_s'] * 1e3:.0f} ms, "
            f"p99 {r['reconcile_p99_s'] * 1e3:.0f} ms over {r['reconciles']:.0f} reconciles\n"
            f"  baseline: the API server alone writes {r['baseline_writes']} objects in "
            f"{r['baseline_s']:.2f} s; operator / baseline = "
            f"{r['all_children_s'] / r['baseline_s']:.1f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--json", action="store_true", help="print the numbers as one JSON line")
    a = ap.parse_args()
    res = run(a.jobs)
    if a.json:
        import json
        print(json.dumps(res))
    else:
        print(report(res))
    sys.exit(0)
