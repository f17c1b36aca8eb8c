"""A worker for the lab's fault tests: every worker adds (rank + 1) to every value of a
shared `add` table once per clock, so after K clocks each value must be exactly
K * (1 + ... + W): an update lost or applied twice shows. At clock `--hold-at` the last
worker writes `--mark` and waits for `--go` to exist (the test cuts its link meanwhile),
so its next pushes leave while the link is down.
"""
import argparse
import os
import time

import numpy as np

import geeps

p = argparse.ArgumentParser()
p.add_argument("--clocks", type=int, default=20)
p.add_argument("--hold-at", type=int, default=5)
p.add_argument("--mark", required=True)
p.add_argument("--go", required=True)
args = p.parse_args()

cfg = geeps.load_config()
client = geeps.Client.from_env()
table = client.create_table("w", n_rows=64, row_width=256, rule="add")
last = cfg.num_workers - 1
for c in range(1, args.clocks + 1):
    if c == args.hold_at and cfg.rank == last:
        open(args.mark, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(args.go):        # the test's signal, with a deadline
            if time.monotonic() > deadline:
                raise SystemExit("no --go file within 60 s")
            time.sleep(0.05)
    client.push(table, range(64), np.full((64, 256), cfg.rank + 1, np.float32))
    client.clock()
    values, _ = client.pull(table)
    geeps.report(clock=c, samples=1)
want = args.clocks * cfg.num_workers * (cfg.num_workers + 1) / 2
assert np.all(values == want), (values[0, 0], want)
print(f"sum ok {values[0, 0]:g}", flush=True)
client.close()
