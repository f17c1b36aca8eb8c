"""A free loopback port, for the in-process server, tests and benchmarks.

The port is free when asked; another program may take it before it is bound, so
callers that bind it themselves retry (geeps.torch.context does).
"""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports: all held open at once while they are picked (the kernel
    may hand a port just closed straight back to the next free_port())."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
