"""What one worker pushed to one table of a shard for one clock, until the clock applies.

Clients send a large push as several range chunks (protocol.CHUNK_BYTES), so the common
dense case arrives as non-overlapping range pieces. Those are kept as the received
frames themselves (zero-copy) and summed only when the clock applies; a push that
overlaps an earlier piece, or names rows by id, turns the contribution into a dense
accumulator the size of the shard (taken from a free list: a fresh array per worker
per clock would page-fault its way through the whole shard).

    c = Contribution(n_rows)
    c.add_range(0, 4096, frame_values, alloc)      # kept as a piece
    c.sum_into(scratch, first=True)                # scratch = this worker's values
    sum_all([c0, c1, c2], scratch)                 # rank order: ((c0 + c1) + c2)
"""
from __future__ import annotations

from typing import Callable

import numpy as np

MAX_PIECES = 64     # beyond this many pieces one dense accumulator is cheaper to keep

Alloc = Callable[[], tuple[np.ndarray, np.ndarray]]   # -> zeroed (values, touched mask)


class Contribution:
    def __init__(self, n_rows: int):
        self.n_rows = n_rows
        self.pieces: list[tuple[int, int, np.ndarray]] = []   # (a, b, values) disjoint
        self.covered = 0                                      # rows the pieces hold
        self.dense: np.ndarray | None = None
        self.touched: np.ndarray | None = None

    # ---- receiving ------------------------------------------------------------------
    def add_range(self, a: int, b: int, values: np.ndarray, alloc: Alloc) -> None:
        if a >= b:
            return
        if self.dense is None and len(self.pieces) < MAX_PIECES and \
                all(b <= pa or a >= pb for pa, pb, _ in self.pieces):
            self.pieces.append((a, b, values))
            self.covered += b - a
            return
        self._densify(alloc)
        self.dense[a:b] += values
        self.touched[a:b] = True

    def add_ids(self, ids: np.ndarray, values: np.ndarray, alloc: Alloc) -> None:
        self._densify(alloc)
        np.add.at(self.dense, ids, values)
        self.touched[ids] = True

    def _densify(self, alloc: Alloc) -> None:
        if self.dense is not None:
            return
        self.dense, self.touched = alloc()
        for a, b, v in self.pieces:
            self.dense[a:b] += v
            self.touched[a:b] = True
        self.pieces, self.covered = [], 0

    def piece(self, a: int, b: int) -> np.ndarray | None:
        """The values of the piece that is exactly rows [a, b), if there is one."""
        return next((v for pa, pb, v in self.pieces if (pa, pb) == (a, b)), None)

    def remove_piece(self, a: int, b: int) -> None:
        """Drop the piece [a, b) (its rows were updated already)."""
        self.pieces = [p for p in self.pieces if (p[0], p[1]) != (a, b)]
        self.covered -= b - a

    # ---- applying -------------------------------------------------------------------
    @property
    def full(self) -> bool:
        """Every row of the shard has a value from this worker."""
        if self.dense is not None:
            return bool(self.touched.all())
        return self.covered == self.n_rows

    def runs(self) -> list[tuple[int, int]]:
        """The rows this worker pushed, as sorted disjoint [a, b) runs."""
        if self.dense is not None:
            return list(zip(*(x.tolist() for x in mask_runs(self.touched))))
        return merge((a, b) for a, b, _ in self.pieces)

    def mark(self, touched: np.ndarray) -> None:
        """touched |= the rows this worker pushed."""
        if self.dense is not None:
            touched |= self.touched
        else:
            for a, b, _ in self.pieces:
                touched[a:b] = True

    def sum_into(self, acc: np.ndarray, first: bool) -> None:
        """acc = (first) or += (later ranks) this worker's values, rows it did not push
        counting as zeros: the same float32 additions, in the same order, as summing
        dense accumulators."""
        if self.dense is not None:
            if first:
                np.copyto(acc, self.dense)
            else:
                acc += self.dense
            return
        if first and not self.full:
            # Rows this worker did not push count as zeros; only they need clearing
            # (typically a row or two: a table's fingerprint row is never pushed).
            for a, b in gaps(self.runs(), self.n_rows):
                acc[a:b] = 0
        for a, b, v in self.pieces:
            if first:
                np.copyto(acc[a:b], v)
            else:
                acc[a:b] += v

    def recycle(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The dense accumulator, zeroed for reuse (None when pieces were kept)."""
        if self.dense is None:
            return None
        self.dense.fill(0)
        self.touched.fill(False)
        return self.dense, self.touched

    def feed(self, h) -> None:
        """Everything this holds, into a hash (for ShardState.digest)."""
        if self.dense is not None:
            h.update(b"dense")
            feed_array(h, self.dense)
            feed_array(h, self.touched)
            return
        for a, b, v in sorted(self.pieces, key=lambda p: p[0]):
            h.update(repr((a, b)).encode())
            feed_array(h, v)


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


def gaps(runs: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The rows of 0..n outside the sorted disjoint runs."""
    out, at = [], 0
    for a, b in runs:
        if a > at:
            out.append((at, a))
        at = b
    return out + ([(at, n)] if at < n else [])


def mask_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of True in a boolean mask: (starts, ends) arrays."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return edges[::2], edges[1::2]


def union_runs(contributions: list[Contribution], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows any of the contributions pushed, as sorted disjoint runs: (starts,
    ends) arrays (a sparse clock has as many runs as rows, so no Python list)."""
    if any(c.dense is not None for c in contributions):
        touched = np.zeros(n_rows, bool)
        for c in contributions:
            c.mark(touched)
        return mask_runs(touched)
    runs = merge((a, b) for c in contributions for a, b, _ in c.pieces)
    return (np.array([a for a, _ in runs], np.int64), np.array([b for _, b in runs], np.int64))


def run_rows(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Every row of the runs, in order."""
    lens = ends - starts
    return np.arange(lens.sum()) + np.repeat(starts - (np.cumsum(lens) - lens), lens)


def sum_all(contributions: list[Contribution], acc: np.ndarray) -> None:
    """acc = the sum of the contributions in the order given (rank order); rows no one
    pushed hold no meaning. When the first two are cut alike (every worker's pushes
    are chunked the same way) their pieces are added in one pass, out of place: one
    pass over the shard fewer than copying the first and adding the second, and the
    same bits."""
    rest = contributions
    if len(contributions) >= 2:
        a, b = contributions[0], contributions[1]
        if a.dense is None and b.dense is None and \
                [p[:2] for p in a.pieces] == [p[:2] for p in b.pieces]:
            for (lo, hi, va), (_, _, vb) in zip(a.pieces, b.pieces):
                np.add(va, vb, out=acc[lo:hi])
            rest = contributions[2:]
            if rest and not a.full:         # the later ranks add onto zeros there
                for lo, hi in gaps(a.runs(), a.n_rows):
                    acc[lo:hi] = 0
            for c in rest:
                c.sum_into(acc, first=False)
            return
    for i, c in enumerate(rest):
        c.sum_into(acc, first=i == 0)


def sum_pieces(values: list[np.ndarray], out: np.ndarray) -> None:
    """out = the workers' pieces of the same rows, in rank order, with the additions
    sum_all makes for those rows (the first two in one pass, then the rest): rows
    summed apart from the rest of their clock get the same bits."""
    if len(values) == 1:
        np.copyto(out, values[0])
        return
    np.add(values[0], values[1], out=out)
    for v in values[2:]:
        out += v
