"""One parameter-server shard: a ZeroMQ ROUTER socket in front of a ShardState.

    GEEPS_ROLE=server GEEPS_RANK=0 GEEPS_SERVERS=127.0.0.1:7000 GEEPS_NUM_WORKERS=2 geeps server

Single-threaded: one loop receives a request, lets ShardState answer it, sends the
replies. Row values go out zero-copy; before an update touches rows that are still
being sent, the loop waits for those sends to finish (zmq MessageTracker), so a reply
never carries half-updated rows. SIGTERM or SIGINT ends the loop; exit code 0.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from geeps.backend import BackendUnavailable, select_rules
from geeps.job import env as _config
from geeps.job import membership as _membership
from geeps.server import checkpoint
from geeps.wire.memtune import keep_freed_memory
from geeps.wire.curve import CurveError
from geeps.server.rules import describe
from geeps.server.shard import ShardState, ShardTable
from geeps.wire import protocol as P
from geeps.wire.protocol import reply_error
from geeps.wire.transport import ZERO_COPY_MIN, bind_router, connect_dealer, security_note

log = logging.getLogger("geeps.server")
POLL_MS = 100     # how often the loop looks at the stop flag when idle
PEER_POLL_MS = 20  # ... and at the replication messages it sends again
# A zero-copy send unfinished this long goes to a peer that does not read: longer than
# a backlog of 4 MiB replies takes on a real network, short enough to be a hiccup.
STUCK_S = 0.5
EXPIRE_EVERY_S = 0.25   # how often parked reads are checked against their deadline
IO_THREADS = 2    # ZeroMQ I/O threads of a server process (see Server.__init__)
# The routing id of the worker that hosts a shard: ZeroMQ never gives a peer an id
# that starts with a zero byte and is this long, so it names no one else.
LOCAL_PEER = b"\x00geeps-hosting-worker"


class Server:
    """Serve one shard until `stop()`; `serve()` blocks. Other threads may call only
    `stop()` and `wait_changed()`."""

    def __init__(self, cfg: _config.Config, context: zmq.Context | None = None,
                 metrics=None):
        """A worker that serves this shard itself (geeps.client.hosted) runs the loop on
        its client's I/O thread instead of serve() (drain, after_poll), hands its own
        requests over directly (handle_local) and takes their replies in local_sink."""
        self.cfg = cfg
        self.metrics = metrics
        if context is None:
            context = zmq.Context.instance()
            # A shard moves every worker's bytes: with one ZeroMQ I/O thread all its
            # connections share one core's receive loop. Takes effect only before the
            # context's first socket.
            context.set(zmq.IO_THREADS, IO_THREADS)
        self.ctx = context
        keep_freed_memory()
        self._stop = threading.Event()
        self._changed = threading.Condition()     # notified after each batch of requests
        # Zero-copy sends still in flight: (tracker, the arrays it sends, peer, bytes).
        self._trackers: list[tuple[zmq.MessageTracker, list, bytes, int]] = []
        # peer -> replies dropped because it does not read them (see _send); its
        # requests are refused until one of those refusals reaches it.
        self._overflow: dict[bytes, int] = {}
        self._next_expire = 0.0
        # Where the shard's update rules run (GEEPS_SERVER_BACKEND): BackendUnavailable,
        # saying why, when it cannot run here.
        rules = select_rules(cfg.server_backend)
        self.state = ShardState(cfg.rank, cfg.num_workers, cfg.max_parked,
                                before_write=self._finish_sends,
                                checkpoint_dir=cfg.checkpoint_dir,
                                checkpoint_every=cfg.checkpoint_every,
                                wait_timeout=cfg.wait_timeout, peer_parked=cfg.peer_parked,
                                nonfinite=cfg.nonfinite, push_buffer=cfg.push_buffer,
                                slack=max(0, cfg.consistency.slack), rule_backend=rules,
                                membership=_membership.initial(
                                    cfg.servers, cfg.replication)
                                if cfg.servers and not cfg.join else None,
                                joining=cfg.join)
        # One DEALER per server this one forwards its replication stream to (through
        # wire.transport, as every other socket), made when first needed.
        self._peers: dict[int, tuple[str, zmq.Socket]] = {}
        self._poller: zmq.Poller | None = None
        if cfg.checkpoint_dir and not cfg.join:     # a joiner fetches its rows instead
            self._restore_newest()
        self.state.send_early = self._send
        if metrics is not None:
            self.state.on_update = metrics.server_update.observe
            self.state.on_nonfinite = metrics.nonfinite
        self._pushed_bytes = 0
        self._failovers = 0
        self._bytes_at = None
        host, _, port = cfg.servers[cfg.rank].rpartition(":")
        self.address = f"tcp://{cfg.bind_host}:{port}"
        self.sock, self._auth = bind_router(self.ctx, self.address, cfg)
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._peer_fd: dict[bytes, int] = {}          # peer -> its connection's descriptor
        self._fd_peers: dict[int, set[bytes]] = {}
        # Called on the serving thread with each reply to LOCAL_PEER (the hosting
        # worker), its values possibly views of the rows: used before anything else
        # runs on that thread.
        self.local_sink: Callable[[list], None] | None = None

    def _restore_newest(self) -> None:
        found = checkpoint.newest(self.cfg.checkpoint_dir, self.cfg.rank,
                                  use=self.state.load_state)
        if found is None:
            log.info("server %d: no checkpoint in %s; starting empty", self.cfg.rank,
                     self.cfg.checkpoint_dir)
            return
        clock = found[0]
        self.state.last_cause = self.state.inc
        log.warning("server %d restored checkpoint clock %d (%d tables); workers roll back "
                    "to it", self.cfg.rank, clock, len(self.state.tables))

    def _finish_sends(self, table: ShardTable, runs: list | None = None) -> None:
        # Loopback sends finish in microseconds, so waiting for those that alias the
        # rows is cheap. One that has not finished after STUCK_S goes to a peer that
        # does not read (its queue is full): waiting would stop the shard for everyone,
        # so the rows move to a copy instead and the stuck frames keep the old buffer.
        # Only sends of the rows in `runs` wait (a reply is a contiguous slice of the
        # rows, so bounds overlap is exact): on a slow link the replies of a pipelined
        # clock's earlier chunks may still be queued when the next chunk is updated,
        # and waiting on them would stall the loop and every push behind it.
        views = [table.rows] if runs is None else [table.rows[a:b] for a, b in runs]
        deadline = time.monotonic() + STUCK_S
        stuck, keep = False, []
        for entry in self._trackers:
            tracker, arrays = entry[0], entry[1]
            if tracker.done:
                continue
            if not any(np.may_share_memory(a, v) for a in arrays for v in views):
                keep.append(entry)
                continue
            try:
                tracker.wait(max(0.0, deadline - time.monotonic()))
            except zmq.NotDone:
                stuck = True
                # It no longer aliases the rows (they move), but its bytes still count
                # against its peer's GEEPS_PEER_REPLY_BYTES until sent.
                keep.append((tracker, [], entry[2], entry[3]))
        self._trackers = keep
        if stuck:
            log.warning("server %d: a reply of table %s is still unsent after %g s (a "
                        "client not reading); updating a copy of its rows", self.cfg.rank,
                        table.name, STUCK_S)
            table.rows = table.rows.copy()

    def stop(self) -> None:
        self._stop.set()

    def wait_changed(self, timeout: float) -> None:
        """Block until the loop handled more requests, or `timeout` seconds (for a
        thread in this process watching `state`)."""
        with self._changed:
            self._changed.wait(timeout)

    def serve(self) -> None:
        poller = self._poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        for _, sock in self._peers.values():
            poller.register(sock, zmq.POLLIN)
        log.info("server %d listening on %s for %d workers; update rules on %s; %s",
                 self.cfg.rank, self.address, self.cfg.num_workers,
                 describe(self.state.rule_backend)["rule_backend"], security_note(self.cfg))
        try:
            while not self._stop.is_set():
                # Background work (a digest) goes a block per turn, between requests.
                ready = dict(poller.poll(0 if self.state.background else
                                        PEER_POLL_MS if self.state.peer_retry or self.state.fetch_retry_at
                                        is not None else POLL_MS))
                if self.sock in ready:
                    self.drain()
                self.after_poll(bool(ready))
        finally:
            self.close()

    def _peer(self, sid: int) -> zmq.Socket | None:
        """The DEALER to server `sid` of the membership (None when it left it)."""
        address = self.state.membership.servers.get(sid) if self.state.membership else None
        have = self._peers.get(sid)
        if have is not None and have[0] == address:
            return have[1]
        if have is not None:
            self._drop_peer(sid)
        if address is None:
            return None
        sock = connect_dealer(self.ctx, f"tcp://{address}", self.cfg)
        self._peers[sid] = (address, sock)
        if self._poller is not None:
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def _drop_peer(self, sid: int) -> None:
        _, sock = self._peers.pop(sid)
        if self._poller is not None:
            self._poller.unregister(sock)
        sock.close(linger=0)

    def _pump_peers(self) -> None:
        """Send the replication stream the state queued; hand the replicas' answers
        back to it (their releases go out as any reply)."""
        st = self.state
        if st.peer_retry:
            st.due_peer_retries(time.monotonic())
        if st.fetch_retry_at is not None:
            self._send(st.due_fetches(time.monotonic()))
        while st.outbox:
            sid, frames = st.outbox.pop(0)
            sock = self._peer(sid)
            if sock is None:
                continue
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:       # no connection yet: the same message a moment later
                st.peer_retry.append((time.monotonic() + 0.02, sid, frames))
        for sid, (_, sock) in list(self._peers.items()):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    header = P.decode_header(frames[0])
                except P.ProtocolError as e:
                    log.warning("server %d: server %d sent a malformed reply: %s",
                                self.cfg.rank, sid, e)
                    continue
                self._send(st.on_peer_reply(sid, header, frames))
        if st.membership is not None:
            for sid in [s for s in self._peers if s not in st.membership.servers]:
                self._drop_peer(sid)

    def close(self) -> None:
        for sid in list(self._peers):
            self._drop_peer(sid)
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def drain(self) -> None:
        """Handle what is queued on the socket (without blocking)."""
        # All of it, up to a bound, before polling again: fewer syscalls under load.
        # Disconnects first: a worker's replacement may say hello in this batch.
        self._disconnects()
        for _ in range(256):
            try:
                msg = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            peer = msg[0].bytes
            fd = msg[0].get(zmq.SRCFD)
            if self._peer_fd.get(peer) != fd:
                self._peer_fd[peer] = fd
                self._fd_peers.setdefault(fd, set()).add(peer)
            self._handle(peer, msg[1:])

    def _disconnects(self) -> None:
        """Forget the peers whose connection closed (the socket monitor's events name
        the connection's file descriptor; each message says which one it came on)."""
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(frames)
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            # A new connection may reuse the descriptor before this event is read: its
            # parked reads would go too, and its client's retry parks them again.
            for peer in self._fd_peers.pop(event["value"], ()):
                if self._peer_fd.get(peer) == event["value"]:
                    del self._peer_fd[peer]
                    self._forget(peer)

    def _forget(self, peer: bytes) -> None:
        """A peer disconnected: what the server holds for it goes."""
        n = self.state.forget_peer(peer)
        self._overflow.pop(peer, None)
        if n:
            log.info("server %d: client %s disconnected; dropped its %d parked reads",
                     self.cfg.rank, peer.hex(), n)

    @property
    def busy(self) -> bool:
        """Background work is waiting: poll without sleeping."""
        return bool(self.state.background)

    def after_poll(self, handled: bool) -> None:
        if self.state.outbox or self._peers or self.state.fetch_retry_at is not None:
            self._pump_peers()
        if self.state.background:
            self._send(self.state.step_background())
        if handled:
            with self._changed:
                self._changed.notify_all()
        self._disconnects()
        now = time.monotonic()
        if now >= self._next_expire:    # deadlines are seconds apart: look now and then
            self._next_expire = now + EXPIRE_EVERY_S
            expired = self.state.expire(now)
            if expired:
                log.warning("server %d: %d parked reads passed GEEPS_WAIT_TIMEOUT (%g s)",
                            self.cfg.rank, len(expired), self.cfg.wait_timeout)
                self._send(expired)
        self._export()

    def handle_local(self, frames: list) -> None:
        """A request of the hosting worker, handled now; its replies go to local_sink.
        Its header (frames[0]) may be the dict itself."""
        self._handle(LOCAL_PEER, frames, frames[0] if isinstance(frames[0], dict) else None)

    def _export(self) -> None:
        if self.metrics is None:
            return
        st = self.state
        self.metrics.parked_reads.set(len(st.parked))
        self.metrics.server_clock.set(st.min_clock)
        pushed = st.stats["push_bytes"]
        if pushed > self._pushed_bytes:
            self.metrics.server_push_bytes.inc(pushed - self._pushed_bytes)
            self._pushed_bytes = pushed
        if st.membership is not None:
            self.metrics.membership_epoch.set(st.membership.epoch)
            if st.failovers > self._failovers:
                self.metrics.failovers.inc(st.failovers - self._failovers)
                self._failovers = st.failovers
            at = (st.membership.epoch, len(st.tables))
            if at != self._bytes_at:        # segments come and go with memberships
                self._bytes_at = at
                held = [(t.primary, t.rows.nbytes) for t in st.tables.values()]
                self.metrics.shard_bytes(sum(n for p, n in held if p),
                                         sum(n for p, n in held if not p))

    def _handle(self, peer: bytes, frames: list, header: dict | None = None) -> None:
        if peer in self._overflow:
            # Nothing it asks is done while its replies pile up unread; the first
            # refusal that gets through (it read its queue) lets it back in.
            self.state.stats["errors"] += 1
            error = reply_error(None, (
                f"server {self.cfg.rank}: {self._overflow[peer]} replies to this client "
                f"were dropped because it did not read them (GEEPS_PEER_QUEUE="
                f"{self.cfg.peer_queue} messages, GEEPS_PEER_REPLY_BYTES="
                f"{self.cfg.peer_reply_bytes} bytes); its requests were refused meanwhile"))
            try:
                self.sock.send_multipart([peer, *error], zmq.NOBLOCK)
                del self._overflow[peer]
            except zmq.ZMQError:
                pass
            return
        try:
            replies = self.state.handle(peer, frames) if header is None \
                else self.state.dispatch(peer, header, frames)
        except Exception:  # a bug must not take the shard down with every worker's state
            log.exception("server %d: internal error on a request", self.cfg.rank)
            replies = [(peer, reply_error(None, "internal server error (see server log)"))]
        self._send(replies)
        if self.state.outbox:
            self._pump_peers()

    def _send(self, replies: list) -> None:
        # The hosting worker's replies last: what travels is on its way while this
        # thread copies the local rows out.
        local = []
        for to, frames_out in replies:
            if to == LOCAL_PEER:
                local.append(frames_out)
                continue
            if to in self._overflow:
                self._overflow[to] += 1
                continue
            big = [f for f in frames_out[1:] if getattr(f, "nbytes", 0) >= ZERO_COPY_MIN]
            try:
                if not big:
                    self.sock.send_multipart([to, *frames_out], zmq.NOBLOCK, copy=True)
                    continue
                nbytes = sum(f.nbytes for f in big)
                if len(self._trackers) > 256:
                    self._trackers = [e for e in self._trackers if not e[0].done]
                unsent = sum(e[3] for e in self._trackers if e[2] == to and not e[0].done)
                if unsent + nbytes > self.cfg.peer_reply_bytes:
                    raise zmq.Again()
                tracker = self.sock.send_multipart([to, *frames_out], zmq.NOBLOCK,
                                                   copy=False, track=True)
                self._trackers.append((tracker, big, to, nbytes))
            except zmq.Again:       # its queue is full (SNDHWM) or its bytes over budget
                self._overflow[to] = 1
                log.warning("server %d: client %s does not read its replies (its queue "
                            "is at GEEPS_PEER_QUEUE=%d messages or GEEPS_PEER_REPLY_BYTES=%d "
                            "bytes): dropping them and refusing its requests until it reads",
                            self.cfg.rank, to.hex(), self.cfg.peer_queue,
                            self.cfg.peer_reply_bytes)
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH:
                    raise
                # ZMQ_ROUTER_MANDATORY: the peer is gone; no one would read it
        for frames_out in local:
            self.local_sink(frames_out)


def main(argv: list[str] | None = None) -> int:
    """`geeps server`: serve the shard GEEPS_RANK of GEEPS_SERVERS until SIGTERM."""
    import argparse
    argparse.ArgumentParser(
        prog="geeps server",
        description="Serve shard GEEPS_RANK of GEEPS_SERVERS (host:port of every shard) "
                    "until SIGTERM or SIGINT. Everything is configured by the GEEPS_* "
                    "environment (`geeps env` lists it); `geeps run` and the operator "
                    "set it.").parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = _config.load()
    except _config.ConfigError as e:
        print(f"geeps server: {e}", file=sys.stderr)
        return 2
    if not cfg.servers:
        print("geeps server: GEEPS_SERVERS is empty: set it to host:port of every shard",
              file=sys.stderr)
        return 2
    from geeps.metrics import Metrics, MetricsPortError
    metrics = Metrics.from_config(cfg)
    try:
        metrics.serve(cfg.metrics_port, cfg.metrics_addr)
    except MetricsPortError as e:
        print(f"geeps server: {e.strerror}", file=sys.stderr)
        return 1
    try:
        server = Server(cfg, metrics=metrics)
    except (CurveError, BackendUnavailable) as e:
        print(f"geeps server: {e}", file=sys.stderr)
        return 2
    except (zmq.ZMQError, OSError) as e:
        print(f"geeps server: cannot listen on {cfg.servers[cfg.rank]} (GEEPS_SERVERS "
              f"entry {cfg.rank}, bound as {cfg.bind_host}): {e}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    if cfg.test_crash_before_rename is not None:
        server.state.before_rename = _crash_before_rename(cfg.test_crash_before_rename)
    server.serve()
    log.info("server %d stopped", cfg.rank)
    return 0


def _crash_before_rename(clock: int) -> Callable[[str], None]:
    """GEEPS_TEST_CRASH_BEFORE_RENAME, for the durability tests: a checkpoint hook that
    kills this process like a killed pod once the checkpoint of `clock` is written and
    fsynced, before it is renamed into place."""
    def crash(tmp: str) -> None:
        if tmp.endswith(f"clock-{clock:09d}.ckpt-{os.getpid()}"):
            os.kill(os.getpid(), signal.SIGKILL)
    return crash
