"""The client's I/O thread: the only owner of its ZeroMQ sockets (they are not
thread-safe), one DEALER per shard; in a worker that hosts a shard (geeps.client.hosted),
also the thread that serves it.

Requests arrive from any thread through a queue (a pipe wakes the poller). Per shard,
at most WINDOW requests are in flight; each gets an id and, for pushes, the next
per-shard sequence number, which the server uses to drop duplicates. What is queued
for one shard when the thread sends leaves in one batch message (protocol `batch`):
a step's last push, its clock and its refresh are one message per shard, not three.
The hosted shard gets its requests by a function call instead, after the ones that
travel.

Lost replies: a shard answers in order except for parked reads. So when a reply
arrives, every request sent to that shard before it and still unanswered has lost its
request or reply, and is sent again (a parked read answers a retry with `waiting`,
which proves it is still there). While anything is in flight the thread pings a shard
that has been quiet for PING_S, which both proves it is alive and exposes lost
replies. A shard silent for `timeout` seconds fails its requests with
ServerUnreachable naming it; a read parked for `wait_timeout` fails with WaitTimeout.

Restarts: a reply from a new incarnation of a shard starts a rollback of the job to a
checkpoint (geeps.client.recovery.Rollback holds its steps and state; this thread
sends its requests and carries out its steps). Until it ends no other request leaves;
then the calls in flight fail with RolledBack and `timeline` counts one more.

Handles (geeps.client.handles) are completed here, through their producer side:
`set_part` per answered request, `set_exception` for a failure.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import zmq

from geeps.wire import protocol as P
from geeps.job.env import Config
from geeps.errors import (GeepsError, Resplit, RolledBack, ServerError, ServerUnreachable,
                          WaitTimeout)
from geeps.client.handles import Handle
from geeps.client.recovery import Done, Failed, Restore, Rollback, Step
from geeps.wire.memtune import keep_freed_memory
from geeps.wire.transport import connect_dealer

log = logging.getLogger("geeps.client")
ROLLBACK = "rollback"  # a request of the client's own: start a rollback (see request_rollback)
WINDOW = 64          # requests in flight per shard, not counting reads parked there
                     # (the server bounds those itself: GEEPS_PEER_PARKED)
BATCH_BYTES = 1 << 20  # values in one batched message; a larger request goes alone
PING_S = 1.0         # ping a quiet shard this often while requests are in flight
RESEND_MIN_S = 0.5   # never resend one request more often than this
PARKED_RESEND_S = 5.0  # nor a read the shard said is parked (it proves it is alive)
BUSY_RETRY_S = 1.0   # resend a push the shard asked to wait (`busy`) if it says nothing
# With replicas (membership replication >= 2): a shard silent this long with requests
# in flight may be gone; another shard is asked for the membership (a failover bumps
# it) this often, until the silent one answers or the membership drops it.
SUSPECT_S = 1.5
ASK_MEMBERSHIP_S = 0.05
POLL_MS = 100        # the loop's longest sleep: how late a deferred request may leave


@dataclass
class Request:
    """One request to one shard: `op` and its `header` (the thread adds v, op, id, and
    inc / seq where they apply) and `payload` frames; part `part` of `handle`."""
    shard: int
    op: str
    header: dict
    payload: list = field(default_factory=list)
    seq: bool = False                  # pushes carry a per-shard sequence number
    handle: Handle | None = None
    part: int = 0
    rid: int = -1
    frames: list | None = None
    first_sent: float = 0.0
    last_sent: float = 0.0
    order: int = 0                     # per-shard send counter at the last send
    unsent: bool = False               # the socket could not take it yet
    busy: bool = False                 # the shard asked for it again later (see _on_reply)
    parked: bool = False               # a read the shard said waits there
    timeline: int = 0                  # the client's timeline when it was submitted
    internal: Callable | None = None   # the I/O thread's own request: called with the reply
    # Called on the I/O thread with (header, payload buffers) of an ok reply, before
    # the handle hears of it: a pull copies its rows out here, as each chunk arrives,
    # and the message's buffer is freed at once.
    deliver: Callable | None = None
    epoch: int | None = None           # the membership epoch it was routed by


class _Shard:
    def __init__(self, index: int, address: str, sock: zmq.Socket):
        self.index = index
        self.address = address
        self.sock = sock
        self.inflight: dict[int, Request] = {}
        self.backlog: collections.deque[Request] = collections.deque()
        self.sent = 0                  # send counter, for ordering
        self.seq = 0
        self.last_heard = time.monotonic()
        self.inc: str | None = None      # the server incarnation this client talks to
        self.ping_rid: int | None = None
        self.ping_sent = 0.0
        self.ping_order = 0
        self.refused: BaseException | None = None   # its CurveZMQ handshake failed
        self.gone = False              # no longer a member (failed over, or drained)
        self.disconnected = False      # its connection dropped since it last answered
        # With replicas: pushes it answered of clocks it has not said are durable
        # (applied on every holder), kept to send again to the rows' next primary
        # should it fail; and the clock before which it said all is durable.
        self.kept: list[Request] = []
        self.durable = 0

    def name(self) -> str:
        return f"server {self.index} ({self.address})"


class IOThread(threading.Thread):
    def __init__(self, servers: Sequence[str], *, config: Config | None = None,
                 timeout: float = 30.0, wait_timeout: float = 600.0, host=None,
                 membership=None, worker: int = 0):
        """`host`: the geeps.client.hosted.HostedShard this process serves. This thread
        runs its server's loop too, and hands it requests by a function call; the
        other shards are dialled over TCP."""
        super().__init__(name="geeps-io", daemon=True)
        self.timeout = timeout
        self.wait_timeout = wait_timeout
        self._ctx = zmq.Context.instance()
        self._config = config
        self._worker = worker
        keep_freed_memory()
        local = None if host is None else host.rank
        self._shards = [
            _Shard(k, "in-process", None) if k == local else
            _Shard(k, a, connect_dealer(self._ctx, f"tcp://{a}", config))
            for k, a in enumerate(servers)]
        # Over the network first: the hosted shard's requests are handled on this
        # thread, after the others are on their way.
        self._flush_order = sorted(self._shards, key=lambda s: s.sock is None)
        self._host = None if host is None else host.server
        # Requests to the hosted shard, handed over in order by _pump_local (never from
        # inside the server's own handling: a reply may lead to a resend).
        self._to_local: collections.deque[list] = collections.deque()
        if self._host is not None:
            self._host.local_sink = lambda frames: self._from_local(self._shards[local], frames)
        # With CurveZMQ a server that refuses our key says so only in a handshake
        # event; watch for it so the caller hears "refused", not "unreachable". A
        # dropped connection is how a killed or drained server shows first: the
        # membership is asked for at once (see _suspect), not after SUSPECT_S; without
        # replicas only then (a silent shard may just be waiting for a slow worker).
        self._monitors = {}
        self._monitor_mask = 0
        if config is not None and config.curve_dir and not config.insecure:
            self._monitor_mask |= (zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        if membership is not None:
            self._monitor_mask |= zmq.EVENT_DISCONNECTED
        if self._monitor_mask:
            for s in self._shards:
                if s.sock is not None:
                    self._monitors[s.sock.get_monitor_socket(self._monitor_mask)] = s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._held = threading.local()     # hold() depth of each submitting thread
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        self._stopping = False
        self._rolled_to = 0
        self._next_id = 1
        self._closed = threading.Event()
        # Rollback after a server restart (see _detect_restart): the timeline counts
        # rollbacks; requests submitted on an older one are refused.
        self.timeline = 0
        self.on_rollback: Callable[[int], None] = lambda clock: None
        self._recovery: Rollback | None = None     # the rollback in progress
        self._fatal: GeepsError | None = None
        # The membership requests are routed by (geeps.job.membership; replaced here,
        # on this thread, when a shard refuses a request as stale), and every one
        # adopted, whose segment bounds requests are also cut at (see Client._routes).
        self.membership = membership
        self._seen = [] if membership is None else [membership]
        self.cuts_version = 0
        self.epochs_adopted = 0
        self.n_rows: dict[str, int] = {}      # table -> rows, for re-routing
        self.widths: dict[str, int] = {}      # table -> row width (sparse pieces)
        self.clocks_sent = 0                  # clock requests this client made
        self.redo_pending: set[int] = set()   # clocks to say `redo` of, when due
        # Pushes are kept until durable (BSP/SSP tables; the client says so).
        self.keep_pushes = False
        self.failovers = 0                    # memberships that moved rows off a shard
        self._asked_at = 0.0
        self._ask_next = 0
        self._poller: zmq.Poller | None = None
        self._by_sock: dict = {}

    # ---- any thread ----------------------------------------------------------------
    def cuts(self, n_rows: int) -> list[int]:
        """The segment bounds of a table of `n_rows` in every membership adopted."""
        return sorted({b for m in list(self._seen) for g in m.segments(n_rows)
                       for b in (g.lo, g.hi)})

    def submit(self, reqs: list[Request], combine: Callable[[list], Any], *,
               timeline: int | None = None, fail: BaseException | None = None,
               defer: bool = False, epoch: int | None = None) -> Handle:
        """Queue `reqs` (one handle for all). `timeline`: the rollback count they belong
        to (default: now); requests of an older one are refused with RolledBack.
        `defer`: don't wake the thread; they leave with the next requests submitted,
        or within POLL_MS."""
        handle = Handle(max(1, len(reqs)) if fail else len(reqs), combine)
        if fail is not None:
            handle.set_exception(fail)
            return handle
        if self._stopping or self._fatal is not None:
            handle.set_exception(self._fatal or GeepsError("client is closed"))
            return handle
        timeline = self.timeline if timeline is None else timeline
        for i, r in enumerate(reqs):
            r.handle, r.part, r.timeline = handle, i, timeline
            if epoch is not None and r.op in P.TIMELINE_OPS:
                r.epoch = epoch
            self._queue.put(r)
        if self._closed.is_set():   # the thread ended after the check above: no one
            self._fail_queued(self._fatal or GeepsError("client is closed"))  # reads them
        elif not (defer or getattr(self._held, "depth", 0)):
            self._wake()
        return handle

    @contextlib.contextmanager
    def hold(self):
        """Requests this thread submits inside the block are sent together at its end:
        those to one shard leave in one message (see _flush)."""
        self._held.depth = getattr(self._held, "depth", 0) + 1
        try:
            yield
        finally:
            self._held.depth -= 1
            if not self._held.depth:
                self._wake()

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(5)

    def _wake(self) -> None:
        try:
            os.write(self._wfd, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the thread will wake anyway

    # ---- the I/O thread -------------------------------------------------------------
    def run(self) -> None:
        poller = self._poller = zmq.Poller()
        poller.register(self._rfd, zmq.POLLIN)
        by_sock = self._by_sock
        for s in self._shards:
            if s.sock is not None:
                poller.register(s.sock, zmq.POLLIN)
                by_sock[s.sock] = s
        for m in self._monitors:
            poller.register(m, zmq.POLLIN)
        host = self._host
        if host is not None:
            poller.register(host.sock, zmq.POLLIN)
        try:
            while not self._stopping:
                events = dict(poller.poll(0 if host is not None and host.busy else POLL_MS))
                if self._rfd in events:
                    os.read(self._rfd, 65536)
                self._take_queue()
                for sock, shard in list(by_sock.items()):
                    # a reply just read may have adopted a membership that dropped a
                    # later shard of this list: its socket is closed now
                    if sock in events and not shard.gone:
                        self._receive(shard)
                served = host is not None and host.sock in events
                if served:
                    host.drain()
                for mon, shard in list(self._monitors.items()):
                    if mon in events:
                        self._handshake_failed(mon, shard)
                now = time.monotonic()
                if self.redo_pending:
                    self._send_redo_clocks()
                for shard in list(self._flush_order):
                    self._tick(shard, now)
                    self._flush(shard)
                while self._to_local:      # replies may open the window for more
                    served = True
                    self._pump_local()
                    for shard in self._flush_order:
                        self._flush(shard)
                if host is not None:
                    host.after_poll(served)
        except Exception as e:  # never leave callers waiting forever
            log.exception("geeps I/O thread failed")
            # Set before failing what is pending, so what is submitted from now on
            # fails at once (submit) instead of waiting for a thread that is gone.
            self._fatal = GeepsError(f"client I/O thread failed: {e}")
            self._fail_all(self._fatal)
        finally:
            self._fail_all(self._fatal or GeepsError("client is closed"))
            for s in self._shards:
                if s.sock is not None:
                    _unwatch(s.sock)
            for m in self._monitors:
                m.close(linger=0)
            for s in self._shards:
                if s.sock is not None:
                    s.sock.close(linger=0)
            os.close(self._rfd)
            os.close(self._wfd)

    def request_rollback(self, shard: int, hello: dict) -> Handle:
        """Roll the job back for the restart of `shard` that its `hello` reply shows
        (its state is newer than the rollback the other shards answer). The handle
        fails with RolledBack(clock) once every shard is back at that checkpoint."""
        handle = Handle(1, lambda parts: None)
        r = Request(shard, ROLLBACK, dict(hello))
        r.handle = handle
        self._queue.put(r)
        self._wake()
        return handle

    def _take_queue(self) -> None:
        while True:
            try:
                r = self._queue.get_nowait()
            except queue.Empty:
                return
            if r.op == ROLLBACK:
                self._detect_restart(self._shards[r.shard], r.header)
                if self._recovery is not None:
                    self._recovery.doom(r.handle)    # hears RolledBack(clock)
                else:
                    r.handle.set_exception(self._fatal or GeepsError("rollback did not start"))
                continue
            self._shards[r.shard].backlog.append(r)

    def _flush(self, shard: _Shard) -> None:
        if self._recovery is not None:
            return          # user requests wait until the rollback is done
        if shard.gone:
            while shard.backlog:
                self._reroute(shard.backlog.popleft())
            return
        # What is queued for the shard leaves in as few messages as it can: every
        # message costs each end a wake-up and a trip through its loop, which on a
        # small model is most of what a clock costs. Large values go alone.
        if shard.refused is not None:
            while shard.backlog:
                shard.backlog.popleft().handle.set_exception(shard.refused)
            return
        batch, size, final = [], 0, False
        # Reads parked on the shard do not hold the window: a hundred reads of a future
        # clock must not make this worker's push, clock or stats wait behind them.
        parked = sum(1 for r in shard.inflight.values() if r.parked)
        while shard.backlog and len(shard.inflight) - parked < WINDOW:
            r = shard.backlog.popleft()
            if r.epoch is not None and r.epoch < self.membership.epoch:
                self._reroute(r)        # routed before the membership changed
                continue
            if r.timeline < self.timeline:
                r.handle.set_exception(
                    RolledBack(self._rolled_to, "submitted before the rollback"))
                continue
            self._prepare(shard, r)
            if r.op == "clock" and r.internal is None and "clock" in r.header:
                self.clocks_sent = max(self.clocks_sent, r.header["clock"] + 1)
            n = sum(f.nbytes for f in r.payload)
            if batch and (len(batch) == P.MAX_PARTS or size + n > BATCH_BYTES
                          or (final and n)):
                self._send_batch(shard, batch)
                batch, size, final = [], 0, False
            batch.append(r)
            size += n
            # A last push's rows can be summed and answered as soon as its message is
            # in: a later push's bytes in the same message would hold them back (on a
            # slow link, a pipelined clock's chunk per message is what lets replies
            # flow while pushes still go out). Requests without values still join it.
            final = final or bool(r.header.get("last"))
        if batch:
            self._send_batch(shard, batch)

    def _send_batch(self, shard: _Shard, batch: list[Request]) -> None:
        if shard.sock is None:      # in memory, one costs no more than a batch
            for r in batch:
                self._send(shard, r)
        else:
            self._send(shard, *batch)

    def _send_new(self, shard: _Shard, r: Request) -> None:
        self._prepare(shard, r)
        self._send(shard, r)

    def _prepare(self, shard: _Shard, r: Request) -> None:
        r.rid = self._next_id
        self._next_id += 1
        shard.inflight[r.rid] = r   # tracked before anything can fail (see _fail_all)
        header = dict(r.header, v=P.VERSION, op=r.op, id=r.rid)
        if shard.inc is not None and r.op in P.TIMELINE_OPS:
            header["inc"] = shard.inc
        if r.epoch is not None:
            header["epoch"] = r.epoch
        if r.seq:
            header["seq"] = shard.seq
            shard.seq += 1
        # The hosted shard takes the header as it is: nothing to encode or parse.
        r.frames = [header if shard.sock is None else P.encode_header(header), *r.payload]
        r.first_sent = time.monotonic()
        if len(shard.inflight) == 1:
            shard.last_heard = r.first_sent  # silence counts from the first request

    def _send(self, shard: _Shard, *reqs: Request) -> None:
        """Send `reqs` (already prepared) in one message: a batch if several."""
        now = time.monotonic()
        for r in reqs:
            shard.sent += 1
            r.order = shard.sent
            r.last_sent = now
        frames = reqs[0].frames if len(reqs) == 1 else \
            P.batch(reqs[0].rid, [r.frames for r in reqs])
        # Never block this thread: with no live connection (the server is down, or it
        # refused our handshake) a DEALER would block in send, and then no timeout
        # could fire. An unsent request is retried by _tick, alone.
        try:
            self._transmit(shard, frames)
            unsent = False
        except zmq.Again:
            unsent = True
        for r in reqs:
            r.unsent = unsent

    def _transmit(self, shard: _Shard, frames: list) -> None:
        if shard.sock is None:
            self._to_local.append(frames)
        else:
            shard.sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)

    def _pump_local(self) -> None:
        while self._to_local:
            self._host.handle_local(self._to_local.popleft())

    def _from_local(self, shard: _Shard, frames: list) -> None:
        # A reply of the hosted shard: its values may be views of the shard's rows,
        # so it is taken (a pull copied out) before the shard runs again.
        now = time.monotonic()
        shard.last_heard = now
        for header, payload in P.replies(P.decode_header(frames[0]), frames):
            self._on_reply(shard, header, payload, now)

    def _receive(self, shard: _Shard) -> None:
        while not shard.gone:   # a reply may drop its own sender from the membership
            try:
                frames = shard.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = time.monotonic()
            shard.last_heard = now
            shard.disconnected = False
            try:
                replies = P.replies(P.decode_header(frames[0]), frames)
            except P.ProtocolError as e:
                log.warning("%s sent a malformed reply: %s", shard.name(), e)
                continue
            for header, payload in replies:
                self._on_reply(shard, header, [f.buffer for f in payload], now)

    def _on_reply(self, shard: _Shard, header: dict, payload: list, now: float) -> None:
        """One reply; `payload`: its frames' buffers."""
        rid = header.get("id")
        inc = header.get("inc")
        if inc is not None and shard.inc is not None and inc != shard.inc \
                and (header.get("restarted") or rid == shard.ping_rid):
            self._detect_restart(shard, header)
            return
        if rid is not None and rid == shard.ping_rid:
            shard.ping_rid = None
            if isinstance(header.get("durable"), int):
                self._durable(shard, header["durable"])
            self._resend_overtaken(shard, shard.ping_order, now)
            return
        if header.get("resend"):
            self._resend_busy(shard)
            return
        r = shard.inflight.get(rid)
        if r is None:
            return  # the answer to a retry we already had
        if header.get("restarted") and r.internal is None:
            # Refused for carrying an incarnation we have since left behind: the
            # request belongs to the timeline before the rollback.
            del shard.inflight[rid]
            r.handle.set_exception(RolledBack(self._rolled_to, "sent before the rollback"))
            return
        if header.get("stale") and r.epoch is not None:
            # Routed by a membership the shard has left: take its newer one, and send
            # the request where that one says.
            del shard.inflight[rid]
            self._adopt(header.get("membership"))
            self._reroute(r)
            return
        if header.get("behind") and r.internal is None:
            # The shard has not heard of our epoch yet (the coordinator's update is on
            # its way): the same request again shortly.
            r.unsent = True
            r.last_sent = now
            return
        self._resend_overtaken(shard, r.order, now)
        if header.get("waiting"):
            # Parked on the shard: its answer comes later. Or `busy`: a push ahead of
            # its turn in the shard's rank-order sum while the shard's buffer for those
            # is full (and what we sent after it); the shard says `resend` when it
            # would take it, and BUSY_RETRY_S covers that word getting lost.
            r.busy = r.busy or bool(header.get("busy"))
            r.parked = not r.busy
            return
        del shard.inflight[rid]
        if "durable" in header and isinstance(header["durable"], int):
            self._durable(shard, header["durable"])
        if r.op == "push" and header.get("ok") and self.membership is not None \
                and self.keep_pushes and "clock" in r.header:
            # Until durable: sent again should the rows' primary change (or fail).
            # Answered under an older membership than ours: it may have to go now.
            if r.epoch is not None and r.epoch < self.membership.epoch:
                keep, moved = self._moved(shard, [r])
                shard.kept += keep
                self._send_again(moved)
            else:
                shard.kept.append(r)
        if r.internal is not None:
            r.internal(shard, header, payload)
        elif header.get("ok"):
            if r.op == "hello":
                shard.inc = header.get("inc")
            if r.deliver is not None:
                try:
                    r.deliver(header, payload)
                except Exception as e:      # a reply that does not fit the request
                    r.handle.set_exception(
                        ServerError(f"{shard.name()}: bad reply to {r.op}: {e}"))
                    return
                payload = []
            r.handle.set_part(r.part, (header, payload))
        else:
            r.handle.set_exception(ServerError(f"{shard.name()}: {header.get('error')}"))

    # ---- membership (issue 16) ----------------------------------------------------
    def _adopt(self, doc) -> bool:
        """Take a membership a shard sent, if it is newer than ours."""
        from geeps.job import membership as _membership
        try:
            m = _membership.Membership.from_json(doc)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("a shard sent a malformed membership: %s", e)
            return False
        if self.membership is not None and m.epoch <= self.membership.epoch:
            return False
        log.warning("membership epoch %s -> %d", getattr(self.membership, "epoch", None),
                    m.epoch)
        old, self.membership = self.membership, m
        self._seen.append(m)
        self.cuts_version += 1
        self.epochs_adopted += 1
        self._membership_changed(old)
        return True

    def _durable(self, shard: _Shard, clock: int) -> None:
        if clock > shard.durable:
            shard.durable = clock
            if shard.kept:
                shard.kept = [r for r in shard.kept if r.header["clock"] >= clock]

    def _membership_changed(self, old) -> None:
        """After adopting a newer membership: dial its new servers; what was sent to
        a server it dropped goes where the rows are now. Where rows changed primary,
        the new primary redoes the clocks its predecessor had not made durable: the
        pushes of those clocks answered by the old primary go again to the new one,
        and once this worker finished such a clock and nothing it pushed under the old
        membership is unanswered, a `redo` clock tells every server so (a promoted
        segment counts a worker's clock only from that; the others ignore it)."""
        m = self.membership
        for sid, address in sorted(m.servers.items()):
            self._ensure_shard(sid, address)
        for s in self._shards:
            if s.gone or s.index in m.servers or s.sock is None:
                continue
            s.gone = True
            moved = [r for r in list(s.inflight.values()) + list(s.backlog)
                     if r.internal is None or r.op == "push"]
            s.inflight.clear()
            s.backlog.clear()
            s.ping_rid = None
            self._flush_order = [x for x in self._flush_order if x is not s]
            self._by_sock.pop(s.sock, None)
            if self._poller is not None:
                self._poller.unregister(s.sock)
            _unwatch(s.sock)
            for mon in [mon for mon, x in self._monitors.items() if x is s]:
                del self._monitors[mon]
                if self._poller is not None:
                    self._poller.unregister(mon)
                mon.close(linger=0)
            s.sock.close(linger=0)
            for r in moved:
                self._reroute(r)
            log.warning("%s left the membership (epoch %d); its requests re-routed",
                        s.name(), m.epoch)
        losers = self._lost_rows(old, m)
        if not losers:
            return
        self.failovers += 1
        lowest = min(self._shards[k].durable for k in losers if k < len(self._shards))
        for c in range(lowest, self.clocks_sent + 1):
            self.redo_pending.add(c)
        for s in self._shards:
            keep, moved = self._moved(s, s.kept)
            s.kept = [] if s.gone else keep
            self._send_again(moved)

    def _lost_rows(self, old, new) -> set[int]:
        """The servers that were primary of rows another server is primary of now."""
        out = set()
        if old is None:
            return out
        for n_rows in set(self.n_rows.values()):
            news = new.segments(n_rows)
            for o in old.segments(n_rows):
                for g in news:
                    if g.lo < o.hi and o.lo < g.hi and g.primary != o.primary:
                        out.add(o.primary)
        return out

    def _moved(self, s: _Shard, reqs: list[Request]) -> tuple[list, list]:
        """(the pushes of `reqs` that shard s still serves, those served elsewhere now),
        cut where the current segments cut."""
        keep, moved = [], []
        for r in reqs:
            for piece in self._pieces(r):
                try:
                    k = self._route_of(piece)
                except ServerError as e:
                    log.warning("a push kept for failover cannot be sent again: %s", e)
                    continue
                (moved if k != s.index else keep).append(piece)
        return keep, moved

    def _send_again(self, pushes: list[Request]) -> None:
        for r in sorted(pushes, key=lambda r: r.header["clock"]):
            again = Request(r.shard, "push", dict(r.header, redo=True), r.payload, seq=True,
                            internal=self._on_redone)
            again.epoch = self.membership.epoch
            self._reroute(again)

    def _send_redo_clocks(self) -> None:
        """The `redo` clocks that are due (see _membership_changed)."""
        m = self.membership
        for c in sorted(self.redo_pending):
            if c >= self.clocks_sent:
                return          # this worker has not finished it: its pushes may follow
            if any(r.op == "push" and r.header.get("clock") == c and r.epoch is not None
                   and r.epoch < m.epoch for s in self._shards if not s.gone
                   for r in s.inflight.values()):
                return          # an answer may still say a push must go again
            self.redo_pending.discard(c)
            for sid in sorted(m.servers):
                r = Request(sid, "clock", {"worker": self._worker, "clock": c, "redo": True},
                            internal=self._on_redone)
                r.epoch = m.epoch
                self._shards[sid].backlog.append(r)

    def _pieces(self, r: Request) -> list[Request]:
        """A push as pushes that each lie in one segment of the current membership
        (cut where any membership seen cuts), sharing its frames."""
        name = r.header.get("table")
        n_rows = self.n_rows.get(name)
        if n_rows is None:
            return [r]
        parts = _parts(r, np.asarray(self.cuts(n_rows), np.int64), self.widths.get(name))
        if len(parts) == 1:
            return [r]
        return [Request(r.shard, "push", dict(r.header, rows=rows), payload, seq=True,
                        handle=r.handle) for (rows, payload), *_ in parts]

    def _on_redone(self, shard: _Shard, header: dict, payload=()) -> None:
        if not header.get("ok"):
            log.warning("%s refused a re-sent request: %s", shard.name(), header.get("error"))

    def _ensure_shard(self, sid: int, address: str) -> None:
        """A connection to member `sid` (a server that joined after this client
        started)."""
        while len(self._shards) <= sid:
            placeholder = _Shard(len(self._shards), "not a member", None)
            placeholder.gone = True
            self._shards.append(placeholder)
        s = self._shards[sid]
        if not s.gone:
            return
        s.address, s.gone = address, False
        s.sock = connect_dealer(self._ctx, f"tcp://{address}", self._config)
        s.last_heard = time.monotonic()
        self._flush_order.insert(0, s)
        self._by_sock[s.sock] = s
        if self._poller is not None:
            self._poller.register(s.sock, zmq.POLLIN)
        if self._monitor_mask:
            mon = s.sock.get_monitor_socket(self._monitor_mask)
            self._monitors[mon] = s
            if self._poller is not None:
                self._poller.register(mon, zmq.POLLIN)

    def _suspect(self, shard: _Shard, now: float) -> None:
        """`shard` has been silent with requests in flight: ask another member for
        the membership (a failover of it shows there)."""
        if now - self._asked_at < ASK_MEMBERSHIP_S:
            return
        others = [s for s in self._shards if not s.gone and s is not shard
                  and s.index in self.membership.servers]
        if not others:
            return
        self._asked_at = now
        self._ask_next = (self._ask_next + 1) % len(others)
        self._internal(others[self._ask_next], "membership", {}, self._on_membership)

    def _on_membership(self, shard: _Shard, header: dict, payload=()) -> None:
        if header.get("ok") and "membership" in header:
            self._adopt(header["membership"])

    def _route_of(self, r: Request) -> int | None:
        """Where `r` goes under the current membership: the primary of the segment
        its rows lie in (a create: the same holder if it still holds them, else None:
        nothing to do). ServerError when its rows now span segments (a split the
        caller must make anew)."""
        m = self.membership
        if r.op in ("clock", "open"):
            return r.shard if r.shard in m.servers else None
        n_rows = r.header.get("n_rows")
        rows = r.header.get("rows") or {}
        if r.op == "create":
            lo, hi = r.header["lo"], r.header["hi"]
        elif "range" in rows:
            lo, hi = rows["range"]
        elif "sparse" in rows:
            lo, hi = rows["sparse"][1], rows["sparse"][2]
        else:
            ids = r.payload[0]
            lo, hi = (int(ids.min()), int(ids.max()) + 1) if len(ids) else (0, 0)
        if n_rows is None:
            n_rows = self.n_rows.get(r.header.get("table"))
        segs = m.segments(n_rows) if n_rows is not None else []
        seg = next((g for g in segs if g.lo <= lo < g.hi), None)
        if seg is None or hi > seg.hi or any(lo < c < hi for c in self.cuts(n_rows)):
            raise Resplit(f"rows [{lo}, {hi}) of table {r.header.get('table')!r} span "
                          f"segments of membership epoch {m.epoch}; request them again")
        if r.op == "create":
            return r.shard if r.shard in seg.holders else None
        return seg.primary

    def _reroute(self, r: Request) -> None:
        """Queue `r` again, routed by the current membership."""
        try:
            k = self._route_of(r)
        except ServerError as e:
            if r.op in ("push", "pull"):
                self._split_request(r)
            elif r.handle is not None:
                r.handle.set_exception(e)
            else:
                log.warning("%s", e)
            return
        if k is None:       # nothing left to do there: a part that says so
            if r.handle is not None:
                r.handle.set_part(r.part, ({"ok": True, "rerouted": None}, []))
            return
        r.shard, r.epoch = k, self.membership.epoch
        r.busy = r.parked = r.unsent = False
        if r.op == "push":      # see ShardState._op_push: counted once, wherever it lands
            r.header = dict(r.header, redo=True)
        self._shards[k].backlog.append(r)

    def _split_request(self, r: Request) -> None:
        """Send a push or pull whose rows now lie in several segments (a membership
        changed while it was in flight) as one request per segment; `r` completes when
        all of them did (a pull's rows put back together in the caller's order first).
        Range, by-id and sparse requests alike."""
        name = r.header.get("table")
        n_rows = self.n_rows.get(name)
        m = self.membership
        segs = m.segments(n_rows)
        edges = np.array(sorted({g.lo for g in segs} | set(self.cuts(n_rows))), np.int64)
        pieces = _parts(r, edges, self.widths.get(name))
        state = {"left": len(pieces), "failed": False, "vals": {}, "clock": None}
        n_out = sum(len(pos) if pos is not None else b - a for _, a, b, pos in pieces)

        def done(i, shard, header, payload):
            if state["failed"]:
                return
            if not header.get("ok"):
                state["failed"] = True
                if r.handle is not None:
                    r.handle.set_exception(ServerError(f"{shard.name()}: {header.get('error')}"))
                return
            if r.op == "pull":
                state["vals"][i] = bytes(memoryview(payload[0])) if payload else b""
                c = header.get("clock")
                state["clock"] = c if state["clock"] is None else min(state["clock"], c)
            state["left"] -= 1
            if state["left"] or r.handle is None:
                return
            out = dict(header)
            if r.op == "pull":
                out["clock"] = state["clock"]
                try:
                    r.deliver(out, [_joined(pieces, state["vals"], n_out)])
                except Exception as e:      # noqa: BLE001 -- the caller hears it
                    r.handle.set_exception(ServerError(f"bad reply to {r.op}: {e}"))
                    return
            r.handle.set_part(r.part, (out, []))
        for i, (rows, a, _b, _pos) in enumerate(pieces):
            k = next(g.primary for g in segs if g.lo <= a < g.hi)
            header = dict(r.header, rows=rows[0])
            if r.op == "push":
                header["redo"] = True
            piece = Request(k, r.op, header, rows[1], seq=r.seq,
                            internal=lambda sh, h, p, i=i: done(i, sh, h, p))
            piece.epoch = m.epoch
            self._shards[k].backlog.append(piece)

    def _resend_overtaken(self, shard: _Shard, order: int, now: float) -> None:
        """Requests sent before one that was just answered lost their request or reply."""
        for r in list(shard.inflight.values()):
            if r.order < order and now - r.last_sent >= (
                    PARKED_RESEND_S if r.parked else RESEND_MIN_S):
                log.debug("resending %s %d to %s", r.op, r.rid, shard.name())
                self._send(shard, r)

    def _resend_busy(self, shard: _Shard) -> None:
        """Send the requests the shard asked to wait again, in the order first sent."""
        for r in list(shard.inflight.values()):
            if r.busy:
                r.busy = False
                self._send(shard, r)

    def _tick(self, shard: _Shard, now: float) -> None:
        if not shard.inflight or shard.gone:
            return
        if self.membership is not None and (shard.disconnected or (
                now - shard.last_heard > SUSPECT_S and self.membership.replication > 1)):
            self._suspect(shard, now)
        if now - shard.last_heard > self.timeout:
            self._fail_shard(shard, ServerUnreachable(
                f"{shard.name()} did not answer for {self.timeout:g} s "
                "(is it running and reachable?)"))
            return
        if any(r.busy and now - r.last_sent >= BUSY_RETRY_S for r in shard.inflight.values()):
            self._resend_busy(shard)
        for rid, r in list(shard.inflight.items()):
            if r.unsent and now - r.last_sent >= RESEND_MIN_S:
                self._send(shard, r)
            if r.op == "pull" or r.op == "open":
                if now - r.first_sent > self.wait_timeout:
                    del shard.inflight[rid]
                    r.handle.set_exception(WaitTimeout(
                        f"{r.op} of table {r.header.get('table')!r} on {shard.name()} waited "
                        f"{self.wait_timeout:g} s for slower workers (GEEPS_WAIT_TIMEOUT)"))
        if shard.ping_rid is None and now - max(shard.last_heard, shard.ping_sent) >= PING_S:
            shard.ping_rid = self._next_id
            self._next_id += 1
            shard.sent += 1
            shard.ping_order = shard.sent
            shard.ping_sent = now
            try:
                self._transmit(shard, P.request("ping", shard.ping_rid))
            except zmq.Again:
                pass        # no connection: the silence itself will time out
        elif shard.ping_rid is not None and now - shard.ping_sent >= PING_S * 4:
            shard.ping_rid = None  # lost ping: send another next tick

    # ---- rollback after a server restart ------------------------------------------
    # A shard that restarted from its newest checkpoint (or was rolled back) has a new
    # incarnation: the job returns to one checkpoint every shard holds. The steps and
    # their state are geeps.client.recovery.Rollback's; this thread sends its requests
    # (`checkpoints`, then `restore`), feeds it the replies and carries out the step
    # each returns (_take). The calls in flight fail with RolledBack(clock) at the
    # end; requests submitted meanwhile wait (see _flush); older ones are refused.
    def _detect_restart(self, shard: _Shard, header: dict) -> None:
        # The root cause (see geeps.server.shard.ShardState._restarted_error); servers
        # of older versions name only their incarnation.
        cause = header.get("cause") or header["inc"]
        if self._recovery is not None and self._recovery.cause == cause:
            return
        log.warning("%s restarted (now at checkpoint clock %s); rolling back",
                    shard.name(), header.get("base"))
        # Another restart during a rollback: the new one takes over its doomed calls.
        doomed = [] if self._recovery is None else self._recovery.doomed
        for s in self._shards:
            for r in list(s.inflight.values()) + list(s.backlog):
                if r.internal is None:
                    doomed.append(r.handle)
            s.inflight.clear()
            s.backlog.clear()
            s.ping_rid = None
        self._recovery = Rollback(cause, f"{shard.name()} restarted", len(self._shards),
                                  doomed)
        for s in self._shards:
            self._internal(s, "checkpoints", {}, self._on_checkpoints)

    def _internal(self, shard: _Shard, op: str, header: dict, callback) -> None:
        r = Request(shard.index, op, header, internal=callback)
        self._send_new(shard, r)

    def _on_checkpoints(self, shard: _Shard, header: dict, payload=()) -> None:
        if self._recovery is not None:
            self._take(self._recovery.on_checkpoints(shard.index, shard.name(), header))

    def _on_restored(self, shard: _Shard, header: dict, payload=()) -> None:
        if self._recovery is None:
            return
        if header.get("ok"):
            shard.inc = header["inc"]       # the incarnation our requests now name
        self._take(self._recovery.on_restored(shard.index, shard.name(), header))

    def _take(self, step: Step) -> None:
        """Carry out the step the rollback in progress returned (None: wait)."""
        rec = self._recovery
        if isinstance(step, Restore):
            for s in self._shards:
                self._internal(s, "restore", {"clock": step.clock, "cause": step.cause},
                               self._on_restored)
        elif isinstance(step, Done):
            self._rolled_to = step.clock
            self.timeline += 1
            self.on_rollback(step.clock)
            self._recovery = None
            log.warning("rolled back to clock %d", step.clock)
            rec.release()
        elif isinstance(step, Failed):
            self._recovery = None
            self._fatal = GeepsError(f"cannot roll back after a server restart: {step.why}")
            log.error("%s", self._fatal)
            rec.release(self._fatal)
            self._fail_all(self._fatal)

    def _handshake_failed(self, mon: zmq.Socket, shard: _Shard) -> None:
        from zmq.utils.monitor import recv_monitor_message
        while True:
            try:
                event = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                shard.disconnected = True
                continue
            what = ("refused this client's CurveZMQ key (is GEEPS_CURVE_DIR this job's?)"
                    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    else "failed the CurveZMQ handshake (does it run with the same keys?)")
            err = ServerError(f"{shard.name()} {what}")
            log.error("%s", err)
            # A refused key is kept: the refusal may come before a request is even
            # queued (the client dials at once), and every later attempt with these keys
            # fails the same way. (Another handshake failure may be a server dying
            # mid-handshake, which its restart mends.)
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                shard.refused = err
            self._fail_shard(shard, err)

    def _fail_shard(self, shard: _Shard, err: BaseException) -> None:
        if self._recovery is not None and any(r.internal for r in shard.inflight.values()):
            rec, self._recovery = self._recovery, None      # abandoned: a shard is gone
            rec.release(err)
        for r in shard.inflight.values():
            if r.internal is None:
                r.handle.set_exception(err)
        shard.inflight.clear()
        for r in shard.backlog:
            r.handle.set_exception(err)
        shard.backlog.clear()

    def _fail_all(self, err: BaseException) -> None:
        for shard in self._shards:
            self._fail_shard(shard, err)
        self._fail_queued(err)
        self._closed.set()

    def _fail_queued(self, err: BaseException) -> None:
        while True:
            try:
                r = self._queue.get_nowait()
            except queue.Empty:
                return
            r.handle.set_exception(err)


