"""A worker for the membership tests (failover, servers added and removed mid-run):
tables under sgd, momentum and adam (so a replica must carry the rules' state, not
just the rows), deterministic gradients of (rank, clock, row), BSP.

    python ring_worker.py --clocks 200 --save params.npy --times times.txt [--pace S]

Worker 0 appends "clock time" to --times after each clock (the tests and
bench/bench_failover.py watch it) and saves every table, concatenated, to --save.
--pace sleeps S seconds per clock: a compute stand-in, so that a fault lands mid-run.
"""
import argparse
import time

import numpy as np

import geeps

p = argparse.ArgumentParser()
p.add_argument("--clocks", type=int, default=100)
p.add_argument("--rows", type=int, default=3000)
p.add_argument("--save")
p.add_argument("--times")
p.add_argument("--pace", type=float, default=0.0)
args = p.parse_args()

cfg = geeps.load_config()
client = geeps.Client.from_env()
rules = {"sgd": {"lr": 0.1}, "momentum": {"lr": 0.05}, "adam": {"lr": 0.01}}
tables = []
for i, (rule, hyper) in enumerate(rules.items()):
    init = np.linspace(-1, 1, args.rows * 4, dtype=np.float32).reshape(args.rows, 4) * (i + 1)
    tables.append(client.create_table(rule, args.rows, 4, rule, init=init, **hyper))
rows = np.arange(args.rows, dtype=np.float32)[:, None]
times = open(args.times, "a", buffering=1) if args.times and cfg.rank == 0 else None
rollbacks = 0
while client.clock_value < args.clocks:
    c = client.clock_value
    try:
        for i, t in enumerate(tables):
            grad = np.sin(rows * 0.01 * (i + 1) + c * 0.1 + cfg.rank).astype(np.float32)
            client.push(t, range(args.rows), np.repeat(grad, 4, axis=1))
        client.clock()
        for t in tables:
            client.pull(t)
    except geeps.RolledBack as e:      # replicas lost too: back to a checkpoint
        rollbacks += 1
        print(f"worker {cfg.rank}: {e}; resuming", flush=True)
        continue
    if times is not None:
        times.write(f"{c + 1} {time.monotonic():.6f}\n")
    if args.pace:
        time.sleep(args.pace)
print(f"worker {cfg.rank}: {rollbacks} rollbacks", flush=True)
final = np.concatenate([client.pull(t)[0] for t in tables])
if args.save and cfg.rank == 0:
    np.save(args.save, final)
client.close()
