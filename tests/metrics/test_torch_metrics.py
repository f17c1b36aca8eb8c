"""The main PyTorch path exports what the dashboard plots: a real Prometheus scrapes a
two-worker geeps.torch.DataParallel job (`geeps run tests/metrics/torch-job.yaml`), and
the hit-ratio, clock-lag and read-wait panels' queries return numbers.

geeps.torch's meaning of the worker series (runtime/geeps/torch/parallel.py, _sync):
a cache read is one forward pass reading every row of the model's tables; a hit, the
refresh the last step() started had already landed (no wait); clock lag, the worker's
clock minus the clock of the parameters the forward pass computes with; read wait,
the time the forward pass blocked for them.
"""
from __future__ import annotations

import math
import os
import re
import subprocess

import pytest
import requests

from tests.chart.support import find_binary
from tests.helpers import REPO
from tools.promstack import LocalJob, Prometheus, concrete, load_dashboard, panel_queries

pytestmark = pytest.mark.integration

JOB = os.path.join(REPO, "tests", "metrics", "torch-job.yaml")
PANELS = ("Cache hit ratio per worker", "Clock lag per worker", "Read wait")


def _parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _sum(samples: dict[str, float], prefix: str, **labels) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if k.startswith(prefix + "{") and all(w in k for w in want))


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    """(prometheus, job, last scrape of each process) after the job ended."""
    binary = find_binary("prometheus", "PROMETHEUS")
    workdir = str(tmp_path_factory.mktemp("prometheus"))
    with Prometheus(workdir, binary) as prom:
        job = LocalJob(JOB, 2, 2)
        prom.set_targets(job.planned_targets)
        prom.wait_discovered(job.planned_targets)
        job.start()
        last: dict[str, dict[str, float]] = {}
        try:
            targets = job.wait_metrics_targets()
            prom.set_targets(targets)
            # Keep the newest scrape of every endpoint while the job runs: after it
            # ends the endpoints are gone.
            while job.proc.poll() is None:
                for t in targets:
                    try:
                        r = requests.get(f"http://{t}/metrics", timeout=2)
                        last[t] = _parse(r.text)
                    except requests.RequestException:
                        pass
                try:
                    job.proc.wait(0.5)
                except subprocess.TimeoutExpired:
                    pass
            code = job.wait(120)
        finally:
            job.stop()
        assert code == 0, job.tail.text()
        yield prom, job, last, targets


def test_workers_record_reads_lag_and_wait(torch_run):
    _, _, last, targets = torch_run
    workers = [s for s in last.values() if any('role="worker"' in k for k in s)]
    assert len(workers) == 2
    for s in workers:
        reads = _sum(s, "geeps_cache_reads_total")
        hits = _sum(s, "geeps_cache_reads_total", result="hit")
        assert reads > 0 and 0 <= hits <= reads
        assert s[next(k for k in s if k.startswith("geeps_clock_lag_count"))] > 10
        lag_sum = s[next(k for k in s if k.startswith("geeps_clock_lag_sum"))]
        lag_n = s[next(k for k in s if k.startswith("geeps_clock_lag_count"))]
        # SSP slack 1: a forward pass computes with parameters at most 2 clocks old.
        assert 0 < lag_sum / lag_n <= 2
        assert s[next(k for k in s if k.startswith("geeps_read_wait_seconds_count"))] > 10
        # Push carries gradients, pull the parameters and buffers: two quantities.
        push = _sum(s, "geeps_transfer_bytes_total", direction="push")
        pull = _sum(s, "geeps_transfer_bytes_total", direction="pull")
        assert push > 0 and pull > 0 and push != pull
        # On the CPU the parameter rows are the tensors: nothing crosses to a device.
        assert _sum(s, "geeps_transfer_bytes_total", direction="h2d") == 0


def test_each_process_exports_only_its_role(torch_run):
    _, _, last, _ = torch_run
    assert len(last) == 4
    for s in last.values():
        role = "worker" if any('role="worker"' in k for k in s) else "server"
        names = {re.match(r"[a-z_]+", k).group(0) for k in s if k.startswith("geeps_")}
        server_only = {n for n in names if n.startswith(("geeps_server_", "geeps_parked"))}
        if role == "worker":
            assert server_only == set() and "geeps_clock" in names
        else:
            assert server_only and "geeps_clock" not in names
            assert not any(n.startswith(("geeps_cache", "geeps_transfer")) for n in names)


def test_dashboard_panels_have_numbers(torch_run):
    prom, job, _, _ = torch_run
    queries = [q for q in panel_queries(load_dashboard()) if q["panel"] in PANELS]
    assert {q["panel"] for q in queries} == set(PANELS)
    for q in queries:
        expr = concrete(q["expr"], {"job": "torch-metrics"})
        result = prom.query_range(expr, job.started, job.ended + 2)
        values = [float(v) for s in result for _, v in s["values"]]
        finite = [v for v in values if math.isfinite(v)]
        assert finite, f"{q['panel']} [{q['refId']}]: no number in the run: {expr}"
