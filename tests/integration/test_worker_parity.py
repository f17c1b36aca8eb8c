"""GeePS client parity of the operation API, against real `geeps server` processes:
read-my-writes under SSP for `add` tables, and a slack per read. The NumPy backend
stands in for the device."""
import uuid

import numpy as np
import pytest

from geeps.metrics import Metrics
from geeps.worker import Worker
from tests.cluster import Cluster
from tests.helpers import wait_for

pytestmark = pytest.mark.integration
ROWS, WIDTH = 16, 8


def delta(clock: int) -> np.ndarray:
    """Worker 0's update at `clock`: small integers, so every sum is exact."""
    return np.full((ROWS, WIDTH), float(clock + 1), np.float32) + \
        np.arange(ROWS, dtype=np.float32)[:, None]


def worker(c, **kw):
    return Worker(c, backend="numpy", metrics=Metrics(job=f"t-{uuid.uuid4().hex[:8]}"), **kw)


@pytest.mark.parametrize("budget", [None, "stream"])
def test_ssp2_read_includes_the_workers_own_last_two_clocks(budget):
    """Worker 1 never finishes a clock, so the servers apply nothing: every update
    worker 0 sees is one it applied itself, checked against a reference that adds its
    pushes to what the servers hold by hand."""
    with Cluster(servers=1, workers=2, consistency="ssp:2") as cl:
        c = cl.client(0)
        init = np.arange(ROWS * WIDTH, dtype=np.float32).reshape(ROWS, WIDTH)
        t = c.create_table("rmw", ROWS, WIDTH, rule="add", init=init)
        sgd = c.create_table("rmw_sgd", ROWS, WIDTH, rule="sgd", lr=1.0, init=init)
        w = worker(c)
        seen = []

        def step(w):
            r, s = w.read(t, range(ROWS)), w.read(sgd, range(ROWS))
            seen.append((np.array(r), np.array(s)))
            for table in (t, sgd):
                u = w.pre_update(table, range(ROWS))
                u[...] = delta(c.clock_value)
                w.update(u)
            w.post_read(s)
            w.post_read(r)
            w.clock()
        with w.virtual_iteration():
            step(w)
        if budget == "stream":      # nothing pinned: reads come through the pool
            ws = w.plan.working_set_bytes
            w.close()
            w = worker(c, device_memory=ws - 1, policy="stream", stalls="accept")
            with w.virtual_iteration():
                step(w)
        seen.clear()
        for _ in range(3):          # clocks 0, 1, 2: SSP(2) lets clock 2 read clock 0's state
            step(w)
        raw, data_clock = c.pull(t, need=0)
        assert data_clock == 0 and np.array_equal(raw, init)    # the servers applied nothing
        for clock, (got, got_sgd) in enumerate(seen):
            mine = sum((delta(j) for j in range(max(0, clock - 2), clock)),
                       np.zeros_like(init))
            assert np.array_equal(got, raw + mine), clock
            assert np.array_equal(got_sgd, init)   # sgd: a step only the server can take
        assert not np.array_equal(seen[2][0], seen[1][0])
        w.close()


def test_a_read_with_its_own_slack_waits_as_it_says():
    with Cluster(servers=1, workers=2, consistency="ssp:2") as cl:
        c0, c1 = cl.client(0), cl.client(1)
        t = c0.create_table("slk", ROWS, WIDTH, rule="add")
        w = worker(c0)

        def step(w, slack):
            r = w.read(t, range(ROWS), slack=slack)
            w.post_read(r)
            w.clock()
        with w.virtual_iteration():
            step(w, 0)
        assert w.plan.clocks[0].slack == {"slk": (0, False)}
        with pytest.raises(Exception, match=r"expected read\(table 'slk', 16 rows, slack=0\)"):
            w.read(t, range(ROWS))
        w.drain()
        step(w, 0)                  # clock 0: needs the servers' clock 0
        # The pull for clock 1 waits for worker 1's clock 0 (the job's SSP(2) would not).
        assert not w.cache.refresh_job.done()
        c1.open_table("slk")
        c1.clock()
        wait_for(w.cache.refresh_job.done, 10, what="the refresh after worker 1's clock")
        step(w, 0)
        c1.clock()
        w.close()


def test_a_worker_told_to_refuse_stalls_refuses_the_plan_and_warns_otherwise(caplog):
    from geeps.worker.memory import StallError, minimum_budget

    def step(w, t):
        for a in (0, 8):
            r = w.read(t, range(a, a + 8))
            w.post_read(r)
        w.clock()
    with Cluster(servers=1, workers=1) as cl:
        c = cl.client(0)
        t = c.create_table("stl", ROWS, WIDTH, rule="add")
        probe = worker(c)
        with probe.virtual_iteration():
            step(probe, t)
        need = minimum_budget(probe.cycle)
        probe.close()
        strict = worker(c, device_memory=need, policy="stream", stalls="refuse")
        with pytest.raises(StallError, match=r"operation 1 \(clock 0: read\(table 'stl'"):
            with strict.virtual_iteration():
                step(strict, t)
        with caplog.at_level("WARNING", logger="geeps.worker"):
            loose = worker(c, device_memory=need, policy="stream")
            with loose.virtual_iteration():
                step(loose, t)
        assert "stalls: 1 operation(s)" in caplog.text
        loose.close()
        with pytest.raises(ValueError, match="stalls='loud' is not one of"):
            worker(c, stalls="loud")


def test_the_jobs_stall_level_and_regions_reach_a_worker_not_told_in_code(monkeypatch):
    """spec.cache.stalls and spec.cache.regions arrive as GEEPS_* variables (see
    tests/unit/test_env_sources.py); a Worker given neither in code reads them."""
    from geeps.worker.memory import Regions, StallError, minimum_budget
    with Cluster(servers=1, workers=1) as cl:
        c = cl.client(0)
        t = c.create_table("env", ROWS, WIDTH, rule="add")

        def step(w):
            for a in (0, 8):
                w.post_read(w.read(t, range(a, a + 8)))
            w.clock()
        probe = worker(c)
        assert probe.stalls == "warn" and probe.regions is None      # nothing set
        with probe.virtual_iteration():
            step(probe)
        need = minimum_budget(probe.cycle)
        probe.close()
        monkeypatch.setenv("GEEPS_MEMORY_STALLS", "refuse")
        monkeypatch.setenv("GEEPS_POOL_MEMORY", "1Mi")
        monkeypatch.setenv("GEEPS_PINNED_PARAMS_MEMORY", "0")
        w = worker(c, device_memory=need, policy="stream")
        assert w.regions == Regions(pool=1 << 20, data=None, params=0)
        with pytest.raises(StallError, match="stalls='refuse'"):
            with w.virtual_iteration():
                step(w)
        assert worker(c, stalls="accept", regions=None).regions is None   # code wins
