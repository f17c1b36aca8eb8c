"""The rows a request names, as local rows of one shard: a range or a list of ids.

Dense tables are pushed and pulled by range (large transfers arrive as range chunks):
their rows are read and updated as slices, views of the shard's arrays. Sparse tables
name rows by id. Both kinds answer the same questions, so the shard never asks which
one it holds.

    sel = RowRange(0, 4096)
    sel.take(rows)                 # a view of rows 0..4095
    RowIds(ids).take(rows)         # a gather (a copy)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from geeps.server.accumulate import Push

Runs = Sequence[tuple[int, int]]        # sorted disjoint [a, b) runs of local rows


class Selection:
    """What RowRange and RowIds have in common. Never changed once made (not frozen:
    a frozen dataclass costs twice as much to make, once per request)."""
    __slots__ = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def indices(self) -> np.ndarray:
        """The rows, one local id each."""
        raise NotImplementedError

    def outside(self, values: np.ndarray, runs: Runs):
        """The part of a push of `values` to these rows outside `runs`, as (selection,
        values); (None, None) when nothing is. A range partly inside becomes the ids of
        its rows outside."""
        rows = self.indices()
        keep = ~in_runs(rows, runs)
        if not keep.any():
            return None, None
        if keep.all():
            return self, values
        return RowIds(rows[keep]), values[keep]


@dataclass(slots=True)
class RowRange(Selection):
    """Local rows [lo, hi); an empty range is (0, 0)."""
    lo: int
    hi: int

    def __len__(self) -> int:
        return self.hi - self.lo

    def indices(self) -> np.ndarray:
        return np.arange(self.lo, self.hi)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """These rows of `rows`: a view, no copy."""
        return rows[self.lo:self.hi]

    def overlaps(self, a: int, b: int) -> bool:
        """Some of these rows lie in [a, b)."""
        return self.lo < b and a < self.hi

    def served_early(self, runs: Runs) -> bool:
        """A read of these rows may be answered before the clock that `runs` belong to
        ends: every row lies in the runs, the rows of that clock updated already."""
        return inside(self.lo, self.hi, runs)

    def kept(self, values: np.ndarray) -> Push:
        """A push of `values` to these rows, as a clock's sum keeps it."""
        return Push(self.lo, self.hi, None, values)

    def update(self, values: np.ndarray, n_rows: int) -> tuple[np.ndarray | None, np.ndarray]:
        """A push of `values` to these rows as RuleState.apply takes it: (row ids, or
        None for all `n_rows` rows; one row of values per id)."""
        if self.lo == 0 and self.hi == n_rows:
            return None, values
        return self.indices(), values

    def owned(self) -> RowRange:
        """This selection, safe to keep after the request's frames are gone."""
        return self


@dataclass(slots=True, eq=False)
class RowIds(Selection):
    """Local rows by id, in the request's order, repeats included."""
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def indices(self) -> np.ndarray:
        return self.ids

    def take(self, rows: np.ndarray) -> np.ndarray:
        """These rows of `rows`: a gather (a copy)."""
        return rows[self.ids]

    def overlaps(self, a: int, b: int) -> bool:
        """Some of these rows lie in [a, b)."""
        return bool(in_runs(self.ids, ((a, b),)).any())

    def served_early(self, runs: Runs) -> bool:
        # Rows are updated early only for last pushes, which are ranges (dense
        # tables); a read by id waits for its clock's end.
        return False

    def kept(self, values: np.ndarray) -> Push:
        """A push of `values` to these rows, as a clock's sum keeps it."""
        if not len(self.ids):
            return Push(0, 0, self.ids, values)
        return Push(int(self.ids.min()), int(self.ids.max()) + 1, self.ids, values)

    def update(self, values: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """A push of `values` to these rows as RuleState.apply takes it: (each row once,
        the sum of its values)."""
        ids, inverse = np.unique(self.ids, return_inverse=True)
        grad = np.zeros((len(ids), values.shape[1]), np.float32)
        np.add.at(grad, inverse, values)
        return ids, grad

    def owned(self) -> RowIds:
        """This selection, safe to keep after the request's frames are gone: the ids
        are read from a frame, whose memory goes away with the message."""
        return RowIds(self.ids.copy())


def inside(a: int, b: int, runs: Runs) -> bool:
    """Rows [a, b) lie in one of the sorted disjoint runs."""
    return a >= b or any(ra <= a and b <= rb for ra, rb in runs)


def in_runs(rows: np.ndarray, runs: Runs) -> np.ndarray:
    """Which of `rows` lie in the [a, b) runs."""
    mask = np.zeros(len(rows), bool)
    for a, b in runs:
        mask |= (rows >= a) & (rows < b)
    return mask
