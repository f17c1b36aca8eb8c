"""Processes of a benchmark run: geeps servers on loopback, and worker processes that
hand their results back through a queue.

    procs = start_servers(2, ["127.0.0.1:5001", "127.0.0.1:5002"], "bsp")
    results = run_ranks(worker, [(r, world, ...) for r in range(world)], timeout=600)
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import subprocess
import sys

from geeps.job import consistency as _consistency
from geeps.job import env as _env


def server_env(rank: int, world: int, addrs: list[str], consistency: str) -> dict[str, str]:
    """The environment of shard `rank`: this process's own, with the GEEPS_* contract
    (geeps.job.env) of a server on loopback. GEEPS_* settings the benchmark runs under
    (GEEPS_BACKEND, GEEPS_TIMEOUT...) carry over; the server's identity is replaced."""
    cfg = _env.check(dataclasses.replace(
        _env.load(), role="server", rank=rank, num_workers=world, servers=tuple(addrs),
        bind_host="127.0.0.1", consistency=_consistency.parse(consistency)))
    return dict(os.environ, **cfg.to_env())


def start_servers(world: int, addrs: list[str], consistency: str) -> list[subprocess.Popen]:
    """One `geeps server` process per address, for `world` workers."""
    procs = []
    for r in range(len(addrs)):
        procs.append(subprocess.Popen([sys.executable, "-m", "geeps", "server"],
                                      env=server_env(r, world, addrs, consistency),
                                      stderr=subprocess.DEVNULL))
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
        p.wait()


def run_ranks(target, args: list[tuple], timeout: float) -> list:
    """target(*args[r], queue) in one spawned process per entry; what they put on the
    queue, in arrival order (one item each). A process still running after its item
    arrived gets a minute to exit, then is terminated."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=target, args=(*a, q)) for a in args]
    try:
        for p in ps:
            p.start()
        return [q.get(timeout=timeout) for _ in ps]
    finally:
        for p in ps:
            p.join(60)
            if p.is_alive():
                p.terminate()
