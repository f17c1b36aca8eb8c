"""Facts the planner derives from a recorded cycle, whatever the budget.

    a = analyze(cycle)          # pure
    a.usage.calls[k]            # clock k's operations in call order
    a.grouping.groups           # the units the planner pins, with what pinning saves
    a.links                     # where a buffer could be held for the next use of its data

`analyze` works in steps, each giving one record:
- `Usage`: one walk over each clock's events: the rows each table reads and updates,
  where each operation's rows sit among them, which update of a row comes first, the
  first and last access of local data, which operations may be filled ahead of time;
- `Grouping`: each row's rank in order of first use (pinned rows get slots in that
  order, so an operation that first uses a contiguous run of rows can read them as a
  view), the groups of rows that the same operations touch, and local data;
- `Link`s: consecutive uses of the same data within a clock;
- per operation: its size, its bytes, and whether it would be a view if all its rows
  were pinned.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ALIGN = 128     # bytes: a GPU memory transaction; buffers start on it (float4 loads need 16)


def align(n: int) -> int:
    return -(-int(n) // ALIGN) * ALIGN


@dataclass
class Group:
    """Rows of one table that the same operations touch (or one local datum)."""
    kind: str                       # param | acc | local
    key: str                        # table or local name
    rows: np.ndarray | None         # sorted by first-use rank (None for local)
    n: int                          # rows (1 for local)
    nbytes: int
    benefit: int                    # bytes per cycle saved by pinning it
    first_use: int                  # op id
    ops: list = field(default_factory=list)     # (op id, occurrences of each row)
    clock_bytes: int = 0            # pinned: refresh/flush bytes per cycle (0 for local)
    pinnable: bool = True           # False: local data that must leave at clock ends


@dataclass
class Link:
    """Op `b` may reuse op `a`'s buffer as it stands: the same rows of a table read
    again (parameters do not change within a clock), or the next access of a local
    datum. Holding the buffer saves `benefit` bytes and occupies `nbytes` for `span`
    events."""
    a: int
    b: int
    nbytes: int
    benefit: int
    span: int


@dataclass
class Order:
    """First-use order of a table's rows among the reads (or updates) of the cycle."""
    uniq: np.ndarray                # sorted distinct rows
    rank_of: np.ndarray             # rank of uniq[i]

    def rank(self, rows: np.ndarray) -> np.ndarray:
        return self.rank_of[np.searchsorted(self.uniq, rows)]


@dataclass
class Usage:
    """What each clock touches, in call order (one walk over the recorded events)."""
    prefetchable: np.ndarray        # an op whose data may be filled before its call
    # per clock
    calls: list = field(default_factory=list)       # op ids in call order
    read_rows: list = field(default_factory=list)   # {table: sorted distinct rows read}
    upd_rows: list = field(default_factory=list)    # {table: sorted distinct rows updated}
    # per op
    pos: dict = field(default_factory=dict)         # positions of its rows in read/upd_rows
    first_touch: dict = field(default_factory=dict)     # pre_update: first update, per row
    local_first: dict = field(default_factory=dict)     # local: first access in its clock
    local_last: dict = field(default_factory=dict)      # local: last access in its clock


@dataclass
class Grouping:
    """The units the planner pins: groups of rows in first-use order, and local data."""
    param_order: dict               # table -> Order of the rows read
    acc_order: dict                 # table -> Order of the rows updated
    groups: list                    # Group
    op_groups: list                 # op -> group ids
    row_group: dict                 # read/pre_update op -> group id of each of its rows


@dataclass
class Analysis:
    cycle: object
    size: np.ndarray                # rows per op (1 for local), with repeats
    buf_bytes: np.ndarray           # bytes of each op's data
    viewable: np.ndarray            # an op that would be a view if all its rows were pinned
    events_per_cycle: int
    usage: Usage
    grouping: Grouping
    links: list                     # Link candidates: consecutive uses of the same data
    persist: bool = True            # kept local data may stay in device memory across clocks


def analyze(cycle, persist: bool = True) -> Analysis:
    """Budget-independent facts of a cycle (pure). persist=False: device memory holds
    no local data across clock boundaries (what geeps did before fetch/keep: the
    baseline that pinned training data is measured against), so data a clock fetches
    or keeps goes through the access buffers and moves at every clock."""
    ops = cycle.ops
    usage = _usage(cycle)
    grouping = _grouping(cycle, persist)
    return Analysis(
        persist=persist,
        cycle=cycle,
        size=np.array([len(op.rows) if op.rows is not None else 1 for op in ops], np.int64),
        buf_bytes=np.array([op.nbytes for op in ops], np.int64),
        viewable=_viewable(ops, grouping, usage.first_touch),
        events_per_cycle=sum(len(events) for events in cycle.clocks),
        usage=usage,
        grouping=grouping,
        links=_links(cycle, usage.calls))


# ---- step 1: what each clock touches ---------------------------------------------------

