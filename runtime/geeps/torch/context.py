"""The process-wide connection of `geeps.torch`: `init()` and `shutdown()`.

    ctx = init()              # GEEPS_* from the environment; idempotent
    ctx.rank, ctx.num_workers, ctx.client
    shutdown()                # also runs at interpreter exit

Under `geeps run` (or in a pod) GEEPS_SERVERS names the shards. A plain `python
train.py` has none: then, for a single worker only, init() starts one shard on a
loopback port inside this process (a thread), so the distributed script also runs
alone and computes exactly what one worker of a job would.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Mapping

import zmq

from geeps.client.client import Client
from geeps.job.env import Config, ConfigError, load as load_config
from geeps.metrics import Metrics
from geeps.wire.ports import free_port

log = logging.getLogger("geeps.torch")


@dataclass
class Context:
    """What init() made: this worker's config and client, and the data loader's
    position (the `tracker` that geeps.torch.shard hands a ShardedLoader)."""
    config: Config
    client: Client
    # The loopback shard init() started when GEEPS_SERVERS named none, and its thread.
    # (A co-located shard, GEEPS_COLOCATE=1, belongs to the client instead.)
    server: object | None = None
    thread: threading.Thread | None = None
    # Where the data stands, for a rollback (see geeps.torch.partition.ShardedLoader):
    # the clock the batch in hand was drawn for, and a request to draw the next one
    # anew (DataParallel sets it when a rollback voided a step).
    batch_clock: int | None = None
    reposition: bool = False

    def clock(self) -> int:
        return self.client.clock_value

    def rollbacks(self) -> int:
        return self.client.rollbacks

    def joined_at(self) -> int:
        return self.client.joined_at

    @property
    def rank(self) -> int:
        return self.config.rank

    @property
    def num_workers(self) -> int:
        return self.config.num_workers


_ctx: Context | None = None
_lock = threading.Lock()
# DataParallel models to settle (outstanding pushes, the last clock) before the client
# closes; weak so a discarded model is not kept alive.
_models: "weakref.WeakSet" = weakref.WeakSet()


def register(model) -> None:
    """Have shutdown() settle `model` (a DataParallel) before it closes the client."""
    _models.add(model)


def _local_server(cfg: Config) -> tuple[object, threading.Thread, Config]:
    from geeps.server.server import Server
    last: Exception | None = None
    for _ in range(5):      # another program may take the probed port before we bind it
        addr = f"127.0.0.1:{free_port()}"
        scfg = dataclasses.replace(cfg, role="server", rank=0, num_workers=1, servers=(addr,),
                                   bind_host="127.0.0.1", checkpoint_dir="",
                                   checkpoint_every=0, metrics_port=0, curve_dir="")
        try:
            server = Server(scfg)
        except zmq.ZMQError as e:
            last = e
            continue
        thread = threading.Thread(target=server.serve, name="geeps-local-server", daemon=True)
        thread.start()
        log.info("no GEEPS_SERVERS: serving one shard in-process on %s", addr)
        return server, thread, dataclasses.replace(cfg, servers=(addr,), curve_dir="")
    raise RuntimeError(f"could not start an in-process server on loopback: {last}")


def init(environ: Mapping[str, str] | None = None) -> Context:
    """Connect this worker to the servers named by GEEPS_* (see geeps.job.env).

    Idempotent: later calls return the same Context. Blocks until every shard answered
    (ServerUnreachable after GEEPS_TIMEOUT). Raises ConfigError naming a bad variable."""
    global _ctx
    with _lock:
        if _ctx is not None:
            return _ctx
        cfg = load_config(environ)
        if cfg.role != "worker":
            raise ConfigError("GEEPS_ROLE", cfg.role, "worker (geeps.torch runs in workers)")
        server = thread = None
        if not cfg.servers:
            if cfg.num_workers != 1:
                raise ConfigError("GEEPS_SERVERS", "", "host:port of every shard when "
                                  f"GEEPS_NUM_WORKERS={cfg.num_workers} (`geeps run` sets it)")
            server, thread, cfg = _local_server(cfg)
        metrics = Metrics.from_config(cfg)
        try:
            metrics.serve(cfg.metrics_port, cfg.metrics_addr)
            client = Client.from_config(cfg, metrics=metrics)
        except BaseException:
            if server is not None:
                server.stop()
            raise
        _ctx = Context(cfg, client, server, thread)
        atexit.register(shutdown)
        return _ctx


def current() -> Context | None:
    """The Context init() made, or None before it."""
    return _ctx


def shutdown() -> None:
    """Settle every model (their pushes and last clock reach the servers), close the
    client and stop an in-process server. Blocks for those acknowledgements; safe to
    call twice."""
    global _ctx
    with _lock:
        ctx, _ctx = _ctx, None
    for m in list(_models):
        try:
            m.close()
        except Exception as e:      # at exit: report, keep closing the rest
            log.warning("closing %s: %s", getattr(m, "name", "model"), e)
    if ctx is None:
        return
    ctx.client.close()
    if ctx.server is not None:
        ctx.server.stop()
        ctx.thread.join(5.0)
