"""The workers' pushes of one clock to one table of a shard, summed in rank order in
memory that does not grow with the number of workers.

Results must not depend on the order pushes arrive in (a replay after a restart, or
the same job on another network, gives the same bits), so each row is summed in rank
order: worker 0's value, plus worker 1's, and so on. Keeping every worker's push until
the clock ends does that but holds one copy of the shard per worker (W = 64 workers
of a 32 MiB shard: 2 GiB). Instead a worker's rows are added to one running sum as
soon as they are *final* (it sent them with `last`, or it finished the clock) and
every lower rank's rows there are in: `through[row]` counts the ranks summed so far.
What arrives ahead of its turn is kept (zero-copy, the received frames) until the
lower ranks catch up; the shard bounds those bytes and makes a worker that would
exceed them send again later (see ShardState._busy).

Per row the additions are: the first worker that pushed the row (its first push
copied in), then each later push in rank order and, within one worker, in the order
it sent them (a worker pushing a row twice adds twice): the same bits whatever the
arrival order across workers. Rows no one pushed hold no value and are not updated.

    s = ClockSum(n_rows, workers=2, alloc=lambda: np.empty((n_rows, width), np.float32))
    s.keep(1, Push(0, n_rows, None, g1))   # worker 1 is ahead: kept
    s.keep(0, Push(0, n_rows, None, g0))
    s.settle(0, [(0, n_rows)])             # worker 0 finished: g0, then g1, summed
    s.settle(1, [(0, n_rows)])             # -> [(0, n_rows)]: rows every worker summed
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

Runs = Sequence[tuple[int, int]]


@dataclass(slots=True, eq=False)
class Push:
    """What one push of a worker holds that is not summed yet: rows [lo, hi) (ids None)
    or the rows `ids` (repeats allowed, all in [lo, hi)), one row of values each."""
    lo: int
    hi: int
    ids: np.ndarray | None
    values: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + (0 if self.ids is None else self.ids.nbytes)

    def split(self, x: int, y: int) -> tuple["Push | None", list["Push"]]:
        """(the part in rows [x, y), the parts outside it). Parts outside are copies
        when they are slices of a larger frame, so summing the inside part lets the
        frame go."""
        if self.ids is None:
            a, b = max(self.lo, x), min(self.hi, y)
            if a >= b:
                return None, [self]
            inner = Push(a, b, None, self.values[a - self.lo:b - self.lo])
            outer = []
            if self.lo < a:
                outer.append(Push(self.lo, a, None, self.values[:a - self.lo].copy()))
            if b < self.hi:
                outer.append(Push(b, self.hi, None, self.values[b - self.lo:].copy()))
            return inner, outer
        if self.hi <= x or self.lo >= y:
            return None, [self]
        m = (self.ids >= x) & (self.ids < y)
        if m.all():
            return self, []
        inner = Push(x, y, self.ids[m], self.values[m]) if m.any() else None
        rest_ids = self.ids[~m]
        return inner, [Push(int(rest_ids.min()), int(rest_ids.max()) + 1, rest_ids,
                            self.values[~m])]


class ClockSum:
    """One clock of one table: the running sum, how many ranks each row holds, and
    the pushes kept until their turn."""

    def __init__(self, n_rows: int, workers: int, alloc: Callable[[], np.ndarray]):
        self.n_rows = n_rows
        self.workers = workers
        self._alloc = alloc
        self.acc: np.ndarray | None = None     # made on the first sum (see alloc)
        self.through = np.zeros(n_rows, np.uint8 if workers < 255 else np.uint32)
        self.touched = np.zeros(n_rows, bool)  # rows acc holds a value for
        self.kept: dict[int, list[Push]] = {}  # rank -> its pushes not summed, in order
        self.kept_bytes: dict[int, int] = {}
        self.final: dict[int, list[tuple[int, int]]] = {}   # rank -> rows sent `last`
        self.finished: set[int] = set()        # ranks that finished the clock
        self.pushed: set[int] = set()          # ranks that pushed anything

    # ---- receiving ----------------------------------------------------------------
    def keep(self, rank: int, push: Push) -> None:
        """A push of `rank`, summed when its rows are final and their turn comes."""
        self.pushed.add(rank)
        if len(push.values):
            self.kept.setdefault(rank, []).append(push)
            self.kept_bytes[rank] = self.kept_bytes.get(rank, 0) + push.nbytes

    def in_turn(self, rank: int, a: int, b: int) -> bool:
        """Every row of [a, b) waits for `rank` only: a final push there is summed at
        once instead of kept."""
        return a >= b or bool((self.through[a:b] == rank).all())

    def settle(self, rank: int, runs: Runs) -> list[tuple[int, int]]:
        """`rank`'s rows in `runs` are final (a `last` push, or the clock finished):
        sum what may be summed now, in rank order, and return the rows every worker's
        value is in (sorted disjoint runs)."""
        full: list[tuple[int, int]] = []
        work = [(rank, list(runs))]
        while work:
            r, rs = work.pop()
            for a, b in rs:
                if a >= b:
                    continue
                starts, ends = _mask_runs(self.through[a:b] == r)
                for x, y in zip((starts + a).tolist(), (ends + a).tolist()):
                    self._sum(r, x, y)
                    self.through[x:y] = r + 1
                    if r + 1 == self.workers:
                        full.append((x, y))
                        continue
                    nxt = self._final_within(r + 1, x, y)
                    if nxt:
                        work.append((r + 1, nxt))
        return merge(full)

    def _final_within(self, rank: int, x: int, y: int) -> list[tuple[int, int]]:
        if rank in self.finished:
            return [(x, y)]
        out = []
        for a, b in self.final.get(rank, ()):
            a, b = max(a, x), min(b, y)
            if a < b:
                out.append((a, b))
        return merge(out)

    def _sum(self, rank: int, x: int, y: int) -> None:
        """acc[x:y] gets `rank`'s pushes to those rows, in the order they were sent."""
        kept = self.kept.get(rank)
        if not kept:
            return
        if self.acc is None:
            self.acc = self._alloc()
        rest = []
        for p in kept:
            inner, outer = p.split(x, y)
            rest += outer
            if inner is None:
                continue
            if inner.ids is None:
                self._add_range(inner.lo, inner.hi, inner.values)
            else:
                self._add_ids(inner.ids, inner.values)
        self.kept[rank] = rest
        self.kept_bytes[rank] = sum(p.nbytes for p in rest)
        if not rest:
            del self.kept[rank], self.kept_bytes[rank]

    def _add_range(self, a: int, b: int, v: np.ndarray) -> None:
        t = self.touched[a:b]
        if t.all():
            self.acc[a:b] += v
            return
        if not t.any():
            np.copyto(self.acc[a:b], v)
            t[:] = True
            return
        for s, e in zip(*(x.tolist() for x in _mask_runs(t))):
            self.acc[a + s:a + e] += v[s:e]
        for s, e in zip(*(x.tolist() for x in _mask_runs(~t))):  # first written here
            np.copyto(self.acc[a + s:a + e], v[s:e])
        t[:] = True

    def _add_ids(self, ids: np.ndarray, v: np.ndarray) -> None:
        first = ids[~self.touched[ids]]
        self.acc[first] = 0
        self.touched[ids] = True
        np.add.at(self.acc, ids, v)

    # ---- what is held ---------------------------------------------------------------
    def drop(self, rank: int) -> None:
        """Forget `rank`'s pushes not summed yet and its final marks (its worker was
        replaced: the replacement sends them again)."""
        self.kept.pop(rank, None)
        self.kept_bytes.pop(rank, None)
        self.final.pop(rank, None)
        self.pushed.discard(rank)

    def summed(self, rank: int) -> list[tuple[int, int]]:
        """The rows whose sum holds `rank`'s final value already."""
        starts, ends = _mask_runs(self.through > rank)
        return list(zip(starts.tolist(), ends.tolist()))

    def pending(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows summed but not applied yet, as (starts, ends) runs."""
        return _mask_runs(self.touched)

    def touched_runs(self, runs: Runs) -> list[tuple[int, int]]:
        """The parts of `runs` that hold a value."""
        out = []
        for a, b in runs:
            starts, ends = _mask_runs(self.touched[a:b])
            out += zip((starts + a).tolist(), (ends + a).tolist())
        return out

    def applied(self, runs: Runs) -> None:
        """Rows in `runs` were updated already (early): the clock's end skips them."""
        for a, b in runs:
            self.touched[a:b] = False

    def split(self, x: int, alloc_right: Callable[[], np.ndarray]) -> "ClockSum":
        """Cut this sum at row x (a segment split by a new membership): this keeps
        rows [0, x), the one returned holds rows [x, n) as its rows [0, n - x),
        sums, counts and kept pushes alike."""
        right = ClockSum(self.n_rows - x, self.workers, alloc_right)
        right.through = self.through[x:].copy()
        right.touched = self.touched[x:].copy()
        if self.acc is not None and right.touched.any():
            right.acc = alloc_right()
            right.acc[:] = self.acc[x:]
        for rank, pushes in self.kept.items():
            left, moved = [], []
            for p in pushes:
                inner, outer = p.split(0, x)
                left += [inner] if inner is not None else []
                for q in outer:     # the parts at or past x
                    moved.append(Push(q.lo - x, q.hi - x,
                                      None if q.ids is None else q.ids - x, q.values))
            if left:
                self.kept[rank] = left
            if moved:
                right.kept[rank] = moved
        self.kept = {r: v for r, v in self.kept.items() if v}
        for side in (self, right):
            side.kept_bytes = {r: sum(p.nbytes for p in v) for r, v in side.kept.items()}
        for rank, runs in self.final.items():
            right.final[rank] = [(max(a, x) - x, b - x) for a, b in runs if b > x]
            self.final[rank] = [(a, min(b, x)) for a, b in runs if a < x]
        right.finished, right.pushed = set(self.finished), set(self.pushed)
        self.n_rows = x
        self.through, self.touched = self.through[:x].copy(), self.touched[:x].copy()
        if self.acc is not None:
            self.acc = self.acc[:x]
        return right

    @property
    def complete(self) -> bool:
        return bool((self.through == self.workers).all())

    def feed(self, h) -> None:
        """Everything this holds, into a hash (for ShardState.digest)."""
        feed_array(h, self.through)
        feed_array(h, self.touched)
        if self.acc is not None:
            for a, b in zip(*(x.tolist() for x in _mask_runs(self.touched))):
                feed_array(h, self.acc[a:b])
        h.update(repr((sorted(self.final.items()), sorted(self.finished),
                       sorted(self.pushed))).encode())
        for r in sorted(self.kept):
            for p in self.kept[r]:
                h.update(repr((r, p.lo, p.hi, p.ids is None)).encode())
                if p.ids is not None:
                    feed_array(h, p.ids)
                feed_array(h, p.values)


# Rows hashed at a time by feed_array: a non-contiguous array is copied a block at a
# time, never whole.
FEED_BLOCK = 4 << 20


def feed_array(h, a: np.ndarray) -> None:
    """The bytes of `a` in C order into hash `h`, as a.tobytes() would give them but
    without a copy of the array (a digest of a 1 GiB table must not cost 1 GiB)."""
    if a.flags.c_contiguous:
        h.update(memoryview(a.reshape(-1)).cast("B"))
        return
    rows = a.reshape(len(a), -1) if a.ndim else a.reshape(1)
    step = max(1, FEED_BLOCK // max(1, rows[:1].nbytes))
    for i in range(0, len(rows), step):
        h.update(np.ascontiguousarray(rows[i:i + step]).tobytes())


def merge(intervals) -> list[tuple[int, int]]:
    """Sorted disjoint runs covering the given [a, b) intervals."""
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if a >= b:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _mask_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of True in a boolean mask: (starts, ends) arrays. All True or all False
    (the common dense case) costs one pass; otherwise the edges are found on bytes."""
    n = len(mask)
    if n == 0 or not mask.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if mask.all():
        return np.zeros(1, np.int64), np.full(1, n, np.int64)
    padded = np.zeros(n + 2, bool)
    padded[1:-1] = mask
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges[::2], edges[1::2]


def run_rows(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Every row of the runs, in order."""
    lens = ends - starts
    return np.arange(lens.sum()) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
