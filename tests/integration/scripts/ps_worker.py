"""A worker against the real parameter server: every worker adds (rank + 1) to every
value of a shared table once per clock, so after K clocks each value must be
K * (1 + 2 + ... + W). `--crash-at C` makes the last worker exit 3 at clock C, while
its peers wait for it in a BSP read.
"""
import argparse
import sys

import numpy as np

import geeps

p = argparse.ArgumentParser()
p.add_argument("--clocks", type=int, default=5)
p.add_argument("--crash-at", type=int)
args = p.parse_args()

cfg = geeps.load_config()
client = geeps.Client.from_env()
table = client.create_table("w", n_rows=10, row_width=4, rule="add")
last = cfg.num_workers - 1
for c in range(1, args.clocks + 1):
    if args.crash_at == c and cfg.rank == last:
        print(f"worker {cfg.rank} crashing at clock {c}", file=sys.stderr)
        sys.exit(3)
    client.push(table, range(10), np.full((10, 4), cfg.rank + 1, np.float32))
    client.clock()
    values, _ = client.pull(table)
    geeps.report(clock=c, samples=8, loss=float(values[0, 0]))
want = args.clocks * cfg.num_workers * (cfg.num_workers + 1) / 2
assert np.all(values == want), (values[0, 0], want)
print(f"sum ok {values[0, 0]:g}")
client.close()
