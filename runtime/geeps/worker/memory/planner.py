"""The memory manager's planner: what stays pinned in device memory, and what passes
through the access-buffer pool.

    plan = make_plan(cycle, budget=2 << 30)     # a MemoryPlan; pure; raises BudgetError
    print(plan.summary())
    ref = belady(cycle, budget=2 << 30)         # MIN on the known sequence (belady.py)
    assert plan.moved_bytes <= 1.10 * ref.total

The cost model (shared by the plan and Belady, so the comparison is fair; per
operation it is geeps.worker.memory.plan.op_traffic, which the planner weighs its
choices with and the plan reports):
- A parameter row read in clock k must cross host->device at least once in clock k:
  the servers' refresh lands in host memory, and under BSP the previous clock's copy
  is stale. Rows pinned in device memory are refreshed in place once per clock; rows
  that are not are copied into the op's access buffer at every read.
- An update accumulator row must cross device->host once per clock (the push leaves
  from host memory). Pinned accumulators are flushed once at the clock's end; the
  others are copied out at every update (and added on the host).
- Local data (activations) lives within a clock: zeroed at its first access, dead
  after its last. Pinned, it never moves; otherwise each access but the first copies
  it in and each but the last writes it back.
- Local data that is fetched or kept (GeePS's fetch/keep: training data, say) also
  crosses clock boundaries: unpinned, it is copied in at a clock's first access and
  written back at its last; pinned, it stays in device memory across clocks and
  never moves (unless `persist=False`, the baseline: then it cannot be pinned).
So every parameter item dies at the end of its clock: pinning a parameter row saves
only its extra uses within a clock (its refresh crosses anyway), while pinning a
fetched datum saves its copy in every clock that uses it. The planner weighs both
the same way, by bytes saved per byte of budget.

Regions (the sparse-LR report's configuration): `regions=Regions(pool=, data=,
params=)` caps the access-buffer pool, the pinned local data and the pinned
parameter and accumulator rows separately, within the total budget; a region left
None shares what the total leaves. One total budget is the default.

Device memory = pinned regions (fixed slots for the whole cycle) + one pool of access
buffers at fixed offsets. An operation whose rows are all pinned, contiguous in
first-use order, works in place (a view); any other gets a pool buffer, filled while
the previous operation runs (prefetch) when its space is free then. A buffer may also
be *held* after its operation for the next use of the same data (the same rows read
again: parameters do not change within a clock; the next access of local data): all
of it, or a prefix, the next buffer then being placed at the same offset so that only
the rest is fetched again. Holding is pinning for a span of the clock instead of the
whole cycle: what makes a static plan come close to MIN, which time-shares memory.

Policies (`policy=`):
- "benefit" (default): greedily, by bytes saved per byte of device memory and per
  event held: pin groups of rows (rows the same operations touch) and local data, or
  hold a buffer to its data's next use (the longest prefix that fits if not all); then
  pin what turns an operation into a view. Rows that several operations of a clock
  read (hot rows of a power-law sparse workload: they recur in every clock) win pins
  by their reuse. A few such plans are made (two candidate orders and pool
  placements; every operation prefetched, or where room allows) and the cheapest
  kept, a byte the application waits for counting twice (transfer, and the wait).
- "geeps": GeePS's clientlib-viter policy: an access buffer of twice the peak data
  in use between an operation and its post; then local data, then parameter rows in
  order of first use, while the budget lasts; no holding.
- "stream": pin nothing, hold nothing; everything goes through the pool (a baseline).
A device budget below what the sequence needs with nothing pinned and no prefetch is
refused with the numbers (BudgetError).
"""
from __future__ import annotations

import numpy as np

from geeps.job.units import format_bytes
from geeps.worker.memory.analysis import ALIGN, Analysis, align, analyze
from geeps.worker.memory.layout import (BudgetError, Failure, PoolLayout, allocate,
                                        peak_open_bytes)
from geeps.worker.memory.plan import Chain, MemoryPlan, build_plan, op_traffic
from geeps.worker.memory.regions import Regions

__all__ = ["make_plan", "BudgetError", "working_set", "minimum_budget", "POLICIES"]

POLICIES = ("benefit", "geeps", "stream")