def _usage(cycle) -> Usage:
    ops = cycle.ops
    u = Usage(np.ones(len(ops), bool))
    for events in cycle.clocks:
        calls = [ev.op for ev in events if ev.kind == "call"]
        u.calls.append(calls)
        u.read_rows.append(_distinct_rows(ops, calls, "read"))
        u.upd_rows.append(_distinct_rows(ops, calls, "pre_update"))
        for o in calls:
            op = ops[o]
            if op.kind == "read":
                u.pos[o] = np.searchsorted(u.read_rows[-1][op.table], op.rows)
            elif op.kind == "pre_update":
                u.pos[o] = np.searchsorted(u.upd_rows[-1][op.table], op.rows)
        _local_accesses(ops, events, calls, u)
        _first_touches(ops, events, u)
    return u


def _distinct_rows(ops, calls: list[int], kind: str) -> dict:
    """{table: sorted distinct rows} that the clock's operations of `kind` touch."""
    rows: dict[str, list] = {}
    for o in calls:
        if ops[o].kind == kind:
            rows.setdefault(ops[o].table, []).append(ops[o].rows)
    return {t: np.unique(np.concatenate(v)) for t, v in rows.items()}


def _event_positions(events) -> tuple[dict, dict]:
    """Each op's position among the clock's events: (at its call, at its post)."""
    call_at = {ev.op: i for i, ev in enumerate(events) if ev.kind == "call"}
    post_at = {ev.op: i for i, ev in enumerate(events) if ev.kind == "post"}
    return call_at, post_at


def _local_accesses(ops, events, calls: list[int], u: Usage) -> None:
    """The first and last access of each local datum in the clock, and whether an
    access that follows another can be filled ahead of its call."""
    call_at, post_at = _event_positions(events)
    prev_access: dict[str, int] = {}
    for j, o in enumerate(calls):
        op = ops[o]
        if op.kind != "local":
            continue
        prev = prev_access.get(op.name)
        u.local_first[o] = prev is None
        if prev is not None:
            u.local_last[prev] = False
            # Its fill must follow the previous access's write-back, queued at that
            # post: only possible if the post precedes the prefetch point.
            point = call_at[calls[j - 1]] if j > 0 else -1
            u.prefetchable[o] = post_at[prev] < point
        u.local_last[o] = True
        prev_access[op.name] = o


def _first_touches(ops, events, u: Usage) -> None:
    """Accumulation happens at the update (the post), in that order: the first update
    of a row in a clock copies into it, later ones add."""
    seen = {t: np.zeros(len(r), bool) for t, r in u.upd_rows[-1].items()}
    for ev in events:
        op = ops[ev.op]
        if op.kind == "pre_update" and ev.kind == "post":
            p = u.pos[op.id]
            u.first_touch[op.id] = ~seen[op.table][p]
            seen[op.table][p] = True


# ---- step 2: the units the planner pins ------------------------------------------------

def _grouping(cycle, persist: bool = True) -> Grouping:
    ops = cycle.ops
    clock_of = {op.id: op.clock for op in ops}
    rng = np.random.default_rng(0x6ee95)    # fixed: plans must be reproducible
    param_order, acc_order, groups = {}, {}, []
    for t, info in cycle.tables.items():
        r_ops = [(op.id, op.rows) for op in ops if op.kind == "read" and op.table == t]
        u_ops = [(op.id, op.rows) for op in ops if op.kind == "pre_update" and op.table == t]
        if r_ops:
            param_order[t] = _order([r for _, r in r_ops])
            groups += _row_groups("param", info, r_ops, param_order[t], clock_of, rng)
        if u_ops:
            acc_order[t] = _order([r for _, r in u_ops])
            groups += _row_groups("acc", info, u_ops, acc_order[t], clock_of, rng)
    groups += _local_groups(ops, clock_of, persist)
    op_groups: list[list[int]] = [[] for _ in ops]
    for g, grp in enumerate(groups):
        for o, _m in grp.ops:
            op_groups[o].append(g)
    return Grouping(param_order, acc_order, groups, op_groups, _row_group(cycle, groups))


