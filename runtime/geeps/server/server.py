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
from typing import Callable

import zmq

from geeps.job import env as _config
from geeps.server import checkpoint
from geeps.wire.memtune import keep_freed_memory
from geeps.wire.curve import CurveError
from geeps.server.shard import ShardState, ShardTable
from geeps.wire.protocol import reply_error
from geeps.wire.transport import ZERO_COPY_MIN, bind_router, security_note

log = logging.getLogger("geeps.server")
POLL_MS = 100     # how often the loop looks at the stop flag when idle
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
        self._trackers: list[zmq.MessageTracker] = []
        self.state = ShardState(cfg.rank, cfg.num_workers, cfg.max_parked,
                                before_write=self._finish_sends,
                                checkpoint_dir=cfg.checkpoint_dir,
                                checkpoint_every=cfg.checkpoint_every)
        if cfg.checkpoint_dir:
            self._restore_newest()
        self.state.send_early = self._send
        if metrics is not None:
            self.state.on_update = metrics.server_update.observe
        self._pushed_bytes = 0
        host, _, port = cfg.servers[cfg.rank].rpartition(":")
        self.address = f"tcp://{cfg.bind_host}:{port}"
        self.sock, self._auth = bind_router(self.ctx, self.address, cfg)
        # Called on the serving thread with each reply to LOCAL_PEER (the hosting
        # worker), its values possibly views of the rows: used before anything else
        # runs on that thread.
        self.local_sink: Callable[[list], None] | None = None

    def _restore_newest(self) -> None:
        found = checkpoint.newest(self.cfg.checkpoint_dir, self.cfg.rank)
        if found is None:
            log.info("server %d: no checkpoint in %s; starting empty", self.cfg.rank,
                     self.cfg.checkpoint_dir)
            return
        clock, header, arrays = found
        self.state.load_state(clock, header, arrays)
        self.state.last_cause = self.state.inc
        log.warning("server %d restored checkpoint clock %d (%d tables); workers roll back "
                    "to it", self.cfg.rank, clock, len(self.state.tables))

    def _finish_sends(self, table: ShardTable) -> None:
        # Loopback sends finish in microseconds; waiting on all of them is simpler than
        # knowing which table each aliases, and just as fast.
        for tracker in self._trackers:
            tracker.wait()
        self._trackers.clear()

    def stop(self) -> None:
        self._stop.set()

    def wait_changed(self, timeout: float) -> None:
        """Block until the loop handled more requests, or `timeout` seconds (for a
        thread in this process watching `state`)."""
        with self._changed:
            self._changed.wait(timeout)

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        log.info("server %d listening on %s for %d workers; %s", self.cfg.rank,
                 self.address, self.cfg.num_workers, security_note(self.cfg))
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(POLL_MS))
                if self.sock in ready:
                    self.drain()
                self.after_poll(bool(ready))
        finally:
            self.close()

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def drain(self) -> None:
        """Handle what is queued on the socket (without blocking)."""
        # All of it, up to a bound, before polling again: fewer syscalls under load.
        for _ in range(256):
            try:
                msg = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(msg[0].bytes, msg[1:])

    def after_poll(self, handled: bool) -> None:
        if handled:
            with self._changed:
                self._changed.notify_all()
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

    def _handle(self, peer: bytes, frames: list, header: dict | None = None) -> None:
        try:
            replies = self.state.handle(peer, frames) if header is None \
                else self.state.dispatch(peer, header, frames)
        except Exception:  # a bug must not take the shard down with every worker's state
            log.exception("server %d: internal error on a request", self.cfg.rank)
            replies = [(peer, reply_error(None, "internal server error (see server log)"))]
        self._send(replies)

    def _send(self, replies: list) -> None:
        # The hosting worker's replies last: what travels is on its way while this
        # thread copies the local rows out.
        local = []
        for to, frames_out in replies:
            if to == LOCAL_PEER:
                local.append(frames_out)
            elif any(getattr(f, "nbytes", 0) >= ZERO_COPY_MIN for f in frames_out[1:]):
                self._trackers.append(
                    self.sock.send_multipart([to, *frames_out], copy=False, track=True))
                if len(self._trackers) > 256:
                    self._trackers = [t for t in self._trackers if not t.done]
            else:
                self.sock.send_multipart([to, *frames_out], copy=True)
        for frames_out in local:
            self.local_sink(frames_out)


def main(argv: list[str] | None = None) -> int:
    """`geeps server`: serve the shard GEEPS_RANK of GEEPS_SERVERS until SIGTERM."""
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
    from geeps.metrics import Metrics
    metrics = Metrics.from_config(cfg)
    try:
        metrics.serve(cfg.metrics_port)
        server = Server(cfg, metrics=metrics)
    except CurveError as e:
        print(f"geeps server: {e}", file=sys.stderr)
        return 2
    except (zmq.ZMQError, OSError) as e:
        print(f"geeps server: cannot listen on {cfg.servers[cfg.rank]} or metrics port "
              f"{cfg.metrics_port}: {e}", file=sys.stderr)
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
