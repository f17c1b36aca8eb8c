"""Separate sizes for the three regions of device memory (the sparse-LR report's
configuration): the access-buffer pool, pinned local data (training data, say) and
pinned parameters (parameter and update-accumulator rows).

    make_plan(cycle, budget, regions=Regions(data=64 << 20, params=16 << 20))

A region left None has no cap of its own: it shares what the total budget leaves.
The default is no Regions at all: one total budget, which the planner divides by
bytes saved per byte (see planner). Pure.
"""
from __future__ import annotations

from dataclasses import dataclass

from geeps.job.units import parse_bytes

_REGION_OF = {"local": "data", "param": "params", "acc": "params"}


@dataclass(frozen=True)
class Regions:
    pool: int | None = None         # bytes of access buffers
    data: int | None = None         # bytes of pinned local data
    params: int | None = None       # bytes of pinned parameter and accumulator rows

    @classmethod
    def parse(cls, pool=None, data=None, params=None) -> "Regions":
        """From bytes or quantities ("64Mi"); None leaves a region uncapped."""
        return cls(*(None if v is None else parse_bytes(v) for v in (pool, data, params)))

    @staticmethod
    def of(group_kind: str) -> str:
        """The region a planner group (local | param | acc) is pinned in."""
        return _REGION_OF[group_kind]

    def check(self) -> None:
        for name in ("pool", "data", "params"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"regions.{name} must be a byte count >= 0 or None "
                                 f"(got {v!r})")

    def holds(self, pinned: dict) -> bool:
        """Whether pinned bytes per region ({"data": n, "params": m}) fit the caps."""
        return all(getattr(self, r) is None or n <= getattr(self, r)
                   for r, n in pinned.items())

    def pool_room(self, room: int | None) -> int | None:
        """Bytes the pool may take when the total leaves `room` (None: unlimited)."""
        if self.pool is None:
            return room
        return self.pool if room is None else min(room, self.pool)
