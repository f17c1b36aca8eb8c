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

    # ---- applying -------------------------------------------------------------------
    @property
    def full(self) -> bool:
        """Every row of the shard has a value from this worker."""
        if self.dense is not None:
            return bool(self.touched.all())
        return self.covered == self.n_rows

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
            acc.fill(0)
            first = False
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
            h.update(self.dense.tobytes())
            h.update(self.touched.tobytes())
            return
        for a, b, v in sorted(self.pieces, key=lambda p: p[0]):
            h.update(repr((a, b)).encode())
            h.update(np.ascontiguousarray(v).tobytes())


def sum_all(contributions: list[Contribution], acc: np.ndarray) -> None:
    """acc = the sum of the contributions in the order given (rank order). When the
    first two are both whole and cut alike (every worker's pushes are chunked the same
    way) their pieces are added in one pass, out of place: one pass over the shard
    fewer than copying the first and adding the second, and the same bits."""
    rest = contributions
    if len(contributions) >= 2:
        a, b = contributions[0], contributions[1]
        if a.dense is None and b.dense is None and a.full and b.full and \
                [p[:2] for p in a.pieces] == [p[:2] for p in b.pieces]:
            for (lo, hi, va), (_, _, vb) in zip(a.pieces, b.pieces):
                np.add(va, vb, out=acc[lo:hi])
            rest = contributions[2:]
            for c in rest:
                c.sum_into(acc, first=False)
            return
    for i, c in enumerate(rest):
        c.sum_into(acc, first=i == 0)
