"""Which servers hold which rows: the job's membership, its epoch, and the plans that
change it (pure: no sockets, no numpy; the coordinator, the shards and the clients all
read the same object).

The key space is a ring of TOKENS arcs, the same for every table: a table of n rows
gives arc t the rows [ceil(t n / TOKENS), ceil((t+1) n / TOKENS)). Each server holds a
set of arcs (its virtual nodes); a run of consecutive arcs with the same holders is one
`Segment` of each table, contiguous in rows, so a push of a table still travels as a
few zero-copy slices. The holders of a run are its primary (the one that sums the
workers' pushes and answers reads) followed by its replicas (the next servers on the
ring, which receive each clock's aggregated sum from the primary and apply the same
rule, so under BSP they hold the primary's bits).

Why equal arcs and not hashed token positions: ranges must stay contiguous (a hash of
every row would scatter a push into one slice per row), and random positions balance
badly -- the largest of S servers with V random virtual nodes each holds about
1 + 1/sqrt(V) times the mean, so 1.10x takes a hundred or more per server and as many
slices per push. Equal arcs with TOKENS divisible by every S up to 16 give each server
exactly TOKENS/S arcs (Dynamo's "Q/S tokens per node, equal-sized partitions"), and a
join takes TOKENS/(S(S+1)) arcs from the end of each server's longest run, so only the
rows the newcomer must hold move (1/(S+1) of them) and every server keeps a few runs.
`bench/bench_ring.py` prints the balance against hashed virtual nodes.

Every change bumps `epoch`. Clients send it with each request; a shard with a newer
membership refuses an older epoch and returns the membership, so the client re-routes.
Changes that need rows copied first go in two epochs: the receivers are listed as
`pending` (they fetch the rows and then follow the primary's per-clock stream like a
replica, serving nothing there yet); `promote` then flips them into place. A failure
promotes at once: the dead server's runs go to their first replica (which holds the
bits), and new replicas to restore k are added as pending.

    m = initial(["s0:7000", "s1:7000"], replication=2)
    m.segments(10)            # [Segment(0, 5, (0, 1)), Segment(5, 10, (1, 0))]
    m2 = join(m, "s2:7000")   # s2 pending on a third of the ring, epoch 2
    m3 = promote(m2)          # s2 primary there, epoch 3
    copies(m, m2, 10)         # what s2 fetches, from whom
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

TOKENS = 720720     # lcm(1..16): every S up to 16 divides the ring, and so does S(S+1)
PRIMARY, REPLICA = "primary", "replica"


class Lost(ValueError):
    """A change would leave some rows with no holder (every copy of them is gone)."""


@dataclass(frozen=True)
class Run:
    """Arcs [start, end) of the ring and who holds them, primary first."""
    start: int
    end: int
    holders: tuple[int, ...]


@dataclass(frozen=True)
class Pending:
    """Server `sid` is catching up on arcs [start, end), to become their `role` at the
    next `promote` (primary: it takes over from holders[0]; replica: it is added)."""
    start: int
    end: int
    sid: int
    role: str = REPLICA


@dataclass(frozen=True)
class Segment:
    """Rows [lo, hi) of one table and who holds them; `catching` receive the primary's
    per-clock stream but serve nothing there yet."""
    lo: int
    hi: int
    holders: tuple[int, ...]
    catching: tuple[int, ...] = ()

    @property
    def primary(self) -> int:
        return self.holders[0]

    @property
    def replicas(self) -> tuple[int, ...]:
        return self.holders[1:]


@dataclass(frozen=True)
class Copy:
    """Rows [lo, hi) that server `dst` fetches from server `src`."""
    lo: int
    hi: int
    src: int
    dst: int


def row(token: int, n_rows: int) -> int:
    """The first row of arc `token` in a table of n_rows (ceil, so S equal shares of the
    ring give geeps.tables.table.partition's bounds)."""
    return -((-token * n_rows) // TOKENS)


@dataclass(frozen=True)
class Membership:
    epoch: int
    servers: Mapping[int, str]          # server id -> host:port; ids are never reused
    runs: tuple[Run, ...]               # cover [0, TOKENS) in order
    replication: int = 1
    pending: tuple[Pending, ...] = ()
    leaving: frozenset = field(default_factory=frozenset)   # drained at the next promote
    next_id: int = 0                    # the id the next server to join gets

    def __post_init__(self):
        # ids are never reused: a client or shard that still knows a gone server by its
        # id must not mistake a newcomer for it
        object.__setattr__(self, "next_id", max(self.next_id, max(self.servers) + 1))

    # ---- reading ------------------------------------------------------------------
    def holders(self, token: int) -> tuple[int, ...]:
        """Primary first, then replicas, of arc `token`."""
        for r in self.runs:
            if r.start <= token < r.end:
                return r.holders
        raise ValueError(f"token {token} outside the ring [0, {TOKENS})")

    def segments(self, n_rows: int) -> list[Segment]:
        """A table's rows as contiguous non-empty segments in row order, adjacent ones
        with the same holders and catchers merged."""
        cuts = sorted({0, TOKENS} | {r.start for r in self.runs}
                      | {p.start for p in self.pending} | {p.end for p in self.pending})
        out: list[Segment] = []
        for a, b in zip(cuts, cuts[1:]):
            lo, hi = row(a, n_rows), row(b, n_rows)
            if lo == hi:
                continue
            holders = self.holders(a)
            catching = tuple(sorted(p.sid for p in self.pending if p.start <= a < p.end))
            if out and out[-1].holders == holders and out[-1].catching == catching:
                out[-1] = Segment(out[-1].lo, hi, holders, catching)
            else:
                out.append(Segment(lo, hi, holders, catching))
        return out

    def held_by(self, sid: int, n_rows: int) -> list[Segment]:
        """The segments `sid` holds or is catching up on."""
        return [s for s in self.segments(n_rows) if sid in s.holders or sid in s.catching]

    def tokens_of(self, sid: int) -> int:
        """How many arcs `sid` is primary of."""
        return sum(r.end - r.start for r in self.runs if r.holders[0] == sid)

    @property
    def primaries(self) -> tuple[int, ...]:
        """Servers that are primary of some arc, in ring order of their first arc."""
        seen: dict[int, None] = {}
        for r in self.runs:
            seen.setdefault(r.holders[0], None)
        return tuple(seen)

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "replication": self.replication,
                "servers": {str(k): v for k, v in sorted(self.servers.items())},
                "runs": [[r.start, r.end, list(r.holders)] for r in self.runs],
                "pending": [[p.start, p.end, p.sid, p.role] for p in self.pending],
                "leaving": sorted(self.leaving), "next_id": self.next_id}

    @classmethod
    def from_json(cls, d) -> "Membership":
        """The membership a message carries; ValueError naming the field at fault."""
        if not isinstance(d, dict):
            raise ValueError("membership: expected an object")
        epoch = _int(d.get("epoch"), "membership.epoch", 1)
        replication = _int(d.get("replication", 1), "membership.replication", 1)
        servers_raw = d.get("servers")
        if not isinstance(servers_raw, dict) or not servers_raw:
            raise ValueError("membership.servers: expected a non-empty object id -> host:port")
        servers: dict[int, str] = {}
        for k, v in servers_raw.items():
            if not (isinstance(k, str) and k.isdigit()) or not isinstance(v, str) or not v:
                raise ValueError(f"membership.servers[{k!r}]: expected a numeric id and a "
                                 f"host:port")
            servers[int(k)] = v
        runs_raw = d.get("runs")
        if not isinstance(runs_raw, list) or not runs_raw:
            raise ValueError("membership.runs: expected a non-empty list")
        runs, at = [], 0
        for i, r in enumerate(runs_raw):
            where = f"membership.runs[{i}]"
            if not (isinstance(r, list) and len(r) == 3 and isinstance(r[2], list)):
                raise ValueError(f"{where}: expected [start, end, [holders]]")
            start, end = _int(r[0], where + ".start", 0), _int(r[1], where + ".end", 0)
            if start != at or end <= start or end > TOKENS:
                raise ValueError(f"{where}: runs must cover [0, {TOKENS}) in order "
                                 f"(got [{start}, {end}) after {at})")
            holders = tuple(_int(h, where + ".holders", 0) for h in r[2])
            if not holders or len(set(holders)) != len(holders) \
                    or any(h not in servers for h in holders):
                raise ValueError(f"{where}.holders: expected distinct member ids, got "
                                 f"{list(r[2])}")
            runs.append(Run(start, end, holders))
            at = end
        if at != TOKENS:
            raise ValueError(f"membership.runs: cover [0, {at}), not the whole ring [0, {TOKENS})")
        pending = []
        for i, p in enumerate(d.get("pending") or []):
            where = f"membership.pending[{i}]"
            if not (isinstance(p, list) and len(p) == 4 and p[3] in (PRIMARY, REPLICA)):
                raise ValueError(f"{where}: expected [start, end, server, 'primary'|'replica']")
            start, end, sid = (_int(p[0], where, 0), _int(p[1], where, 0), _int(p[2], where, 0))
            if not start < end <= TOKENS or sid not in servers:
                raise ValueError(f"{where}: expected arcs inside the ring and a member id")
            pending.append(Pending(start, end, sid, p[3]))
        leaving = d.get("leaving") or []
        if not isinstance(leaving, list) or any(h not in servers for h in leaving):
            raise ValueError("membership.leaving: expected a list of member ids")
        next_id = _int(d.get("next_id", 0), "membership.next_id", 0)
        return cls(epoch, servers, tuple(runs), replication, tuple(pending),
                   frozenset(leaving), next_id)


def _int(v, where: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{where}: expected an integer >= {minimum}, got {v!r}")
    return v


def _merge(runs: Sequence[Run]) -> tuple[Run, ...]:
    out: list[Run] = []
    for r in runs:
        if r.end <= r.start:
            continue
        if out and out[-1].holders == r.holders and out[-1].end == r.start:
            out[-1] = Run(out[-1].start, r.end, r.holders)
        else:
            out.append(r)
    return tuple(out)


def _ring_after(order: Sequence[int], sid: int, k: int, exclude=()) -> tuple[int, ...]:
    """The next k servers after sid in ring order, skipping `exclude`."""
    if sid in order:
        i = order.index(sid)
        cand = [order[(i + j) % len(order)] for j in range(1, len(order))]
    else:
        cand = list(order)
    return tuple(s for s in cand if s != sid and s not in exclude)[:k]


# ---- plans ------------------------------------------------------------------------
def initial(addresses: Sequence[str], replication: int = 1) -> Membership:
    """Epoch 1: server s primary of arcs [s T/S, (s+1) T/S), replicated on the next
    replication-1 servers."""
    s = len(addresses)
    if s < 1:
        raise ValueError("a membership needs at least one server")
    if not 1 <= replication <= s:
        raise ValueError(f"replication {replication} must be between 1 and the number of "
                         f"servers ({s})")
    bounds = [-((-i * TOKENS) // s) for i in range(s + 1)]
    runs = tuple(Run(bounds[i], bounds[i + 1],
                     tuple((i + j) % s for j in range(replication))) for i in range(s))
    return Membership(1, dict(enumerate(addresses)), runs, replication)


def fail(m: Membership, sid: int) -> Membership:
    """`sid` is gone: each of its runs is served by its first replica at once; where
    fewer than k holders remain, the next servers on the ring catch up as replicas.
    Lost when some run had no other holder (roll back to a checkpoint instead)."""
    if sid not in m.servers:
        raise ValueError(f"server {sid} is not a member (epoch {m.epoch})")
    runs, lost = [], []
    for r in m.runs:
        left = tuple(h for h in r.holders if h != sid)
        if not left:
            # a catcher-up of this run may exist but is not in sync: the rows are lost
            lost.append((r.start, r.end))
        runs.append(Run(r.start, r.end, left))
    if lost:
        raise Lost(f"server {sid} held arcs {lost} alone; they need a checkpoint")
    servers = {k: v for k, v in m.servers.items() if k != sid}
    pending = [p for p in m.pending if p.sid != sid]
    m2 = Membership(m.epoch + 1, servers, _merge(runs), m.replication, (),
                    frozenset(m.leaving - {sid}), m.next_id)
    return _plan_replicas(Membership(m2.epoch, m2.servers, m2.runs, m2.replication,
                                     tuple(pending), m2.leaving, m2.next_id))


def join(m: Membership, address: str) -> Membership:
    """A new server: it catches up on its share of the ring -- TOKENS/(S+1) arcs, taken
    from the end of each primary's longest run as that primary's excess over an even
    share -- as pending primary (epoch+1); `promote` makes it serve them."""
    if m.pending:
        raise ValueError("a change is still in progress (pending arcs); promote it first")
    sid = m.next_id
    prim = [s for s in m.primaries if s not in m.leaving]
    target = _shares(len(prim) + 1)
    excess = {s: m.tokens_of(s) - t for s, t in zip(prim, target)}
    pending = []
    for s, give in excess.items():
        if give <= 0:
            continue
        for r in sorted((r for r in m.runs if r.holders[0] == s),
                        key=lambda r: r.start - r.end):
            take = min(give, r.end - r.start)
            pending.append(Pending(r.end - take, r.end, sid, PRIMARY))
            give -= take
            if not give:
                break
    return _plan_replicas(Membership(m.epoch + 1, {**m.servers, sid: address}, m.runs,
                                     m.replication,
                                     tuple(sorted(pending, key=lambda p: p.start)),
                                     m.leaving, sid + 1))


def _shares(n: int) -> list[int]:
    base, extra = divmod(TOKENS, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def leave(m: Membership, sid: int) -> Membership:
    """Drain `sid`: each of its runs goes, as pending, first to the primary before it
    and the one after it (so runs stay contiguous) up to their even share, the rest to
    whoever is furthest below it (epoch+1); `promote` then removes `sid`."""
    if m.pending:
        raise ValueError("a change is still in progress (pending arcs); promote it first")
    if sid not in m.servers:
        raise ValueError(f"server {sid} is not a member (epoch {m.epoch})")
    rest = [s for s in m.primaries if s != sid and s not in m.leaving]
    if not rest:
        raise ValueError(f"server {sid} is the last one; a job needs at least one server")
    if len(m.servers) - 1 < m.replication:
        raise ValueError(f"removing server {sid} would leave fewer servers than "
                         f"replication {m.replication}")
    need = {s: share - m.tokens_of(s) for s, share in zip(rest, _shares(len(rest)))}
    pending: list[Pending] = []
    for i, r in enumerate(m.runs):
        if r.holders[0] != sid:
            continue
        a, b = r.start, r.end
        prev = m.runs[i - 1].holders[0] if i else None
        nxt = m.runs[i + 1].holders[0] if i + 1 < len(m.runs) else None
        if need.get(prev, 0) > 0:
            t = min(need[prev], b - a)
            pending.append(Pending(a, a + t, prev, PRIMARY))
            need[prev] -= t
            a += t
        if need.get(nxt, 0) > 0 and a < b:
            t = min(need[nxt], b - a)
            pending.append(Pending(b - t, b, nxt, PRIMARY))
            need[nxt] -= t
            b -= t
        while a < b:
            s = max(need, key=lambda x: need[x])
            t = b - a if need[s] <= 0 else min(need[s], b - a)
            pending.append(Pending(a, a + t, s, PRIMARY))
            need[s] -= t
            a += t
    return _plan_replicas(Membership(m.epoch + 1, m.servers, m.runs, m.replication,
                                     tuple(sorted(pending, key=lambda p: p.start)),
                                     m.leaving | {sid}, m.next_id))


def _cuts(m: Membership) -> list[tuple[int, int]]:
    cuts = sorted({r.start for r in m.runs} | {TOKENS} | {p.start for p in m.pending}
                  | {p.end for p in m.pending})
    return list(zip(cuts, cuts[1:]))


def _kept(m: Membership, a: int) -> list[int]:
    """Who holds arc `a` after the next promote, before filling up to k: its pending
    primary, then its holders but the leaving ones (the old primary stays a replica)."""
    prim = [p.sid for p in m.pending if p.role == PRIMARY and p.start <= a < p.end]
    return prim + [h for h in m.holders(a) if h not in prim and h not in m.leaving]


def _plan_replicas(m: Membership) -> Membership:
    """Where a change leaves fewer than k holders that have the rows, the next servers
    on the ring catch up as replicas."""
    order = [s for s in m.primaries if s not in m.leaving]
    order += [s for s in m.servers if s not in order and s not in m.leaving]
    for p in m.pending:
        if p.role == PRIMARY and p.sid not in order:
            order.append(p.sid)
    k = min(m.replication, len(order))
    extra = []
    for a, b in _cuts(m):
        future = _kept(m, a)
        catching = [p.sid for p in m.pending if p.role == REPLICA and p.start <= a < p.end]
        want = k - len(future[:k]) - len(catching)
        if want > 0:
            for e in _ring_after(order, future[0], want, exclude=set(future) | set(catching)):
                extra.append(Pending(a, b, e, REPLICA))
    merged: list[Pending] = []
    for p in sorted(extra, key=lambda p: (p.sid, p.start)):
        if merged and merged[-1].sid == p.sid and merged[-1].end == p.start:
            merged[-1] = Pending(merged[-1].start, p.end, p.sid, REPLICA)
        else:
            merged.append(p)
    return Membership(m.epoch, m.servers, m.runs, m.replication, m.pending + tuple(merged),
                      m.leaving, m.next_id)


def promote(m: Membership) -> Membership:
    """The catchers-up are in sync: pending primaries take their arcs over (the old
    holders stay replicas up to k), pending replicas join the holders, and leaving
    servers drop out (epoch+1)."""
    runs = []
    for a, b in _cuts(m):
        holders = _kept(m, a)
        holders += [p.sid for p in m.pending
                    if p.role == REPLICA and p.start <= a < p.end and p.sid not in holders]
        if not holders:
            raise Lost(f"arcs [{a}, {b}) would have no holder after the change")
        runs.append(Run(a, b, tuple(holders[:m.replication])))
    servers = {k: v for k, v in m.servers.items() if k not in m.leaving}
    return Membership(m.epoch + 1, servers, _merge(runs), m.replication, (), frozenset(),
                      m.next_id)


def copies(old: Membership, new: Membership, n_rows: int) -> list[Copy]:
    """Rows of a table each server must fetch to hold what `new` gives it: from the
    rows' primary in `old` when it is still a member, else another old holder."""
    out = []
    for seg in new.segments(n_rows):
        for dst in seg.holders + seg.catching:
            for s in old.segments(n_rows):
                lo, hi = max(seg.lo, s.lo), min(seg.hi, s.hi)
                if lo >= hi or dst in s.holders or dst in s.catching:
                    continue
                src = next((h for h in s.holders if h in new.servers and h != dst), None)
                if src is None:
                    raise Lost(f"rows [{lo}, {hi}) have no holder left to copy from")
                out.append(Copy(lo, hi, src, dst))
    return _merge_copies(out)


def _merge_copies(cs: list[Copy]) -> list[Copy]:
    out: list[Copy] = []
    for c in sorted(cs, key=lambda c: (c.dst, c.src, c.lo)):
        if out and (out[-1].dst, out[-1].src, out[-1].hi) == (c.dst, c.src, c.lo):
            out[-1] = Copy(out[-1].lo, c.hi, c.src, c.dst)
        else:
            out.append(c)
    return out


def bytes_per_server(m: Membership, tables: Sequence[tuple[int, int]],
                     itemsize: int = 4) -> dict[int, dict[str, int]]:
    """{server: {"primary": bytes, "replica": bytes}} for tables of (n_rows, row_width)."""
    out = {s: {"primary": 0, "replica": 0} for s in m.servers}
    for n_rows, width in tables:
        for seg in m.segments(n_rows):
            nbytes = (seg.hi - seg.lo) * width * itemsize
            out[seg.primary]["primary"] += nbytes
            for r in seg.replicas:
                out[r]["replica"] += nbytes
    return out
