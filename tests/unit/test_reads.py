"""What a read sees (slack per read, read-my-writes) and how strict a worker is about a
plan that stalls: the pure parts of GeePS client parity."""
import numpy as np
import pytest

from geeps.job.consistency import parse
from geeps.tables import Table
from geeps.worker.memory import StallError, judge_stalls, make_plan, minimum_budget
from geeps.worker.ops import Recorder
from geeps.worker.reads import OwnUpdates, read_need


def test_a_clocks_pull_waits_as_long_as_its_strictest_read():
    ssp2, bsp, asyn = parse("ssp:2"), parse("bsp"), parse("async")
    assert read_need(ssp2, 5, None) == 3                # the job's model
    assert read_need(ssp2, 5, (0, False)) == 5          # one read asks for BSP
    assert read_need(bsp, 5, (3, False)) == 2           # looser than the job
    assert read_need(bsp, 5, (3, True)) == 5            # another read follows BSP
    assert read_need(asyn, 5, (1, False)) == 4          # async, but this read bounds it
    assert read_need(ssp2, 1, (4, False)) == 0


def test_own_updates_fill_what_the_reply_lacks_for_add_tables_only():
    add, sgd = Table("a", 8, 2, "add"), Table("s", 8, 2, "sgd")
    own = OwnUpdates(per_clock=True)
    for clock in range(3):
        own.record(add, clock, np.array([1, 3, 5]), np.full((3, 2), clock + 1, np.float32))
        own.record(sgd, clock, np.array([1]), np.ones((1, 2), np.float32))
    out = np.zeros((3, 2), np.float32)              # rows 0, 3, 5 as pulled at clock 1
    assert own.apply(add, np.array([0, 3, 5]), out, data_clock=1, clock=3) == 2
    assert out.tolist() == [[0, 0], [5, 5], [5, 5]]     # clocks 1 and 2: 2 + 3
    out[:] = 0
    assert own.apply(add, np.array([0, 3, 5]), out, data_clock=0, clock=3) == 2  # 0 forgotten
    s = np.zeros((1, 2), np.float32)
    assert own.apply(sgd, np.array([1]), s, 0, 3) == 0 and not s.any()
    off = OwnUpdates(per_clock=False)               # async: a reply names no clock
    off.record(add, 0, np.array([1]), np.ones((1, 2), np.float32))
    assert off.apply(add, np.array([1]), s, 0, 1) == 0


def stalling_cycle():
    t = Table("t", 64, 8, "sgd")
    rec = Recorder()
    for a in (0, 32):
        rec.post_read(rec.read(t, range(a, a + 32)))
    rec.clock()
    return rec.finish()


def test_the_warning_level_refuses_warns_or_accepts_a_plan_that_stalls():
    cyc = stalling_cycle()
    plan = make_plan(cyc, minimum_budget(cyc), "stream")   # one buffer: the second read waits
    assert plan.stalls > 0
    with pytest.raises(StallError, match=r"stalls: 1 operation\(s\) wait for 1.0 KiB.*"
                                         r"operation 1 \(clock 0: read\(table 't', 32 rows\)"):
        judge_stalls(plan, "refuse")
    assert "cannot be prefetched" in judge_stalls(plan, "warn")
    assert judge_stalls(plan, "accept") is None
    calm = make_plan(cyc, None)
    assert judge_stalls(calm, "refuse") is None
    with pytest.raises(ValueError, match="'loud' is not one of refuse, warn, accept"):
        judge_stalls(calm, "loud")


def test_updates_older_than_any_read_can_lag_are_dropped():
    add = Table("a", 8, 2, "add")
    own = OwnUpdates(per_clock=True, horizon=3)
    for clock in range(100):        # pushed, never read
        own.record(add, clock, np.array([1]), np.ones((1, 2), np.float32))
    assert len(own._log["a"]) == 4
