"""The state of one server shard and the meaning of each request (no sockets here).

`ShardState.handle(peer, frames)` validates a request completely before touching any
state, so a malformed or hostile message gets an error reply and changes nothing. It
returns the replies to send now: the request's own and those of parked reads that the
request released (a clock may hand some of the latter to `send_early` while it is
still applying). The socket loop lives in server.py.

Tables whose consistency model counts clocks (BSP/SSP, `per_clock`) sum the workers'
pushes of a clock in rank order as they become final (accumulate.ClockSum: the bits do
not depend on arrival order, and the memory does not grow with the number of workers),
then apply the sum once; async tables apply each push as it arrives. A push that
arrives ahead of its turn is kept, within GEEPS_PUSH_BUFFER bytes in all; past it
the push is answered `busy` and sent again when the shard says so (see _busy). Reads of a clock not applied yet
are parked until it is. Rows a request names are rows.RowRange or rows.RowIds.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from geeps.job import membership as _membership
from geeps.server import checkpoint
from geeps.server import functions as _functions
from geeps.server.accumulate import ClockSum, feed_array, merge, run_rows
from geeps.server.rows import RowIds, RowRange, Selection
from geeps.server.rules import GRADIENT_RULES, RuleState, describe
from geeps.tables.table import RULES, resolve_hyper
from geeps.wire import protocol as P
from geeps.wire.protocol import ProtocolError

log = logging.getLogger("geeps.server")
# Runs of pushed rows up to which a clock is applied slice by slice; beyond, rows
# pushed by id are gathered, updated and scattered back.
MAX_RUNS = 64
# The least GEEPS_PUSH_BUFFER (when it is left to the shard's size): two of a client's
# push chunks, so a small shard does not make every push ahead of its turn wait.
PUSH_BUFFER_MIN = 2 * P.CHUNK_BYTES
SESSIONS_PER_WORKER = 4     # sequence windows kept per worker (see ShardState._window)
# A digest hashes this many bytes, then lets the server answer other requests (see
# _digest_job); it starts over when the state changed meanwhile, at most DIGEST_TRIES times.
DIGEST_BLOCK = 16 << 20
DIGEST_TRIES = 3
# Requests that change nothing a digest covers.
READ_ONLY_OPS = frozenset({"pull", "ping", "stats", "digest", "checkpoints", "open"})
# Where a table's second and later segments on one shard are filed in `tables` (the
# first is filed under the table's name): a character no table name may hold.
SEGMENT_SEP = "\x00"
PEER_RETRY_S = 0.02     # a replica behind on the membership hears the stream again after
FETCH_RETRY_S = 0.1     # a fetch a holder could not answer yet is asked again after
MAX_EARLY_STREAM = 1024  # stream messages kept for rows still being fetched
MAX_EARLY_STREAM_BYTES = 1 << 30     # and their bytes: a clock's sum can be the model


def _new_inc() -> str:
    return os.urandom(8).hex()


def _count_nonfinite(values: np.ndarray) -> int:
    """NaN and Inf values in a push. The float64 sum of float32 values is finite
    exactly when every value is (it cannot overflow), and costs no temporary array."""
    if np.isfinite(values.sum(dtype=np.float64)):
        return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def _check_finite(value, where: str) -> None:
    """ValueError naming the first number in `value` (nested dicts and lists) that is
    not finite: such a value is refused where it enters, not when a clock applies it."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"{where} must be a finite number (got {value!r})")


def _feed_steps(h, a: np.ndarray):
    """feed_array(h, a) a DIGEST_BLOCK at a time, yielding between blocks."""
    rows = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
    step = max(1, DIGEST_BLOCK // max(1, rows[:1].nbytes))
    for i in range(0, len(rows), step):
        feed_array(h, rows[i:i + step])
        yield


class SeqWindow:
    """The push sequence numbers seen from one client session: a contiguous prefix
    (<= floor) plus the few seen above it. Exact, and bounded while pushes arrive
    roughly in order (they do: one ordered connection per shard)."""

    def __init__(self) -> None:
        self.floor = -1
        self.above: set[int] = set()

    def seen(self, seq: int) -> bool:
        return seq <= self.floor or seq in self.above

    def add(self, seq: int) -> None:
        self.above.add(seq)
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)


@dataclass
class ShardTable:
    name: str
    n_rows: int                 # rows of the whole table
    row_width: int
    lo: int                     # this shard holds global rows [lo, hi)
    hi: int
    rule: str
    hyper: dict
    per_clock: bool             # BSP/SSP: buffer pushes, apply once per clock
    rows: np.ndarray = field(repr=False, default=None)
    state: RuleState = field(repr=False, default=None)
    # clock -> the pushes of that clock, summed in rank order (accumulate.ClockSum);
    # per_clock tables only.
    pending: dict[int, ClockSum] = field(default_factory=dict, repr=False)
    # Sum buffers of applied clocks, reused: a fresh array per clock would page-fault
    # its way through the whole shard every clock.
    free: list = field(default_factory=list, repr=False)
    # Early apply (rows every worker's final value is in, see ShardState._early):
    # clock -> the rows already updated (sorted disjoint runs); the clock whose update
    # the rule's step counts.
    applied: dict = field(default_factory=dict, repr=False)
    begun: int = -1
    # worker -> (clock, runs): rows its dead predecessor's last pushes helped update
    # early in the clock the replacement redoes; what it pushes there again is dropped.
    absorbed: dict = field(default_factory=dict, repr=False)
    # Server functions (geeps.server.functions) around the rule's update; a table
    # with some is updated at the clock's end only, never early.
    functions: tuple = field(default=(), repr=False)
    # Where ShardState.tables files it (the name, or name SEGMENT_SEP lo for a second
    # segment of the same table on this shard).
    key: str = ""
    # Membership (issue 16): the next clock this segment applies (a replica's moves
    # with its primary's stream, not with the workers' clocks), the holders the
    # primary forwards each clock to (empty: this shard is a replica, or there are
    # none), whether this shard serves it, and clock -> the replicas that have not
    # acknowledged it yet (reads of the clock after it wait for them).
    next: int = 0
    replicas: tuple = ()
    # the replicas in sync (not catching up): a clock is durable once these acked it; a
    # catcher-up gets the stream too, but waiting for it would stall every read behind
    # a server still starting (a joiner replacing a lost one takes a second to start)
    synced: tuple = ()
    # catchers-up that fetched this segment from here: from then on they follow its
    # stream, and a clock is durable only once they have it too (promote makes them
    # holders, and the old primary may be stopped at once)
    fetched_by: set = field(default_factory=set, repr=False)
    primary: bool = True
    unacked: dict = field(default_factory=dict, repr=False)
    # A promoted replica that lags the workers' clocks redoes clock `next` from the
    # pushes the workers send it again (see ShardState._op_clock's `redo`): the
    # workers that said they sent all of theirs.
    redone: set = field(default_factory=set, repr=False)
    redo: int | None = None

    @property
    def durable(self) -> int:
        """Clocks before this are applied on every holder (reads may see them)."""
        return min(self.unacked) if self.unacked else self.next

    def spec(self) -> dict:
        out = {"table": self.name, "n_rows": self.n_rows, "row_width": self.row_width,
               "lo": self.lo, "hi": self.hi, "rule": self.rule, "hyper": self.hyper,
               "per_clock": self.per_clock}
        if self.functions:
            out["functions"] = [f.spec() for f in self.functions]
        return out

    def alloc(self) -> np.ndarray:
        """A buffer the shard's size for a clock's sum (its contents are garbage)."""
        return self.free.pop() if self.free else np.empty_like(self.rows)

    def clock_sum(self, clock: int, done: list[int]) -> ClockSum:
        """The sum of `clock`, made when its first push arrives; workers that finished
        the clock already (`done`) count as final everywhere."""
        s = self.pending.get(clock)
        if s is None:
            s = self.pending[clock] = ClockSum(len(self.rows), len(done), self.alloc)
            for r, d in enumerate(done):
                if d > clock:
                    s.finished.add(r)
                    s.settle(r, [(0, len(self.rows))])
        return s


@dataclass
class ParkedOpen:
    """An open of a table that is not created yet."""
    peer: bytes
    rid: Any
    table: str
    deadline: float = float("inf")      # time.monotonic() past which it is answered with an error


@dataclass
class ParkedPull:
    """A read that must see a clock not applied yet."""
    peer: bytes
    rid: Any
    table: str
    need: int                   # the read sees every update of the clocks before this
    sel: Selection              # owned (see Selection.owned)
    deadline: float = float("inf")
    key: str = ""               # the segment's key in ShardState.tables


Parked = Union[ParkedOpen, ParkedPull]
Reply = tuple[bytes, list]


