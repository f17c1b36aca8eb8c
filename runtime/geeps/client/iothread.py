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

import zmq

from geeps.wire import protocol as P
from geeps.job.env import Config
from geeps.errors import GeepsError, RolledBack, ServerError, ServerUnreachable, WaitTimeout
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

    def name(self) -> str:
        return f"server {self.index} ({self.address})"


class IOThread(threading.Thread):
    def __init__(self, servers: Sequence[str], *, config: Config | None = None,
                 timeout: float = 30.0, wait_timeout: float = 600.0, host=None):
        """`host`: the geeps.client.hosted.HostedShard this process serves. This thread
        runs its server's loop too, and hands it requests by a function call; the
        other shards are dialled over TCP."""
        super().__init__(name="geeps-io", daemon=True)
        self.timeout = timeout
        self.wait_timeout = wait_timeout
        self._ctx = zmq.Context.instance()
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
        # event; watch for it so the caller hears "refused", not "unreachable".
        self._monitors = {}
        if config is not None and config.curve_dir and not config.insecure:
            for s in self._shards:
                if s.sock is None:
                    continue
                self._monitors[s.sock.get_monitor_socket(
                    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)] = s
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

    # ---- any thread ----------------------------------------------------------------
    def submit(self, reqs: list[Request], combine: Callable[[list], Any], *,
               timeline: int | None = None, fail: BaseException | None = None,
               defer: bool = False) -> Handle:
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
        poller = zmq.Poller()
        poller.register(self._rfd, zmq.POLLIN)
        by_sock = {}
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
                for sock, shard in by_sock.items():
                    if sock in events:
                        self._receive(shard)
                served = host is not None and host.sock in events
                if served:
                    host.drain()
                for mon, shard in self._monitors.items():
                    if mon in events:
                        self._handshake_failed(mon, shard)
                now = time.monotonic()
                for shard in self._flush_order:
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
            if r.timeline < self.timeline:
                r.handle.set_exception(
                    RolledBack(self._rolled_to, "submitted before the rollback"))
                continue
            self._prepare(shard, r)
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
        while True:
            try:
                frames = shard.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = time.monotonic()
            shard.last_heard = now
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
        if r.internal is not None:
            r.internal(shard, header)
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
        if not shard.inflight:
            return
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

    def _on_checkpoints(self, shard: _Shard, header: dict) -> None:
        if self._recovery is not None:
            self._take(self._recovery.on_checkpoints(shard.index, shard.name(), header))

    def _on_restored(self, shard: _Shard, header: dict) -> None:
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
