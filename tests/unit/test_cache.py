"""The parameter cache: budget enforcement, the transfer thread, and plan execution.

No servers here: the cache's inputs are host arrays (what the servers sent) and its
outputs host arrays (what goes to the servers); the worker wires them to a client,
tested with real servers in tests/integration/test_worker.py.
"""
import threading

import pytest
from hypothesis import given, settings, strategies as st

from geeps.backend import select
from geeps.worker.cache import DeviceBudgetExceeded, DeviceMemory, TransferThread
from geeps.worker.memory import POLICIES, make_plan, minimum_budget, working_set
from tests.unit.test_memory import cycles
from tests.workloads import drive_cache

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
    reference computed without any device memory (tests.workloads.drive_cache, which
    the GPU check runs on CuPy too). Returns the bytes moved."""
    return drive_cache(BE, cyc, plan, clocks)["moved"]


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