class ShardState:
    def __init__(self, rank: int, num_workers: int, max_parked: int = 4096,
                 before_write: Callable[..., None] | None = None,
                 checkpoint_dir: str = "", checkpoint_every: int = 0,
                 wait_timeout: float = float("inf"), peer_parked: int | None = None,
                 nonfinite: str = "reject", push_buffer: int | None = None,
                 slack: int = 0, rule_backend=None,
                 membership: "_membership.Membership | None" = None,
                 joining: bool = False):
        self.rank = rank
        # A server added to a running job (GEEPS_JOIN): it holds nothing and serves
        # nothing until the coordinator's membership gives it rows, which it fetches;
        # the workers' clocks it learns from the holders it fetches from and from the
        # workers' own clock requests.
        self.joining = joining
        # Who holds which rows (geeps.job.membership), None: no epochs (a bare state in
        # a unit test, one shard per contiguous range as the clients say).
        self.membership = membership
        # Messages to other servers (the replication stream): (server id, frames); the
        # socket layer sends them and hands their replies to on_peer_reply.
        self.outbox: list[tuple[int, list]] = []
        self._peer_rid = 0
        self.rule_backend = rule_backend    # where rules run (GEEPS_SERVER_BACKEND; None: numpy)
        # Bytes of pushes kept ahead of their turn, all clocks together (see _busy);
        # None: the shard's own size (every table's rows) for each clock a worker may
        # run ahead (SSP's slack, plus one), at least PUSH_BUFFER_MIN.
        self.push_buffer = push_buffer
        self.slack = slack
        # worker -> the push it was told to send again (busy) and where to tell it when
        # to: {seq, peer, rid, clock, nbytes, told}. Its later pushes and clocks wait
        # behind it, so a worker's pushes still count in the order it sent them.
        self.blocked: dict[int, dict] = {}
        # What a push holding NaN or Inf gets (GEEPS_NONFINITE, spec.nonFinite), and
        # how many such values each (table, worker) sent, for the metric.
        self.nonfinite = nonfinite
        self.nonfinite_counts: dict[tuple[str, int], int] = {}
        self.refused: dict[int, int] = {}      # worker -> clock of a refused push
        # worker -> (session, clock): a replacement's session and the clock its dead
        # predecessor had finished here when it said hello (see _op_push)
        self.rejoined: dict[int, tuple[str, int]] = {}
        self.on_nonfinite: Callable[[str, int, int], None] = lambda table, worker, n: None
        # A parked read is answered with an error after wait_timeout seconds, and one
        # peer holds at most peer_parked of the max_parked: a peer that parks reads no
        # clock will answer cannot fill the cap for everyone else, nor for good.
        self.wait_timeout = wait_timeout
        self.peer_parked = max_parked if peer_parked is None else peer_parked
        # A new id whenever the state is replaced (start, restore): requests carry the
        # id their client knows, so nothing sent to an older incarnation applies here.
        self.inc = _new_inc()
        self.base = 0                          # the checkpoint clock the state came from
        self.last_cause = self.inc             # the rollback this state answers
        self.sessions: dict[int, str] = {}     # worker -> session of its live client
        self.session_peer: dict[int, bytes] = {}   # worker -> its session's connection
        self.tokens: dict[int, str] = {}       # worker -> the token of its session
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.before_rename = None              # tests: fault injection in checkpoint.write
        self.num_workers = num_workers
        self.max_parked = max_parked
        self.tables: dict[str, ShardTable] = {}
        self.done = [0] * num_workers          # clocks each worker has finished
        self.left: set[int] = set()            # workers that said they are done
        self.windows: dict[tuple[int, str], SeqWindow] = {}
        self.parked: list[Parked] = []
        self.stats = {"pushes": 0, "duplicates": 0, "errors": 0, "pulls": 0, "applied": 0,
                      "push_bytes": 0, "early": 0, "absorbed": 0, "nonfinite": 0, "busy": 0}
        self.on_update: Callable[[float], None] = lambda seconds: None   # for metrics
        # Called before rows are mutated, as before_write(table, runs): runs, the row
        # ranges [a, b) about to change (None: any row). Lets the socket layer finish
        # zero-copy sends of those rows first, and only of those: a pipelined clock
        # updates a chunk while the replies of the chunks before it are on the wire.
        self.before_write = before_write or (lambda t, runs=None: None)
        # Sends replies at once, mid-request: a clock that applies a dense update in
        # blocks answers each parked pull as soon as its rows are done, so the socket
        # layer sends one block while the next is computed. None: replies wait for the
        # end of the request like all others.
        self.send_early: Callable[[list[Reply]], None] | None = None
        # Work done a block at a time between requests (digests): generators that
        # yield after each block and return their replies (see step_background).
        self.background: list = []
        self.version = 0                       # counts requests that may change state
        self.failovers = 0                     # memberships adopted that promoted a segment here
        # Replication messages sent and not answered: id -> (server id, frames); those
        # a replica said it is behind for, to send again: (when, server id, frames).
        self.peer_sent: dict[int, tuple[int, list]] = {}
        self.peer_retry: list[tuple[float, int, list]] = []
        # Catching up (fetch): the tables there are (name -> spec), whether another
        # member told us, the fetches in flight, and stream messages for rows not here
        # yet (applied once they are).
        self.catalog: dict[str, dict] = {}
        # A server that was there when the tables were made got a create of each table
        # it holds rows of; a joiner asks another member.
        self.catalog_known = not joining
        self.catalog_from: set[int] = set()     # members whose list came in
        self.fetching: set = set()
        self.fetch_refused: set = set()     # said once in the log
        self.fetch_retry_at: float | None = None
        self.early_stream: list = []
        self.early_stream_bytes = 0
        self.clocks_heard: set[int] = set()   # workers whose clock a joiner has seen

    @property
    def min_clock(self) -> int:
        return min(self.done)

    # ---- dispatch -------------------------------------------------------------------
    def handle(self, peer: bytes, frames: list) -> list[Reply]:
        try:
            if not frames:
                raise ProtocolError("empty message")
            header = P.decode_header(frames[0])
        except ProtocolError as e:
            self.stats["errors"] += 1
            return [(peer, P.reply_error(None, str(e)))]
        return self.dispatch(peer, header, frames)

    def dispatch(self, peer: bytes, header: dict, frames: list,
                 part: int | None = None) -> list[Reply]:
        """handle() of a request whose header is decoded already (frames[0] unread).
        `part`: its index in the batch it came in."""
        rid = None
        try:
            rid = header.get("id")
            if not isinstance(rid, (int, str)) or isinstance(rid, bool):
                rid = None
                raise ProtocolError("header field 'id' must be an integer or string")
            op = header.get("op")
            if op not in P.OPS or (op == "batch" and part is not None):
                raise ProtocolError(f"header field 'op' {op!r:.40} is not one of "
                                    f"{', '.join(P.OPS)}" + ("" if part is None else
                                                             " (and not a batch)"))
            if header.get("v", P.VERSION) != P.VERSION:
                raise ProtocolError(f"header field 'v': protocol version {header.get('v')!r} "
                                    f"not supported (this server speaks {P.VERSION})")
            inc = header.get("inc")
            if inc is not None and inc != self.inc and op in P.TIMELINE_OPS:
                self.stats["errors"] += 1
                return [(peer, self._restarted_error(rid))]
            if op in P.TIMELINE_OPS and self.membership is not None and "epoch" in header:
                refusal = self._epoch_refusal(rid, header)
                if refusal is not None:
                    self.stats["errors"] += 1
                    return [(peer, refusal)]
            if op not in READ_ONLY_OPS:
                self.version += 1
            return getattr(self, "_op_" + op)(peer, rid, header, frames)
        except ProtocolError as e:
            self.stats["errors"] += 1
            where = "" if part is None else f"batch part {part}: "
            return [(peer, P.reply_error(rid, where + str(e)))]

    def _op_batch(self, peer, rid, h, frames):
        # Each part exactly as if it came alone; what goes back to the sender travels
        # in one message, what goes to other workers (reads a part released) as usual.
        parts = P.batch_parts(h, frames)
        mine, out = [], []
        for k, (header, payload) in enumerate(parts):
            try:
                replies = self.dispatch(peer, header, [frames[0], *payload], part=k)
            except Exception:   # a bug in one part: the part fails, as documented, not
                log.exception("server %d: internal error on batch part %d", self.rank, k)
                self.stats["errors"] += 1       # the whole batch's tail with it
                replies = [(peer, P.reply_error(header.get("id"), f"batch part {k}: "
                                                "internal server error (see server log)"))]
            for to, reply in replies:
                if to == peer:
                    mine.append(reply)
                else:
                    out.append((to, reply))
        return ([(peer, P.reply_batch(rid, mine))] if mine else []) + out

    # ---- workers and tables -----------------------------------------------------------
    def _op_hello(self, peer, rid, h, frames):
        P.expect_frames(frames, 1, "hello")
        w = self._worker(h)
        want = h.get("num_workers")
        if want is not None and want != self.num_workers:
            raise ProtocolError(f"header field 'num_workers': client expects {want} workers, "
                                f"server {self.rank} was started for {self.num_workers}")
        session = str(P.field(h, "session", (int, str)))
        old = self.sessions.get(w)
        holder = self.session_peer.get(w)
        if (old is not None and holder is not None and holder != peer
                and h.get("token") != self.tokens.get(w) and self._holds_pushes(w)):
            # The rank is held by a session whose client is still connected and has
            # pushes in a clock it has not finished, which taking over would drop: only
            # a client holding that session's token may. A crashed worker's connection
            # is gone (forget_peer), so its replacement gets through; so does a new
            # client of a rank whose old one sits idle between clocks (nothing is lost).
            raise ProtocolError(f"header field 'session': worker {w} is held by a live "
                                f"session with pushes of clock {self.done[w]} on server "
                                f"{self.rank}; a hello for it needs that session's token")
        if old is not None and old != session:
            self._forget_predecessor(w)
            self.refused.pop(w, None)
            log.warning("server %d: worker %d rejoined at clock %d (new session)",
                        self.rank, w, self.done[w])
            self.rejoined[w] = (session, self.done[w])
        if old != session:
            self.blocked.pop(w, None)           # its pushes start anew
        self.sessions[w] = session
        self.session_peer[w] = peer
        if old != session or w not in self.tokens:
            self.tokens[w] = os.urandom(8).hex()
        return [(peer, P.reply_ok(rid, shard=self.rank, token=self.tokens[w], num_workers=self.num_workers,
                                  min_clock=self.min_clock, worker_clock=self.done[w],
                                  tables=sorted({t.name for t in self.tables.values()}),
                                  inc=self.inc,
                                  base=self.base, cause=self.last_cause))]

    def _holds_pushes(self, w: int) -> bool:
        """Whether worker w pushed in the clock it has not finished."""
        return any(w in s.pushed for t in self.tables.values()
                   if (s := t.pending.get(self.done[w])) is not None)

    def _forget_predecessor(self, w: int) -> None:
        """Worker `w` is a replacement for one that died: what the dead one pushed in
        the clock it never finished must not count twice when the new one redoes it.
        Its pushes not summed yet are dropped; rows whose sum holds its final value
        already (sent `last`, maybe updated early) keep it: the replacement's pushes
        to them (of the same clock's parameters and batch) are dropped instead."""
        clock = self.done[w]
        for t in self.tables.values():
            s = t.pending.get(clock)
            if s is None:
                continue
            summed = s.summed(w)
            s.drop(w)
            if summed:
                t.absorbed[w] = (clock, summed)

    def _op_leave(self, peer, rid, h, frames):
        P.expect_frames(frames, 1, "leave")
        self.left.add(self._worker(h))
        return [(peer, P.reply_ok(rid, left=len(self.left)))]

    def _op_create(self, peer, rid, h, frames):
        name = P.field(h, "table", str)
        n_rows = P.field(h, "n_rows", int, minimum=0)
        width = P.field(h, "row_width", int, minimum=1)
        lo = P.field(h, "lo", int, minimum=0)
        hi = P.field(h, "hi", int, minimum=0)
        rule = P.field(h, "rule", str)
        hyper = P.field(h, "hyper", dict)
        per_clock = P.field(h, "per_clock", bool)
        init = P.field(h, "init", bool)
        if not name or len(name) > 200:
            raise ProtocolError("header field 'table' must be 1-200 characters")
        if not lo <= hi <= n_rows:
            raise ProtocolError(f"header fields 'lo'/'hi': [{lo}, {hi}) outside 0..{n_rows}")
        if rule not in RULES:
            raise ProtocolError(f"header field 'rule' {rule!r:.40} is not one of {', '.join(RULES)}")
        try:
            hyper = resolve_hyper(rule, hyper)
            _check_finite(hyper, "hyper")
        except (ValueError, OverflowError, TypeError) as e:
            raise ProtocolError(f"header field 'hyper': {e}") from None
        if (hi - lo) * width > 2**31:
            raise ProtocolError(f"table {name!r}: {hi - lo} x {width} floats is too large "
                                "for one shard")
        P.expect_frames(frames, 2 if init else 1, "create")
        values = P.values_frame(frames[1], 1, hi - lo, width) if init else None
        want = ShardTable(name, n_rows, width, lo, hi, rule, hyper, per_clock,
                          functions=_create_functions(h))
        if SEGMENT_SEP in name:
            raise ProtocolError("header field 'table' must not hold a NUL character")
        if lo == hi and self.membership is not None and not self._segments_of(name):
            # none of its rows here: it is made known (an open here finds it, and a
            # later change that gives this shard rows of it fetches them), not held
            known = name in self.catalog
            if known and {k: v for k, v in self.catalog[name].items() if k not in ("lo", "hi")} \
                    != {k: v for k, v in want.spec().items() if k not in ("lo", "hi")}:
                raise ProtocolError(f"table {name!r} exists with another spec")
            self.catalog.setdefault(name, want.spec())
            return [(peer, P.reply_ok(rid, existed=known, **dict(want.spec(), lo=0, hi=0)))] \
                + self._release()
        self._check_held(name, lo, hi, n_rows)
        key, have = self._create_key(want)
        if have is not None:
            if have.spec() != want.spec():
                diff = [k for k in want.spec() if want.spec()[k] != have.spec()[k]]
                raise ProtocolError(f"table {name!r} exists with another {diff[0]} "
                                    f"({have.spec()[diff[0]]!r}, asked {want.spec()[diff[0]]!r})")
            return [(peer, P.reply_ok(rid, existed=True, **have.spec()))]
        want.rows = np.array(values, dtype=np.float32) if init else \
            np.zeros((hi - lo, width), np.float32)
        want.state = RuleState(rule, hyper, want.rows.shape, self.rule_backend)
        want.rows = want.state.hold(want.rows)
        want.key, want.next, want.begun = key, self.min_clock, self.min_clock - 1
        self.catalog.setdefault(name, want.spec())
        self._place(want)
        self.tables[key] = want
        log.info("created table %s rows %d..%d of %d, width %d, rule %s",
                 name, lo, hi, n_rows, width, rule)
        out = [(peer, P.reply_ok(rid, existed=False, **want.spec()))]
        return out + self._release()

    def _create_key(self, want: ShardTable) -> tuple[str, ShardTable | None]:
        """Where a created segment is filed, and the segment there already, if any."""
        same = self._segments_of(want.name)
        for t in same:
            if t.lo == want.lo:
                return t.key, t
            if want.lo < t.hi and t.lo < want.hi:
                raise ProtocolError(f"header fields 'lo'/'hi': rows [{want.lo}, {want.hi}) of "
                                    f"table {want.name!r} overlap rows [{t.lo}, {t.hi}) held "
                                    f"by server {self.rank}")
        if same:
            base = dict(same[0].spec(), lo=want.lo, hi=want.hi)
            diff = [k for k in base if base[k] != want.spec().get(k)]
            if diff:
                raise ProtocolError(f"table {want.name!r} exists with another {diff[0]} "
                                    f"({base[diff[0]]!r}, asked {want.spec()[diff[0]]!r})")
        return (want.name if not same else f"{want.name}{SEGMENT_SEP}{want.lo}"), None

    def _check_held(self, name: str, lo: int, hi: int, n_rows: int) -> None:
        """A create of rows this shard does not hold in its membership is refused."""
        if self.membership is None or lo == hi:
            return
        held = [(s.lo, s.hi) for s in self.membership.held_by(self.rank, n_rows)]
        if not any(a <= lo and hi <= b for a, b in held):
            raise ProtocolError(f"header fields 'lo'/'hi': server {self.rank} holds no "
                                f"segment containing rows [{lo}, {hi}) of table {name!r:.60} "
                                f"in membership epoch {self.membership.epoch}")

    def _place(self, t: ShardTable) -> None:
        """Set t's role from the membership: primary or replica, and its replicas."""
        if self.membership is None:
            return
        holders: tuple = ()
        synced: tuple = ()
        if t.lo < t.hi:
            for seg in self.membership.segments(t.n_rows):
                if seg.lo <= t.lo < seg.hi:
                    # catchers-up get the stream like a replica (and ack it)
                    if t.hi <= seg.hi:
                        holders, synced = seg.holders + seg.catching, seg.holders
                    break
        t.primary = bool(holders) and holders[0] == self.rank
        t.replicas = tuple(holders[1:]) if t.primary else ()
        t.synced = tuple(synced[1:]) + tuple(
            c for c in holders[len(synced):] if c in t.fetched_by) if t.primary else ()
        for c in list(t.unacked):       # acks owed by servers that hold it no more
            t.unacked[c] = {w for w in t.unacked[c] if w[0] in t.synced}
            if not t.unacked[c]:
                del t.unacked[c]

    def _op_open(self, peer, rid, h, frames):
        P.expect_frames(frames, 1, "open")
        name = P.field(h, "table", str)
        spec = self._known_spec(name)
        if spec is not None:
            return [(peer, P.reply_ok(rid, **spec))]
        return self._park(ParkedOpen(peer, rid, name))

    def _known_spec(self, name: str) -> dict | None:
        """The spec of table `name` if it exists: from a segment held here, else from
        the catalog (a table with none of its rows here, e.g. fewer rows than servers,
        is made known by an empty create)."""
        segs = self._segments_of(name)
        if segs:
            return segs[0].spec()
        spec = self.catalog.get(name)
        return None if spec is None else dict(spec, lo=0, hi=0)

    # ---- pushes, clocks and reads ------------------------------------------------------
    def _op_push(self, peer, rid, h, frames):
        t = self._table(h, frames)
        w = self._worker(h)
        session = P.field(h, "session", (int, str))
        clock = P.field(h, "clock", int, minimum=0)
        seq = P.field(h, "seq", int, minimum=0)
        sel, values = self._push_payload(t, h, frames)
        last = P.field(h, "last", bool) if "last" in h else False
        if last and not (t.per_clock and isinstance(sel, RowRange)):
            raise ProtocolError("header field 'last': only range pushes to a table applied "
                                "once per clock (BSP/SSP) can be a last push")
        window = self.windows.get((w, str(session)))
        if window is not None and window.seen(seq):
            self.stats["duplicates"] += 1
            return [(peer, P.reply_ok(rid, duplicate=True))]
        # `redo`: a push the client sends again after a failover (its first went to a
        # primary that died before the clock was durable). One of a clock applied here
        # already counted through the replication stream: dropped. One of the clock a
        # promoted segment redoes counts although the worker finished that clock.
        redo = P.field(h, "redo", bool) if "redo" in h else False
        if redo and t.per_clock and clock < t.next:
            self.stats["duplicates"] += 1
            return [(peer, P.reply_ok(rid, duplicate=True))]
        if clock > self.done[w] and self.joining and w not in self.clocks_heard:
            self.done[w] = clock        # joined mid-run: the worker's clock starts here
            self.clocks_heard.add(w)    # (its push may come before any clock of it)
        if clock < self.done[w] and self.rejoined.get(w, (None, 0))[0] == str(session) \
                and clock < self.rejoined[w][1]:
            # A replacement redoes the clock its predecessor died in, which may have
            # finished here but not on another server (killed between its clock
            # messages): it rejoins at the lowest clock the servers report, and here
            # that clock's pushes of it all counted already.
            self._window(w, str(session)).add(seq)
            self.stats["duplicates"] += 1
            return [(peer, P.reply_ok(rid, duplicate=True))]
        if redo and t.redo == clock and clock < self.done[w]:
            pass
        elif clock != self.done[w]:
            raise ProtocolError(f"header field 'clock': push for clock {clock} but worker {w} "
                                f"is at clock {self.done[w]} on server {self.rank}")
        if t.per_clock:
            self._check_not_final(t, w, clock, sel)
            if self._busy(peer, rid, t, w, clock, seq, sel, values, last):
                self.stats["busy"] += 1
                return [(peer, P.reply_ok(rid, waiting=True, busy=True))]
        bad = _count_nonfinite(values) if self.nonfinite != "apply" else 0
        if bad:
            self.nonfinite_counts[(t.name, w)] = self.nonfinite_counts.get((t.name, w), 0) + bad
            self.on_nonfinite(t.name, w, bad)
            self.stats["nonfinite"] += bad
            log.warning("server %d: push of worker %d to table %s at clock %d holds %d "
                        "non-finite values (NaN/Inf): %s", self.rank, w, t.name, clock, bad,
                        "refused" if self.nonfinite == "reject" else "skipped")
            if self.nonfinite == "reject":      # refused before anything counts; its
                if str(session) == self.sessions.get(w):   # clock cannot finish without
                    self.refused[w] = clock                # it (BSP)
                raise ProtocolError(
                    f"push refused: {bad} non-finite values (NaN/Inf) from worker {w} to "
                    f"table {t.name!r} at clock {clock} (spec.nonFinite / "
                    f"GEEPS_NONFINITE=reject)")
            self._window(w, str(session)).add(seq)
            return [(peer, P.reply_ok(rid, skipped=bad))]
        # Valid and new: from here on the push counts.
        self._window(w, str(session)).add(seq)
        self.stats["pushes"] += 1
        # bytes as they came (a sparse push's offsets and values, not its dense rows)
        self.stats["push_bytes"] += sum(memoryview(f).nbytes for f in frames[1:])
        if not t.per_clock:
            self._apply_now(t, sel, values)
            return [(peer, P.reply_ok(rid))]
        return self._keep(peer, rid, t, w, clock, sel, values, last)

    def _keep(self, peer: bytes, rid, t: ShardTable, w: int, clock: int, sel: Selection,
              values: np.ndarray, last: bool) -> list[Reply]:
        """Keep a valid push to a per-clock table until its clock applies; a last push
        may let its rows be updated before that (_early)."""
        gone = t.absorbed.get(w)
        if gone is not None and gone[0] == clock:
            sel, values = sel.outside(values, gone[1])
            if sel is None:
                self.stats["absorbed"] += 1
                return [(peer, P.reply_ok(rid, absorbed=True))]
            last = False        # what is left of it waits for the clock's end
        s = t.clock_sum(clock, self._finished_view(t, clock))
        s.keep(w, sel.kept(values))
        out = [(peer, P.reply_ok(rid))]
        if last and len(sel):               # a last push is a RowRange (_op_push)
            s.final.setdefault(w, []).append((sel.lo, sel.hi))
            out += self._early(t, clock, s.settle(w, [(sel.lo, sel.hi)]))
        return out + self._unblock()

    def _busy(self, peer: bytes, rid, t: ShardTable, w: int, clock: int, seq: int,
              sel: Selection, values: np.ndarray, last: bool) -> bool:
        """Whether a valid push must be sent again later. A push that will be kept
        ahead of its turn (lower ranks have not finished its rows) waits when the
        pushes kept so far, of every clock, fill GEEPS_PUSH_BUFFER, so the shard's
        memory is its rows, one sum per clock in flight and that buffer, whatever the
        number of workers. Never the lowest worker still in the clock (the frontier): its pushes
        are what lets the others' be summed, so the clock always moves. Once one push
        of a worker waits, so do its later ones (and its clock), until the first is
        sent again: the worker's pushes count in the order it sent them."""
        b = self.blocked.get(w)
        if b is not None and b["seq"] != seq:
            return True
        s = t.pending.get(clock)
        frontier = self._frontier(clock)
        summed_now = last and isinstance(sel, RowRange) and (
            s.in_turn(w, sel.lo, sel.hi) if s is not None else w == frontier)
        if not summed_now and w != frontier and \
                self._kept_ahead() + values.nbytes > self._push_budget():
            self.blocked[w] = {"seq": seq, "peer": peer, "rid": rid, "clock": clock,
                               "nbytes": values.nbytes, "told": False}
            return True
        self.blocked.pop(w, None)
        return False

    def _frontier(self, clock: int) -> int:
        """The lowest worker that has not finished `clock`."""
        return next((r for r, d in enumerate(self.done) if d <= clock), self.num_workers)

    def _kept_ahead(self) -> int:
        """Bytes of pushes kept for workers above their clock's frontier."""
        total = 0
        for t in self.tables.values():
            for c, s in t.pending.items():
                f = self._frontier(c)
                total += sum(n for r, n in s.kept_bytes.items() if r != f)
        return total

    def _push_budget(self) -> int:
        if self.push_buffer is not None:
            return self.push_buffer
        size = sum(t.rows.nbytes for t in self.tables.values())
        return max(PUSH_BUFFER_MIN, size * (1 + self.slack))

    def _unblock(self) -> list[Reply]:
        """Tell each waiting worker whose push would be taken now to send it again (a
        `waiting` reply to that push with `resend`). Its client also retries on its
        own after a while, should this be lost."""
        out = []
        for w, b in self.blocked.items():
            if b["told"]:
                continue
            if w == self._frontier(b["clock"]) or b["clock"] < self.min_clock or \
                    self._kept_ahead() + b["nbytes"] <= self._push_budget():
                b["told"] = True
                out.append((b["peer"], P.reply_ok(b["rid"], waiting=True, resend=True)))
        return out

    def _window(self, w: int, session: str) -> SeqWindow:
        """The sequence window of a worker's session. At most SESSIONS_PER_WORKER are
        kept per worker: pushes under ever new session names (30,000 of them held
        21 MiB for good) evict the oldest that is not the worker's current session;
        only a dead client's retransmissions could need an evicted one."""
        key = (w, session)
        win = self.windows.get(key)
        if win is None:
            mine = [k for k in self.windows if k[0] == w and k[1] != self.sessions.get(w)]
            if len(mine) >= SESSIONS_PER_WORKER:
                del self.windows[mine[0]]       # dicts keep insertion order: the oldest
            win = self.windows[key] = SeqWindow()
        return win

    def _check_not_final(self, t: ShardTable, w: int, clock: int, sel: Selection) -> None:
        s = t.pending.get(clock)
        for a, b in (s.final.get(w, ()) if s is not None else ()):
            if sel.overlaps(a, b):
                raise ProtocolError(
                    f"header field 'rows': worker {w} already sent its last push of rows "
                    f"[{a + t.lo}, {b + t.lo}) for clock {clock}; it cannot push to them "
                    "again in that clock")

    def _early(self, t: ShardTable, clock: int, full: list) -> list[Reply]:
        """Update the rows in `full` (every worker's final value is summed there) now,
        and answer the reads of the next clock that lie in rows updated so far. The
        clock's update is elementwise, so rows updated apart get the bits of one update
        over all of them; the rest of the clock's rows follow when it ends. Only the
        clock every worker is at (min_clock) is updated early, so a checkpoint never
        sees it half done."""
        s = t.pending.get(clock)
        if not full or s is None or clock != self.min_clock or s.acc is None \
                or t.functions or t.replicas or t.next != clock:
            return []   # replicated: reads wait for the replicas' acks (see _forward)
        t0 = time.perf_counter()
        if t.begun != clock:
            t.state.begin()
            t.begun = clock
        touched = list(s.touched_runs(full))     # rows no one pushed are not updated
        self.before_write(t, touched)
        scale = self._scale(t)
        for a, b in touched:
            t.state.apply_slice(t.rows, s.acc, a, b, scale)
        s.applied(full)
        runs = merge(t.applied.get(clock, []) + list(full))
        t.applied[clock] = runs
        self.stats["early"] += 1
        self.on_update(time.perf_counter() - t0)
        return self._release(lambda p: (p.key or p.table) == t.key
                             and p.sel.served_early(runs), clock + 1)

    def _finished_view(self, t: ShardTable, clock: int) -> list[int]:
        """The clocks each worker finished, as a sum of `clock` of `t` must see them:
        a segment that redoes a clock after a failover counts a worker finished only
        once it said it sent that clock's pushes again (or finished it here)."""
        if t.redo != clock:
            return self.done
        return [clock + 1 if r in t.redone else clock for r in range(self.num_workers)]

    def _op_redo(self, peer, rid, w: int, clock: int) -> list[Reply]:
        """A `clock` with `redo`: worker w sent again every push of `clock` that a
        failed primary had not made durable. A promoted segment redoing that clock
        counts it finished there; once every worker is, the clock applies."""
        # (Its plain clock may reach this shard after the redo: the clock applies only
        # once min_clock is past it too, see _redo_waits.)
        out = []
        for t in list(self.tables.values()):
            if t.redo != clock or w in t.redone:
                continue
            t.redone.add(w)
            s = t.pending.get(clock)
            if s is not None:
                s.finished.add(w)
                s.settle(w, [(0, len(t.rows))])
            out += self._catch_up(t)
        return [(peer, P.reply_ok(rid, min_clock=self.min_clock, durable=self.durable()))] \
            + out + self._release()

    def _catch_up(self, t: ShardTable) -> list[Reply]:
        """Apply the clocks a promoted segment lags by, as far as its sums allow."""
        while t.primary and t.next < self.min_clock and not self._redo_waits(t, t.next):
            self._apply_clock(t, t.next, False)
        return []

    def _redo_waits(self, t: ShardTable, clock: int) -> bool:
        return t.redo == clock and (len(t.redone) < self.num_workers
                                    or clock >= self.min_clock)

    def _op_clock(self, peer, rid, h, frames):
        P.expect_frames(frames, 1, "clock")
        w = self._worker(h)
        clock = P.field(h, "clock", int, minimum=0)
        if "redo" in h and P.field(h, "redo", bool):
            return self._op_redo(peer, rid, w, clock)
        if clock > self.done[w] and self.joining and w not in self.clocks_heard:
            self.done[w] = clock        # joined mid-run: the worker's clock starts here
        self.clocks_heard.add(w)
        if clock > self.done[w]:
            raise ProtocolError(f"header field 'clock': worker {w} cannot finish clock {clock} "
                                f"while at clock {self.done[w]}")
        if w in self.blocked and clock >= self.done[w]:
            self.stats["busy"] += 1         # after the push that waits (see _busy)
            return [(peer, P.reply_ok(rid, waiting=True, busy=True))]
        if self.refused.get(w) == clock:
            # Finishing the clock would apply it without the refused push: everyone's
            # parameters would move on a partial update. The clock waits for a
            # replacement (hello with a new session) to redo it.
            raise ProtocolError(f"header field 'clock': worker {w}'s push at clock {clock} "
                                "was refused (non-finite values); it cannot finish that clock")
        before = self.min_clock
        finishing = clock == self.done[w]
        self.done[w] = max(self.done[w], clock + 1)
        out = []
        if finishing:       # w's rows of `clock` are all final: sum what that allows
            for t in self.tables.values():
                if t.redo == clock:
                    continue        # counted from the worker's redo clock (_op_redo)
                s = t.pending.get(clock)
                if s is not None:
                    s.finished.add(w)
                    full = s.settle(w, [(0, len(t.rows))])
                    if self.min_clock == before:        # else the clock applies below
                        out += self._early(t, clock, full)
        if self.min_clock > before:
            self._apply_clocks(before, self.min_clock)
            self._maybe_checkpoint(before, self.min_clock)
        for t in list(self.tables.values()):
            if t.redo is not None:
                self._catch_up(t)
        extra = {} if self.membership is None else {"durable": self.durable()}
        return [(peer, P.reply_ok(rid, min_clock=self.min_clock, **extra))] + out + \
            self._release() + self._unblock()

    def _op_pull(self, peer, rid, h, frames):
        t = self._table(h, frames)
        need = P.field(h, "need", int, minimum=0)
        sel = self._selection(t, h, frames, payload=0)
        self.stats["pulls"] += 1
        ready = self._readable(t)
        if ready >= need:
            return [(peer, self._pull_reply(rid, t, sel, ready))]
        if need == self.min_clock + 1 and ready == self.min_clock and \
                sel.served_early(t.applied.get(self.min_clock, ())):
            return [(peer, self._pull_reply(rid, t, sel, need))]      # updated early
        if any(p.peer == peer and p.rid == rid for p in self.parked):
            return [(peer, P.reply_ok(rid, waiting=True))]  # a retry: say we are alive
        return self._park(ParkedPull(peer, rid, t.name, need, sel.owned(), key=t.key))

    def _readable(self, t: ShardTable, clock: int | None = None) -> int:
        """The clock a read of `t` may see now: every update before it applied (on
        every holder, when it has replicas). `clock`: min_clock, or what the caller
        knows it to be."""
        clock = self.min_clock if clock is None else clock
        if self.membership is None:
            return clock
        return min(clock, t.durable)

    def durable(self) -> int:
        """The clocks before this are applied on every holder of every segment this
        shard serves: a client keeps its pushes of later clocks to send again should
        this shard fail."""
        return min((self._readable(t) for t in self.tables.values() if t.primary),
                   default=self.min_clock)

    # ---- introspection ------------------------------------------------------------------
    def _op_ping(self, peer, rid, h, frames):
        extra = {"epoch": 0, "ready": False} if self.membership is None and self.joining \
            else {} if self.membership is None else {
            "epoch": self.membership.epoch, "ready": self._ready(), "durable": self.durable()}
        return [(peer, P.reply_ok(rid, inc=self.inc, base=self.base, cause=self.last_cause,
                                  **extra))]

    def _op_stats(self, peer, rid, h, frames):
        return [(peer, P.reply_ok(rid, **self.stats, parked=len(self.parked), clocks=self.done,
                                  min_clock=self.min_clock, **describe(self.rule_backend),
                                  tables={n: t.spec() for n, t in self.tables.items()}))]

    def _op_digest(self, peer, rid, h, frames):
        if "table" in h:        # one segment, at once: a replica's bits against its primary's
            name, lo = P.field(h, "table", str), P.field(h, "lo", int, minimum=0)
            t = next((x for x in self._segments_of(name) if x.lo == lo), None)
            if t is None:
                raise ProtocolError(f"header field 'lo': server {self.rank} holds no segment "
                                    f"of table {name!r:.60} starting at row {lo}")
            return [(peer, P.reply_ok(rid, digest=self.segment_digest(t), clock=t.next,
                                      primary=t.primary))]
        # Hashing a 1 GiB table takes seconds: it runs a block at a time between other
        # requests (step_background), and its reply goes when it is done. A retry of
        # one still running is told it is (as a parked read's retry is).
        if any(key == (peer, rid) for key, _ in self.background):
            return [(peer, P.reply_ok(rid, waiting=True))]
        self.background.append(((peer, rid), self._digest_job(peer, rid)))
        return []

    def step_background(self) -> list[Reply]:
        """Do one block of the oldest background job; its replies once it ends."""
        if not self.background:
            return []
        _, job = self.background[0]
        try:
            next(job)
            return []
        except StopIteration as done:
            self.background.pop(0)
            return done.value

    def _digest_job(self, peer, rid):
        for _ in range(DIGEST_TRIES):
            start = self.version
            h = hashlib.sha256()
            yield from self._digest_steps(h)
            if self.version == start:
                return [(peer, P.reply_ok(rid, digest=h.hexdigest()))]
        return [(peer, P.reply_error(rid, f"server {self.rank}: the state changed while it "
                                          f"was hashed, {DIGEST_TRIES} times; ask for the "
                                          "digest again when the job is quiet"))]

    @staticmethod
    def segment_digest(t: ShardTable) -> str:
        """A hash of what a replica must hold equal to its primary: the segment's rows,
        its rule's state and step count, and the clock it is at."""
        h = hashlib.sha256()
        h.update(repr((t.name, t.lo, t.hi, t.next, t.state.step)).encode())
        feed_array(h, t.rows)
        for k in sorted(t.state.slots):
            feed_array(h, t.state.slots[k])
        return h.hexdigest()

    def digest(self) -> str:
        """A hash of everything a request can change: rows, optimizer state, pending
        updates, clocks, seen sequence numbers. Equal digests mean equal state."""
        h = hashlib.sha256()
        for _ in self._digest_steps(h):
            pass
        return h.hexdigest()

    def _digest_steps(self, h):
        """Feed the state into `h`, yielding after each DIGEST_BLOCK bytes. Between
        steps the state may change (the caller then starts over): nothing here may
        fail when it does."""
        h.update(repr((self.done, sorted(self.tables), None if self.membership is None
                       else self.membership.to_json())).encode())
        for name in sorted(self.tables):
            t = self.tables.get(name)
            if t is None:
                continue
            h.update(repr(sorted(t.spec().items())).encode())
            yield from _feed_steps(h, t.rows)
            h.update(repr(t.state.step).encode())
            for k in sorted(t.state.slots):
                yield from _feed_steps(h, t.state.slots[k])
            for c in sorted(t.pending):
                s = t.pending.get(c)
                if s is not None:
                    h.update(repr(c).encode())
                    s.feed(h)
                    yield
            h.update(repr((sorted(t.applied.items()), t.begun,
                           sorted(t.absorbed.items()))).encode())
        for key in sorted(self.windows):
            win = self.windows.get(key)
            if win is not None:
                h.update(repr((key, win.floor, sorted(win.above))).encode())

    # ---- rollback -------------------------------------------------------------------
    def _restarted_error(self, rid) -> list:
        # `cause`: the restart this state descends from. A shard rolled back for another
        # shard's restart has a new incarnation too; naming the root cause lets a
        # worker that notices it join that rollback instead of starting one of its own
        # (which would roll the first shard back again, and so on).
        return [P.encode_header({"id": rid, "ok": False, "inc": self.inc, "base": self.base,
                                 "cause": self.last_cause, "restarted": True,
                                 "error": f"server {self.rank} was restarted or rolled back "
                                          f"to clock {self.base}; roll back and retry"})]

    def _op_checkpoints(self, peer, rid, h, frames):
        P.expect_frames(frames, 1, "checkpoints")
        have = checkpoint.valid_clocks(self.checkpoint_dir, self.rank) \
            if self.checkpoint_dir else []
        return [(peer, P.reply_ok(rid, clocks=have, inc=self.inc, base=self.base))]

    def _op_restore(self, peer, rid, h, frames):
        P.expect_frames(frames, 1, "restore")
        clock = P.field(h, "clock", int, minimum=0)
        cause = P.field(h, "cause", str)
        if cause == self.last_cause:       # this rollback happened here already
            return [(peer, P.reply_ok(rid, inc=self.inc, base=self.base))]
        if not self.checkpoint_dir:
            raise ProtocolError(f"server {self.rank} keeps no checkpoints "
                                "(GEEPS_CHECKPOINT_DIR): it cannot roll back")
        try:
            header, arrays = checkpoint.load(self.checkpoint_dir, self.rank, clock)
        except checkpoint.CheckpointError as e:
            raise ProtocolError(f"server {self.rank} cannot roll back to clock {clock}: {e}") \
                from None
        out = [(p.peer, self._restarted_error(p.rid)) for p in self.parked]
        try:    # load_state replaces the state only once the whole checkpoint loaded
            self.load_state(clock, header, arrays)
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"server {self.rank} cannot roll back to clock {clock}: "
                                f"checkpoint header malformed ({type(e).__name__}: {e})") \
                from None
        self.parked = []
        self.last_cause = cause
        checkpoint.drop_after(self.checkpoint_dir, self.rank, clock)
        log.warning("server %d rolled back to checkpoint clock %d", self.rank, clock)
        return [(peer, P.reply_ok(rid, inc=self.inc, base=self.base))] + out

    def _fail_parked(self) -> list[Reply]:
        out = [(p.peer, self._restarted_error(p.rid)) for p in self.parked]
        self.parked = []
        return out

    # ---- checkpoints --------------------------------------------------------------
    def save_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What a checkpoint holds: the state as of min_clock, every clock before it
        applied. Pending pushes are not saved: after a restore every worker redoes the
        clocks from there."""
        header = {"num_workers": self.num_workers, "tables": []}
        arrays = {}
        for name, t in self.tables.items():
            header["tables"].append(dict(t.spec(), step=t.state.step, key=name,
                                         slots=sorted(t.state.slots)))
            arrays[f"{name}/rows"] = t.rows
            for k, v in t.state.slots.items():
                arrays[f"{name}/slot/{k}"] = v
        return header, arrays

    def load_state(self, clock: int, header: dict, arrays: dict[str, np.ndarray]) -> None:
        """Replace the state with a checkpoint's, as a new incarnation (see save_state;
        the caller answers or fails the parked requests first)."""
        if header["num_workers"] != self.num_workers:
            raise checkpoint.CheckpointError(
                f"checkpoint of clock {clock} is for {header['num_workers']} workers, "
                f"this server runs {self.num_workers}")
        tables = {}
        for spec in header["tables"]:
            t = ShardTable(spec["table"], spec["n_rows"], spec["row_width"], spec["lo"],
                           spec["hi"], spec["rule"], spec["hyper"], spec["per_clock"],
                           functions=_functions.resolve(spec.get("functions")),
                           key=spec.get("key", spec["table"]), next=clock, begun=clock - 1)
            t.rows = arrays[f"{t.key}/rows"]
            t.state = RuleState(t.rule, t.hyper, t.rows.shape, self.rule_backend)
            t.rows = t.state.hold(t.rows)
            t.state.step = spec["step"]
            for k in spec["slots"]:
                t.state.slots[k] = arrays[f"{t.key}/slot/{k}"]
            self._place(t)
            tables[t.key] = t
        self.tables = tables
        self.done = [clock] * self.num_workers
        self.windows = {}
        self.inc = _new_inc()
        self.base = clock

    def _maybe_checkpoint(self, before: int, after: int) -> None:
        k = self.checkpoint_every
        if not (self.checkpoint_dir and k) or after // k == before // k:
            return
        clock = after - after % k
        if clock != after:
            return          # several clocks at once (SSP catch-up): only on a boundary
        header, arrays = self.save_state()
        path = checkpoint.write(self.checkpoint_dir, self.rank, clock, header, arrays,
                                before_rename=self.before_rename)
        log.info("server %d checkpointed clock %d to %s", self.rank, clock, path)

    # ---- requests: fields, replies, parking ------------------------------------------
    def _worker(self, h) -> int:
        w = P.field(h, "worker", int, minimum=0)
        if w >= self.num_workers:
            raise ProtocolError(f"header field 'worker' {w} outside 0..{self.num_workers - 1}")
        return w

    def _table(self, h, frames: list | None = None) -> ShardTable:
        """The segment of the named table a request's rows lie in (the first row
        decides; _selection then checks they all lie there). A shard that serves no
        segment there (a replica, or a stale route) refuses naming the primary."""
        name = P.field(h, "table", str)
        segs = self._segments_of(name)
        if not segs:
            raise ProtocolError(f"header field 'table': no table {name!r:.60} on server {self.rank}")
        t = segs[0]
        if len(segs) > 1 and frames is not None:
            first = self._first_row(h, frames, t.n_rows)
            t = next((x for x in segs if x.lo <= first < x.hi), t)
        if not t.primary and self.membership is not None and h.get("op") in ("push", "pull"):
            raise ProtocolError(
                f"header field 'rows': server {self.rank} holds rows [{t.lo}, {t.hi}) of "
                f"table {name!r:.60} as a replica in epoch {self.membership.epoch}; their "
                f"primary serves them")
        return t

    def _segments_of(self, name: str) -> list[ShardTable]:
        return [t for t in self.tables.values() if t.name == name]

    @staticmethod
    def _first_row(h: dict, frames: list, n_rows: int) -> int:
        kind, arg = P.rows_field(h, n_rows)
        if kind == "range":
            return arg[0]
        if kind == "sparse":
            return arg[1]
        if len(frames) < 2 or arg == 0:
            return 0
        return int(P.ids_frame(frames[1], 1, arg).min())

    def _selection(self, t: ShardTable, h: dict, frames: list, payload: int) -> Selection:
        """The rows a request names, as local rows of `t`, once the request is seen to
        hold the frames that go with them (an ids frame, then `payload` frames). Ids
        are views of their frame (see Selection.owned)."""
        kind, arg = P.rows_field(h, t.n_rows)
        if kind == "sparse":
            raise ProtocolError(f"header field 'rows.sparse': only a push can be sparse, "
                                f"not a {h['op']}")
        if kind == "range":     # the wire's tag, turned into a type here once
            P.expect_frames(frames, 1 + payload, h["op"])
            lo, hi = arg
            if lo < hi and (lo < t.lo or hi > t.hi):
                raise ProtocolError(f"header field 'rows.range' [{lo}, {hi}) outside rows "
                                    f"[{t.lo}, {t.hi}) held by server {self.rank}")
            return RowRange(lo - t.lo, hi - t.lo) if lo < hi else RowRange(0, 0)
        P.expect_frames(frames, 2 + payload, h["op"])
        ids = P.ids_frame(frames[1], 1, arg)
        if len(ids) and (ids.min() < t.lo or ids.max() >= t.hi):
            raise ProtocolError(f"frame 1 (row ids): ids {ids.min()}..{ids.max()} outside rows "
                                f"[{t.lo}, {t.hi}) held by server {self.rank}")
        return RowIds(ids - t.lo)

    def _pull_reply(self, rid, t: ShardTable, sel: Selection, clock: int | None = None) -> list:
        """`clock`: every update of the clocks before it is in the rows read (default
        min_clock; rows updated early hold the next clock's too)."""
        return P.reply_ok(rid, [sel.take(t.rows)],
                          clock=self.min_clock if clock is None else clock)

    def _park(self, p: Parked) -> list[Reply]:
        if len(self.parked) >= self.max_parked:
            raise ProtocolError(f"server {self.rank} has {len(self.parked)} reads parked, its cap "
                                "(GEEPS_MAX_PARKED); a worker is far behind or a client is "
                                "flooding reads")
        if sum(1 for q in self.parked if q.peer == p.peer) >= self.peer_parked:
            raise ProtocolError(f"server {self.rank} has {self.peer_parked} reads of this "
                                "client parked, its cap per client (GEEPS_PEER_PARKED)")
        p.deadline = time.monotonic() + self.wait_timeout
        self.parked.append(p)
        # Said at once, so the client knows the read is parked and does not let it
        # hold a place in its window of requests in flight (see client.iothread).
        return [(p.peer, P.reply_ok(p.rid, waiting=True))]

    def expire(self, now: float | None = None) -> list[Reply]:
        """Errors for the parked reads whose deadline passed (GEEPS_WAIT_TIMEOUT)."""
        now = time.monotonic() if now is None else now
        if not any(p.deadline <= now for p in self.parked):
            return []
        out, keep = [], []
        for p in self.parked:
            if p.deadline > now:
                keep.append(p)
                continue
            what = f"open of table {p.table!r}" if isinstance(p, ParkedOpen) else \
                f"read of table {p.table!r} for clock {p.need}"
            out.append((p.peer, P.reply_error(
                p.rid, f"server {self.rank}: {what} waited {self.wait_timeout:g} s "
                       f"(GEEPS_WAIT_TIMEOUT), its deadline, with every worker only at "
                       f"clock {self.min_clock}; a worker is stuck or gone")))
        self.parked = keep
        return out

    def forget_peer(self, peer: bytes) -> int:
        """The peer disconnected: its parked reads go (no one would read the replies).
        Returns how many."""
        before = len(self.parked)
        self.parked = [p for p in self.parked if p.peer != peer]
        for w in [w for w, p in self.session_peer.items() if p == peer]:
            del self.session_peer[w]            # its session may now be replaced
        return before - len(self.parked)

    def _release(self, pulls: Callable[[ParkedPull], bool] = lambda p: True,
                 clock: int | None = None) -> list[Reply]:
        """Answer the parked requests that can be answered now; `pulls` narrows which
        of the ready reads go (see _apply_runs and _early). `clock`: the reads it
        selects see every update before it (default min_clock; one more when their
        rows were updated early)."""
        clock = self.min_clock if clock is None else clock
        out, keep = [], []
        for p in self.parked:
            if isinstance(p, ParkedOpen):
                spec = self._known_spec(p.table)
                if spec is not None:
                    out.append((p.peer, P.reply_ok(p.rid, **spec)))
                    continue
            elif (t := self.tables.get(p.key or p.table)) is not None and \
                    self._readable(t, clock) >= p.need and pulls(p):
                out.append((p.peer, self._pull_reply(p.rid, t, p.sel,
                                                     self._readable(t, clock))))
                continue
            keep.append(p)
        self.parked = keep
        return out

    # ---- applying updates --------------------------------------------------------------
    def _scale(self, t: ShardTable) -> float:
        # Gradient rules step on the mean over workers, so W workers of batch B equal one
        # process of batch W*B; deltas (`add`) are summed.
        return 1.0 / self.num_workers if t.rule in GRADIENT_RULES else 1.0

    def _apply_clocks(self, lo: int, hi: int) -> None:
        """Apply clocks lo..hi-1 of every table: every worker has finished them."""
        t0 = time.perf_counter()
        # Reads answered while the update goes on are told they see min_clock, which is
        # hi already: true only when the update is of clock hi - 1 alone.
        early = hi - lo == 1 and self.send_early is not None
        for clock in range(lo, hi):
            for t in list(self.tables.values()):
                # A replica applies its primary's stream; a promoted segment that lags
                # applies its clocks as their redo completes (_catch_up).
                if t.primary and t.next == clock and not self._redo_waits(t, clock):
                    self._apply_clock(t, clock, early and not t.replicas)
        self.on_update(time.perf_counter() - t0)

    def _apply_clock(self, t: ShardTable, clock: int, early: bool) -> None:
        s = t.pending.pop(clock, None)
        t.applied.pop(clock, None)
        t.absorbed = {w: v for w, v in t.absorbed.items() if v[0] > clock}
        t.next = clock + 1
        if t.redo == clock:
            t.redo, t.redone = None, set()
        if s is None:
            self._forward(t, clock, None, None, None, False)
            return
        if not s.complete:  # every worker finished, so settle() summed all; if not, a bug
            log.error("server %d: clock %d of table %s applied before its sum was "
                      "complete; summing the rest now", self.rank, clock, t.name)
            for r in range(self.num_workers):
                s.finished.add(r)
                s.settle(r, [(0, len(t.rows))])
        counted = t.begun == clock      # rows of it were updated early
        t.begun = clock
        starts, ends = s.pending()
        if s.acc is not None and len(starts):
            self._forward(t, clock, s.acc, starts, ends, counted)
            self.before_write(t)
            self._apply_sum(t, s.acc, starts, ends, counted, early)
        else:
            self._forward(t, clock, None, None, None, counted)
        if s.acc is not None and not t.free:
            t.free.append(s.acc)
        self.stats["applied"] += 1

    def _apply_sum(self, t: ShardTable, acc: np.ndarray, starts: np.ndarray,
                   ends: np.ndarray, counted: bool, early: bool) -> None:
        """One clock's update of the rows in runs (starts, ends) from the sum `acc`
        (the shard's size; overwritten). A replica runs exactly this on the sum its
        primary forwards, so both hold the same bits."""
        if t.functions:
            self._apply_with_functions(t, acc, run_rows(starts, ends), counted)
        elif len(starts) <= MAX_RUNS:
            if not counted:
                t.state.begin()
            self._apply_runs(t, acc, list(zip(starts.tolist(), ends.tolist())), early)
        else:       # scattered rows (pushes by id): gather, update, scatter
            ids = run_rows(starts, ends)
            t.state.apply(t.rows, acc[ids], rows=ids, scale=self._scale(t),
                          scratch=True, count=not counted)

    # ---- replication (issue 16) ------------------------------------------------------
    def _held_ranges(self, sid: int, t: ShardTable) -> list[tuple[int, int]]:
        """The parts of t's rows server `sid` holds or catches up on (merged)."""
        out: list[tuple[int, int]] = []
        for g in self.membership.segments(t.n_rows):
            a, b = max(g.lo, t.lo), min(g.hi, t.hi)
            if a < b and (sid in g.holders or sid in g.catching):
                if out and out[-1][1] == a:
                    out[-1] = (out[-1][0], b)
                else:
                    out.append((a, b))
        return out

    def _forward(self, t: ShardTable, clock: int, acc, starts, ends, counted: bool) -> None:
        """Send clock `clock`'s sum of `t`'s rows (before it is applied: the update
        scales it in place) to each replica and catcher-up, the rows each holds; reads
        of the next clock wait for their acks (durable). A clock no one pushed to goes
        too, so the replicas' clocks and step counts move with the primary's."""
        if not t.replicas or self.membership is None:
            return
        if acc is None or starts is None or not len(starts):
            starts = ends = np.zeros(0, np.int64)
        starts = np.ascontiguousarray(starts, dtype="<i8")
        ends = np.ascontiguousarray(ends, dtype="<i8")
        waiting = set()
        sent = 0
        for sid in t.replicas:
            for a, b in self._held_ranges(sid, t):
                s, e, values = _clip_runs(starts, ends, acc, a - t.lo, b - t.lo, t.row_width)
                self._peer_rid += 1
                frames = P.request("replicate", self._peer_rid, [s, e, values],
                                   table=t.name, lo=a, hi=b, clock=clock, counted=counted,
                                   runs=len(s), origin=self.rank,
                                   epoch=self.membership.epoch)
                self.peer_sent[self._peer_rid] = (sid, frames)
                self.outbox.append((sid, frames))
                if sid in t.synced:
                    waiting.add((sid, a))
                sent += values.nbytes
        if waiting:
            t.unacked[clock] = waiting
        self.stats["forwarded_bytes"] = self.stats.get("forwarded_bytes", 0) + sent

    def _op_replicate(self, peer, rid, h, frames):
        if self.membership is None:
            raise ProtocolError(f"server {self.rank} runs without a membership: it holds "
                                "no replicas")
        epoch = P.field(h, "epoch", int, minimum=1)
        origin = P.field(h, "origin", int, minimum=0)
        name = P.field(h, "table", str)
        lo = P.field(h, "lo", int, minimum=0)
        hi = P.field(h, "hi", int, minimum=0)
        clock = P.field(h, "clock", int, minimum=0)
        counted = P.field(h, "counted", bool)
        n = P.field(h, "runs", int, minimum=0)
        if epoch > self.membership.epoch:
            return [(peer, P.reply_error(rid, behind=True, epoch=self.membership.epoch,
                                         error=f"server {self.rank} is at epoch "
                                               f"{self.membership.epoch}, the stream at "
                                               f"{epoch}: send again"))]
        if not lo < hi:
            raise ProtocolError(f"header fields 'lo'/'hi': [{lo}, {hi}) holds no rows")
        P.expect_frames(frames, 4, "replicate")
        starts, ends = P.ids_frame(frames[1], 1, n), P.ids_frame(frames[2], 2, n)
        if n and (starts.min() < 0 or ends.max() > hi - lo or (ends <= starts).any()
                  or (starts[1:] < ends[:-1]).any()):
            raise ProtocolError(f"frames 1-2 (runs): not sorted disjoint runs within the "
                                f"{hi - lo} rows [{lo}, {hi})")
        segs = self._segments_of(name)
        width = segs[0].row_width if segs else None
        n_rows = segs[0].n_rows if segs else None
        if n_rows is None:
            n_rows = self.catalog.get(name, {}).get("n_rows")
            width = self.catalog.get(name, {}).get("row_width")
        if n_rows is None or hi > n_rows:
            if self._catching_any(name):
                return self._buffer_stream(peer, rid, h, frames)
            raise ProtocolError(f"header field 'table': server {self.rank} holds no rows of "
                                f"table {name!r:.60}")
        seg = next((g for g in self.membership.segments(n_rows) if g.lo <= lo < g.hi), None)
        if seg is None or seg.primary != origin or not (
                self.rank in seg.holders or self.rank in seg.catching):
            raise ProtocolError(f"header field 'origin': server {origin} is not the primary "
                                f"of rows [{lo}, {hi}) of table {name!r:.60} with server "
                                f"{self.rank} a holder, in epoch {self.membership.epoch}")
        values = P.values_frame(frames[3], 3, int((ends - starts).sum()) if n else 0, width)
        mine = sorted((x for x in segs if lo <= x.lo and x.hi <= hi), key=lambda x: x.lo)
        at = lo
        for x in mine:
            at = x.hi if x.lo == at else at
        if at != hi:            # not (all) here yet: a fetch of them is under way
            return self._buffer_stream(peer, rid, h, frames)
        if any(x.primary for x in mine):
            raise ProtocolError(f"header fields 'lo'/'hi': server {self.rank} is the "
                                f"primary of rows of [{lo}, {hi}) of table {name!r:.60}")
        nexts = {x.next for x in mine}
        if max(nexts) > clock and min(nexts) <= clock:
            raise ProtocolError(f"header field 'clock': segments of [{lo}, {hi}) are at "
                                f"clocks {sorted(nexts)}, got clock {clock}")
        if min(nexts) > clock:             # a resend of one applied already
            return [(peer, P.reply_ok(rid, acked=clock))]
        if max(nexts) < clock:             # missed clocks: fetched too early; again
            for x in mine:
                del self.tables[x.key]
            return self._buffer_stream(peer, rid, h, frames) + self._catch_up_rows()
        for x in mine:
            s, e, v = _clip_runs(starts, ends, values, x.lo - lo, x.hi - lo, width,
                                 packed=True)
            x.next, x.begun = clock + 1, clock
            if len(s):
                acc = x.alloc()
                k = 0
                for a, b in zip(s.tolist(), e.tolist()):
                    acc[a:b] = v[k:k + b - a]
                    k += b - a
                self.before_write(x)
                self._apply_sum(x, acc, s, e, counted, False)
                if not x.free:
                    x.free.append(acc)
        self.stats["replicated"] = self.stats.get("replicated", 0) + 1
        self.stats["replica_bytes"] = self.stats.get("replica_bytes", 0) + values.nbytes
        return [(peer, P.reply_ok(rid, acked=clock))]

    def _catching_any(self, name: str) -> bool:
        """Whether this shard is fetching rows (of `name`, or any while it knows no
        tables): the stream for them waits until they are here."""
        return bool(self.fetching) or not self.tables

    def _buffer_stream(self, peer, rid, h, frames) -> list[Reply]:
        """Keep a stream message for rows still being fetched; it is applied (and
        acknowledged) once they are here."""
        if len(self.early_stream) >= MAX_EARLY_STREAM:
            raise ProtocolError(f"server {self.rank}: {MAX_EARLY_STREAM} replication "
                                "messages wait for rows still being fetched")
        size = sum(memoryview(f).nbytes for f in frames)
        if self.early_stream_bytes + size > MAX_EARLY_STREAM_BYTES:
            raise ProtocolError(f"server {self.rank}: replication messages waiting for rows "
                                f"still being fetched would hold {self.early_stream_bytes + size}"
                                f" bytes, over {MAX_EARLY_STREAM_BYTES}")
        self.early_stream.append((peer, rid, h, [bytes(memoryview(f)) for f in frames]))
        self.early_stream_bytes += size
        return []

    def _replay_stream(self) -> list[Reply]:
        waiting, self.early_stream = self.early_stream, []
        self.early_stream_bytes = 0
        out = []
        for peer, rid, h, frames in waiting:
            out += self.dispatch(peer, h, frames)
        return out

    def on_peer_reply(self, sid: int, header: dict, frames: list = (),
                      now: float | None = None) -> list[Reply]:
        """Another server's answer to what this one sent it: a replica's ack makes the
        clock durable once every replica's is in (and answers the reads waiting for
        it); rows fetched become segments here; `behind` (it has not heard of this
        epoch yet) sends it again shortly."""
        sent = self.peer_sent.pop(header.get("id"), None)
        if sent is None or sent[0] != sid:
            return []
        h = P.decode_header(sent[1][0])
        now = time.monotonic() if now is None else now
        if h["op"] == "fetch":
            return self._on_fetched(sid, h, header, list(frames[1:]) if frames else [], now)
        if header.get("ok") and "acked" in header:
            out = []
            for t in self._segments_of(h["table"]):
                if t.primary and t.lo <= h["lo"] < t.hi and h["clock"] in t.unacked:
                    t.unacked[h["clock"]].discard((sid, h["lo"]))
                    if not t.unacked[h["clock"]]:
                        del t.unacked[h["clock"]]
                        out = self._release()
            return out
        if header.get("behind"):
            self._retry_peer(sid, sent[1], now)
            return []
        log.warning("server %d: server %d refused the replication stream: %s", self.rank,
                    sid, header.get("error"))
        return []

    def _retry_peer(self, sid: int, frames: list, now: float, after: float = PEER_RETRY_S):
        h = P.decode_header(frames[0])
        self.peer_sent[h["id"]] = (sid, frames)
        self.peer_retry.append((now + after, sid, frames))

    def due_peer_retries(self, now: float) -> None:
        """Move the messages whose retry time came into the outbox."""
        keep = []
        for when, sid, frames in self.peer_retry:
            if when <= now:
                self.outbox.append((sid, frames))
            else:
                keep.append((when, sid, frames))
        self.peer_retry = keep

    # ---- fetch: catching up on rows another server holds (issue 16) -------------------
    def _send_peer(self, sid: int, op: str, payload=(), **fields) -> None:
        self._peer_rid += 1
        frames = P.request(op, self._peer_rid, list(payload), **fields)
        self.peer_sent[self._peer_rid] = (sid, frames)
        self.outbox.append((sid, frames))

    def _catch_up_rows(self) -> list[Reply]:
        """Fetch what the membership gives this shard and it does not hold: first the
        tables there are (from another member, when it knows none), then each range
        from a holder that has it."""
        m = self.membership
        if m is None:
            return []
        others = [s for s in sorted(m.servers) if s != self.rank]
        if not others:
            return []
        if not self.catalog_known:
            # every member's list: a table with fewer rows than there are servers has
            # none on some of them, so no one member need know every table
            for sid in others:
                key = ("catalog", sid)
                if key not in self.fetching and sid not in self.catalog_from:
                    self.fetching.add(key)
                    self._send_peer(sid, "fetch", epoch=m.epoch)
            if any(k[0] == "catalog" for k in self.fetching if isinstance(k, tuple)) \
                    or not set(others) <= self.catalog_from:
                return []
            self.catalog_known = True
        for name, spec in sorted(self.catalog.items()):
            have = [(t.lo, t.hi) for t in self._segments_of(name)]
            for g in m.held_by(self.rank, spec["n_rows"]):
                for a, b in _uncovered(have, g.lo, g.hi):
                    src = next((x for x in g.holders if x != self.rank), None)
                    key = (name, a, b)
                    if src is None or key in self.fetching:
                        continue
                    self.fetching.add(key)
                    self._send_peer(src, "fetch", table=name, lo=a, hi=b, epoch=m.epoch,
                                    origin=self.rank)
        return []

    def _op_fetch(self, peer, rid, h, frames):
        P.expect_frames(frames, 1, "fetch")
        if self.membership is None:
            raise ProtocolError(f"server {self.rank} runs without a membership")
        epoch = P.field(h, "epoch", int, minimum=1)
        if epoch > self.membership.epoch:
            return [(peer, P.reply_error(rid, behind=True, epoch=self.membership.epoch,
                                         error=f"server {self.rank} is at epoch "
                                               f"{self.membership.epoch}: ask again"))]
        if "table" not in h:        # the catalog: every table this shard knows
            specs = dict(self.catalog)
            specs.update((t.name, t.spec()) for t in self.tables.values())
            return [(peer, P.reply_ok(rid, tables=[specs[k] for k in sorted(specs)],
                                      done=self.done))]
        name = P.field(h, "table", str)
        lo = P.field(h, "lo", int, minimum=0)
        hi = P.field(h, "hi", int, minimum=0)
        mine = sorted((t for t in self._segments_of(name) if t.lo < hi and lo < t.hi),
                      key=lambda t: t.lo)
        if lo >= hi or _uncovered([(t.lo, t.hi) for t in mine], lo, hi):
            raise ProtocolError(f"header fields 'lo'/'hi': server {self.rank} does not hold "
                                f"all of rows [{lo}, {hi}) of table {name!r:.60}")
        origin = P.field(h, "origin", int, minimum=0) if "origin" in h else None
        pieces, payload = [], []
        for t in mine:
            if t.primary and origin in t.replicas and origin not in t.synced:
                t.fetched_by.add(origin)        # it follows the stream from here on
                t.synced += (origin,)
            a, b = max(lo, t.lo), min(hi, t.hi)
            pieces.append({"lo": a, "hi": b, "next": t.next, "step": t.state.step,
                           "slots": sorted(t.state.slots)})
            payload.append(np.array(t.rows[a - t.lo:b - t.lo]))
            for k in sorted(t.state.slots):
                payload.append(np.array(t.state.slots[k][a - t.lo:b - t.lo]))
        self.stats["fetched_bytes"] = self.stats.get("fetched_bytes", 0) + \
            sum(x.nbytes for x in payload)
        return [(peer, P.reply_ok(rid, payload, spec=mine[0].spec(), pieces=pieces))]

    def _on_fetched(self, sid: int, req: dict, header: dict, frames: list,
                    now: float) -> list[Reply]:
        key = ("catalog", sid) if "table" not in req else (req["table"], req["lo"], req["hi"])
        if not header.get("ok"):
            if not header.get("behind") and key not in self.fetch_refused:
                self.fetch_refused.add(key)
                log.warning("server %d: server %d could not give %s yet (%s); asking again",
                            self.rank, sid, key, header.get("error"))
            if req.get("epoch") == getattr(self.membership, "epoch", None):
                # behind, or the holder is itself still catching up: ask again shortly
                self.fetching.discard(key)
                self.fetch_retry_at = now + FETCH_RETRY_S
            return []
        self.fetching.discard(key)
        if key[0] == "catalog":
            for spec in header.get("tables") or []:
                self.catalog.setdefault(spec["table"], spec)
            self.catalog_from.add(sid)
            done = header.get("done")
            if self.joining and isinstance(done, list) and len(done) == self.num_workers:
                self.done = [max(a, int(b)) for a, b in zip(self.done, done)]
            return self._catch_up_rows()
        spec, frames = header["spec"], list(frames)
        for piece in header["pieces"]:
            a, b = piece["lo"], piece["hi"]
            rows = P.values_frame(frames.pop(0), 1, b - a, spec["row_width"])
            slots = {k: np.array(P.values_frame(frames.pop(0), 1, b - a, spec["row_width"]))
                     for k in piece["slots"]}
            if any(t.lo < b and a < t.hi for t in self._segments_of(spec["table"])):
                continue        # here already (a fetch of it raced with another)
            t = ShardTable(spec["table"], spec["n_rows"], spec["row_width"], a, b,
                           spec["rule"], spec["hyper"], spec["per_clock"],
                           functions=_functions.resolve(spec.get("functions")))
            t.rows = np.array(rows)
            t.state = RuleState(t.rule, t.hyper, t.rows.shape, self.rule_backend)
            t.rows = t.state.hold(t.rows)
            t.state.step = piece["step"]
            for k, v in slots.items():
                t.state.slots[k] = v
            t.next, t.begun = piece["next"], piece["next"] - 1
            t.key, _ = self._create_key(t)
            self._place(t)
            self.tables[t.key] = t
            log.info("server %d fetched rows %d..%d of table %s from server %d at clock %d",
                     self.rank, a, b, t.name, sid, t.next)
        return self._replay_stream() + self._release()

    # ---- membership (issue 16) -------------------------------------------------------
    def _epoch_refusal(self, rid, h: dict) -> list | None:
        """The refusal of a timeline request of another epoch, or None. Older: the
        client re-routes with the membership it gets. Newer: the coordinator's update
        is on its way here; the client sends it again shortly (refused, not parked: a
        parked request would hold state for a membership this shard may never see)."""
        e = h["epoch"]
        if not isinstance(e, int) or isinstance(e, bool):
            raise ProtocolError(f"header field 'epoch' must be int (got {e!r:.40})")
        cur = self.membership.epoch
        if e < cur:
            return P.reply_error(
                rid, stale=True, epoch=cur, membership=self.membership.to_json(),
                error=f"server {self.rank}: request of membership epoch {e}, this server "
                      f"is at epoch {cur}: re-route with the membership in this reply")
        if e > cur:
            return P.reply_error(
                rid, behind=True, epoch=cur,
                error=f"server {self.rank}: request of membership epoch {e}, this server "
                      f"is still at epoch {cur}: send it again")
        return None

    def _op_membership(self, peer, rid, h, frames):
        P.expect_frames(frames, 1, "membership")
        if self.membership is None and not self.joining:
            raise ProtocolError(f"server {self.rank} runs without a membership")
        out = []
        if "membership" in h and self.membership is None:
            try:
                new = _membership.Membership.from_json(h["membership"])
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise ProtocolError(f"header field 'membership': {e}") from None
            out = self._adopt(new)
        elif "membership" in h:
            try:
                new = _membership.Membership.from_json(h["membership"])
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise ProtocolError(f"header field 'membership': {e}") from None
            cur = self.membership
            if new.epoch < cur.epoch:
                raise ProtocolError(f"header field 'membership': epoch {new.epoch} is older "
                                    f"than this server's {cur.epoch}")
            if new.epoch == cur.epoch:
                if new.to_json() != cur.to_json():
                    raise ProtocolError(f"header field 'membership': another membership of "
                                        f"epoch {cur.epoch} than this server's")
            else:
                out = self._adopt(new)
        m = self.membership
        return [(peer, P.reply_ok(rid, epoch=m.epoch, ready=self._ready(),
                                  membership=m.to_json()))] + out

    def _adopt(self, new) -> list[Reply]:
        """Take membership `new`: each segment's role anew. A segment promoted here
        that lags the workers' clocks redoes the clock its dead primary had not made
        durable from the pushes the workers send again; acks owed by servers that are
        gone are no longer waited for."""
        old, self.membership = self.membership, new
        old_epoch = 0 if old is None else old.epoch
        if any(p.sid == self.rank for p in new.pending):
            # catching up: ask every member for its tables again, so rows of a table
            # this shard had none of are fetched too
            self.catalog_known, self.catalog_from = False, set()
        promoted = 0
        out = []
        split = self._split_for(new)
        for key, t in list(self.tables.items()):
            was = t.primary
            self._place(t)
            if not t.primary and not self._holds(t):
                del self.tables[key]        # no longer held here (drained, or moved)
            if t.primary and not was:
                promoted += 1
                if t.per_clock:     # see _op_redo: every worker says when it re-sent
                    t.redo, t.redone = t.next, set()
            elif was and not t.primary:
                # Demoted: the new primary sums the clocks not applied here from the
                # pushes the workers send it again; reads go there.
                t.pending.clear()
                t.unacked.clear()
                t.applied.clear()
                t.redo = None
        keep = []
        for p in self.parked:       # reads of rows served elsewhere now: re-routed
            t = self.tables.get(p.key or p.table) if isinstance(p, ParkedPull) else None
            if isinstance(p, ParkedPull) and (t is None or not t.primary
                                              or (p.key or p.table) in split):
                out.append((p.peer, self._epoch_refusal(p.rid, {"epoch": old_epoch})))
            else:
                keep.append(p)
        self.parked = keep
        self.peer_sent = {k: v for k, v in self.peer_sent.items() if v[0] in new.servers}
        self.peer_retry = [e for e in self.peer_retry if e[1] in new.servers]
        if promoted:
            self.failovers += 1
        log.warning("server %d: membership epoch %d -> %d (%d segments promoted here)",
                    self.rank, old_epoch, new.epoch, promoted)
        for t in list(self.tables.values()):
            if t.redo is not None:
                out += self._catch_up(t)
        return out + self._catch_up_rows() + self._release()

    def due_fetches(self, now: float) -> list[Reply]:
        """Ask again for the rows a holder could not give yet."""
        if self.fetch_retry_at is None or now < self.fetch_retry_at:
            return []
        self.fetch_retry_at = None
        return self._catch_up_rows()

    def _split_for(self, m) -> set[str]:
        """Cut every segment held here where membership `m` cuts its rows, so each
        lies in one segment of `m` (one primary, one set of holders). Returns the
        keys of the segments cut (their parked reads are sent back to re-route)."""
        cut = set()
        for key, t in list(self.tables.items()):
            inside = sorted({b for g in m.segments(t.n_rows) for b in (g.lo, g.hi)
                             if t.lo < b < t.hi})
            if not inside:
                continue
            cut.add(key)
            for x in reversed(inside):
                right = self._split_table(t, x)
                self.tables[right.key] = right
        return cut

    def _split_table(self, t: ShardTable, x: int) -> ShardTable:
        """Cut `t` at global row x: `t` keeps [lo, x), the new segment [x, hi) has
        its rows, rule state, clocks and the sums in flight of those rows."""
        at = x - t.lo
        right = ShardTable(t.name, t.n_rows, t.row_width, x, t.hi, t.rule, t.hyper,
                           t.per_clock, functions=t.functions)
        self.before_write(t)
        right.rows = np.array(t.rows[at:])
        right.state = RuleState(t.rule, t.hyper, right.rows.shape, self.rule_backend)
        right.rows = right.state.hold(right.rows)
        right.state.step = t.state.step
        right.fetched_by = set(t.fetched_by)
        for k in list(t.state.slots):
            right.state.slots[k] = np.array(t.state.slots[k][at:])
        left_rows = np.array(t.rows[:at])
        left_slots = {k: np.array(v[:at]) for k, v in t.state.slots.items()}
        step = t.state.step
        t.state = RuleState(t.rule, t.hyper, left_rows.shape, self.rule_backend)
        t.rows = t.state.hold(left_rows)
        t.state.step = step
        for k, v in left_slots.items():
            t.state.slots[k] = v
        t.free = []
        width = t.row_width
        for c, s in list(t.pending.items()):
            right.pending[c] = s.split(at, lambda n=len(right.rows):
                                       np.empty((n, width), np.float32))
        clip = lambda runs, a, b, off: [(max(p, a) - off, min(q, b) - off)
                                        for p, q in runs if q > a and p < b]
        right.applied = {c: clip(r, at, 1 << 62, at) for c, r in t.applied.items()}
        t.applied = {c: clip(r, 0, at, 0) for c, r in t.applied.items()}
        right.absorbed = {w: (c, clip(r, at, 1 << 62, at)) for w, (c, r) in t.absorbed.items()}
        t.absorbed = {w: (c, clip(r, 0, at, 0)) for w, (c, r) in t.absorbed.items()}
        right.begun, right.next, right.redo = t.begun, t.next, t.redo
        right.redone = set(t.redone)
        right.unacked = {c: {(sid, a) for sid, a in v if a >= x} for c, v in t.unacked.items()}
        t.unacked = {c: {(sid, a) for sid, a in v if a < x} for c, v in t.unacked.items()}
        right.unacked = {c: v for c, v in right.unacked.items() if v}
        t.unacked = {c: v for c, v in t.unacked.items() if v}
        t.hi = x
        right.key = f"{t.name}{SEGMENT_SEP}{x}"
        return right

    def _holds(self, t: ShardTable) -> bool:
        """Whether the membership has this shard hold (or catch up on) t's rows."""
        return t.lo == t.hi or any(
            g.lo <= t.lo and t.hi <= g.hi or (g.lo < t.hi and t.lo < g.hi)
            for g in self.membership.held_by(self.rank, t.n_rows))

    def _ready(self) -> bool:
        """Whether this shard holds every segment its membership gives it."""
        if self.membership is None:
            return True
        if self.fetching or self.early_stream or not self.catalog_known:
            return False
        names = {name: spec["n_rows"] for name, spec in self.catalog.items()}
        names.update((t.name, t.n_rows) for t in self.tables.values())
        for name, n_rows in names.items():
            have = [(t.lo, t.hi) for t in self._segments_of(name)]
            for seg in self.membership.held_by(self.rank, n_rows):
                if not any(a <= seg.lo and seg.hi <= b for a, b in have) and \
                        not self._covered(have, seg.lo, seg.hi):
                    return False
        return True

    @staticmethod
    def _covered(have: list, lo: int, hi: int) -> bool:
        at = lo
        for a, b in sorted(have):
            if a <= at < b:
                at = b
        return at >= hi

    def _apply_runs(self, t: ShardTable, acc: np.ndarray, runs: list, early: bool) -> None:
        """One update of the rows in `runs` (sorted disjoint [a, b)), as slices: a
        dense clock or one that missed a few rows (the fingerprint row no one pushes)
        needs no gather and scatter. `early` (see _apply_clocks): a chunk of rows at a
        time, and after each chunk the parked pulls of this table that lie in rows
        already final are answered, so the socket layer sends one block while the next
        is computed. The caller counts the update (RuleState.begin)."""
        scale = self._scale(t)
        step = P.chunk_rows(t.row_width) if early else len(t.rows) or 1
        ends = [a for a, _ in runs[1:]] + [len(t.rows)]
        for (a, b), end in zip(runs, ends):
            for x in range(a, b, step):
                y = min(b, x + step)
                t.state.apply_slice(t.rows, acc, x, y, scale)
                if not early:
                    continue
                final = end if y == b else y        # no one pushed the rows up to `end`
                ready = self._release(lambda p, f=final: (p.key or p.table) == t.key
                                      and p.sel.served_early(((0, f),)))
                if ready:
                    self.send_early(ready)

    def _apply_now(self, t: ShardTable, sel: Selection, values: np.ndarray) -> None:
        """Apply a push to a table without clocks (async) as it arrives."""
        t0 = time.perf_counter()
        self.before_write(t)
        rows, grad = sel.update(values, len(t.rows))
        if t.functions:
            self._apply_with_functions(t, grad, rows, True, gathered=True)
        else:
            t.state.apply(t.rows, grad * np.float32(self._scale(t)), rows=rows)
        self.stats["applied"] += 1
        self.on_update(time.perf_counter() - t0)

    # ---- sparse pushes and server functions (issue 17) ----------------------------------
    def _push_payload(self, t: ShardTable, h: dict, frames: list):
        """The rows of a push and their values, dense: a sparse push (wire.protocol)
        becomes the rows it touches, zero where it names no column, so everything
        after this sees a push by id."""
        rows = h.get("rows")
        if not (isinstance(rows, dict) and "sparse" in rows):
            sel = self._selection(t, h, frames, payload=1)
            return sel, P.values_frame(frames[-1], len(frames) - 1, len(sel), t.row_width)
        _, (nnz, lo, hi) = P.rows_field(h, t.n_rows)
        P.expect_frames(frames, 3, "push")
        if lo < hi and (lo < t.lo or hi > t.hi):
            raise ProtocolError(f"header field 'rows.sparse' rows [{lo}, {hi}) outside rows "
                                f"[{t.lo}, {t.hi}) held by server {self.rank}")
        offsets, vals = P.sparse_frames(frames[1], frames[2], 1, nnz, hi - lo, t.row_width)
        row = offsets // t.row_width
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]) if nnz else \
            np.zeros(0, np.int64)
        ids = row[starts].astype(np.int64)
        dense = np.zeros((len(ids), t.row_width), np.float32)
        which = np.repeat(np.arange(len(ids)), np.diff(np.r_[starts, nnz]))
        dense[which, offsets % t.row_width] = vals
        return RowIds(ids + (lo - t.lo)), dense

    def _apply_with_functions(self, t: ShardTable, grad: np.ndarray, ids: np.ndarray,
                              counted: bool, gathered: bool = False) -> None:
        """One update of rows `ids` with the table's server functions around the rule:
        the gradient phase on the gathered gradient, then the rule, then the weights
        phase on the rows it changed. `grad` is the shard-sized sum buffer, or with
        `gathered` one row per id already (async pushes)."""
        scale = self._scale(t)
        g = np.array(grad if gathered else grad[ids], dtype=np.float32)
        _functions.before_rule(t.functions, g, scale)
        t.state.apply(t.rows, g, rows=ids, scale=scale, scratch=True, count=not counted)
        _functions.after_rule(t.functions, t.rows, ids,
                              _functions.rate(t.rule, t.state.hyper, t.state.step))


