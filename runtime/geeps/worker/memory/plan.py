"""The plan the worker executes: pinned regions, pool offsets and every index, built once.

    plan = geeps.worker.memory.make_plan(cycle, budget)     # a MemoryPlan
    op = plan.ops[3]            # OpPlan: a view of pinned rows, or a pool buffer + fills
    plan.clocks[0].refresh      # per table: host positions -> pinned slots, per clock

Pinned parameter rows of a table occupy slots in order of first use, and so do pinned
accumulator rows; an operation whose rows are all pinned and contiguous in that order
reads (or writes) them in place. Everything else is an index pair for one batched
kernel: buffer positions <- pinned slots (device gather), buffer positions <- pulled
host rows (host->device), buffer rows -> pinned accumulator slots (scatter, scatter-
add), buffer rows -> host accumulator rows (device->host, copy or add).

`op_traffic` is the cost model of one operation (the bytes it moves), which the
planner weighs its choices with and the plan reports; pinned rows add their refresh
(host->device) or flush (device->host) once per clock that uses them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geeps.backend import Index, make_index
from geeps.job import memsettings as _memsettings
from geeps.job.units import format_bytes
from geeps.worker.memory.analysis import Analysis, align
from geeps.worker.memory.layout import BudgetError, PoolLayout


@dataclass(frozen=True)
class Chain:
    """An operation's place in a chain of operations that share one pool buffer (the
    same data used again): what it finds in the buffer, and what it leaves there."""
    cont: bool = False      # the previous op's whole buffer, as it stands: no fill
    held: int = 0           # bytes already in place from the previous op (a prefix)
    keep: bool = False      # the next op takes this whole buffer over
    hold: int = 0           # bytes kept in place for the next op (a prefix)

    @classmethod
    def between(cls, into: tuple | None, out: tuple | None) -> "Chain":
        """From the link into the op and the link out of it: each (op, bytes held, or
        None for the whole buffer), or None where there is no such link."""
        return cls(cont=into is not None and into[1] is None,
                   held=(into[1] or 0) if into is not None else 0,
                   keep=out is not None and out[1] is None,
                   hold=(out[1] or 0) if out is not None else 0)


def _filled(chain: Chain, rb: int) -> slice:
    """The rows of a read's buffer filled at its call: none when the previous read's
    whole buffer is still there, else all but the prefix held from it."""
    return slice(0, 0) if chain.cont else slice(chain.held // rb, None)


def op_traffic(a: Analysis, o: int, pinned, chain: Chain) -> tuple[int, int]:
    """Bytes (host->device, device->host) one execution of operation o moves. `pinned`:
    which of its rows are pinned (for local data, whether it is); `chain`: what its
    buffer shares with the previous and the next use of the same data.

    A read copies in the rows it fills that are not pinned; an update copies out the
    rows that are not pinned; local data that is not pinned is copied in at each
    access but the first (the first too when it fetches) and written back at each but
    the last (the last too when it keeps), less what is held in place between two
    accesses. Pinned data never moves per operation."""
    op = a.cycle.ops[o]
    if op.kind == "local":
        if pinned:
            return 0, 0
        first, last = a.usage.local_first[o], a.usage.local_last[o]
        h2d = 0 if chain.cont or (first and not op.fetch) else op.nbytes - chain.held
        d2h = 0 if chain.keep or (last and not op.keep) else op.nbytes - chain.hold
        return h2d, d2h
    rb = a.cycle.tables[op.table].row_bytes
    if op.kind == "read":
        return int((~pinned[_filled(chain, rb)]).sum()) * rb, 0
    return 0, int((~pinned).sum()) * rb


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
    # table -> (smallest slack its reads name, whether one follows the job's model);
    # absent when every read of the table follows the model (geeps.worker.reads)
    slack: dict = field(default_factory=dict)


@dataclass
class MemoryPlan:
    """Where every row of the cycle lives and how it moves (see module docstring)."""
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


def build_plan(a: Analysis, pinned_groups: np.ndarray, layout: PoolLayout, links: dict, *,
               policy: str, budget: int | None, working_set: int,
               minimum: int) -> MemoryPlan:
    """The plan for the groups marked in `pinned_groups`, the pool `layout` and the
    buffer `links` (op -> (next op, bytes held or None: all), between ops that both
    need a buffer). The rest is reported as is: the policy, budget, working set and
    minimum budget it was made for."""
    slots = _Slots(a, pinned_groups)
    into = {b: (x, h) for x, (b, h) in links.items()}
    ops = [_op_plan(a, op, slots, layout, Chain.between(into.get(op.id), links.get(op.id)))
           for op in a.cycle.ops]
    clocks = [_clock_plan(a, k, slots) for k in range(a.cycle.n_clocks)]
    return MemoryPlan(
        policy=policy, budget=budget, working_set_bytes=working_set, minimum_budget=minimum,
        tables=dict(a.cycle.tables),
        param_slots={t: p.n for t, p in slots.params.items()},
        acc_slots={t: p.n for t, p in slots.accs.items()},
        local_offsets=slots.local_offsets, local_floats=slots.local_floats,
        pool_bytes=layout.capacity, ops=ops, clocks=clocks,
        h2d_bytes=sum(p.h2d for p in ops) + sum(c.refresh_bytes for c in clocks),
        d2h_bytes=sum(p.d2h for p in ops) + sum(c.flush_bytes for c in clocks))


class _Slots:
    """The pinned regions: per table, which rows have slots; per local datum, its
    float offset (in order of first use)."""

    def __init__(self, a: Analysis, pinned_groups: np.ndarray):
        groups = a.grouping.groups
        rows_of: dict = {}
        self.local_offsets: dict[str, int] = {}
        off = 0
        for g in sorted(np.flatnonzero(pinned_groups), key=lambda g: groups[g].first_use):
            grp = groups[g]
            if grp.kind == "local":
                self.local_offsets[grp.key] = off // 4
                off += align(grp.nbytes)
            else:
                rows_of.setdefault((grp.kind, grp.key), []).append(grp.rows)
        self.local_floats = off // 4
        self.params = {t: _Pinned(o, rows_of.get(("param", t), []))
                       for t, o in a.grouping.param_order.items()}
        self.accs = {t: _Pinned(o, rows_of.get(("acc", t), []))
                     for t, o in a.grouping.acc_order.items()}


def _op_plan(a: Analysis, op, slots: _Slots, layout: PoolLayout, chain: Chain) -> OpPlan:
    p = OpPlan(op, prefetch_at=layout.prefetch_at.get(op.id), cont=chain.cont,
               held=chain.held, keep=chain.keep, hold=chain.hold)
    if op.kind == "local":
        p.first, p.last = a.usage.local_first[op.id], a.usage.local_last[op.id]
        o = slots.local_offsets.get(op.name)
        if o is not None:
            p.view = (o, o + op.nbytes // 4)
        p.h2d, p.d2h = op_traffic(a, op.id, o is not None, chain)
    else:
        pinned = slots.params if op.kind == "read" else slots.accs
        pin, at = pinned[op.table].lookup(op.rows)
        if pin.all() and a.viewable[op.id]:
            p.view = (int(at[0]), int(at[0]) + len(at))
        p.h2d, p.d2h = op_traffic(a, op.id, pin, chain)
        if op.kind == "read":
            _read_fills(a, p, pin, at, chain)
        elif p.view is None:
            _update_targets(a, p, pin, at)
    if p.view is None:
        width = 1 if op.kind == "local" else a.cycle.tables[op.table].width
        shape = (1, op.nbytes // 4) if op.kind == "local" else (len(op.rows), width)
        p.buf = (layout.offsets[op.id] // 4, shape)
    return p


def _read_fills(a: Analysis, p: OpPlan, pin: np.ndarray, at: np.ndarray,
                chain: Chain) -> None:
    """A read's hits and misses, and (for a buffer) the indices that fill it: from
    pinned slots, and from the rows pulled into host memory."""
    op = p.op
    fill = np.zeros(len(pin), bool)
    fill[_filled(chain, a.cycle.tables[op.table].row_bytes)] = True
    from_host = ~pin & fill
    p.misses = int(from_host.sum())
    p.hits = len(pin) - p.misses
    if p.view is None:
        from_slots = pin & fill
        p.pin_buf, p.pin_slots = _ix(np.flatnonzero(from_slots)), _ix(at[from_slots])
        p.host_buf = _ix(np.flatnonzero(from_host))
        p.host_src = _ix(a.usage.pos[op.id][from_host])


def _update_targets(a: Analysis, p: OpPlan, pin: np.ndarray, at: np.ndarray) -> None:
    """Where an update's buffer rows go: pinned slots or host rows, copied at the row's
    first update in the clock, added at later ones."""
    first = a.usage.first_touch[p.op.id]
    pos = a.usage.pos[p.op.id]
    p.to_pin_copy = _pair(pin & first, at)
    p.to_pin_add = _pair(pin & ~first, at)
    p.to_host_copy = _pair(~pin & first, pos)
    p.to_host_add = _pair(~pin & ~first, pos)


def _clock_plan(a: Analysis, k: int, slots: _Slots) -> ClockPlan:
    """Clock k's pulls and pushes, and the refresh and flush of its pinned rows."""
    c = ClockPlan()
    tables = a.cycle.tables
    for t in a.usage.read_rows[k]:
        named = [a.cycle.ops[o].slack for o in a.usage.calls[k]
                 if a.cycle.ops[o].kind == "read" and a.cycle.ops[o].table == t]
        given = [s for s in named if s is not None]
        if given:
            c.slack[t] = (min(given), len(given) < len(named))
    for t, rows in a.usage.read_rows[k].items():
        c.pull[t] = rows
        pin, at = slots.params[t].lookup(rows)
        if pin.any():
            c.refresh[t] = (make_index(np.flatnonzero(pin)), make_index(at[pin]))
            c.refresh_bytes += int(pin.sum()) * tables[t].row_bytes
    for t, rows in a.usage.upd_rows[k].items():
        c.push[t] = rows
        pin, at = slots.accs[t].lookup(rows)
        if pin.any():
            c.flush[t] = (make_index(at[pin]), make_index(np.flatnonzero(pin)))
            c.flush_bytes += int(pin.sum()) * tables[t].row_bytes
    return c


