"""Facts the planner derives from a recorded cycle, and the access-buffer pool layout.

    a = analyze(cycle)                                  # budget-independent, pure
    layout = allocate(a, needs, capacity, "mixed")      # PoolLayout or Failure

`analyze` finds, per clock, the rows each table reads and updates; each row's rank in
order of first use (pinned rows get slots in that order, so an operation that first
uses a contiguous run of rows can read them as a view); the groups of rows that the
same operations touch (the unit the planner pins); and what pinning each group saves.

`allocate` lays the buffers of the operations that need one into the pool, first
fit, at fixed byte offsets (so every index is built once). An operation's buffer is
filled while the previous operation runs (prefetch) when its space is free at that
point; otherwise when it is called (sync).
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
    clock_bytes: int = field(default=0, init=False)   # pinned: refresh/flush per cycle
    rows: np.ndarray | None         # sorted by first-use rank (None for local)
    n: int                          # rows (1 for local)
    nbytes: int
    benefit: int                    # bytes per cycle saved by pinning it
    first_use: int                  # op id
    ops: list = field(default_factory=list)     # (op id, occurrences of each row)


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
class Analysis:
    cycle: object
    size: np.ndarray                # rows per op (1 for local), with repeats
    buf_bytes: np.ndarray           # bytes of each op's data
    viewable: np.ndarray            # an op that would be a view if all its rows were pinned
    prefetchable: np.ndarray        # an op whose data may be filled before its call
    calls: list                     # per clock: op ids in call order
    read_rows: list                 # per clock: {table: sorted distinct rows read}
    upd_rows: list                  # per clock: {table: sorted distinct rows updated}
    pos: dict                       # op -> positions of its rows in read_rows/upd_rows
    first_touch: dict               # pre_update op -> bool per row (first update in clock)
    local_first: dict               # local op -> first access of that local in its clock
    local_last: dict                # local op -> last access in its clock
    param_order: dict               # table -> Order
    acc_order: dict                 # table -> Order
    groups: list
    op_groups: list                 # op -> group ids
    links: list                     # Link candidates: consecutive uses of the same data
    events_per_cycle: int
    row_group: dict                 # read/pre_update op -> group id of each of its rows


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
        saved = sum(c - 1 for c in per_clock.values()) * rb * len(members)
        members = members[np.argsort(order.rank(members))]
        out.append(Group(kind, table.name, members, len(members), len(members) * rb, saved,
                         int(rep_ops.min()), [(int(o), int(m)) for o, m in zip(rep_ops, mult)]))
    return out


def analyze(cycle) -> Analysis:
    """Budget-independent facts of a cycle (pure)."""
    ops = cycle.ops
    n_ops = len(ops)
    size = np.array([len(op.rows) if op.rows is not None else 1 for op in ops], np.int64)
    buf_bytes = np.array([op.nbytes for op in ops], np.int64)
    clock_of = {op.id: op.clock for op in ops}
    calls, read_rows, upd_rows = [], [], []
    pos, first_touch, local_first, local_last = {}, {}, {}, {}
    prefetchable = np.ones(n_ops, bool)
    for k, events in enumerate(cycle.clocks):
        cs = [ev.op for ev in events if ev.kind == "call"]
        calls.append(cs)
        reads: dict[str, list] = {}
        upds: dict[str, list] = {}
        for o in cs:
            op = ops[o]
            if op.kind == "read":
                reads.setdefault(op.table, []).append(op.rows)
            elif op.kind == "pre_update":
                upds.setdefault(op.table, []).append(op.rows)
        read_rows.append({t: np.unique(np.concatenate(v)) for t, v in reads.items()})
        upd_rows.append({t: np.unique(np.concatenate(v)) for t, v in upds.items()})
        seen = {t: np.zeros(len(r), bool) for t, r in upd_rows[k].items()}
        call_at = {ev.op: i for i, ev in enumerate(events) if ev.kind == "call"}
        post_at = {ev.op: i for i, ev in enumerate(events) if ev.kind == "post"}
        prev_access: dict[str, int] = {}
        for j, o in enumerate(cs):
            op = ops[o]
            if op.kind == "read":
                pos[o] = np.searchsorted(read_rows[k][op.table], op.rows)
            elif op.kind == "pre_update":
                pos[o] = np.searchsorted(upd_rows[k][op.table], op.rows)
            else:
                prev = prev_access.get(op.name)
                local_first[o] = prev is None
                if prev is not None:
                    local_last[prev] = False
                    # Its fill must follow the previous access's write-back, queued at
                    # that post: only possible if the post precedes the prefetch point.
                    point = call_at[cs[j - 1]] if j > 0 else -1
                    prefetchable[o] = post_at[prev] < point
                local_last[o] = True
                prev_access[op.name] = o
        # Accumulation happens at the update (the post), in that order: the first
        # update of a row in a clock copies into it, later ones add.
        for ev in events:
            op = ops[ev.op]
            if op.kind == "pre_update" and ev.kind == "post":
                p = pos[op.id]
                first_touch[op.id] = ~seen[op.table][p]
                seen[op.table][p] = True

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
    local_ops: dict[str, list[int]] = {}
    for op in ops:
        if op.kind == "local":
            local_ops.setdefault(op.name, []).append(op.id)
    for name, ids in local_ops.items():
        nbytes = ops[ids[0]].nbytes
        per_clock: dict[int, int] = {}
        for o in ids:
            per_clock[clock_of[o]] = per_clock.get(clock_of[o], 0) + 1
        saved = sum(2 * (c - 1) for c in per_clock.values()) * nbytes
        groups.append(Group("local", name, None, 1, align(nbytes), saved, ids[0],
                            [(o, 1) for o in ids]))

    links = []
    n_events = 0
    for k, events in enumerate(cycle.clocks):
        n_events += len(events)
        call_at = {ev.op: i for i, ev in enumerate(events) if ev.kind == "call"}
        post_at = {ev.op: i for i, ev in enumerate(events) if ev.kind == "post"}
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

    viewable = np.ones(n_ops, bool)
    for op in ops:
        if op.kind == "read":
            r = param_order[op.table].rank(op.rows)
            viewable[op.id] = bool(np.all(np.diff(r) == 1))
        elif op.kind == "pre_update":
            r = acc_order[op.table].rank(op.rows)
            viewable[op.id] = bool(np.all(np.diff(r) == 1)) and bool(first_touch[op.id].all())
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
            for op in ops:
                if op.kind == op_kind and op.table == t:
                    row_group[op.id] = gid[np.searchsorted(rows, op.rows)]
    for grp in groups:
        if grp.kind != "local":
            clocks = {clock_of[o] for o, _m in grp.ops}
            grp.clock_bytes = grp.nbytes * len(clocks)
    op_groups: list[list[int]] = [[] for _ in range(n_ops)]
    for g, grp in enumerate(groups):
        for o, _m in grp.ops:
            op_groups[o].append(g)
    return Analysis(cycle, size, buf_bytes, viewable, prefetchable, calls, read_rows,
                    upd_rows, pos, first_touch, local_first, local_last, param_order,
                    acc_order, groups, op_groups, links, n_events, row_group)


@dataclass
class PoolLayout:
    offsets: dict       # op id -> byte offset in the pool
    prefetch_at: dict   # op id -> op id whose call issues its fill (-1: clock start)
    capacity: int       # bytes the layout uses


@dataclass
class Failure:
    op: int             # the op whose buffer did not fit
    live: list          # ops holding pool space at that moment
    capacity: int | None


def _first_fit(live: list, size: int, capacity: int | None) -> int | None:
    at = 0
    for off, end, _op in live:
        if off - at >= size:
            break
        at = max(at, end)
    if capacity is not None and at + size > capacity:
        return None
    return at


def _last_fit(live: list, size: int, capacity: int) -> int | None:
    """The highest offset where `size` bytes fit below `capacity`."""
    top = capacity
    for off, end, _op in reversed(live):
        if top - end >= size:
            break
        top = min(top, off)
    at = (top - size) // ALIGN * ALIGN
    if at < 0 or any(s < at + size and at < e for s, e, _ in live):
        return None
    return at


def allocate(a: Analysis, needs: np.ndarray, capacity: int | None, mode: str,
             links: dict | None = None, exempt: frozenset = frozenset(),
             two_ended: bool = False):
    """Fixed pool offsets for the ops in `needs`. mode: "prefetch" (every prefetchable
    op must be filled during its predecessor, else Failure), "mixed" (prefetch where
    space allows) or "sync" (never prefetch). In "prefetch" mode the ops in `exempt`
    may be filled at their call when there is no room earlier. `two_ended` places
    buffers that die at their post at the top of the pool, held ones at the bottom.

    `links` maps an op to (next op using the same data, bytes held): held None keeps
    the whole buffer, as it stands, for the next op (one offset for the chain); held
    h keeps only its first h bytes after the post and places the next op's buffer at
    the same offset, so only the rest is fetched again."""
    links = links or {}
    full_to = {b: x for x, (b, h) in links.items() if h is None}
    part_to = {b: (x, h) for x, (b, h) in links.items() if h is not None}
    offsets: dict[int, int] = {}
    prefetch_at: dict[int, int] = {}
    top = 0
    for k, events in enumerate(a.cycle.clocks):
        live: list = []         # (off, end, owner), sorted by off; owner: op or ("hold", op)
        cs = a.calls[k]
        index = {o: i for i, o in enumerate(cs)}

        def place(o: int) -> int | None:
            nonlocal top
            size = align(a.buf_bytes[o])
            if o in part_to:
                hold = ("hold", o)
                off = offsets.get(part_to[o][0])
                if off is None or not any(x[2] == hold for x in live):
                    return None         # the held part is not there (yet)
                if capacity is not None and off + size > capacity:
                    return None
                if any(w != hold and s < off + size and off < e for s, e, w in live):
                    return None
                live[:] = [x for x in live if x[2] != hold]
            elif two_ended and capacity is not None and o not in links:
                # Short lives at the top do not fragment the space at the bottom that
                # a held buffer will extend into.
                off = _last_fit(live, size, capacity)
                if off is None:
                    return None
            else:
                off = _first_fit(live, size, capacity)
                if off is None:
                    return None
            live.append((off, off + size, o))
            live.sort(key=lambda x: x[0])
            top = max(top, off + size)
            return off

        def prefetch(i: int, point: int):
            if i >= len(cs) or mode == "sync":
                return None
            o = cs[i]
            if not needs[o] or not a.prefetchable[o] or o in full_to:
                return None
            off = place(o)
            if off is None:
                return Failure(o, _owners(live), capacity) \
                    if mode == "prefetch" and o not in exempt else None
            offsets[o] = off
            prefetch_at[o] = point
            return None

        fail = prefetch(0, -1)
        if fail:
            return fail
        for ev in events:
            o = ev.op
            if ev.kind == "call":
                if o in full_to:
                    head = full_to[o]
                    live[:] = [(x[0], x[1], o) if x[2] == head else x for x in live]
                    offsets[o] = offsets[head]
                elif needs[o] and o not in offsets:
                    off = place(o)
                    if off is None:
                        return Failure(o, _owners(live), capacity)
                    offsets[o] = off
                fail = prefetch(index[o] + 1, o)
                if fail:
                    return fail
            elif needs[o]:
                nxt, held = links.get(o, (None, 0))
                if nxt is None or held is not None:
                    live[:] = [x for x in live if x[2] != o]
                if nxt is not None and held is not None:
                    off = offsets[o]
                    live.append((off, off + align(held), ("hold", nxt)))
                    live.sort(key=lambda x: x[0])
        # Offsets found in clock k stay for clock k+1's ops: reset the live set.
    return PoolLayout(offsets, prefetch_at, top)


def _owners(live) -> list:
    return [w if isinstance(w, int) else w[1] for *_, w in live]


def peak_open_bytes(a: Analysis) -> int:
    """Most bytes held at once by operations between their call and their post."""
    peak = 0
    for events in a.cycle.clocks:
        cur = 0
        for ev in events:
            b = align(a.buf_bytes[ev.op])
            cur += b if ev.kind == "call" else -b
            peak = max(peak, cur)
    return peak
