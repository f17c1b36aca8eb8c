"""Early apply: how much of a BSP clock's update and refresh hides behind backward.

    python bench/bench_overlap.py                        # 32 MiB in 8 buckets, W=2
    python bench/bench_overlap.py --gap-ms 40 --colocate

On a GPU the CPU idles while backward computes. geeps.torch marks each bucket's push
as its last of the clock, so a shard updates those rows as soon as every worker's
push of them is in and answers the next clock's reads of them at once: by the end of
backward only the last bucket's update and transfer remain. Each worker process here
stands in for a GPU worker: before each of B buckets it sleeps `gap` ms (the GPU
computing that bucket's gradients, the CPU free), pushes the bucket, then clocks and
waits for the refresh of the whole table, as geeps.torch does. Two modes take turns
clock by clock in the same processes and the same table:
- early: pushes marked last (geeps.torch's way);
- baseline: the same pushes unmarked, so every row is updated when the clock ends.
Per mode: the median over clocks of the slowest worker's tail (from the clock call to
the refresh in) and of its iteration, and their ratio to the baseline's.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import numpy as np

from procs import run_ranks, start_servers, stop
from geeps.wire.ports import free_ports

ROW = 128
MODES = ("early", "baseline")


def _worker(rank, servers, workers, n_rows, buckets, gap, clocks, colocate, out):
    import geeps
    import geeps.client
    if colocate:
        c = geeps.client.colocated(servers, rank, workers, timeout=120)
    else:
        c = geeps.Client(servers, rank, workers, "bsp", timeout=120)
    t = c.create_table("w", n_rows, ROW, rule="momentum", lr=1e-6) if rank == 0 \
        else c.open_table("w")
    g = np.ones((n_rows, ROW), np.float32)
    buf = np.empty((n_rows, ROW), np.float32)
    cuts = np.linspace(n_rows, 0, buckets + 1).astype(int)   # backward: last rows first
    c.pull(t, out=buf)
    times = {m: [] for m in MODES}
    for i in range(2 * (clocks + 2)):
        mode = MODES[i % 2]
        t0 = time.perf_counter()
        handles = []
        for b in range(buckets):
            time.sleep(gap)
            lo, hi = int(cuts[b + 1]), int(cuts[b])
            handles.append(c.push_async(t, range(lo, hi), g[lo:hi], last=mode == "early"))
        t1 = time.perf_counter()
        c.clock()
        c.pull(t, out=buf)
        t2 = time.perf_counter()
        for h in handles:
            h.wait()
        if i >= 4:                                   # two warm-up clocks of each
            times[mode].append((t2 - t1, t2 - t0))
    c.close()
    out.put(times)


def bench(mib: int, buckets: int, gap_ms: float, workers: int, servers: int, clocks: int,
          colocate: bool) -> dict:
    n_rows = mib * 2**20 // (ROW * 4)
    n = workers if colocate else servers
    addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
    procs = [] if colocate else start_servers(workers, addrs, "bsp")
    try:
        results = run_ranks(_worker, [(r, addrs, workers, n_rows, buckets, gap_ms / 1e3,
                                       clocks, colocate) for r in range(workers)], timeout=600)
    finally:
        stop(procs)
    r = {"mib": mib, "buckets": buckets, "gap_ms": gap_ms, "workers": workers,
         "servers": n, "colocate": colocate, "clocks": clocks}
    for m in MODES:
        per_clock = list(zip(*(res[m] for res in results)))      # [(w0, w1), ...]
        r[m] = {"tail": statistics.median(max(x[0] for x in c) for c in per_clock),
                "iteration": statistics.median(max(x[1] for x in c) for c in per_clock)}
    return r


def report(r: dict) -> str:
    where = f"{r['servers']} shards in the workers" if r["colocate"] else \
        f"{r['servers']} server processes"
    e, b = r["early"], r["baseline"]
    return "\n".join([
        f"{r['mib']} MiB table in {r['buckets']} buckets, {r['gap_ms']:g} ms of idle CPU "
        f"before each (backward on a GPU), W={r['workers']}, {where}, BSP; "
        f"{r['clocks']} clocks of each mode, taking turns:",
        f"  baseline (update at the clock's end)   tail {b['tail'] * 1e3:7.1f} ms   "
        f"iteration {b['iteration'] * 1e3:7.1f} ms",
        f"  early (pushes marked last)             tail {e['tail'] * 1e3:7.1f} ms   "
        f"iteration {e['iteration'] * 1e3:7.1f} ms",
        f"  early / baseline: tail {e['tail'] / b['tail']:.2f}x, "
        f"iteration {e['iteration'] / b['iteration']:.2f}x"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--buckets", type=int, default=8)
    ap.add_argument("--gap-ms", type=float, default=20.0,
                    help="idle CPU before each bucket's push")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--clocks", type=int, default=10)
    ap.add_argument("--colocate", action="store_true",
                    help="each worker serves one shard itself (S = W)")
    a = ap.parse_args()
    mp.set_start_method("spawn")
    print(report(bench(a.mib, a.buckets, a.gap_ms, a.workers, a.servers, a.clocks,
                       a.colocate)), flush=True)
