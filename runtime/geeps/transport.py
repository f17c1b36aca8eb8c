"""Socket construction in one place, so every socket gets the same options (and, with
keys configured, the same CurveZMQ security)."""
from __future__ import annotations

import zmq

from .config import Config


def _common(sock: zmq.Socket) -> None:
    # Unbounded queues: flow control is the client's window of requests in flight per
    # shard, and a ROUTER at its high-water mark would silently drop replies.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)


def bind_router(ctx: zmq.Context, address: str, cfg: Config) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
    sock.bind(address)
    return sock


def connect_dealer(ctx: zmq.Context, address: str, cfg: Config | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    sock.connect(address)
    return sock
