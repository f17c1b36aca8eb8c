"""Sparse logistic regression on KDD2010-shaped data through the worker's operation API.

    geeps run examples/04-sparse-lr/job.yaml                       # 2 servers, 2 workers, SSP
    geeps run --workers 2 --consistency ssp:1 -- python examples/04-sparse-lr/train.py \\
        --samples 8407752 --features 20216830                     # the real KDD2010 shape
    geeps run --workers 2 -- python examples/04-sparse-lr/train.py --libsvm kdda.bz2

One weight per feature, packed into rows of a table (feature f in row f // width),
the intercept after the last feature. Each clock a worker reads only the rows its
batch touches (`Worker.read`), computes the gradient of the log-loss and scatter-adds
it into those rows (`pre_update` / `update`); the servers run Adam on the mean over
workers. Each batch is one local datum (fetched at its clock, loaded once after the
recording). The worker's memory manager keeps training data and hot rows in device
memory within the budget (GEEPS_DEVICE_MEMORY, or --device-fraction of the working
set), data first (see the README), and streams the rest through its access
buffers; the hit ratio printed at the end is geeps_cache_reads_total{result="hit"}
over all reads.

Each worker's data is fixed and visited in the same order every epoch: the first
epoch is recorded (the virtual iteration) and later clocks repeat it. Clock c trains
on batch c mod (batches per epoch), so a replacement worker resumes at its
predecessor's clock. After a rollback (a server restarted from its checkpoint) a
worker exits with status 3 and its restart resumes at the checkpoint's clock: the
operation API's cache does not rewind in place.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import geeps
from geeps_examples import datasets as gdata
from geeps.errors import RolledBack
from geeps.torch import init
from geeps.worker import Recorder, Worker, memory
from geeps.worker.memory import analyze


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libsvm", help="train on this libsvm file (.bz2/.gz ok) instead of "
                                     "generated data")
    ap.add_argument("--features", type=int, default=1_000_000,
                    help="features (generated data; with --libsvm: the file's feature count)")
    ap.add_argument("--samples", type=int, default=100_000, help="generated training samples")
    ap.add_argument("--informative", type=int, default=20_000,
                    help="generated: features with a nonzero true weight (the most frequent)")
    ap.add_argument("--zipf", type=float, default=1.2, help="generated: power-law exponent")
    ap.add_argument("--batch", type=int, default=500, help="samples per worker per clock")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.02, help="Adam step size (on the servers)")
    ap.add_argument("--row-width", type=int, default=16, help="weights per table row")
    ap.add_argument("--device-fraction", type=float, default=None,
                    help="device-memory budget as a fraction of the working set (overrides "
                         "GEEPS_DEVICE_MEMORY; 1 = everything pinned)")
    ap.add_argument("--batch-bytes", default=None,
                    help="fit batches to this many bytes of device memory each (variable "
                         "sample counts: as many samples as fit) instead of --batch "
                         "samples; 'auto': to the memory the budget leaves, a half for "
                         "the batch and its weight rows, a half for the next batch")
    ap.add_argument("--wipe-data", action="store_true",
                    help="keep no training data in device memory across clocks (the "
                         "baseline: every batch is copied in at every clock)")
    ap.add_argument("--max-logloss", type=float, default=None,
                    help="exit 1 when the held-out log-loss ends above this")
    ap.add_argument("--report-every", type=int, default=10, help="clocks between progress lines")
    return ap.parse_args(argv)


class Batches:
    """This worker's batches: every W-th of the generated (or read) stream."""

    def __init__(self, args, rank: int, num_workers: int, fit: tuple | None = None):
        self.gen = None
        if args.libsvm:
            every = list(gdata.iter_libsvm(args.libsvm, args.batch, n_features=args.features))
            if len(every) and len(every[-1]) < args.batch:
                every.pop()          # equal batches: every clock has the same shape
            n = len(every) // num_workers
            self.items = every[rank::num_workers][:n]
            self.describe = f"{args.libsvm}: {len(every) * args.batch:,} samples"
        else:
            self.gen = gdata.KDDGenerator(n_samples=args.samples, n_features=args.features,
                                          informative=args.informative, zipf=args.zipf)
            n = self.gen.n_batches(args.batch) // num_workers
            self.ids = [rank + num_workers * j for j in range(n)]
            self.describe = self.gen.describe()
        self.batch_size = args.batch
        self.n = n
        self.fitted = False
        if fit is not None:     # variable sample counts, each batch within the bytes given
            max_bytes, row_bytes = fit
            self.items = gdata.fit_batches([self[j] for j in range(n)], max_bytes, row_bytes,
                                           args.row_width, args.features)
            self.n, self.fitted = len(self.items), True

    def __len__(self):
        return self.n

    def __getitem__(self, j):
        if self.gen is None or self.fitted:
            return self.items[j]
        return self.gen.batch(self.ids[j], self.batch_size)