class _State:
    """Pinning and buffer-holding decisions under exploration, with the per-operation
    bytes they imply (kept up to date for the operations a change touches)."""

    def __init__(self, a: Analysis, exempt: frozenset = frozenset(),
                 two_ended: bool = False, regions: Regions | None = None):
        self.a = a
        self.regions = regions
        self.region_bytes = {"data": 0, "params": 0}     # pinned bytes per region
        self.exempt = exempt            # ops that may miss their prefetch
        self.two_ended = two_ended      # pool placement (see allocate)
        n = len(a.cycle.ops)
        self.pinned = np.zeros(len(a.grouping.groups), bool)
        self.count = np.zeros(n, np.int64)      # pinned rows of each op (local: 0/1)
        self.bytes = 0                          # pinned bytes
        self.clock_bytes = 0                    # their refresh/flush bytes per cycle
        self.links: dict[int, tuple] = {}       # op -> (next op, bytes held or None: all)
        self.prev: dict[int, int] = {}          # next op -> op
        self.moved = np.zeros(n, np.int64)      # bytes each op moves per execution
        self.h2d = np.zeros(n, np.int64)        # of which host->device (may stall)
        self.dirty = set(range(n))

    def set(self, g: int, on: bool) -> None:
        if self.pinned[g] == on:
            return
        grp = self.a.grouping.groups[g]
        sign = 1 if on else -1
        self.pinned[g] = on
        self.bytes += sign * grp.nbytes
        self.region_bytes[Regions.of(grp.kind)] += sign * grp.nbytes
        self.clock_bytes += sign * grp.clock_bytes
        for op, mult in grp.ops:
            self.count[op] += sign * grp.n * mult
            self._touch(op)

    def link(self, x: int, y: int, held: int | None) -> None:
        self.links[x] = (y, held)
        self.prev[y] = x
        self._touch(x)

    def unlink(self, x: int) -> None:
        y, _ = self.links.pop(x)
        del self.prev[y]
        self._touch(x)
        self._touch(y)

    def _touch(self, o: int) -> None:
        self.dirty.add(o)
        if o in self.links:
            self.dirty.add(self.links[o][0])
        if o in self.prev:
            self.dirty.add(self.prev[o])

    def needs(self) -> np.ndarray:
        """Which operations need a pool buffer (all but fully pinned, viewable ones)."""
        a = self.a
        return ~(a.viewable & (self.count == a.size))

    def live_links(self) -> dict:
        needs = self.needs()
        return {x: (y, h) for x, (y, h) in self.links.items() if needs[x] and needs[y]}

    def _op_bytes(self, o: int, needs: np.ndarray) -> tuple[int, int]:
        """(bytes moved, of which host->device) by one execution of op o."""
        if not needs[o]:
            return 0, 0                 # in place: pinned data never moves per op
        # Only links between two ops that need a buffer count (as in live_links).
        out = self.links.get(o)
        prev = self.prev.get(o)
        chain = Chain.between(
            (prev, self.links[prev][1]) if prev is not None and needs[prev] else None,
            out if out is not None and needs[out[0]] else None)
        op = self.a.cycle.ops[o]
        pinned = op.kind != "local" and self.pinned[self.a.grouping.row_group[o]]
        h2d, d2h = op_traffic(self.a, o, pinned, chain)
        return h2d + d2h, h2d


def _cost(st: _State, layout: PoolLayout) -> int:
    """Bytes moved per cycle plus the host->device bytes the application waits for:
    the plan's moved_bytes + stalled_bytes, without building any index."""
    if st.dirty:
        needs = st.needs()
        for o in st.dirty:
            st.moved[o], st.h2d[o] = st._op_bytes(o, needs)
        st.dirty.clear()
    late = np.ones(len(st.moved), bool)
    late[list(layout.prefetch_at)] = False
    return st.clock_bytes + int(st.moved.sum()) + int(st.h2d[late].sum())


def _fits(st: _State, budget: int, mode: str) -> PoolLayout | None:
    if st.bytes > budget:
        return None
    room = budget - st.bytes
    if st.regions is not None:
        if not st.regions.holds(st.region_bytes):
            return None
        room = st.regions.pool_room(room)
    links = st.live_links()
    out = allocate(st.a, st.needs(), room, mode, links, st.exempt, st.two_ended)
    if isinstance(out, Failure) and mode == "mixed":
        # Prefetching early can fragment the pool so a later op no longer fits.
        out = allocate(st.a, st.needs(), room, "sync", links)
    return None if isinstance(out, Failure) else out


def _hold(st: _State, ln, budget: int, mode: str, cost: int) -> PoolLayout | None:
    """Hold op ln.a's buffer for ln.b: all of it if that fits and pays, else the
    longest prefix that does (rows of a read; ALIGN-byte chunks of local data)."""
    st.link(ln.a, ln.b, None)
    got = _fits(st, budget, mode)
    if got is not None and _cost(st, got) < cost:
        return got
    op = st.a.cycle.ops[ln.a]
    unit = ALIGN if op.kind == "local" else st.a.cycle.tables[op.table].row_bytes
    lo, hi = 0, (op.nbytes - 1) // unit        # held prefixes of lo+1..hi units
    best = None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        st.link(ln.a, ln.b, mid * unit)
        got = _fits(st, budget, mode)
        if got is None:
            hi = mid - 1
        else:
            lo, best = mid, got
    if best is not None:
        st.link(ln.a, ln.b, lo * unit)
        if _cost(st, best) >= cost:
            best = None
    if best is None:
        st.unlink(ln.a)
        return None
    return best


