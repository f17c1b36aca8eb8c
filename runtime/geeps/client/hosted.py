"""A shard served by a worker process itself: GeePS's layout, no server processes.

In GeePS every machine runs one worker and one shard of the parameter data, and a
worker reaches its own shard in memory. With GEEPS_COLOCATE=1 (`geeps run
--colocate`) worker r serves shard r of GEEPS_SERVERS: the other workers dial it over
TCP as usual, while this worker's client hands its requests to it by a function call.
The client's I/O thread runs the shard's loop beside its own (one poller, one
thread), so a clock costs no thread hand-off inside the process and no message on
the way to the worker's own shard. At W=2 that halves what crosses the network per
clock: the same bytes as an all-reduce ring.

    host = HostedShard(cfg)                         # cfg: this worker's geeps.Config
    client = Client(cfg.servers, cfg.rank, ..., host=host)     # serves it from here on
    ...
    client.close()      # leaves, serves on until every worker has left, stops the shard

Client.from_env(), geeps.client.colocated() and geeps.torch.init() do this when
GEEPS_COLOCATE=1. A worker that dies takes its shard with it: with checkpoints on, its
replacement restores the shard's newest checkpoint and the job rolls back to it, as
after a server restart (geeps.client.recovery).
"""
from __future__ import annotations

import dataclasses
import logging
import time

import zmq

from geeps.job.env import Config
from geeps.wire.transport import security_note

log = logging.getLogger("geeps.client.hosted")


class HostedShard:
    """Shard `cfg.rank`, bound and ready; the client made with it serves it."""

    def __init__(self, cfg: Config, metrics=None):
        from geeps.server.server import Server
        self.rank = cfg.rank
        scfg = dataclasses.replace(cfg, role="server", colocate=False)
        self.server = Server(scfg, context=zmq.Context.instance(), metrics=metrics)
        log.info("shard %d listening on %s for %d workers, served by worker %d; %s",
                 cfg.rank, self.server.address, cfg.num_workers, cfg.rank,
                 security_note(cfg))

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
        """Close the shard's socket; call once its client's I/O thread has stopped."""
        self.server.close()
