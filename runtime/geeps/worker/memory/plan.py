"""The plan the worker executes: pinned regions, pool offsets and every index, built once.

    plan = geeps.worker.memory.planner.make_plan(cycle, budget)
    op = plan.ops[3]            # OpPlan: a view of pinned rows, or a pool buffer + fills
    plan.clocks[0].refresh      # per table: host positions -> pinned slots, per clock

Pinned parameter rows of a table occupy slots in order of first use, and so do pinned
accumulator rows; an operation whose rows are all pinned and contiguous in that order
reads (or writes) them in place. Everything else is an index pair for one batched
kernel: buffer positions <- pinned slots (device gather), buffer positions <- pulled
host rows (host->device), buffer rows -> pinned accumulator slots (scatter, scatter-
add), buffer rows -> host accumulator rows (device->host, copy or add).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geeps.backend import Index, make_index
from geeps.worker.memory.layout import Analysis, PoolLayout, align
from geeps.job.units import format_bytes


@dataclass
class OpPlan:
    op: object                          # the recorded Op
    view: tuple[int, int] | None = None     # run of pinned slots (local: float offsets)
    buf: tuple[int, tuple] | None = None    # (float offset in pool, shape)
    prefetch_at: int | None = None      # op whose call fills it; -1 clock start; None: own call
    hits: int = 0                       # rows resident (pinned) when read
    misses: int = 0                     # rows copied from host memory for it
    h2d: int = 0                        # bytes per execution
    d2h: int = 0
    # read: buffer positions <- pinned slots, buffer positions <- pulled host rows
    pin_buf: Index | None = None
    pin_slots: Index | None = None
    host_buf: Index | None = None
    host_src: Index | None = None
    # update: (buffer positions, target rows) per case; first touch copies, later adds
    to_pin_copy: tuple | None = None
    to_pin_add: tuple | None = None
    to_host_copy: tuple | None = None
    to_host_add: tuple | None = None
    # local data
    first: bool = False
    last: bool = False
    # a chain of operations sharing one pool buffer (same data, used again)
    cont: bool = False                  # the data is already in this buffer: no fill
    keep: bool = False                  # the next op of the chain takes this buffer over
    hold: int = 0                       # bytes kept in place for the next op (partial)
    held: int = 0                       # bytes already in place from the previous op

    @property
    def pinned_view(self) -> bool:
        return self.view is not None


@dataclass
class ClockPlan:
    pull: dict = field(default_factory=dict)        # table -> rows read (sorted)
    push: dict = field(default_factory=dict)        # table -> rows updated (sorted)
    refresh: dict = field(default_factory=dict)     # table -> (host Index, slots Index)
    flush: dict = field(default_factory=dict)       # table -> (slots Index, host Index)
    refresh_bytes: int = 0
    flush_bytes: int = 0


@dataclass
class Plan:
    policy: str
    budget: int | None
    working_set_bytes: int              # device bytes with everything pinned
    minimum_budget: int                 # nothing pinned, no prefetch
    tables: dict
    param_slots: dict                   # table -> pinned parameter rows
    acc_slots: dict                     # table -> pinned accumulator rows
    local_offsets: dict                 # pinned local name -> float offset
    local_floats: int
    pool_bytes: int
    ops: list
    clocks: list
    h2d_bytes: int                      # per cycle, predicted exactly
    d2h_bytes: int

    @property
    def pinned_bytes(self) -> int:
        p = sum(n * self.tables[t].row_bytes for t, n in self.param_slots.items())
        a = sum(n * self.tables[t].row_bytes for t, n in self.acc_slots.items())
        return p + a + self.local_floats * 4

    @property
    def device_bytes(self) -> int:
        return self.pinned_bytes + self.pool_bytes

    @property
    def moved_bytes(self) -> int:
        return self.h2d_bytes + self.d2h_bytes

    @property
    def stalled_bytes(self) -> int:
        """Host->device bytes per cycle the application waits for (not prefetched)."""
        return sum(o.h2d for o in self.ops if o.h2d and o.prefetch_at is None)

    @property
    def stalls(self) -> int:
        """Operations that copy from host memory but cannot be filled ahead of time."""
        return sum(1 for o in self.ops if o.h2d and o.prefetch_at is None)

    def summary(self) -> str:
        n_view = sum(1 for o in self.ops if o.view is not None)
        budget = "unlimited" if self.budget is None else format_bytes(self.budget)
        return (f"placement ({self.policy}, budget {budget}): pinned "
                f"{format_bytes(self.pinned_bytes)} + access-buffer pool "
                f"{format_bytes(self.pool_bytes)} of working set "
                f"{format_bytes(self.working_set_bytes)}; {n_view}/{len(self.ops)} "
                f"operations in place; {format_bytes(self.h2d_bytes)} h2d + "
                f"{format_bytes(self.d2h_bytes)} d2h per cycle; {self.stalls} not "
                f"prefetchable")


class _Pinned:
    """Which rows of one table (in one order) are pinned, and their slots."""

    def __init__(self, order, rows_pinned: list[np.ndarray]):
        self.order = order
        rank_mask = np.zeros(len(order.uniq), bool)
        for r in rows_pinned:
            rank_mask[order.rank(r)] = True
        self.by_rank = rank_mask
        self.slot_by_rank = np.cumsum(rank_mask) - 1
        self.n = int(rank_mask.sum())

    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rk = self.order.rank(rows)
        return self.by_rank[rk], self.slot_by_rank[rk]


def _ix(a) -> Index | None:
    return make_index(a) if len(a) else None


def _pair(sel: np.ndarray, targets: np.ndarray):
    idx = np.flatnonzero(sel)
    return (make_index(idx), make_index(targets[idx])) if len(idx) else None


def build_plan(a: Analysis, pinned_groups: np.ndarray, layout: PoolLayout, policy: str,
               budget: int | None, working_set: int, minimum: int,
               links: dict | None = None) -> Plan:
    cyc = a.cycle
    links = links or {}
    full = {x for x, (_b, h) in links.items() if h is None}
    cont = {b for _x, (b, h) in links.items() if h is None}
    held_by = {b: h for _x, (b, h) in links.items() if h is not None}
    rows_of: dict = {}
    local_offsets: dict[str, int] = {}
    off = 0
    for g in sorted(np.flatnonzero(pinned_groups), key=lambda g: a.groups[g].first_use):
        grp = a.groups[g]
        if grp.kind == "local":
            local_offsets[grp.key] = off // 4
            off += align(grp.nbytes)
        else:
            rows_of.setdefault((grp.kind, grp.key), []).append(grp.rows)
    params = {t: _Pinned(o, rows_of.get(("param", t), [])) for t, o in a.param_order.items()}
    accs = {t: _Pinned(o, rows_of.get(("acc", t), [])) for t, o in a.acc_order.items()}

    ops = []
    h2d = d2h = 0
    for op in cyc.ops:
        p = OpPlan(op, prefetch_at=layout.prefetch_at.get(op.id))
        p.keep, p.cont = op.id in full, op.id in cont
        if op.id in links and op.id not in full:
            p.hold = links[op.id][1]
        p.held = held_by.get(op.id, 0)
        if op.kind == "local":
            p.first, p.last = a.local_first[op.id], a.local_last[op.id]
            if op.name in local_offsets:
                o = local_offsets[op.name]
                p.view = (o, o + op.nbytes // 4)
            else:
                p.h2d = 0 if p.first or p.cont else op.nbytes - p.held
                p.d2h = 0 if p.last or p.keep else op.nbytes - p.hold
        else:
            rb = cyc.tables[op.table].row_bytes
            pin, slots = (params if op.kind == "read" else accs)[op.table].lookup(op.rows)
            if pin.all() and a.viewable[op.id]:
                p.view = (int(slots[0]), int(slots[0]) + len(slots))
            if op.kind == "read" and p.cont:
                p.hits = len(pin)       # still in its buffer since the previous read
            elif op.kind == "read":
                kept = np.arange(len(pin)) < p.held // rb     # in place since last read
                p.hits = int((pin | kept).sum())
                p.misses = len(pin) - p.hits
                p.h2d = p.misses * rb
                if p.view is None:
                    sel = pin & ~kept
                    p.pin_buf, p.pin_slots = _ix(np.flatnonzero(sel)), _ix(slots[sel])
                    sel = ~pin & ~kept
                    p.host_buf = _ix(np.flatnonzero(sel))
                    p.host_src = _ix(a.pos[op.id][sel])
            else:
                p.d2h = int((~pin).sum()) * rb
                if p.view is None:
                    first = a.first_touch[op.id]
                    p.to_pin_copy = _pair(pin & first, slots)
                    p.to_pin_add = _pair(pin & ~first, slots)
                    p.to_host_copy = _pair(~pin & first, a.pos[op.id])
                    p.to_host_add = _pair(~pin & ~first, a.pos[op.id])
        if p.view is None:
            width = 1 if op.kind == "local" else cyc.tables[op.table].width
            shape = (1, op.nbytes // 4) if op.kind == "local" else (len(op.rows), width)
            p.buf = (layout.offsets[op.id] // 4, shape)
        h2d += p.h2d
        d2h += p.d2h
        ops.append(p)

    clocks = []
    for k in range(cyc.n_clocks):
        c = ClockPlan()
        for t, rows in a.read_rows[k].items():
            c.pull[t] = rows
            pin, slots = params[t].lookup(rows)
            if pin.any():
                c.refresh[t] = (make_index(np.flatnonzero(pin)), make_index(slots[pin]))
                c.refresh_bytes += int(pin.sum()) * cyc.tables[t].row_bytes
        for t, rows in a.upd_rows[k].items():
            c.push[t] = rows
            pin, slots = accs[t].lookup(rows)
            if pin.any():
                c.flush[t] = (make_index(slots[pin]), make_index(np.flatnonzero(pin)))
                c.flush_bytes += int(pin.sum()) * cyc.tables[t].row_bytes
        h2d += c.refresh_bytes
        d2h += c.flush_bytes
        clocks.append(c)
    return Plan(policy, budget, working_set, minimum, dict(cyc.tables),
                {t: p.n for t, p in params.items()}, {t: p.n for t, p in accs.items()},
                local_offsets, off // 4, layout.capacity, ops, clocks, h2d, d2h)
