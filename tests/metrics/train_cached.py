"""Linear regression on the GPU-specialized worker, under a device-memory budget smaller
than its parameters: the job the metrics end-to-end test and the dashboard picture run.

    geeps run tests/metrics/cached-job.yaml                  # 2 servers, 2 workers, SSP 1
    geeps run --servers 1 --workers 2 -- python tests/metrics/train_cached.py --clocks 50

It goes through geeps.worker.Worker (virtual iteration, parameter cache, access buffer),
so every panel of the dashboard has something to show: cache hits and misses, bytes
host<->device as well as pushed and pulled, clock lag under SSP, parked reads. The model
is two blocks of rows read by separate operations, so a budget below the working set
keeps one block in device memory and streams the other through the access buffer.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import geeps
from geeps.worker import Worker

WIDTH = 128                 # floats per row
BLOCK_ROWS = 16             # rows per block; two blocks: 2 x 16 x 128 = 4096 weights


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clocks", type=int, default=500)
    ap.add_argument("--batch", type=int, default=64, help="samples per worker per clock")
    ap.add_argument("--lr", type=float, default=0.01, help="SGD step; above ~0.03 it diverges")
    args = ap.parse_args(argv)

    cfg = geeps.load_config()
    n = 2 * BLOCK_ROWS * WIDTH
    truth = np.random.default_rng(7).normal(size=n).astype(np.float32) / np.sqrt(n)
    data = np.random.default_rng(100 + cfg.rank)
    blocks = [range(0, BLOCK_ROWS), range(BLOCK_ROWS, 2 * BLOCK_ROWS)]

    def step(w, table, x, y):
        parts = [w.read(table, b) for b in blocks]
        weights = np.concatenate([np.asarray(p).ravel() for p in parts])
        err = x @ weights - y
        grad = (x.T @ err / len(y)).astype(np.float32)
        for p in parts:
            w.post_read(p)
        for i, b in enumerate(blocks):
            g = w.pre_update(table, b)
            g[...] = grad[i * BLOCK_ROWS * WIDTH:(i + 1) * BLOCK_ROWS * WIDTH].reshape(
                BLOCK_ROWS, WIDTH)
            w.update(g)
        w.clock()
        return float((err ** 2).mean())

    def batch():
        x = data.normal(size=(args.batch, n)).astype(np.float32)
        return x, x @ truth

    with geeps.Client.from_env() as client:
        table = (client.create_table("linear", 2 * BLOCK_ROWS, WIDTH, rule="sgd", lr=args.lr)
                 if cfg.rank == 0 else client.open_table("linear"))
        w = Worker(client)
        with w.virtual_iteration():
            step(w, table, *batch())
        first = loss = None
        for _ in range(args.clocks):
            loss = step(w, table, *batch())
            first = loss if first is None else first
            if w.client.clock_value % 20 == 0:
                geeps.report(clock=w.client.clock_value, loss=loss, samples=20 * args.batch)
        w.close()
        hits, misses = (w.metrics.value("geeps_cache_reads_total", table="linear", result=r)
                        for r in ("hit", "miss"))
    print(f"worker {cfg.rank}: loss {first:.4f} -> {loss:.4f} in {args.clocks} clocks; "
          f"cache {hits:.0f} row hits, {misses:.0f} misses")
    return 0 if loss < first / 10 else 1


if __name__ == "__main__":
    sys.exit(main())
