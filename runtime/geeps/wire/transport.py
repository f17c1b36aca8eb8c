"""Socket construction in one place, so every socket gets the same options and, when
the job has keys (GEEPS_CURVE_DIR), the same CurveZMQ security."""
from __future__ import annotations

import logging
import os

import zmq

from geeps.wire import curve
from geeps.job.env import Config

log = logging.getLogger("geeps.wire.transport")


# Frames below this size are copied into the message instead of sent zero-copy.
# pyzmq frees a zero-copy frame through a garbage-collector thread (an inproc message
# and a thread wake-up per frame), which costs more than copying a small frame; above
# about 1 MiB the copy costs more than the wake-up.
ZERO_COPY_MIN = 1 << 20


def _common(sock: zmq.Socket) -> None:
    sock.copy_threshold = ZERO_COPY_MIN
    # Unbounded queues: flow control is the client's window of requests in flight per
    # shard, and a ROUTER at its high-water mark would silently drop replies.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)


def security_note(cfg: Config | None) -> str:
    """One line for the log saying how traffic is protected."""
    if cfg is not None and cfg.curve_dir and not cfg.insecure:
        return f"CurveZMQ on (keys in {cfg.curve_dir})"
    if cfg is not None and cfg.insecure:
        return ("INSECURE: CurveZMQ turned off by GEEPS_INSECURE=1; anyone who reaches "
                "the server port can read and change the model")
    return "CurveZMQ off (no GEEPS_CURVE_DIR): traffic is neither encrypted nor authenticated"


def _keys(cfg: Config | None) -> curve.Keys | None:
    if cfg is None or not cfg.curve_dir or cfg.insecure:
        return None
    return curve.load(cfg.curve_dir)


def bind_router(ctx: zmq.Context, address: str, cfg: Config):
    """A bound ROUTER socket and its ZAP authenticator (None without keys)."""
    sock = ctx.socket(zmq.ROUTER)
    _common(sock)
    # Per-peer bounds (issue 23): a peer that does not read its replies must not grow
    # the server's memory. A client has at most 64 requests in flight per shard
    # (client.iothread.WINDOW), so GEEPS_PEER_QUEUE (default 256) never binds one that
    # reads; ROUTER_MANDATORY makes a full queue an error (EAGAIN) the server handles,
    # where a plain ROUTER would drop the reply silently.
    sock.setsockopt(zmq.SNDHWM, cfg.peer_queue)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A frame above this disconnects its sender before the server buffers it.
    sock.setsockopt(zmq.MAXMSGSIZE, max_message(cfg))
    if cfg.send_buffer:         # see GEEPS_SEND_BUFFER: the replies' side of each flow
        sock.setsockopt(zmq.SNDBUF, cfg.send_buffer)
    auth = None
    keys = _keys(cfg)
    if keys is not None:
        auth = curve.secure_server(ctx, sock, keys)
    try:
        sock.bind(address)
    except zmq.ZMQError:
        sock.close(0)
        if auth is not None:
            auth.stop()
        raise
    return sock, auth


def connect_dealer(ctx: zmq.Context, address: str, cfg: Config | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _common(sock)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if cfg is not None and cfg.send_buffer:     # see GEEPS_SEND_BUFFER
        sock.setsockopt(zmq.SNDBUF, cfg.send_buffer)
    keys = _keys(cfg)
    if keys is not None:
        curve.secure_client(sock, keys)
    sock.connect(address)
    return sock


LARGEST_FRAME = 8 << 30     # a create's init of 2^31 floats: the largest legal frame


def max_message(cfg: Config) -> int:
    """GEEPS_MAX_MESSAGE, or when unset a quarter of the memory this server may use (so
    one frame cannot take it down), at most the largest legal frame."""
    if cfg.max_message is not None:
        return cfg.max_message
    return min(LARGEST_FRAME, memory_limit() // 4)


def memory_limit() -> int:
    """Bytes this process may use: its cgroup's limit (a pod's), else the machine's."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text != "max":
            return int(text)
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
