"""The placement planner against Belady's MIN, its invariants, and refused budgets."""
import pytest
from hypothesis import given, settings, strategies as st

from geeps.worker.memory import (POLICIES, BudgetError, Regions, align, belady, make_plan,
                                 minimum_budget, working_set)
from geeps.worker.ops import Recorder
from geeps.tables import Table
from tests.workloads import (DenseModel, SparseModel, dense_batches, dense_step, record,
                             sparse_batches, sparse_step)

_cycles = {}


def workload(name):
    if name not in _cycles:
        _cycles[name] = record(dense_step, DenseModel(), dense_batches(1)) if name == "dense" \
            else record(sparse_step, SparseModel(), sparse_batches(6))
    return _cycles[name]


@pytest.mark.parametrize("name", ["dense", "sparse"])
@pytest.mark.parametrize("frac", [0.25, 0.5, 0.75])
def test_plan_moves_within_10_percent_of_belady(name, frac):
    cyc = workload(name)
    budget = int(working_set(cyc) * frac)
    plan = make_plan(cyc, budget)
    ref = belady(cyc, budget)
    assert plan.device_bytes <= budget
    assert plan.moved_bytes <= 1.10 * ref.total, (plan.summary(), ref.total)
    assert plan.stalls == 0, "every copy from host memory should overlap an operation"


@pytest.mark.parametrize("name", ["dense", "sparse"])
def test_smaller_budgets_move_more_and_the_paper_policy_never_beats_ours(name):
    cyc = workload(name)
    ws = working_set(cyc)
    moved = []
    for frac in (None, 0.75, 0.5, 0.25):
        budget = None if frac is None else int(ws * frac)
        plan = make_plan(cyc, budget)
        moved.append(plan.moved_bytes)
        if budget is not None:
            for other in ("geeps", "stream"):
                assert plan.moved_bytes <= make_plan(cyc, budget, other).moved_bytes
    assert moved == sorted(moved) and moved[-1] > moved[0]
    assert moved[0] == belady(cyc, None).total


def unit_table(n=8):
    return Table("t", n, 1, "sgd")      # 4-byte rows: budgets count rows


def test_belady_evicts_the_row_used_furthest_in_the_future():
    t = unit_table()
    rec = Recorder()
    for r in (0, 1, 2, 0):              # A B C A, room for two rows
        rec.post_read(rec.read(t, [r]))
    rec.clock()
    cyc = rec.finish()
    ref = belady(cyc, 8)
    assert (ref.h2d, ref.d2h) == (12, 0)   # loads A, B, C (evicting B); A stays


def test_belady_counts_dirty_write_backs_and_accumulator_flushes():
    rec = Recorder()
    for name in ("x", "y", "x"):          # x dirty, evicted for y, needed again
        rec.post_local_access(rec.local_access(name, 4))
    rec.update(rec.pre_update(unit_table(), [0]))
    rec.clock()
    ref = belady(rec.finish(), 4, chunk_bytes=4)    # room for one 4-byte item
    # x written back and reloaded (4 + 4); y and then x dead (free); the accumulator
    # row flushed for the push (4)
    assert (ref.h2d, ref.d2h) == (4, 8)


def test_unlimited_plan_pins_everything_and_reads_hit():
    cyc = workload("dense")
    plan = make_plan(cyc, None)
    assert plan.device_bytes == working_set(cyc)
    reads = [p for p in plan.ops if p.op.kind == "read"]
    assert all(p.view is not None and p.misses == 0 for p in reads)
    assert plan.moved_bytes == belady(cyc, None).total


def test_an_impossible_budget_is_refused_with_the_numbers():
    cyc = workload("dense")
    need = minimum_budget(cyc)
    with pytest.raises(BudgetError) as e:
        make_plan(cyc, need - 1)
    msg = str(e.value)
    assert f"({need - 1} bytes)" in msg and f"({need} bytes)" in msg
    assert "GEEPS_DEVICE_MEMORY" in msg and "operation" in msg
    make_plan(cyc, need)                # the minimum itself works
    with pytest.raises(ValueError, match="'lru' is not one of benefit, geeps, stream"):
        make_plan(cyc, None, "lru")


# ---- invariants on random sequences -----------------------------------------------------
@st.composite
def cycles(draw):
    tables = [Table("a", 30, 2, "sgd"), Table("b", 12, 5, "sgd")]
    rec = Recorder()
    sizes = {}
    for _k in range(draw(st.integers(1, 3))):
        for _block in range(draw(st.integers(1, 4))):
            opened = []
            for _ in range(draw(st.integers(1, 3))):
                kind = draw(st.sampled_from(["read", "pre_update", "local"]))
                if kind == "local":
                    name = draw(st.sampled_from(["x", "y", "z"]))
                    if any(o[0] == "local" and o[2] == name for o in opened):
                        continue
                    nbytes = sizes.setdefault(name, 4 * draw(st.integers(1, 40)))
                    opened.append(("local", rec.local_access(name, nbytes), name))
                    continue
                t = draw(st.sampled_from(tables))
                if draw(st.booleans()):
                    lo = draw(st.integers(0, t.n_rows - 1))
                    rows = range(lo, draw(st.integers(lo + 1, t.n_rows)))
                else:
                    rows = draw(st.lists(st.integers(0, t.n_rows - 1), min_size=1,
                                         max_size=8, unique=kind == "pre_update"))
                op = rec.read(t, rows) if kind == "read" else rec.pre_update(t, rows)
                opened.append((kind, op, None))
            order = draw(st.permutations(opened))
            for kind, op, _ in order:
                {"read": rec.post_read, "pre_update": rec.update,
                 "local": rec.post_local_access}[kind](op)
        rec.clock()
    return rec.finish()