def _create_functions(h: dict) -> tuple:
    """The server functions a create request names (optional field `functions`)."""
    if "functions" not in h:
        return ()
    try:
        return _functions.resolve(h["functions"])
    except ValueError as e:
        raise ProtocolError(f"header field 'functions'{e}" if str(e).startswith("[")
                            else f"header field 'functions': {e}") from None


def _uncovered(have, lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of [lo, hi) no range in `have` covers."""
    out, at = [], lo
    for a, b in sorted(have):
        if b <= at or a >= hi:
            continue
        if a > at:
            out.append((at, a))
        at = max(at, b)
    if at < hi:
        out.append((at, hi))
    return out


def _clip_runs(starts: np.ndarray, ends: np.ndarray, values, a: int, b: int, width: int,
               packed: bool = False):
    """The runs (starts, ends) within rows [a, b), made relative to a, and their
    values: from `values` the shard-sized sum (rows by index) or, `packed`, the runs'
    rows one after the other."""
    s = np.clip(starts, a, b)
    e = np.clip(ends, a, b)
    keep = e > s
    if packed:
        offs = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        parts = [values[offs[i] + (s[i] - starts[i]):offs[i] + (e[i] - starts[i])]
                 for i in np.flatnonzero(keep)]
    else:
        parts = [values[x:y] for x, y in zip(s[keep].tolist(), e[keep].tolist())] \
            if values is not None else []
    v = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32) if parts else \
        np.zeros((0, width), np.float32)
    return (np.ascontiguousarray(s[keep] - a, dtype="<i8"),
            np.ascontiguousarray(e[keep] - a, dtype="<i8"), v)
