"""Peak memory of one server shard over a BSP clock, as the number of workers grows.

    python bench/bench_shard_memory.py                 # 8 MiB shard, W = 2, 4, 8, 16
    python bench/bench_shard_memory.py --mib 32

Each of W workers pushes a dense gradient of the whole shard for clock 0 and clocks; the
shard gets the messages in reverse rank order (the worst case for summing in rank
order: every push arrives ahead of its turn), as clients with a window of requests in
flight would send them, answering `busy` and `resend` as a client does. The peak is what
the shard allocated while it held them (tracemalloc; each message is received into a
fresh buffer, as ZeroMQ does), in shard sizes. Two rows per W:

- `bounded`: the default GEEPS_PUSH_BUFFER (the shard's size): pushes ahead of their
  turn beyond it wait and are sent again. Target (issue 23, item 8): at most 3x the
  shard plus that buffer, flat in W.
- `keep all` (baseline, same run): an unbounded buffer, i.e. every worker's push kept
  until its turn, as the shard did before: one more shard per worker.

Each row also checks that the result is bitwise the same for reverse and rank-order
arrival, and counts the `busy` answers (pushes sent twice).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "runtime"))

from geeps.server.shard import ShardState   # noqa: E402
from geeps.wire import protocol as P         # noqa: E402


def clock_peak(workers: int, rows: int, width: int, order, push_buffer) -> tuple[float, bytes, int]:
    st = ShardState(0, workers, push_buffer=push_buffer)
    st.handle(b"c", P.request("create", 1, table="t", n_rows=rows, row_width=width, lo=0,
                              hi=rows, rule="sgd", hyper={"lr": 0.1}, per_clock=True,
                              init=False))
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((rows, width), dtype=np.float32) for _ in range(workers)]
    # Per worker: its requests in sending order (rid -> message builder).
    msgs = {w: {10 + w * 10: lambda w=w: P.request(
                    "push", 10 + w * 10, [grads[w].copy()], table="t", worker=w,
                    session=w, clock=0, seq=0, rows={"range": [0, rows]}),
                11 + w * 10: lambda w=w: P.request("clock", 11 + w * 10, worker=w, clock=0)}
            for w in range(workers)}
    wire = collections.deque((w, rid) for w in order for rid in msgs[w])
    busy = {w: [] for w in range(workers)}
    answered = set()
    tracemalloc.start()
    tracemalloc.reset_peak()
    while wire:
        w, rid = wire.popleft()
        for peer, reply in st.handle(b"w%d" % w, msgs[w][rid]()):
            to = int(peer[1:])
            h = P.decode_header(reply[0])
            if h.get("resend"):                   # send the waiting ones again, in order
                wire.extend((to, r) for r in busy[to])
                busy[to] = []
            elif h.get("busy"):
                busy[to].append(h["id"])
            elif h.get("ok"):
                answered.add(h["id"])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert st.min_clock == 1 and len(answered) == 2 * workers, "the clock did not finish"
    return peak / (rows * width * 4), st.tables["t"].rows.tobytes(), st.stats["busy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=8, help="shard size in MiB")
    ap.add_argument("--workers", default="2,4,8,16")
    args = ap.parse_args()
    width = 1024
    rows = args.mib * (1 << 20) // (width * 4)
    print(f"shard {args.mib} MiB; peak the shard allocated over pushes + clock, in shard sizes")
    print(f"{'W':>4} {'buffer':>9} {'peak/shard':>11} {'vs keep all':>12} {'busy':>5} "
          f"{'same bits both orders':>22}")
    for w in (int(x) for x in args.workers.split(",")):
        base, *_ = clock_peak(w, rows, width, range(w - 1, -1, -1), 1 << 62)
        peak, a, busy = clock_peak(w, rows, width, range(w - 1, -1, -1), None)
        _, b, _ = clock_peak(w, rows, width, range(w), None)
        print(f"{w:>4} {'keep all':>9} {base:>11.2f} {1.0:>11.2f}x {'':>5}")
        print(f"{w:>4} {'bounded':>9} {peak:>11.2f} {peak / base:>11.2f}x {busy:>5} "
              f"{str(a == b):>22}")
    print("peak/shard leaves out the rows themselves (1 shard, made at create). Bounded: the "
          "clock's sum (1) + the lowest unfinished worker's push (1) + GEEPS_PUSH_BUFFER "
          "(default 1 shard) = 3, so with the rows 3 shards plus the buffer, flat in W: "
          "issue 23 item 8's target")


if __name__ == "__main__":
    main()
