"""The parameter cache: budget enforcement, the transfer thread, and plan execution.

No servers here: the cache's inputs are host arrays (what the servers sent) and its
outputs host arrays (what goes to the servers); the worker wires them to a client,
tested with real servers in tests/integration/test_worker.py.
"""
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from geeps.backend import select
from geeps.worker.cache import DeviceBudgetExceeded, DeviceMemory, ParameterCache, TransferThread
from geeps.worker.memory import POLICIES, make_plan, minimum_budget, working_set
from tests.unit.test_memory import cycles

BE = select("numpy")


def test_device_memory_refuses_to_pass_the_budget_naming_what():
    mem = DeviceMemory(BE, 4096)
    a = mem.alloc((16, 32), "pinned rows of 'w'")
    assert a.shape == (16, 32) and not a.any() and mem.used == 2048
    with pytest.raises(DeviceBudgetExceeded, match=r"allocating access-buffer pool \(2\.0 KiB"
                                                   r"\) would use 4\.0 KiB.*budget of 4\.0 KiB"):
        mem.alloc((513, 1), "access-buffer pool")
    mem.alloc((512, 1), "access-buffer pool")
    assert mem.used == 4096


def test_transfer_jobs_run_in_order_and_a_failure_fails_what_follows():
    io = TransferThread(BE)
    seen = []
    gate = threading.Event()
    first = io.submit(gate.wait)
    jobs = [io.submit(lambda i=i: seen.append(i)) for i in range(5)]
    assert not first.done()
    gate.set()
    for j in jobs:
        j.wait(10)
    assert seen == [0, 1, 2, 3, 4]

    def boom():
        raise OSError("copy failed")
    bad = io.submit(boom)
    later = io.submit(lambda: seen.append("never"))
    with pytest.raises(OSError, match="copy failed"):
        later.wait(10)
    with pytest.raises(OSError, match="copy failed"):
        bad.wait(10)
    with pytest.raises(OSError, match="copy failed"):
        io.drain()
    assert "never" not in seen
    io.close()


def run_cycle(cyc, plan, clocks):
    """Drive a cache through `clocks` clocks of `cyc`, checking every buffer against a
    reference computed without any device memory. Returns the bytes moved."""
    cache = ParameterCache(plan, BE, plan.budget)
    rng = np.random.default_rng(0)
    try:
        for c in range(clocks):
            k = c % cyc.n_clocks
            cp = plan.clocks[k]
            for t, rows in cp.pull.items():
                cache.pulled[k][t][:] = rows[:, None] + 1000.0 * c + \
                    np.arange(cyc.tables[t].width)[None, :] / 8
            cache.begin_clock(k, lambda: None)
            acc_ref = {t: np.zeros((len(r), cyc.tables[t].width), np.float32)
                       for t, r in cp.push.items()}
            local_ref = {}
            bufs = {}
            for ev in cyc.clocks[k]:
                p = plan.ops[ev.op]
                op = p.op
                if ev.kind == "call":
                    buf = cache.call(p)
                    bufs[op.id] = buf
                    if op.kind == "read":
                        want = op.rows[:, None] + 1000.0 * c + \
                            np.arange(buf.shape[1])[None, :] / 8
                        assert np.array_equal(buf, want), (c, op.describe())
                    elif op.kind == "pre_update":
                        assert not buf.any(), "update buffers start zeroed"
                        buf[...] = rng.standard_normal(buf.shape).astype(np.float32)
                    else:
                        want = local_ref.get(op.name, np.zeros(op.nbytes // 4, np.float32))
                        assert np.array_equal(buf, want), (c, op.describe())
                        local_ref[op.name] = rng.standard_normal(buf.shape).astype(np.float32)
                        buf[...] = local_ref[op.name]
                else:
                    buf = bufs.pop(op.id)
                    if op.kind == "pre_update":     # updates add up in update order
                        pos = np.searchsorted(cp.push[op.table], op.rows)
                        acc_ref[op.table][pos] += buf
                    cache.post(p, buf)
            out = cache.end_clock(k)
            for t, ref in acc_ref.items():
                assert np.array_equal(out[t], ref), (c, t)
        cache.io.drain()
        assert cache.mem.used == plan.device_bytes
        return dict(cache.moved)
    finally:
        cache.close()


@settings(max_examples=80, deadline=None)
@given(cyc=cycles(), frac=st.floats(0.05, 1.1), policy=st.sampled_from(POLICIES))
def test_any_plan_gives_the_application_the_same_data(cyc, frac, policy):
    budget = max(int(working_set(cyc) * frac), minimum_budget(cyc))
    plan = make_plan(cyc, budget, policy)
    clocks = 2 * cyc.n_clocks
    moved = run_cycle(cyc, plan, clocks)
    # The initial refresh plus two cycles, as the plan predicted.
    first = plan.clocks[0].refresh_bytes
    assert moved["h2d"] == 2 * plan.h2d_bytes, (moved, plan.summary(), first)
    assert moved["d2h"] == 2 * plan.d2h_bytes