def _greedy(a: Analysis, budget: int, mode: str, exempt: frozenset = frozenset(),
            two_ended: bool = False, order: str = "density",
            regions: Regions | None = None) -> tuple[_State, PoolLayout] | None:
    st = _State(a, exempt, two_ended, regions)
    layout = _fits(st, budget, mode)
    if layout is None and regions is not None and regions.pool is not None:
        layout = _seed(st, budget, mode)
    if layout is None:
        return None
    cost = _cost(st, layout)
    # Stage 1: what saves the most bytes per byte of device memory and per unit of
    # time held: pinning a group (held for the whole cycle) or holding one buffer from
    # an operation to the next use of the same data (held for that span).
    cands = [(grp.benefit / (grp.nbytes * a.events_per_cycle), grp.first_use, "pin", g)
             for g, grp in enumerate(a.grouping.groups) if grp.benefit > 0]
    cands += [(ln.benefit / (ln.nbytes * ln.span), ln.a, "link", i)
              for i, ln in enumerate(a.links)]
    if order == "holds":            # holds first: they use space only while needed
        cands.sort(key=lambda c: (c[2] != "link", -c[0], c[1]))
    else:
        cands.sort(key=lambda c: (-c[0], c[1]))
    for _density, _first, kind, i in cands:
        if kind == "pin":
            before = st.needs()
            st.set(i, True)
            if not st.two_ended and regions is None and \
                    layout.capacity <= budget - st.bytes and \
                    np.array_equal(before, st.needs()):
                got = layout        # no op became a view: the first-fit layout stands
            else:
                got = _fits(st, budget, mode)
            if got is None or _cost(st, got) >= cost:
                st.set(i, False)
            else:
                layout, cost = got, _cost(st, got)
        else:
            ln = a.links[i]
            if not st.needs()[ln.a]:
                continue                # both ends are pinned views already
            got = _hold(st, ln, budget, mode, cost)
            if got is not None:
                layout, cost = got, _cost(st, got)
    # Stage 2: pin what makes an operation a zero-copy view (no gather, no buffer).
    for op in range(len(a.cycle.ops)):
        if not a.viewable[op] or st.count[op] == a.size[op]:
            continue
        added = [g for g in a.grouping.op_groups[op]
                 if not st.pinned[g] and a.grouping.groups[g].pinnable]
        if not added:
            continue
        for g in added:
            st.set(g, True)
        got = _fits(st, budget, mode)
        if got is None or _cost(st, got) > cost:
            for g in added:
                st.set(g, False)
        else:
            layout, cost = got, _cost(st, got)
    return st, layout


def _seed(st: _State, budget: int, mode: str) -> PoolLayout | None:
    """A capped pool may be too small for the operations' buffers with nothing pinned:
    pin groups in order of first use (within their regions) until the rest fits."""
    groups = st.a.grouping.groups
    for g in sorted(range(len(groups)), key=lambda g: groups[g].first_use):
        if not groups[g].pinnable:
            continue
        st.set(g, True)
        if not st.regions.holds(st.region_bytes) or st.bytes > budget:
            st.set(g, False)
            continue
        layout = _fits(st, budget, mode)
        if layout is not None:
            return layout
    return None


def _geeps(a: Analysis, budget: int, regions: Regions | None = None) \
        -> tuple[_State, PoolLayout]:
    st = _State(a, regions=regions)
    groups = a.grouping.groups
    reserve = min(budget, 2 * peak_open_bytes(a))
    # Local data first, then parameter rows, then accumulator rows, each by first use.
    kinds = {"local": 0, "param": 1, "acc": 2}

    def rank(g: int) -> tuple[int, int]:
        return kinds[groups[g].kind], groups[g].first_use

    for g in sorted(range(len(groups)), key=rank):
        if groups[g].pinnable and st.bytes + groups[g].nbytes <= budget - reserve:
            st.set(g, True)
            if regions is not None and not regions.holds(st.region_bytes):
                st.set(g, False)
    while True:
        layout = _fits(st, budget, "mixed")
        if layout is not None:
            return st, layout
        # First-fit fragmentation can need more than the reserve: unpin the last pinned.
        pinned = [g for g in np.flatnonzero(st.pinned)]
        if not pinned:
            raise _refuse(a, budget)
        st.set(max(pinned, key=rank), False)


def _pin_all(st: _State) -> _State:
    """Pin every group that may be pinned (the unlimited plan)."""
    for g, grp in enumerate(st.a.grouping.groups):
        if grp.pinnable:
            st.set(g, True)
    return st


