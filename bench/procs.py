"""Processes of a benchmark run: geeps servers on loopback, and worker processes that
hand their results back through a queue.

    procs = start_servers(2, ["127.0.0.1:5001", "127.0.0.1:5002"], "bsp")
    results = run_ranks(worker, [(r, world, ...) for r in range(world)], timeout=600)
"""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys


def start_servers(world: int, addrs: list[str], consistency: str) -> list[subprocess.Popen]:
    """One `geeps server` process per address, for `world` workers."""
    procs = []
    for r in range(len(addrs)):
        env = dict(os.environ, GEEPS_ROLE="server", GEEPS_RANK=str(r),
                   GEEPS_NUM_WORKERS=str(world), GEEPS_SERVERS=",".join(addrs),
                   GEEPS_BIND_HOST="127.0.0.1", GEEPS_CONSISTENCY=consistency)
        procs.append(subprocess.Popen([sys.executable, "-m", "geeps", "server"], env=env,
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
