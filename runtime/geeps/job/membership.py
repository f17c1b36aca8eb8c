"""STAND-IN for the lead's pure membership module (same interface); replaced by the
version on main when it lands. Only what the data path needs: initial, fail, segments,
holders, held_by, to_json/from_json."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

TOKENS = 64


@dataclass(frozen=True)
class Segment:
    lo: int
    hi: int
    holders: tuple[int, ...]

    @property
    def primary(self) -> int:
        return self.holders[0]

    @property
    def replicas(self) -> tuple[int, ...]:
        return self.holders[1:]


@dataclass(frozen=True)
class Copy:
    lo: int
    hi: int
    src: int
    dst: int


def _bound(t: int, n_rows: int) -> int:
    return t * n_rows // TOKENS


@dataclass(frozen=True)
class Membership:
    epoch: int
    servers: Mapping[int, str]
    owners: tuple[int, ...]
    replication: int = 1
    pending: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    def holders(self, token: int) -> tuple[int, ...]:
        out = [self.owners[token]]
        k = min(self.replication, len(set(self.owners)))
        i = token
        while len(out) < k:
            i = (i + 1) % TOKENS
            if self.owners[i] not in out:
                out.append(self.owners[i])
        for sid, toks in sorted(self.pending.items()):
            if token in toks and sid not in out:
                out.append(sid)
        return tuple(out)

    def segments(self, n_rows: int) -> list[Segment]:
        out: list[Segment] = []
        for t in range(TOKENS):
            lo, hi = _bound(t, n_rows), _bound(t + 1, n_rows)
            if lo == hi:
                continue
            h = self.holders(t)
            if out and out[-1].holders == h and out[-1].hi == lo:
                out[-1] = Segment(out[-1].lo, hi, h)
            else:
                out.append(Segment(lo, hi, h))
        return out

    def held_by(self, sid: int, n_rows: int) -> list[Segment]:
        return [s for s in self.segments(n_rows) if sid in s.holders]

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "servers": {str(k): v for k, v in self.servers.items()},
                "owners": list(self.owners), "replication": self.replication,
                "pending": {str(k): list(v) for k, v in self.pending.items()}}

    @classmethod
    def from_json(cls, d) -> "Membership":
        if not isinstance(d, dict):
            raise ValueError("membership must be an object")
        epoch = d.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise ValueError("membership field 'epoch' must be an integer >= 1")
        servers = d.get("servers")
        if not isinstance(servers, dict) or not servers:
            raise ValueError("membership field 'servers' must map ids to host:port")
        try:
            servers = {int(k): v for k, v in servers.items()}
        except ValueError:
            raise ValueError("membership field 'servers': ids must be integers") from None
        if not all(isinstance(v, str) and ":" in v for v in servers.values()):
            raise ValueError("membership field 'servers': addresses must be host:port")
        owners = d.get("owners")
        if (not isinstance(owners, list) or len(owners) != TOKENS
                or not all(isinstance(o, int) and o in servers for o in owners)):
            raise ValueError(f"membership field 'owners' must list {TOKENS} server ids")
        rep = d.get("replication", 1)
        if not isinstance(rep, int) or isinstance(rep, bool) or rep < 1:
            raise ValueError("membership field 'replication' must be an integer >= 1")
        pending = d.get("pending", {})
        if not isinstance(pending, dict):
            raise ValueError("membership field 'pending' must be an object")
        try:
            pending = {int(k): tuple(int(t) for t in v) for k, v in pending.items()}
        except (ValueError, TypeError):
            raise ValueError("membership field 'pending' must map ids to tokens") from None
        return cls(epoch, servers, tuple(owners), rep, pending)


def initial(addresses: Sequence[str], replication: int = 1) -> Membership:
    n = len(addresses)
    owners = tuple(min(n - 1, t * n // TOKENS) for t in range(TOKENS))
    return Membership(1, dict(enumerate(addresses)), owners, replication, {})


def fail(m: Membership, sid: int) -> Membership:
    owners = tuple(m.holders(t)[1] if o == sid else o for t, o in enumerate(m.owners))
    if sid in owners:
        raise ValueError(f"server {sid} holds tokens no replica holds")
    servers = {k: v for k, v in m.servers.items() if k != sid}
    pending = {k: v for k, v in m.pending.items() if k != sid}
    return Membership(m.epoch + 1, servers, owners, m.replication, pending)


def copies(old: Membership, new: Membership, n_rows: int) -> list[Copy]:
    out = []
    for t in range(TOKENS):
        lo, hi = _bound(t, n_rows), _bound(t + 1, n_rows)
        if lo == hi:
            continue
        had = old.holders(t)
        for dst in new.holders(t):
            if dst not in had:
                src = next(h for h in new.holders(t) if h in had)
                out.append(Copy(lo, hi, src, dst))
    return out