# ---- how strict the worker is about a plan that stalls (GeePS's memory warning level) --

STALL_LEVELS = _memsettings.STALL_LEVELS     # the manifest's words (spec.cache.stalls)


class StallError(BudgetError):
    """The plan makes the application wait for host->device copies, and the worker was
    told to refuse such a plan (stalls="refuse")."""


def stall_report(plan: MemoryPlan) -> str | None:
    """What in `plan` the application will wait for, or None when nothing: operations
    whose data comes from host memory but cannot be filled ahead of their call (no
    room in the pool while the previous operation runs)."""
    late = [p for p in plan.ops if p.h2d and p.prefetch_at is None]
    if not late:
        return None
    first = late[0].op
    budget = "unlimited" if plan.budget is None else format_bytes(plan.budget)
    return (f"the memory plan for budget {budget} stalls: {len(late)} operation(s) wait "
            f"for {format_bytes(plan.stalled_bytes)} per cycle of host->device copies "
            f"that cannot be prefetched, the first operation {first.id} (clock "
            f"{first.clock}: {first.describe()}); a budget of "
            f"{format_bytes(plan.working_set_bytes)} pins everything")


def judge_stalls(plan: MemoryPlan, level: str) -> str | None:
    """Apply the warning level to `plan`: "refuse" raises StallError when it stalls,
    "warn" returns the report for the caller to log, "accept" returns None."""
    if level not in STALL_LEVELS:
        raise ValueError(f"stalls={level!r} is not one of {', '.join(STALL_LEVELS)}")
    report = None if level == "accept" else stall_report(plan)
    if report is not None and level == "refuse":
        raise StallError(report + " (stalls='refuse'; 'warn' or 'accept' run it anyway)")
    return report
