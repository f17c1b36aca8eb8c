"""The coordinator: the one place that decides membership changes (geeps.job.membership).

Why the launcher (and, on Kubernetes, the operator) and not server 0: the coordinator
must outlive any server it judges, and the process that starts the servers already
sees one die the instant it does (its exit), where a server would have to guess from
silence. A coordinator that is down stops no training: the shards and clients keep the
last membership, and only changes wait (a restarted coordinator asks the servers for
the newest epoch they hold and goes on from there).

What it does, on its own thread:
- heartbeats every member (`ping`, which answers with the member's epoch and whether it
  holds everything the membership gives it, caught up: `ready`); a member silent for
  `silent_after` seconds is reported to `on_silent` (the launcher kills it: a server
  that is fenced off cannot serve stale rows, then its exit makes it `fail`);
- sends each new membership (`membership` op) to every member until each has it;
- once every catcher-up of a change (pending arcs) says `ready`, promotes the change
  (`promote`) and sends that too.
The methods `fail`, `join` and `leave` queue a change; `settled` waits until no change
is in flight.

    co = Coordinator(membership.initial(servers, 2), cfg, log=print)
    co.start()
    co.fail(1)                        # server 1 died: its replicas serve, epoch + 1
    sid = co.join("127.0.0.1:7005")   # a new server catches up, then takes its share
    co.settled(timeout=30)
    co.close()
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
from typing import Callable

import zmq

from geeps.job import membership as ms
from geeps.job.env import Config
from geeps.wire import protocol as P
from geeps.wire import transport

HEARTBEAT = 0.1         # s between pings of a member
SILENT_AFTER = 10.0     # s of silence (after its first answer) before on_silent: long
                        # enough for a loaded machine; a process exit is seen at once
RESEND = 1.0            # s between sends of the same membership to a member


class Coordinator:
    def __init__(self, membership: ms.Membership, cfg: Config | None = None, *,
                 log: Callable[[str], None] = lambda s: None,
                 on_silent: Callable[[int], None] | None = None,
                 heartbeat: float = HEARTBEAT, silent_after: float = SILENT_AFTER,
                 context: zmq.Context | None = None, metrics=None):
        """`metrics`: a geeps.metrics.Metrics of role coordinator, kept up to date with
        the epoch, failovers, changes and arcs catching up (None: none exported)."""
        self.cfg = cfg
        self.metrics = metrics
        self.log = log
        self.on_silent = on_silent
        self.heartbeat = heartbeat
        self.silent_after = silent_after
        self._m = membership
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._todo: collections.deque = collections.deque()
        self._socks: dict[int, zmq.Socket] = {}
        self._heard: dict[int, float] = {}
        self._epoch_of: dict[int, int] = {}     # the epoch each member said it holds
        self._ready: dict[int, bool] = {}
        self._silent_told: set[int] = set()
        self._said: set[tuple[int, str]] = set()
        self._sent: dict[int, tuple[int, float]] = {}   # member -> (epoch, when) last sent
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="geeps-coordinator",
                                        daemon=True)
        self.failovers = 0
        self.changes = 0
        self.error: str | None = None

    # ---- what the launcher asks -------------------------------------------------------
    @property
    def membership(self) -> ms.Membership:
        with self._lock:
            return self._m

    def start(self) -> "Coordinator":
        self._thread.start()
        return self

    def fail(self, sid: int) -> None:
        """Member `sid` is gone (its process exited, or it was fenced off)."""
        self._queue(("fail", sid))

    def join(self, address: str) -> int:
        """Add a server at `address`; returns the id it will have."""
        with self._lock:
            sid = self._m.next_id + sum(1 for kind, _ in self._todo if kind == "join")
            self._todo.append(("join", address))
            self._changed.notify_all()
        return sid

    def leave(self, sid: int) -> None:
        """Drain member `sid`: its rows move to the others, then it holds nothing."""
        self._queue(("leave", sid))

    def settled(self, timeout: float) -> bool:
        """Wait until no change is queued or pending and every member holds the
        current epoch; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._is_settled():
                left = deadline - time.monotonic()
                if left <= 0 or self.error:
                    return False
                self._changed.wait(min(left, 0.1))
            return True

    def heard(self, sid: int) -> bool:
        """Whether member `sid` has ever answered."""
        with self._lock:
            return sid in self._heard

    def holds(self, sid: int) -> bool:
        """Whether `sid` is still a member (a drained server is not)."""
        with self._lock:
            return sid in self._m.servers

    def queued(self) -> list[tuple[str, object]]:
        """Changes asked for and not applied yet, in order: ("join", address),
        ("leave", sid) or ("fail", sid). One change runs at a time, so a join waits here
        while another is pending; an HTTP front reads this to answer a repeated request
        the same way (the operator may ask twice across its own restarts)."""
        with self._lock:
            return list(self._todo)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for s in self._socks.values():
            s.close(0)
        self._socks.clear()

    # ---- the thread -------------------------------------------------------------------
    def _queue(self, item) -> None:
        with self._lock:
            self._todo.append(item)
            self._changed.notify_all()

    def _is_settled(self) -> bool:
        m = self._m
        return (not self._todo and not m.pending and not m.leaving
                and all(self._epoch_of.get(s) == m.epoch for s in m.servers))

    def _loop(self) -> None:
        poller = zmq.Poller()
        next_ping = 0.0
        try:
            while not self._stop.is_set():
                self._apply_queued()
                self._sync_sockets(poller)
                now = time.monotonic()
                if now >= next_ping:
                    self._ping_all(now)
                    next_ping = now + self.heartbeat
                for sock, _ in poller.poll(max(0.0, next_ping - time.monotonic()) * 1000):
                    self._read(sock)
                self._maybe_promote()
                self._check_silent(time.monotonic())
                self._export()
        except Exception as e:     # noqa: BLE001 -- the launcher must learn why
            with self._lock:
                self.error = f"coordinator stopped: {type(e).__name__}: {e}"
                self._changed.notify_all()
            self.log(self.error)

    def _export(self) -> None:
        if self.metrics is not None:
            from geeps.metrics import coordinator_state
            m = self._m
            coordinator_state(self.metrics, epoch=m.epoch, failovers=self.failovers,
                              changes=self.changes,
                              catching_up=sum(p.end - p.start for p in m.pending) / ms.TOKENS)

    def _apply_queued(self) -> None:
        with self._lock:
            if not self._todo:
                return
            # One change at a time: the next waits for this one's promote. A failure
            # does not wait: the promote may wait on the very server that is gone (a
            # joiner that died catching up, a member that must say it is ready).
            at = next((i for i, (kind, _) in enumerate(self._todo) if kind == "fail"), None)
            if at is None:
                if self._m.pending or self._m.leaving:
                    return
                at = 0
            kind, arg = self._todo[at]
            del self._todo[at]
            old = self._m
            try:
                if kind == "fail":
                    if arg not in old.servers:
                        return
                    new = ms.fail(old, arg)
                    self.failovers += 1
                elif kind == "join":
                    new = ms.join(old, arg)
                else:
                    new = ms.leave(old, arg)
            except ms.Lost as e:
                self.error = f"{kind} of {arg}: {e}"
                self._changed.notify_all()
                self.log(f"coordinator: {self.error}; the job falls back to its checkpoints")
                return
            except ValueError as e:
                self.log(f"coordinator: {kind} of {arg} refused: {e}")
                return
            self._m = new
            self.changes += 1
            self._changed.notify_all()
        self.log(f"membership epoch {new.epoch}: {_describe(kind, arg, old, new)}")
        self._send_all()

    def _maybe_promote(self) -> None:
        with self._lock:
            m = self._m
            if not (m.pending or m.leaving):
                return
            catchers = {p.sid for p in m.pending}
            if not all(self._epoch_of.get(s) == m.epoch and self._ready.get(s)
                       for s in catchers | set(m.servers)):
                return
            new = ms.promote(m)
            self._m = new
            self._changed.notify_all()
        gone = sorted(set(m.servers) - set(new.servers))
        self.log(f"membership epoch {new.epoch}: caught up, "
                 f"{len(catchers)} server(s) took their arcs over"
                 + (f"; server {', '.join(map(str, gone))} drained" if gone else ""))
        self._send_all()

    def _sync_sockets(self, poller: zmq.Poller) -> None:
        with self._lock:
            servers = dict(self._m.servers)
        for sid in list(self._socks):
            if sid not in servers:
                poller.unregister(self._socks[sid])
                self._socks.pop(sid).close(0)
                for d in (self._heard, self._epoch_of, self._ready, self._sent):
                    d.pop(sid, None)
        for sid, addr in servers.items():
            if sid not in self._socks:
                sock = transport.connect_dealer(self._ctx, f"tcp://{addr}", self.cfg)
                self._socks[sid] = sock
                poller.register(sock, zmq.POLLIN)
                self._sent.pop(sid, None)

    def _ping_all(self, now: float) -> None:
        for sid, sock in self._socks.items():
            sock.send_multipart(P.request("ping", next(self._ids), coordinator=True),
                                copy=True)
        with self._lock:
            m = self._m
        for sid in m.servers:
            last = self._sent.get(sid)
            if self._epoch_of.get(sid, 0) < m.epoch and (
                    last is None or last[0] != m.epoch or now - last[1] >= RESEND):
                self._send(sid, m)

    def _send_all(self) -> None:
        with self._lock:
            m = self._m
        for sid in m.servers:
            if sid in self._socks:
                self._send(sid, m)

    def _send(self, sid: int, m: ms.Membership) -> None:
        self._sent[sid] = (m.epoch, time.monotonic())
        self._socks[sid].send_multipart(
            P.request("membership", next(self._ids), membership=m.to_json()), copy=True)

    def _read(self, sock: zmq.Socket) -> None:
        sid = next((k for k, s in self._socks.items() if s is sock), None)
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if sid is None:
                continue
            try:
                header = P.decode_header(frames[0])
            except P.ProtocolError:
                continue
            self._heard[sid] = time.monotonic()
            self._silent_told.discard(sid)
            epoch, ready = header.get("epoch"), header.get("ready")
            with self._lock:
                if isinstance(epoch, int) and not isinstance(epoch, bool):
                    self._epoch_of[sid] = max(epoch, self._epoch_of.get(sid, 0))
                if isinstance(ready, bool) and epoch == self._m.epoch:
                    self._ready[sid] = ready
                self._changed.notify_all()
            error = header.get("error") if header.get("ok") is False else None
            if error and (sid, str(error)) not in self._said:
                self._said.add((sid, str(error)))      # once each: it is re-sent per beat
                self.log(f"coordinator: server {sid} refused: {error}")

    def _check_silent(self, now: float) -> None:
        if self.on_silent is None:
            return
        for sid, heard in list(self._heard.items()):
            if now - heard > self.silent_after and sid not in self._silent_told:
                self._silent_told.add(sid)
                self.log(f"coordinator: server {sid} silent for {now - heard:.1f} s")
                self.on_silent(sid)


def _describe(kind: str, arg, old: ms.Membership, new: ms.Membership) -> str:
    if kind == "fail":
        return (f"server {arg} lost; its replicas serve its rows"
                + (f", {len(new.pending)} range(s) re-replicating" if new.pending else ""))
    if kind == "join":
        sid = max(new.servers)
        return f"server {sid} ({new.servers[sid]}) joins, catching up on its share"
    return f"server {arg} leaves; its rows move to the others"
