"""Issue 23, item 6: a NaN or Inf gradient is caught by the server (spec.nonFinite).
A two-worker BSP job against a live server: worker 1 pushes a NaN at clock 5."""
from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest

import geeps
from tests.cluster import Cluster
from tests.helpers import free_port

pytestmark = pytest.mark.integration
ROWS, WIDTH, BAD_AT = 8, 4, 5


def run_until_bad(cl: Cluster):
    c0, c1 = cl.client(0), cl.client(1)
    t = c0.create_table("w", ROWS, WIDTH, rule="sgd", lr=0.1)
    c1.open_table("w")
    for clock in range(BAD_AT):
        for c in (c0, c1):
            c.push(t, None, np.full((ROWS, WIDTH), clock + 1, np.float32))
            c.clock()
    before, _ = c0.pull(t, need=BAD_AT)
    bad = np.ones((ROWS, WIDTH), np.float32)
    bad[1, 2], bad[3, 0], bad[5, 1] = np.nan, np.inf, -np.inf
    c0.push(t, None, np.ones((ROWS, WIDTH), np.float32))
    return c0, c1, t, before, bad


def metric(port: int, table: str, worker: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    for line in text.decode().splitlines():
        if line.startswith("geeps_nonfinite_values_total{") and f'table="{table}"' in line \
                and f'worker="{worker}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_reject_stops_the_worker_with_a_named_error_and_keeps_the_parameters():
    with Cluster(servers=1, workers=2, GEEPS_NONFINITE="reject") as cl:
        c0, c1, t, before, bad = run_until_bad(cl)
        with pytest.raises(geeps.ServerError) as e:
            c1.push(t, None, bad)
        msg = str(e.value)
        assert re.search(r"3 non-finite values .* from worker 1 to table 'w' at clock 5", msg), msg
        with pytest.raises(geeps.ServerError, match="was refused"):
            c1.clock()
        c0.clock()                  # the healthy worker finishes; clock 5 cannot apply
        stats = c0.stats()[0]
        assert stats["min_clock"] == BAD_AT and stats["nonfinite"] == 3
        after, _ = c0.pull(t, need=BAD_AT)
        np.testing.assert_array_equal(after, before)
        assert np.isfinite(after).all()


def test_skip_drops_the_push_counts_the_values_and_the_job_finishes():
    port = free_port()
    with Cluster(servers=1, workers=2, GEEPS_NONFINITE="skip",
                 GEEPS_METRICS_PORT=str(port)) as cl:
        c0, c1, t, before, bad = run_until_bad(cl)
        c1.push(t, None, bad)       # accepted, dropped
        c0.clock()
        c1.clock()
        after, _ = c0.pull(t, need=BAD_AT + 1)
        # worker 0's ones alone, averaged over the two workers: sgd lr 0.1
        np.testing.assert_allclose(after, before - np.float32(0.1) * np.float32(0.5))
        for c in (c0, c1):
            c.push(t, None, np.ones((ROWS, WIDTH), np.float32))
            c.clock()
        assert np.isfinite(c0.pull(t, need=BAD_AT + 2)[0]).all()
        assert c0.stats()[0]["nonfinite"] == 3
        assert metric(port, "w", 1) == 3 and metric(port, "w", 0) == 0


def test_apply_is_todays_behaviour():
    with Cluster(servers=1, workers=2, GEEPS_NONFINITE="apply") as cl:
        c0, c1, t, before, bad = run_until_bad(cl)
        c1.push(t, None, bad)
        c0.clock()
        c1.clock()
        assert np.isnan(c0.pull(t, need=BAD_AT + 1)[0]).any()
