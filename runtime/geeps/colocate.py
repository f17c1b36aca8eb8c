"""A shard served by a worker process itself: GeePS's layout, no server processes.

In GeePS every machine runs one worker and one shard of the parameter data, and a
worker reaches its own shard in memory. With GEEPS_COLOCATE=1 (`geeps run
--colocate`) worker r serves shard r of GEEPS_SERVERS on a thread of its own process:
the other workers dial it over TCP as usual, while this worker's client talks to it
over ZeroMQ's inproc transport, where a message is a pointer and no byte crosses the
kernel. At W=2 that halves what crosses the network per clock: the same bytes as an
all-reduce ring.

    host = HostedShard(cfg)                         # cfg: this worker's geeps.Config
    client = Client(cfg.servers, cfg.rank, ..., host=host)
    ...
    client.close()      # leaves, serves on until every worker has left, stops the shard

Client.from_env() and geeps.torch.init() do this when GEEPS_COLOCATE=1. A worker
that dies takes its shard with it: with checkpoints on, its replacement restores the
shard's newest checkpoint and the job rolls back to it, as after a server restart.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

import zmq

from .config import Config

log = logging.getLogger("geeps.colocate")


def endpoint(rank: int) -> str:
    return f"inproc://geeps-shard-{rank}"


class HostedShard:
    """Shard `cfg.rank` served on a background thread of this process."""

    def __init__(self, cfg: Config, metrics=None):
        from .server import Server
        self.rank = cfg.rank
        self.endpoint = endpoint(cfg.rank)
        scfg = dataclasses.replace(cfg, role="server", colocate=False)
        # inproc only connects sockets of one context: the client's I/O thread uses
        # the process-wide instance, so the shard must too.
        self.server = Server(scfg, context=zmq.Context.instance(), metrics=metrics,
                             local=self.endpoint)
        self.thread = threading.Thread(target=self.server.serve, daemon=True,
                                       name=f"geeps-shard-{cfg.rank}")
        self.thread.start()

    def serve_until_all_left(self, timeout: float) -> bool:
        """Block until every worker has said `leave` here, or `timeout` seconds; True
        if they all did."""
        state = self.server.state
        deadline = time.monotonic() + timeout
        waited = False
        while len(state.left) < state.num_workers:
            if time.monotonic() > deadline:
                log.warning("shard %d: workers %s never left; stopping after %g s",
                            self.rank, sorted(set(range(state.num_workers)) - state.left),
                            timeout)
                return False
            if not waited:
                log.info("shard %d: serving on until every worker has left", self.rank)
                waited = True
            self.server.wait_changed(0.2)
        return True

    def stop(self) -> None:
        self.server.stop()
        if threading.current_thread() is not self.thread:
            self.thread.join(5.0)
