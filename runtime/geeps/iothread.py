"""The client's I/O thread: the only owner of its ZeroMQ sockets (they are not
thread-safe), one DEALER per shard.

Requests arrive from any thread through a queue (a pipe wakes the poller). Per shard,
at most WINDOW requests are in flight; each gets an id and, for pushes, the next
per-shard sequence number, which the server uses to drop duplicates.

Lost replies: a shard answers in order except for parked reads. So when a reply
arrives, every request sent to that shard before it and still unanswered has lost its
request or reply, and is sent again (a parked read answers a retry with `waiting`,
which proves it is still there). While anything is in flight the thread pings a shard
that has been quiet for PING_S, which both proves it is alive and exposes lost
replies. A shard silent for `timeout` seconds fails its requests with
ServerUnreachable naming it; a read parked for `wait_timeout` fails with WaitTimeout.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import zmq

from . import protocol as P
from .config import Config
from .errors import GeepsError, ServerError, ServerUnreachable, WaitTimeout
from .handles import Handle
from .transport import connect_dealer

log = logging.getLogger("geeps.client")
WINDOW = 64          # requests in flight per shard: bounds the server's queue per client
PING_S = 1.0         # ping a quiet shard this often while requests are in flight
RESEND_MIN_S = 0.5   # never resend one request more often than this


@dataclass
class Request:
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
    parked: bool = False


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
        self.ping_rid: int | None = None
        self.ping_sent = 0.0
        self.ping_order = 0

    def name(self) -> str:
        return f"server {self.index} ({self.address})"


class IOThread(threading.Thread):
    def __init__(self, servers: Sequence[str], *, config: Config | None = None,
                 timeout: float = 30.0, wait_timeout: float = 600.0):
        super().__init__(name="geeps-io", daemon=True)
        self.timeout = timeout
        self.wait_timeout = wait_timeout
        self._ctx = zmq.Context.instance()
        self._shards = [_Shard(k, a, connect_dealer(self._ctx, f"tcp://{a}", config))
                        for k, a in enumerate(servers)]
        # With CurveZMQ a server that refuses our key says so only in a handshake
        # event; watch for it so the caller hears "refused", not "unreachable".
        self._monitors = {}
        if config is not None and config.curve_dir and not config.insecure:
            for s in self._shards:
                self._monitors[s.sock.get_monitor_socket(
                    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)] = s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        self._stopping = False
        self._next_id = 1
        self._closed = threading.Event()

    # ---- any thread ----------------------------------------------------------------
    def submit(self, reqs: list[Request], combine: Callable[[list], Any]) -> Handle:
        handle = Handle(len(reqs), combine)
        if self._stopping:
            handle._fail(GeepsError("client is closed"))
            return handle
        for i, r in enumerate(reqs):
            r.handle, r.part = handle, i
            self._queue.put(r)
        self._wake()
        return handle

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
            poller.register(s.sock, zmq.POLLIN)
            by_sock[s.sock] = s
        for m in self._monitors:
            poller.register(m, zmq.POLLIN)
        try:
            while not self._stopping:
                events = dict(poller.poll(100))
                if self._rfd in events:
                    os.read(self._rfd, 65536)
                self._take_queue()
                for sock, shard in by_sock.items():
                    if sock in events:
                        self._receive(shard)
                for mon, shard in self._monitors.items():
                    if mon in events:
                        self._handshake_failed(mon, shard)
                now = time.monotonic()
                for shard in self._shards:
                    self._tick(shard, now)
                    self._flush(shard)
        except Exception as e:  # never leave callers waiting forever
            log.exception("geeps I/O thread failed")
            self._fail_all(GeepsError(f"client I/O thread failed: {e}"))
        finally:
            self._fail_all(GeepsError("client is closed"))
            for m in self._monitors:
                m.close(linger=0)
            for s in self._shards:
                s.sock.close(linger=0)
            os.close(self._rfd)
            os.close(self._wfd)

    def _take_queue(self) -> None:
        while True:
            try:
                r = self._queue.get_nowait()
            except queue.Empty:
                return
            self._shards[r.shard].backlog.append(r)

    def _flush(self, shard: _Shard) -> None:
        while shard.backlog and len(shard.inflight) < WINDOW:
            r = shard.backlog.popleft()
            r.rid = self._next_id
            self._next_id += 1
            header = dict(r.header, v=P.VERSION, op=r.op, id=r.rid)
            if r.seq:
                header["seq"] = shard.seq
                shard.seq += 1
            r.frames = [P.encode_header(header), *r.payload]
            r.first_sent = time.monotonic()
            if not shard.inflight:
                shard.last_heard = r.first_sent  # silence counts from the first request
            shard.inflight[r.rid] = r
            self._send(shard, r)

    def _send(self, shard: _Shard, r: Request) -> None:
        shard.sent += 1
        r.order = shard.sent
        r.last_sent = time.monotonic()
        shard.sock.send_multipart(r.frames, copy=False)

    def _receive(self, shard: _Shard) -> None:
        while True:
            try:
                frames = shard.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = time.monotonic()
            shard.last_heard = now
            try:
                header = P.decode_header(frames[0])
            except P.ProtocolError as e:
                log.warning("%s sent a malformed reply: %s", shard.name(), e)
                continue
            rid = header.get("id")
            if rid is not None and rid == shard.ping_rid:
                shard.ping_rid = None
                self._resend_overtaken(shard, shard.ping_order, now)
                continue
            r = shard.inflight.get(rid)
            if r is None:
                continue  # the answer to a retry we already had
            self._resend_overtaken(shard, r.order, now)
            if header.get("waiting"):
                r.parked = True
                continue
            del shard.inflight[rid]
            if header.get("ok"):
                r.handle._resolve(r.part, (header, [f.buffer for f in frames[1:]]))
            else:
                r.handle._fail(ServerError(f"{shard.name()}: {header.get('error')}"))

    def _resend_overtaken(self, shard: _Shard, order: int, now: float) -> None:
        """Requests sent before one that was just answered lost their request or reply."""
        for r in list(shard.inflight.values()):
            if r.order < order and now - r.last_sent >= RESEND_MIN_S:
                log.debug("resending %s %d to %s", r.op, r.rid, shard.name())
                self._send(shard, r)

    def _tick(self, shard: _Shard, now: float) -> None:
        if not shard.inflight:
            return
        if now - shard.last_heard > self.timeout:
            self._fail_shard(shard, ServerUnreachable(
                f"{shard.name()} did not answer for {self.timeout:g} s "
                "(is it running and reachable?)"))
            return
        for rid, r in list(shard.inflight.items()):
            if r.op == "pull" or r.op == "open":
                if now - r.first_sent > self.wait_timeout:
                    del shard.inflight[rid]
                    r.handle._fail(WaitTimeout(
                        f"{r.op} of table {r.header.get('table')!r} on {shard.name()} waited "
                        f"{self.wait_timeout:g} s for slower workers (GEEPS_WAIT_TIMEOUT)"))
        if shard.ping_rid is None and now - max(shard.last_heard, shard.ping_sent) >= PING_S:
            shard.ping_rid = self._next_id
            self._next_id += 1
            shard.sent += 1
            shard.ping_order = shard.sent
            shard.ping_sent = now
            shard.sock.send_multipart(P.request("ping", shard.ping_rid))
        elif shard.ping_rid is not None and now - shard.ping_sent >= PING_S * 4:
            shard.ping_rid = None  # lost ping: send another next tick

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
            self._fail_shard(shard, err)

    def _fail_shard(self, shard: _Shard, err: BaseException) -> None:
        for r in shard.inflight.values():
            r.handle._fail(err)
        shard.inflight.clear()
        for r in shard.backlog:
            r.handle._fail(err)
        shard.backlog.clear()

    def _fail_all(self, err: BaseException) -> None:
        for shard in self._shards:
            self._fail_shard(shard, err)
        while True:
            try:
                r = self._queue.get_nowait()
            except queue.Empty:
                break
            r.handle._fail(err)
        self._closed.set()