def minimum_budget(cycle, analysis: Analysis | None = None) -> int:
    """The smallest budget a plan runs in: nothing pinned and no prefetch, or (when
    smaller, for tiny sequences) everything pinned."""
    a = analysis or analyze(cycle)
    return min(allocate(a, np.ones(len(cycle.ops), bool), None, "sync").capacity,
               working_set(cycle, a))


def working_set(cycle, analysis: Analysis | None = None) -> int:
    """Device bytes of the unlimited plan: everything pinned, plus the pool that
    operations still need (gathers of pinned rows that are not contiguous)."""
    a = analysis or analyze(cycle)
    st = _pin_all(_State(a))
    return st.bytes + allocate(a, st.needs(), None, "prefetch").capacity


def _refuse(a: Analysis, budget: int) -> BudgetError:
    need = minimum_budget(a.cycle, a)
    fail = allocate(a, np.ones(len(a.cycle.ops), bool), budget, "sync")
    where = ""
    if isinstance(fail, Failure):
        op = a.cycle.ops[fail.op]
        where = (f"; operation {op.id} (clock {op.clock}: {op.describe()}) needs "
                 f"{format_bytes(align(a.buf_bytes[op.id]))} while "
                 f"{len(fail.live)} other open operation(s) hold "
                 f"{format_bytes(sum(align(a.buf_bytes[o]) for o in fail.live))}")
    return BudgetError(
        f"device memory budget {format_bytes(budget)} ({budget} bytes) is below what this "
        f"sequence needs: {format_bytes(need)} ({need} bytes){where}. "
        f"Raise GEEPS_DEVICE_MEMORY "
        f"(spec.cache.deviceMemory) or make the operations smaller")


def make_plan(cycle, budget: int | None = None, policy: str = "benefit", *,
              persist: bool = True, regions: Regions | None = None,
              analysis: Analysis | None = None) -> MemoryPlan:
    """Plan placement for `cycle` within `budget` bytes of device memory (None =
    unlimited: everything pinned). persist: fetched or kept local data may stay
    pinned across clocks (see analyze); regions: separate caps (see module
    docstring); analysis: analyze(cycle, persist), if already made. Pure; raises
    BudgetError or ValueError."""
    if policy not in POLICIES:
        raise ValueError(f"placement policy {policy!r} is not one of {', '.join(POLICIES)}")
    a = analysis if analysis is not None and analysis.persist == persist \
        else analyze(cycle, persist)
    ws = working_set(cycle, a)
    need = minimum_budget(cycle, a)
    if budget is not None and budget < 0:
        raise BudgetError(f"device memory budget must be >= 0 bytes (got {budget})")
    if regions is not None:
        regions.check()
        full = _pin_all(_State(a))
        if regions.holds(full.region_bytes) and regions.pool_room(ws) >= ws - full.bytes:
            regions = None          # the caps hold the unlimited plan: nothing to weigh
        elif budget is None:
            # No total: room for every pinned group and for every buffer unpinned.
            budget = full.bytes + allocate(a, np.ones(len(cycle.ops), bool), None,
                                           "prefetch").capacity
    if regions is None and (budget is None or budget >= ws):
        st = _pin_all(_State(a))
        layout = allocate(a, st.needs(), None, "prefetch")
        return build_plan(a, st.pinned, layout, st.live_links(), policy=policy,
                          budget=budget, working_set=ws, minimum=need)
    if budget < need:
        raise _refuse(a, budget)
    if policy == "stream":
        st = _State(a, regions=regions)
        layout = _fits(st, budget, "mixed")
    elif policy == "geeps":
        st, layout = _geeps(a, budget, regions)
    else:
        # A few greedy plans, the cheapest kept: candidates by density (bytes saved
        # per byte and per event held), pool first-fit; or holds before pins, pool
        # two-ended (held buffers low, short-lived high) -- tight budgets favour it.
        # Each with every operation prefetched (but those that cannot be even with
        # nothing pinned) or prefetched where room allows. The cost counts a byte
        # that stalls the application twice: its transfer, and the wait.
        bare = _fits(_State(a, regions=regions), budget, "mixed")
        late = frozenset(o for o in range(len(cycle.ops))
                         if bare is not None and o not in bare.prefetch_at)
        best = None
        for order, two_ended in (("density", False), ("holds", True)):
            for mode in ("prefetch", "mixed"):
                cand = _greedy(a, budget, mode, late, two_ended, order, regions)
                if cand is None:
                    continue
                cost = _cost(*cand)
                if best is None or cost < best[0]:
                    best = (cost, cand)
        st, layout = best[1] if best else (None, None)
    if layout is None:
        raise _refuse(a, budget)
    return build_plan(a, st.pinned, layout, st.live_links(), policy=policy, budget=budget,
                      working_set=ws, minimum=need)
