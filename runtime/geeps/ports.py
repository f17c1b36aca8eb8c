"""A free loopback port, for the in-process server, tests and benchmarks.

The port is free when asked; another program may take it before it is bound, so
callers that bind it themselves retry (geeps.torch_context does).
"""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
