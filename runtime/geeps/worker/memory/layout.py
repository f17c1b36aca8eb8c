"""The access-buffer pool: where each operation's buffer lies in it.

    layout = allocate(a, needs, capacity, "mixed")      # PoolLayout or Failure

`allocate` lays the buffers of the operations that need one into the pool, first
fit, at fixed byte offsets (so every index is built once). An operation's buffer is
filled while the previous operation runs (prefetch) when its space is free at that
point; otherwise when it is called (sync).

Data batches are double-buffered (the sparse-LR report's foreground and background
halves): when a clock begins with an access of fetched local data (its training
batch) that needs a buffer, that buffer is *staged* during the previous clock, filled
by the transfer thread from the previous clock's first operation on, so the next
batch arrives while the current one computes -- and ahead of the next clock's
refresh, which waits for the servers. The staged buffer stays live across the clock
boundary; the cycle's first clock is staged from its last when the buffer's offset
is free then.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geeps.worker.memory.analysis import ALIGN, Analysis, align


class BudgetError(ValueError):
    """The device-memory budget cannot hold what one step of the sequence needs."""


@dataclass
class PoolLayout:
    offsets: dict       # op id -> byte offset in the pool
    prefetch_at: dict   # op id -> op id whose call issues its fill (-1: clock start)
    capacity: int       # bytes the layout uses


@dataclass
class Failure:
    op: int             # the op whose buffer did not fit
    live: list          # ops holding pool space at that moment
    capacity: int | None


def _first_fit(live: list, size: int, capacity: int | None) -> int | None:
    at = 0
    for off, end, _op in live:
        if off - at >= size:
            break
        at = max(at, end)
    if capacity is not None and at + size > capacity:
        return None
    return at


def _last_fit(live: list, size: int, capacity: int) -> int | None:
    """The highest offset where `size` bytes fit below `capacity`."""
    top = capacity
    for off, end, _op in reversed(live):
        if top - end >= size:
            break
        top = min(top, off)
    at = (top - size) // ALIGN * ALIGN
    if at < 0 or any(s < at + size and at < e for s, e, _ in live):
        return None
    return at


def allocate(a: Analysis, needs: np.ndarray, capacity: int | None, mode: str,
             links: dict | None = None, exempt: frozenset = frozenset(),
             two_ended: bool = False) -> PoolLayout | Failure:
    """Fixed pool offsets for the ops in `needs`. mode: "prefetch" (every prefetchable
    op must be filled during its predecessor, else Failure), "mixed" (prefetch where
    space allows) or "sync" (never prefetch). In "prefetch" mode the ops in `exempt`
    may be filled at their call when there is no room earlier. `two_ended` places
    buffers that die at their post at the top of the pool, held ones at the bottom.

    `links` maps an op to (next op using the same data, bytes held): held None keeps
    the whole buffer, as it stands, for the next op (one offset for the chain); held
    h keeps only its first h bytes after the post and places the next op's buffer at
    the same offset, so only the rest is fetched again."""
    pool = _Pool(a, needs, capacity, mode, links or {}, exempt, two_ended)
    n = a.cycle.n_clocks
    for k, events in enumerate(a.cycle.clocks):
        calls = a.usage.calls[k]
        fail = pool.clock(calls, events, _stageable(a, needs, calls, a.usage.calls[(k + 1) % n]))
        if fail:
            return fail
    return PoolLayout(pool.offsets, pool.prefetch_at, pool.top)


class _Pool:
    """allocate's state: the offsets found so far (they stay for the next clock's
    ops) and, within a clock, the live byte ranges."""

    def __init__(self, a: Analysis, needs: np.ndarray, capacity: int | None, mode: str,
                 links: dict, exempt: frozenset, two_ended: bool):
        self.a, self.needs, self.capacity, self.mode = a, needs, capacity, mode
        self.links, self.exempt, self.two_ended = links, exempt, two_ended
        # op -> the op whose whole buffer it takes over; op -> (op, bytes) it finds held
        self.full_to = {b: x for x, (b, h) in links.items() if h is None}
        self.part_to = {b: (x, h) for x, (b, h) in links.items() if h is not None}
        self.offsets: dict[int, int] = {}
        self.prefetch_at: dict[int, int] = {}
        self.staged: int | None = None      # next clock's first op, filled during this one
        self.top = 0
        self.live: list = []    # (off, end, owner), sorted by off; owner: op or ("hold", op)

    def clock(self, calls: list[int], events, stage: int | None = None) -> Failure | None:
        """Lay out one clock's buffers, in event order; `stage`: the next clock's first
        operation, to be staged during this one if there is room."""
        self.live = [x for x in self.live if x[2] == self.staged]   # across the boundary
        index = {o: i for i, o in enumerate(calls)}
        fail = None if calls and calls[0] == self.staged else self._prefetch(calls, 0, -1)
        if fail:
            return fail
        self.staged = None
        for ev in events:
            o = ev.op
            if ev.kind == "call":
                fail = self._call(o) or self._prefetch(calls, index[o] + 1, o)
                if fail:
                    return fail
                if stage is not None and self.staged is None and self.mode != "sync":
                    self._stage(stage, o)
            elif self.needs[o]:
                self._post(o)
        return None

    def _stage(self, o: int, point: int) -> None:
        """Fill op o (the next clock's first) from the call of `point` on, if its
        buffer fits now and stays free to the clock's end (placed now, it does: later
        buffers of this clock are placed around it)."""
        if o in self.offsets:       # the cycle's first clock, placed already: same offset
            off, size = self.offsets[o], align(self.a.buf_bytes[o])
            if any(s < off + size and off < e for s, e, _ in self.live):
                return
            self._add(off, off + size, o)
        else:
            off = self._place(o)
            if off is None:
                return
            self.offsets[o] = off
        self.prefetch_at[o] = point
        self.staged = o

    def _call(self, o: int) -> Failure | None:
        if o in self.full_to:
            head = self.full_to[o]
            self.live = [(s, e, o) if w == head else (s, e, w) for s, e, w in self.live]
            self.offsets[o] = self.offsets[head]
        elif self.needs[o] and o not in self.offsets:
            off = self._place(o)
            if off is None:
                return self._failure(o)
            self.offsets[o] = off
        return None

    def _post(self, o: int) -> None:
        nxt, held = self.links.get(o, (None, 0))
        if nxt is None or held is not None:
            self._free(o)
        if nxt is not None and held is not None:
            off = self.offsets[o]
            self._add(off, off + align(held), ("hold", nxt))

    def _prefetch(self, calls: list[int], i: int, point: int) -> Failure | None:
        """Fill calls[i] during the op `point` (-1: at the clock's start), if it can be."""
        if i >= len(calls) or self.mode == "sync":
            return None
        o = calls[i]
        if not self.needs[o] or not self.a.usage.prefetchable[o] or o in self.full_to:
            return None
        off = self._place(o)
        if off is None:
            return self._failure(o) if self.mode == "prefetch" and o not in self.exempt \
                else None
        self.offsets[o] = off
        self.prefetch_at[o] = point
        return None

    def _place(self, o: int) -> int | None:
        """A free offset for op o's buffer now, taken; None if there is none."""
        size = align(self.a.buf_bytes[o])
        capacity = self.capacity
        if o in self.part_to:
            hold = ("hold", o)
            off = self.offsets.get(self.part_to[o][0])
            if off is None or not any(x[2] == hold for x in self.live):
                return None         # the held part is not there (yet)
            if capacity is not None and off + size > capacity:
                return None
            if any(w != hold and s < off + size and off < e for s, e, w in self.live):
                return None
            self._free(hold)
        elif self.two_ended and capacity is not None and o not in self.links:
            # Short lives at the top do not fragment the space at the bottom that
            # a held buffer will extend into.
            off = _last_fit(self.live, size, capacity)
            if off is None:
                return None
        else:
            off = _first_fit(self.live, size, capacity)
            if off is None:
                return None
        self._add(off, off + size, o)
        self.top = max(self.top, off + size)
        return off

    def _add(self, off: int, end: int, owner) -> None:
        self.live.append((off, end, owner))
        self.live.sort(key=lambda x: x[0])

    def _free(self, owner) -> None:
        self.live = [x for x in self.live if x[2] != owner]

    def _failure(self, o: int) -> Failure:
        return Failure(o, _owners(self.live), self.capacity)


def _stageable(a: Analysis, needs: np.ndarray, calls: list[int], nxt: list[int]) -> int | None:
    """The first operation of the next clock (`nxt`) if it can be staged during this
    one (`calls`): an access of fetched local data (a training batch) that needs a
    buffer, of a datum this clock does not touch (whose write-back it would race).
    Not in a one-clock cycle: it would stage into its own buffer."""
    if not nxt or a.cycle.n_clocks < 2:
        return None
    o = nxt[0]
    op = a.cycle.ops[o]
    if op.kind != "local" or not op.fetch or not needs[o]:
        return None
    if any(a.cycle.ops[c].kind == "local" and a.cycle.ops[c].name == op.name for c in calls):
        return None
    return o


def _owners(live) -> list:
    return [w if isinstance(w, int) else w[1] for *_, w in live]


def peak_open_bytes(a: Analysis) -> int:
    """Most bytes held at once by operations between their call and their post."""
    peak = 0
    for events in a.cycle.clocks:
        cur = 0
        for ev in events:
            b = align(a.buf_bytes[ev.op])
            cur += b if ev.kind == "call" else -b
            peak = max(peak, cur)
    return peak
