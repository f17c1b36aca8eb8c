"""Tables and how their rows are split across server shards.

A table is `n_rows` rows of `row_width` float32 values plus an update rule. Rows are
range-partitioned: shard k holds one contiguous slice, sized so every shard holds the
same number of rows (to within one), hence the same bytes of every table. A batched
message to one shard is then a contiguous slice of the caller's array (zero-copy).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from geeps.tables import schedules

DTYPE = np.float32
DEFAULT_ROW_WIDTH = 128     # floats per row: 512 B, large enough that per-row overhead vanishes
RULES = ("add", "sgd", "momentum", "adam")
SCHEDULED = ("sgd", "momentum", "adam")     # rules with a learning rate to schedule
HYPER = {   # accepted hyperparameters of each rule, with defaults
    "add": {},
    "sgd": {"lr": 0.01, "weight_decay": 0.0},
    "momentum": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
}


def partition(n_rows: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) row ranges, one per shard, sizes differing by at most one:
    shard k starts at ceil(k n / S), which is where the ring of geeps.job.membership
    puts it when S servers share the ring evenly."""
    bounds = [-((-k * n_rows) // n_shards) for k in range(n_shards + 1)]
    return list(zip(bounds, bounds[1:]))


def resolve_hyper(rule: str, hyper: dict) -> dict:
    """The rule's hyperparameters with defaults filled; ValueError naming a bad one.
    Gradient rules also take `schedule`, a learning-rate schedule (geeps.tables.schedules)."""
    if rule not in HYPER:
        raise ValueError(f"rule {rule!r} is not one of {', '.join(RULES)}")
    accepted = list(HYPER[rule]) + (["schedule"] if rule in SCHEDULED else [])
    unknown = set(hyper) - set(accepted)
    if unknown:
        raise ValueError(f"rule {rule!r} takes no hyperparameter {sorted(unknown)[0]!r} "
                         f"(accepted: {', '.join(accepted) or 'none'})")
    out = dict(HYPER[rule])
    for k, v in hyper.items():
        if k == "schedule":
            try:
                schedule = schedules.resolve(v)
            except ValueError as e:
                raise ValueError(f"hyperparameter 'schedule': {e}") from None
            if schedule:
                out[k] = schedule
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"hyperparameter {k!r} must be a finite number (got {v!r})")
        out[k] = float(v)
    return out


@dataclass(frozen=True)
class Table:
    """A handle on a table: its shape, rule and the row range each shard holds."""
    name: str
    n_rows: int
    row_width: int
    rule: str
    hyper: dict = field(default_factory=dict, compare=False)
    bounds: tuple[tuple[int, int], ...] = ()

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.row_width * 4

    def split_range(self, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
        """(shard, lo, hi) for each shard holding part of rows [lo, hi)."""
        for k, (a, b) in enumerate(self.bounds):
            s, e = max(lo, a), min(hi, b)
            if s < e:
                yield k, s, e

    def split_index(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(shard, positions in `rows`, row ids) for each shard holding some of `rows`."""
        starts = np.fromiter((a for a, _ in self.bounds), dtype=np.int64)
        shard = np.searchsorted(starts, rows, side="right") - 1
        # Shards holding no rows share a start with their successor; searchsorted picks
        # the last of them, which is the non-empty one.
        if len(self.bounds) == 1:
            yield 0, np.arange(len(rows)), rows
            return
        order = np.argsort(shard, kind="stable")
        cuts = np.searchsorted(shard[order], np.arange(len(self.bounds) + 1))
        for k in range(len(self.bounds)):
            pos = order[cuts[k]:cuts[k + 1]]
            if len(pos):
                yield k, pos, rows[pos]


def as_rows(rows, n_rows: int) -> range | np.ndarray:
    """Normalize a row selection: None (all), a range/slice, or integer ids."""
    if rows is None:
        return range(0, n_rows)
    if isinstance(rows, slice):
        return range(*rows.indices(n_rows))
    if isinstance(rows, range):
        if rows.step != 1:
            return np.arange(rows.start, rows.stop, rows.step, dtype=np.int64)
        if not (0 <= rows.start <= rows.stop <= n_rows):
            raise IndexError(f"rows {rows.start}..{rows.stop} outside 0..{n_rows}")
        return rows
    idx = np.asarray(rows)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"row ids must be integers (got dtype {idx.dtype})")
    idx = idx.astype(np.int64, copy=False).ravel()
    if len(idx) and (idx.min() < 0 or idx.max() >= n_rows):
        raise IndexError(f"row ids must lie in 0..{n_rows - 1} "
                         f"(got {idx.min()}..{idx.max()})")
    return idx