def step(api, table, j: int, batch: gdata.PackedBatch, xp=np) -> float:
    """One clock: batch j's data from device memory (a local datum the worker fetches,
    or keeps pinned across epochs), read the touched rows, gradient of the log-loss,
    scatter-add it."""
    d = api.local_access(f"data{j}", batch.nbytes, fetch=True)
    pos, sample, vals, labels = gdata.unpack_batch(d, batch.nnz, batch.n)
    n = batch.n
    w = api.read(table, batch.rows)
    flat = w.reshape(-1)
    nz, bias_pos = pos[:-1], pos[-1]
    z = xp.bincount(sample, weights=flat[nz] * vals, minlength=n) + flat[bias_pos]
    loss = float(xp.mean(xp.logaddexp(0.0, z) - labels * z))
    r = (1.0 / (1.0 + xp.exp(-z)) - labels) / n              # d loss / d z
    g = api.pre_update(table, batch.rows)
    gflat = g.reshape(-1)
    gflat += xp.bincount(nz, weights=r[sample] * vals, minlength=gflat.size).astype(np.float32)
    gflat[bias_pos] += np.float32(r.sum())
    api.update(g)
    api.post_read(w)
    api.post_local_access(d)
    api.clock()
    return loss


class DryRun:
    """The worker's recording calls on a bare Recorder: sizes the budget before the
    real Worker exists (no servers involved)."""

    def __init__(self):
        self.rec = Recorder()
        self.ids: dict[int, int] = {}

    def _buf(self, op, shape):
        b = np.zeros(shape, np.float32)
        self.ids[id(b)] = op
        return b

    def read(self, t, rows):
        return self._buf(self.rec.read(t, rows), (len(rows), t.row_width))

    def pre_update(self, t, rows):
        return self._buf(self.rec.pre_update(t, rows), (len(rows), t.row_width))

    def post_read(self, b):
        self.rec.post_read(self.ids.pop(id(b)))

    def local_access(self, name, nbytes, **flags):
        return self._buf(self.rec.local_access(name, nbytes, **flags), (nbytes // 4,))

    def post_local_access(self, b):
        self.rec.post_local_access(self.ids.pop(id(b)))

    def update(self, b):
        self.rec.update(self.ids.pop(id(b)))

    def clock(self):
        self.rec.clock()


def heldout_logloss(weights: np.ndarray, n_features: int, batches) -> float:
    total, n = 0.0, 0
    for b in batches:
        z = np.bincount(b.rows_of_samples, weights=weights[b.indices] * b.values,
                        minlength=len(b)) + weights[n_features]
        total += gdata.logloss(z, b.labels) * len(b)
        n += len(b)
    return total / n


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = init()                # GEEPS_* (or one in-process server when run alone)
    client, rank, W = ctx.client, ctx.rank, ctx.num_workers
    budget = geeps.load_config().device_memory if args.device_fraction is None else None
    fit = None
    if args.batch_bytes == "auto":
        if budget is None:
            print(f"worker {rank}: --batch-bytes auto fits batches to the memory a fixed "
                  "budget leaves: set GEEPS_DEVICE_MEMORY (cache.deviceMemory), not "
                  "--device-fraction", file=sys.stderr)
            return 2
        # Half the budget for a batch with its read and update buffers (a row each),
        # half for the next batch staged meanwhile; a little for buffer alignment.
        fit = ((budget - 8 * memory.ALIGN) // 2, 2 * args.row_width * 4)
    elif args.batch_bytes is not None:
        fit = (int(args.batch_bytes), 0)
    data = Batches(args, rank, W, fit)
    if len(data) == 0:
        print(f"worker {rank}: no complete batch of {args.batch} for {W} workers",
              file=sys.stderr)
        return 2
    n_rows = -(-(args.features + 1) // args.row_width)
    width = args.row_width
    if rank == 0:
        print(f"data: {data.describe}; table: {n_rows:,} rows x {width} "
              f"({n_rows * width * 4 / 2**20:.1f} MiB)")
        table = client.create_table("lr", n_rows, width, rule="adam", lr=args.lr)
    else:
        table = client.open_table("lr")

    # Each batch as the device computes on it: a local datum per batch, loaded once
    # after the recording; the planner decides which stay pinned in device memory.
    packed = [gdata.pack_batch(data[j], args.features, width) for j in range(len(data))]
    if args.device_fraction is not None and args.device_fraction < 1:
        dry = DryRun()
        for j in range(len(data)):
            step(dry, table, j, packed[j])
        cycle = dry.rec.finish()
        analysis = analyze(cycle, persist=not args.wipe_data)   # shared: the slow part
        ws = memory.working_set(cycle, analysis)
        budget = max(memory.minimum_budget(cycle, analysis), int(args.device_fraction * ws))
    try:
        worker = Worker(client, device_memory=budget, persist_local=not args.wipe_data)
        xp = worker.backend.xp
        with worker.virtual_iteration():
            for j in range(len(data)):          # one epoch: the cycle real clocks repeat
                step(worker, table, j, packed[j], xp)
    except memory.BudgetError as e:
        print(f"worker {rank}: {e}", file=sys.stderr)
        return 2
    plan = worker.plan
    for j, pb in enumerate(packed):
        worker.load_local(f"data{j}", pb.data)
    pinned_data = sum(pb.nbytes for j, pb in enumerate(packed)
                      if f"data{j}" in plan.local_offsets)
    print(f"worker {rank}: {len(data)} clocks per epoch; device memory "
          f"{plan.device_bytes / 2**20:.2f} MiB of a {plan.working_set_bytes / 2**20:.2f} MiB "
          f"working set (budget {'unlimited' if budget is None else f'{budget / 2**20:.2f} MiB'}); "
          f"training data pinned {pinned_data / 2**20:.2f} of "
          f"{sum(pb.nbytes for pb in packed) / 2**20:.2f} MiB; "
          f"{plan.moved_bytes / 2**20:.2f} MiB moved per epoch")

    def reads(result):
        return worker.metrics.value("geeps_cache_reads_total", table="lr", result=result)

    def moved(direction):
        return worker.metrics.value("geeps_transfer_bytes_total", direction=direction) / 2**20

    t0 = time.monotonic()
    losses, samples = [], 0
    # Clock c trains on batch c mod len(data): a replacement for a worker that died
    # (or every worker, after a rollback, see below) starts where the job is.
    clock = start = worker.client.clock_value
    if start:
        print(f"worker {rank}: resuming at clock {start} (epoch {start // len(data)})")
    try:
        for c in range(start, args.epochs * len(data)):
            losses.append(step(worker, table, c % len(data), packed[c % len(data)], xp))
            samples += packed[c % len(data)].n      # fitted batches vary in size
            clock = worker.client.clock_value
            if clock % args.report_every == 0:
                hits, misses = reads("hit"), reads("miss")
                geeps.report(clock=clock, loss=float(np.mean(losses)), epoch=c // len(data),
                             epochs=args.epochs, clocks=args.epochs * len(data),
                             samples=samples,
                             hit_ratio=hits / max(1.0, hits + misses))
                losses, samples = [], 0
    except RolledBack as e:
        # The worker's cache, plan position and accumulators belong to a timeline that
        # no longer exists; a fresh process rebuilds them at the job's clock.
        print(f"worker {rank}: {e}; exiting so that the restart policy brings this "
              "worker back at the checkpoint's clock", file=sys.stderr)
        return 3
    worker.drain()
    worker.close()
    hits, misses = reads("hit"), reads("miss")
    hit_ratio = hits / max(1.0, hits + misses)
    elapsed = time.monotonic() - t0
    print(f"worker {rank}: {clock} clocks in {elapsed:.1f} s; cache hit ratio {hit_ratio:.3f} "
          f"({hits:.0f} hits, {misses:.0f} misses); moved h2d {moved('h2d'):.1f} MiB, "
          f"d2h {moved('d2h'):.1f} MiB")
    status = 0
    if rank == 0:
        values, _ = client.pull(table, need=clock)      # every worker's last clock in it
        weights = values.reshape(-1)
        if data.gen is not None:
            held = [data.gen.heldout(i, 2000) for i in range(4)]
            floor = f", Bayes {data.gen.bayes_logloss():.4f}"
        else:
            held = [data[j] for j in range(min(4, len(data)))]
            floor = " (on training batches)"
        base = float(np.mean(np.concatenate([b.labels for b in held])))
        constant = -sum(q * np.log(q) for q in (base, 1 - base) if q > 0)   # label entropy
        loss = heldout_logloss(weights, args.features, held)
        geeps.report(clock=clock, loss=loss)
        print(f"held-out log-loss {loss:.4f} (constant predictor {constant:.4f}{floor})")
        if args.max_logloss is not None and not loss <= args.max_logloss:
            print(f"held-out log-loss {loss:.4f} above --max-logloss {args.max_logloss}",
                  file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
