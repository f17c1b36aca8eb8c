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

import zmq

from . import config as _config
from . import checkpoint
from .memtune import keep_freed_memory
from .curve import CurveError
from .shard import ShardState, ShardTable
from .transport import ZERO_COPY_MIN, bind_router, security_note

log = logging.getLogger("geeps.server")
POLL_MS = 100     # how often the loop looks at the stop flag when idle
IO_THREADS = 2    # ZeroMQ I/O threads of a server process (see Server.__init__)


class Server:
    """Serve one shard until `stop()`; `serve()` blocks. Thread-safe: only `stop()`."""

    def __init__(self, cfg: _config.Config, context: zmq.Context | None = None,
                 metrics=None, local: str | None = None):
        """`local`: an inproc:// endpoint to serve too, for a worker that hosts this
        shard in its own process (geeps.colocate); it needs `context` to be the
        worker's. Never encrypted: nothing it carries leaves the process."""
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
        self.local_sock = None
        if local is not None:
            try:
                self.local_sock = bind_router(self.ctx, local, None)[0]
            except zmq.ZMQError:
                self.sock.close(0)
                if self._auth is not None:
                    self._auth.stop()
                raise
        # The in-process peers, so their replies (also of reads parked by another
        # peer's request) go back the way they came; everyone else is on `sock`.
        self._route: dict[bytes, zmq.Socket] = {}

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
        socks = [self.sock] + ([self.local_sock] if self.local_sock is not None else [])
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        log.info("server %d listening on %s%s for %d workers; %s", self.cfg.rank,
                 self.address, " and in-process" if self.local_sock is not None else "",
                 self.cfg.num_workers, security_note(self.cfg))
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(POLL_MS))
                for sock in socks:
                    if sock not in ready:
                        continue
                    # Drain what is queued before polling again: fewer syscalls under load.
                    for _ in range(256):
                        try:
                            msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if sock is not self.sock:   # the few in-process peers only
                            self._route[msg[0].bytes] = sock
                        self._handle(msg)
                if ready:
                    with self._changed:
                        self._changed.notify_all()
                self._export()
        finally:
            for sock in socks:
                sock.close(linger=0)
            if self._auth is not None:
                self._auth.stop()

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

    def _handle(self, msg: list) -> None:
        peer, frames = msg[0].bytes, msg[1:]
        try:
            replies = self.state.handle(peer, frames)
        except Exception:  # a bug must not take the shard down with every worker's state
            log.exception("server %d: internal error on a request", self.cfg.rank)
            from .protocol import reply_error
            replies = [(peer, reply_error(None, "internal server error (see server log)"))]
        self._send(replies)

    def _send(self, replies: list) -> None:
        for to, frames_out in replies:
            sock = self._route.get(to, self.sock)
            if any(getattr(f, "nbytes", 0) >= ZERO_COPY_MIN for f in frames_out[1:]):
                self._trackers.append(
                    sock.send_multipart([to, *frames_out], copy=False, track=True))
                if len(self._trackers) > 256:
                    self._trackers = [t for t in self._trackers if not t.done]
            else:
                sock.send_multipart([to, *frames_out], copy=True)


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
    from .metrics import Metrics
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
    crash_at = os.environ.get("GEEPS_TEST_CRASH_BEFORE_RENAME")
    if crash_at:
        # Fault injection for the durability tests only: die like a killed pod after the
        # checkpoint of that clock is written and fsynced, before it is renamed.
        def crash(tmp: str, clock=int(crash_at)) -> None:
            if tmp.endswith(f"clock-{clock:09d}.ckpt-{os.getpid()}"):
                os.kill(os.getpid(), signal.SIGKILL)
        server.state.before_rename = crash
    server.serve()
    log.info("server %d stopped", cfg.rank)
    return 0
