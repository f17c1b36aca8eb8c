"""Pre-built row indices: found once, so the hot path turns runs into slices."""
from __future__ import annotations

from typing import Any

import numpy as np


class Index:
    """A pre-built row index: a contiguous ascending run, or an int64 array.

    Runs are found once, when the index is built, so the hot path turns them into
    slices (plain memory copies, or views) instead of indexed kernels.

        ix = make_index(np.array([3, 4, 5]))   # ix.run == (3, 6)
        len(ix)                                # 3
    """
    __slots__ = ("run", "array", "device", "n")

    def __init__(self, run: tuple[int, int] | None, array: np.ndarray | None):
        self.run = run
        self.array = array          # host int64 copy (always present for arrays)
        self.device: Any = None     # the backend's own copy (device array, torch tensor)
        self.n = (run[1] - run[0]) if run is not None else len(array)

    def __len__(self) -> int:
        return self.n

    def rows(self) -> np.ndarray:
        """The indices as an int64 array (for planning and tests, not the hot path)."""
        if self.run is not None:
            return np.arange(self.run[0], self.run[1], dtype=np.int64)
        return self.array

    def __repr__(self) -> str:
        if self.run is not None:
            return f"Index(run={self.run[0]}..{self.run[1]})"
        return f"Index({self.n} rows)"


def make_index(rows) -> Index:
    """An Index over `rows` (an int sequence, range or array); runs become slices."""
    if isinstance(rows, range) and rows.step == 1:
        return Index((rows.start, rows.stop), None)
    a = np.ascontiguousarray(rows, dtype=np.int64).ravel()
    if a.size == 0:
        return Index((0, 0), None)
    if a.size == 1 or bool(np.all(np.diff(a) == 1)):
        return Index((int(a[0]), int(a[0]) + a.size), None)
    a.setflags(write=False)
    return Index(None, a)
