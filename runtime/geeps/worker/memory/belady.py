"""Belady's MIN: the fewest bytes any policy could move over a known sequence.

    ref = belady(cycle, budget=2 << 30)
    assert make_plan(cycle, 2 << 30).moved_bytes <= 1.10 * ref.total

The reference the planner is measured against, under the same cost model (see
geeps.worker.memory.planner): a parameter row crosses host->device at least once in
each clock that reads it, an accumulator row device->host at least once in each
clock that updates it, and whatever is evicted while still needed is written back
(if dirty) and loaded again. Local data that is fetched crosses host->device at its
first use in a clock, and data that is kept device->host at the clock's end: MIN
here works clock by clock, so it never keeps data across clocks (a plan that pins
it there can move less).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from geeps.worker.memory.layout import BudgetError


@dataclass
class Moves:
    """Bytes a policy moves over one cycle."""
    h2d: int = 0
    d2h: int = 0
    loads: int = 0                  # items brought in (row or local chunk)
    per_clock: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.h2d + self.d2h


def _steps(cyc, k: int, chunk: int):
    """The accesses of clock k in order: (items, sizes, write) per step, an item being
    ("p", table, row) for a parameter row, ("u", table, row) for an accumulator row,
    ("l", name, chunk index) for local data."""
    for ev in cyc.clocks[k]:
        op = cyc.ops[ev.op]
        if op.kind == "read" and ev.kind == "call":
            rb = cyc.tables[op.table].row_bytes
            rows = np.unique(op.rows)
            yield [("p", op.table, int(r)) for r in rows], [rb] * len(rows), False
        elif op.kind == "pre_update" and ev.kind == "post":
            rb = cyc.tables[op.table].row_bytes
            yield [("u", op.table, int(r)) for r in op.rows], [rb] * len(op.rows), True
        elif op.kind == "local" and ev.kind == "call":
            n = -(-op.nbytes // chunk)
            sizes = [chunk] * (n - 1) + [op.nbytes - chunk * (n - 1)]
            yield [("l", op.name, j) for j in range(n)], sizes, True


def belady(cycle, budget: int | None, chunk_bytes: int | None = None) -> Moves:
    """Bytes Belady's MIN moves over one cycle with `budget` bytes of device memory.

    Classical MIN at row granularity (local data in chunks of `chunk_bytes`, default
    the widest row): on a miss, evict the resident item whose next use is furthest
    (free, clean or dead items first among those never used again). Dirty write-backs
    count. Each step's items are needed at one instant, with no access buffers. MIN
    is optimal in loads for same-size items; it ignores what an eviction writes back,
    so a plan that weighs write-backs can move a little less than it."""
    widths = [t.row_bytes for t in cycle.tables.values()]
    chunk = chunk_bytes or (max(widths) if widths else 512)
    total = Moves()
    fetched = {op.name for op in cycle.ops if op.kind == "local" and op.fetch}
    kept = {op.name for op in cycle.ops if op.kind == "local" and op.keep}
    for k in range(cycle.n_clocks):
        h2d, d2h, loads = _min_clock(list(_steps(cycle, k, chunk)), budget, k,
                                     fetched, kept)
        total.h2d += h2d
        total.d2h += d2h
        total.loads += loads
        total.per_clock.append((h2d, d2h))
    return total


_NEVER = float("inf")


def _next_uses(steps: list) -> list[list[float]]:
    """Per step, per item: the step that next uses the item (_NEVER if none)."""
    nxt: list[list[float]] = []
    last: dict = {}
    for s in range(len(steps) - 1, -1, -1):
        items = steps[s][0]
        nxt.append([last.get(it, _NEVER) for it in items])
        for it in items:
            last[it] = s
    nxt.reverse()
    return nxt


def _min_clock(steps: list, budget: int | None, k: int, fetched: frozenset = frozenset(),
               kept: frozenset = frozenset()) -> tuple[int, int, int]:
    """(h2d bytes, d2h bytes, loads) of MIN over clock k's steps; `fetched` and `kept`:
    names of local data that start the clock in host memory / must end it there."""
    nxt = _next_uses(steps)
    res: dict = {}          # item -> [size, dirty, next_use]
    # Fetched data is "seen": its first use loads it like a reload.
    seen: set = {it for items, _s, _w in steps for it in items
                 if it[0] == "l" and it[1] in fetched}
    used = 0
    heap: list = []
    h2d = d2h = loads = 0
    for s, (items, sizes, write) in enumerate(steps):
        need = sum(sz for it, sz in zip(items, sizes) if it not in res)
        if budget is not None and sum(sizes) > budget:
            raise BudgetError(f"Belady: step {s} of clock {k} needs {sum(sizes)} bytes, "
                              f"more than the budget {budget}")
        current = set(items)
        while budget is not None and used + need > budget:
            negnext, _writes_back, _seq, it = heapq.heappop(heap)
            ent = res.get(it)
            if ent is None or it in current or -negnext != ent[2]:
                continue            # stale heap entry, or needed now
            size, dirty, nu = ent
            if dirty and (it[0] == "u" or nu != _NEVER or (it[0] == "l" and it[1] in kept)):
                d2h += size         # accumulators must reach the host anyway
            del res[it]
            used -= size
        for it, sz, nu in zip(items, sizes, nxt[s]):
            ent = res.get(it)
            if ent is None:
                if it[0] == "p" or it in seen:
                    h2d += sz       # first read of a row, or a reload
                    loads += 1
                res[it] = ent = [sz, False, nu]
                used += sz
                seen.add(it)
            ent[1] = ent[1] or write
            ent[2] = nu
            dead_free = (not ent[1]) or (it[0] == "l" and nu == _NEVER and it[1] not in kept)
            heapq.heappush(heap, (-nu, 0 if dead_free else 1, len(heap), it))
    for it, (size, dirty, _nu) in res.items():
        if it[0] == "u" or (it[0] == "l" and it[1] in kept and dirty):
            d2h += size             # flush for the push; kept data back to its home
    return h2d, d2h, loads