def _unwatch(sock: zmq.Socket) -> None:
    """Stop `sock`'s monitor before its reading end is closed. libzmq's I/O thread
    sends each event to the monitor's PAIR socket with a blocking send; with the
    reading end gone (a socket closed, or a server dropping the connection, in between)
    that send never returns and every socket of the process's context stops moving
    bytes (seen as every later request in the process timing out)."""
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        pass        # already closed, or never monitored


def _parts(r: Request, edges: np.ndarray, width: int | None) -> list:
    """The parts of push or pull `r` on each side of `edges` (segment starts, sorted):
    [((rows header, payload), lo, hi, positions)], `positions` the places of a by-id
    part's ids in the caller's request (None for a range or sparse part)."""
    rows = r.header["rows"]
    push = r.op == "push"
    out = []
    if "range" in rows:
        lo, hi = rows["range"]
        bounds = [lo, *[int(e) for e in edges if lo < e < hi], hi]
        for a, b in zip(bounds, bounds[1:]):
            payload = [r.payload[-1][a - lo:b - lo]] if push else []
            out.append((({"range": [a, b]}, payload), a, b, None))
    elif "ids" in rows:
        ids = _array(r.payload[0], "<i8")
        where = np.searchsorted(edges, ids, side="right") - 1
        for j in np.unique(where):
            pos = np.nonzero(where == j)[0]
            payload = [np.ascontiguousarray(ids[pos])]
            if push:
                payload.append(np.ascontiguousarray(np.asarray(r.payload[-1])[pos]))
            a = int(edges[j])
            out.append((({"ids": len(pos)}, payload), a, a + 1, pos))
    else:                       # sparse: offsets (row - lo) * width + column
        if not width:
            raise ServerError(f"sparse push to {r.header.get('table')!r}: its row width "
                              f"is not known here, it cannot be split")
        nnz, lo, hi = rows["sparse"]
        offsets = _array(r.payload[0], "<u4").astype(np.int64)
        values = _array(r.payload[1], "<f4")
        row = lo + offsets // width
        bounds = [lo, *[int(e) for e in edges if lo < e < hi], hi]
        for a, b in zip(bounds, bounds[1:]):
            sel = (row >= a) & (row < b)
            offs = (offsets[sel] - (a - lo) * width).astype("<u4")
            out.append((({"sparse": [int(sel.sum()), a, b]},
                         [offs, np.ascontiguousarray(values[sel])]), a, b, None))
    return out


def _array(x, dtype: str) -> np.ndarray:
    """A payload frame as an array: kept as the caller's array, or raw bytes."""
    return x if isinstance(x, np.ndarray) else np.frombuffer(x, dtype)


def _joined(pieces: list, vals: dict, n: int) -> bytes:
    """A split pull's reply: the parts' rows in the caller's order."""
    if all(pos is None for *_, pos in pieces):
        return b"".join(vals[j] for j in sorted(vals))
    row_bytes = next((len(vals[i]) // len(pos) for i, (*_, pos) in enumerate(pieces)
                      if pos is not None and len(pos)), 0)
    out = np.empty((n, row_bytes), np.uint8)
    for i, (*_, pos) in enumerate(pieces):
        out[pos] = np.frombuffer(vals[i], np.uint8).reshape(len(pos), row_bytes)
    return out.tobytes()
