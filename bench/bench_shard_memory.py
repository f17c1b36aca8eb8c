"""Peak memory of one server shard over a BSP clock, as the number of workers grows.

    python bench/bench_shard_memory.py                 # 8 MiB shard, W = 2, 4, 8, 16
    python bench/bench_shard_memory.py --mib 32

Each of W workers pushes a dense gradient of the whole shard for clock 0, in reverse
rank order (the worst case for summing in rank order), then every worker clocks. The
peak is what NumPy allocated during those pushes and the clock (tracemalloc), divided by
the shard's bytes. Baseline: the same measurement at W = 2, same run. Issue 23's target
(item 8): at most 3x the shard plus a stated bounded buffer, flat in W. Today a shard
keeps every worker's contribution until the clock applies (to sum in rank order, for
bitwise determinism), so the peak grows by one shard per worker: this benchmark shows
that growth until the accumulation changes. It also checks that the result is bitwise
the same for two arrival orders.
"""
from __future__ import annotations

import argparse
import os
import sys
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "runtime"))

from geeps.server.shard import ShardState   # noqa: E402
from geeps.wire import protocol as P         # noqa: E402


def clock_peak(workers: int, rows: int, width: int, order) -> tuple[float, bytes]:
    st = ShardState(0, workers)
    st.handle(b"p", P.request("create", 1, table="t", n_rows=rows, row_width=width, lo=0,
                              hi=rows, rule="sgd", hyper={"lr": 0.1}, per_clock=True,
                              init=False))
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((rows, width), dtype=np.float32) for _ in range(workers)]
    tracemalloc.start()
    tracemalloc.reset_peak()
    for w in order:
        # A fresh buffer per push, as ZeroMQ receives each message into one; the shard
        # holds it as long as it keeps the push.
        st.handle(b"p", P.request("push", 2, [grads[w].copy()], table="t", worker=w,
                                  session=w, clock=0, seq=0, rows={"range": [0, rows]}))
    for w in range(workers):
        st.handle(b"p", P.request("clock", 3, worker=w, clock=0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert st.min_clock == 1
    return peak / (rows * width * 4), st.tables["t"].rows.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=8, help="shard size in MiB")
    ap.add_argument("--workers", default="2,4,8,16")
    args = ap.parse_args()
    width = 1024
    rows = args.mib * (1 << 20) // (width * 4)
    base = None
    print(f"shard {args.mib} MiB; peak allocated during pushes + clock, in shard sizes")
    print(f"{'W':>4} {'peak/shard':>11} {'vs W=2':>8} {'bitwise same for 2 orders':>27}")
    for w in (int(x) for x in args.workers.split(",")):
        peak, a = clock_peak(w, rows, width, range(w - 1, -1, -1))
        _, b = clock_peak(w, rows, width, range(w))
        base = base or peak
        print(f"{w:>4} {peak:>11.2f} {peak / base:>7.2f}x {str(a == b):>27}")
    print("target (issue 23, item 8): peak/shard <= 3 plus a bounded buffer, flat in W")


if __name__ == "__main__":
    main()