def _order(rows_in_use_order: list[np.ndarray]) -> Order:
    cat = np.concatenate(rows_in_use_order)
    uniq, first = np.unique(cat, return_index=True)
    rank_of = np.empty(len(uniq), np.int64)
    rank_of[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    return Order(uniq, rank_of)


def _row_groups(kind: str, table, op_rows: list[tuple[int, np.ndarray]], order: Order,
                clock_of: dict, rng: np.random.Generator) -> list[Group]:
    """Group rows by the multiset of ops touching them; benefit of pinning each."""
    rows = np.concatenate([r for _, r in op_rows])
    ops = np.concatenate([np.full(len(r), o, np.int64) for o, r in op_rows])
    salt = rng.integers(1, 2**63, size=max(o for o, _ in op_rows) + 1, dtype=np.uint64)
    by_row = np.argsort(rows, kind="stable")
    rows_s, ops_s = rows[by_row], ops[by_row]
    starts = np.flatnonzero(np.r_[True, rows_s[1:] != rows_s[:-1]])
    with np.errstate(over="ignore"):
        sig = np.add.reduceat(salt[ops_s], starts)      # multiset hash, wraps mod 2**64
    uniq_rows = rows_s[starts]
    sig_vals, inverse = np.unique(sig, return_inverse=True)
    out = []
    rb = table.row_bytes
    for g in range(len(sig_vals)):
        members = uniq_rows[inverse == g]
        rep = int(np.flatnonzero(inverse == g)[0])
        lo = starts[rep]
        hi = starts[rep + 1] if rep + 1 < len(starts) else len(rows_s)
        rep_ops, mult = np.unique(ops_s[lo:hi], return_counts=True)
        per_clock: dict[int, int] = {}
        for o, m in zip(rep_ops, mult):
            per_clock[clock_of[int(o)]] = per_clock.get(clock_of[int(o)], 0) + int(m)
        nbytes = len(members) * rb
        members = members[np.argsort(order.rank(members))]
        out.append(Group(kind=kind, key=table.name, rows=members, n=len(members),
                         nbytes=nbytes,
                         benefit=sum(c - 1 for c in per_clock.values()) * nbytes,
                         first_use=int(rep_ops.min()),
                         ops=[(int(o), int(m)) for o, m in zip(rep_ops, mult)],
                         clock_bytes=nbytes * len(per_clock)))
    return out


def _local_groups(ops, clock_of: dict, persist: bool = True) -> list[Group]:
    """One group per local datum: pinned, it never moves; each extra access of it in a
    clock would otherwise copy it in and out, and in each clock that uses it, data
    fetched (kept) would otherwise be copied in at its first access (out at its
    last). Without `persist`, fetched or kept data cannot be pinned."""
    local_ops: dict[str, list[int]] = {}
    for op in ops:
        if op.kind == "local":
            local_ops.setdefault(op.name, []).append(op.id)
    out = []
    for name, ids in local_ops.items():
        nbytes = ops[ids[0]].nbytes
        per_clock: dict[int, int] = {}
        for o in ids:
            per_clock[clock_of[o]] = per_clock.get(clock_of[o], 0) + 1
        first = ops[ids[0]]
        crossing = int(first.fetch) + int(first.keep)       # bytes at each clock's ends
        pinnable = persist or not crossing
        benefit = sum(2 * (c - 1) + crossing for c in per_clock.values()) * nbytes
        out.append(Group(kind="local", key=name, rows=None, n=1, nbytes=align(nbytes),
                         benefit=benefit if pinnable else 0, first_use=ids[0],
                         ops=[(o, 1) for o in ids], pinnable=pinnable))
    return out


def _row_group(cycle, groups: list[Group]) -> dict:
    """Read/pre_update op -> the group id of each of its rows."""
    row_group = {}
    for kind, op_kind in (("param", "read"), ("acc", "pre_update")):
        for t in cycle.tables:
            gs = [g for g, grp in enumerate(groups) if grp.kind == kind and grp.key == t]
            if not gs:
                continue
            rows = np.concatenate([groups[g].rows for g in gs])
            gid = np.concatenate([np.full(groups[g].n, g) for g in gs])
            order = np.argsort(rows)
            rows, gid = rows[order], gid[order]
            for op in cycle.ops:
                if op.kind == op_kind and op.table == t:
                    row_group[op.id] = gid[np.searchsorted(rows, op.rows)]
    return row_group


# ---- step 3: buffers that could serve the next use of their data ---------------------

def _links(cycle, calls: list[list[int]]) -> list[Link]:
    ops = cycle.ops
    links = []
    for k, events in enumerate(cycle.clocks):
        call_at, post_at = _event_positions(events)
        last_use: dict = {}
        for o in calls[k]:
            op = ops[o]
            if op.kind == "pre_update":
                continue
            key = ("l", op.name) if op.kind == "local" else \
                ("r", op.table, op.run if op.run is not None else op.rows.tobytes())
            prev = last_use.get(key)
            if prev is not None:
                saved = 2 * op.nbytes if op.kind == "local" else op.nbytes
                links.append(Link(prev, o, align(op.nbytes), saved,
                                  post_at[o] - call_at[prev] + 1))
            last_use[key] = o
    return links


# ---- step 4: operations that pinning can turn into views -------------------------------

def _viewable(ops, grouping: Grouping, first_touch: dict) -> np.ndarray:
    """Whether each op would work in place if all its rows were pinned: its rows are
    contiguous in first-use order (and, for an update, each is its first in the clock)."""
    viewable = np.ones(len(ops), bool)
    for op in ops:
        if op.kind == "read":
            r = grouping.param_order[op.table].rank(op.rows)
            viewable[op.id] = bool(np.all(np.diff(r) == 1))
        elif op.kind == "pre_update":
            r = grouping.acc_order[op.table].rank(op.rows)
            viewable[op.id] = bool(np.all(np.diff(r) == 1)) and bool(first_touch[op.id].all())
    return viewable