def check_layout(cyc, plan):
    """Buffers alive at the same time never overlap in the pool."""
    for k, events in enumerate(cyc.clocks):
        live = {}
        ops = plan.ops

        def start(o):
            p = ops[o]
            if p.buf is not None and not p.cont:
                off = p.buf[0] * 4
                size = align(p.op.nbytes)
                assert off + size <= plan.pool_bytes
                for other, (a, b) in live.items():
                    assert off + size <= a or b <= off, (o, other)
                live[o] = (off, off + size)
        for p in ops:
            if p.op.clock == k and p.prefetch_at == -1:
                start(p.op.id)
        for ev in events:
            p = ops[ev.op]
            if ev.kind == "call":
                if p.cont:
                    prev = [o for o in live if ops[o].keep and ops[o].buf == p.buf]
                    assert len(prev) == 1
                    live[ev.op] = live.pop(prev[0])
                elif ev.op not in live:
                    start(ev.op)
                for q in ops:
                    if q.prefetch_at == ev.op:
                        start(q.op.id)
            elif not p.keep:
                live.pop(ev.op, None)
        assert not live


@settings(max_examples=80, deadline=None)
@given(cyc=cycles(), frac=st.floats(0.05, 1.2), policy=st.sampled_from(POLICIES))
def test_plans_fit_their_budget_and_never_overlap_live_buffers(cyc, frac, policy):
    ws = working_set(cyc)
    budget = int(ws * frac)
    base = make_plan(cyc, None).moved_bytes
    assert base == belady(cyc, None).total
    if budget < minimum_budget(cyc):
        with pytest.raises(BudgetError):
            make_plan(cyc, budget, policy)
        return
    plan = make_plan(cyc, budget, policy)
    assert plan.device_bytes <= budget
    assert plan.moved_bytes >= base
    check_layout(cyc, plan)


@settings(max_examples=40, deadline=None)
@given(cyc=cycles())
def test_belady_moves_less_as_the_budget_grows(cyc):
    lo = max(align(max(op.nbytes for op in cyc.ops)) * 3, 64)
    totals = [belady(cyc, b).total for b in (lo, 2 * lo, 4 * lo, None)]
    assert totals == sorted(totals, reverse=True)


# ---- local data kept across clocks, and separate regions --------------------------------
def data_cycle(clocks=4, data_bytes=1024):
    """Each clock fetches its own batch of data and reads the same 8 rows (1 KiB)."""
    t = Table("w", 64, 32, "sgd")
    rec = Recorder()
    for k in range(clocks):
        d = rec.local_access(f"data{k}", data_bytes, fetch=True)
        rec.post_read(rec.read(t, range(0, 8)))
        rec.post_local_access(d)
        rec.clock()
    return rec.finish()


def test_fetched_data_is_pinned_before_parameters_and_moves_only_when_wiped():
    cyc = data_cycle()
    ws = working_set(cyc)
    kept = make_plan(cyc, ws - 1024)
    wiped = make_plan(cyc, ws - 1024, persist=False)
    # A parameter row crosses every clock anyway (its refresh); a pinned batch never
    # moves again, so the planner spends the budget on data: two batches (the rows
    # pinned too make the reads views; pool room for the other batches' buffers).
    assert kept.local_floats * 4 == 2 * 1024
    assert wiped.local_floats == 0
    assert kept.moved_bytes == 2 * 1024 + 4 * 1024 < wiped.moved_bytes
    assert wiped.moved_bytes == 4 * 1024 + 4 * 1024     # each batch, each row set, per cycle
    unlimited = make_plan(cyc, None)
    assert unlimited.moved_bytes == 4 * 1024            # only the reads' refreshes


def test_regions_cap_pool_data_and_parameters_separately():
    cyc = data_cycle()
    ws = working_set(cyc)
    no_data = make_plan(cyc, ws, regions=Regions(data=0))
    assert no_data.local_floats == 0 and no_data.device_bytes <= ws
    some = make_plan(cyc, ws, regions=Regions(data=2048, params=0))
    assert some.local_floats * 4 == 2048 and sum(some.param_slots.values()) == 0
    assert some.moved_bytes == 2 * 1024 + 4 * 1024
    pool = make_plan(cyc, None, regions=Regions(pool=1024, data=1024))
    assert pool.pool_bytes <= 1024 and pool.local_floats * 4 <= 1024
    whole = make_plan(cyc, None, regions=Regions(data=ws, params=ws))   # caps that hold
    assert whole.moved_bytes == make_plan(cyc, None).moved_bytes
    with pytest.raises(ValueError, match="regions.data must be a byte count"):
        make_plan(cyc, ws, regions=Regions(data=-1))
    assert Regions.parse(data="1Ki") == Regions(data=1024)


def test_the_next_batch_is_staged_in_the_other_half_while_the_current_computes():
    cyc = data_cycle()
    ws = working_set(cyc)
    plan = make_plan(cyc, ws - 1024, regions=Regions(data=0))   # no batch pinned
    data = [p for p in plan.ops if p.op.kind == "local"]
    # Clock k's batch fills from clock k-1's first operation on (the cycle's first
    # from its last clock), into the other half of a two-batch pool.
    assert [p.prefetch_at for p in data] == [6, 0, 2, 4]
    assert [p.buf[0] * 4 for p in data] == [0, 1024, 0, 1024]
    assert plan.pool_bytes == 2048 and plan.stalls == 0
    tight = make_plan(cyc, 2048, regions=Regions(data=0))     # room for one: no staging
    assert [p.prefetch_at for p in tight.ops if p.op.kind == "local"] == [-1] * 4
