"""L1-regularised sparse logistic regression by Delayed Block Proximal Gradient.

    geeps run examples/05-sparse-lr-proximal/job.yaml               # 2 servers, 2 workers
    geeps run --workers 2 --consistency ssp:2 -- \\
        python examples/05-sparse-lr-proximal/train.py --no-filter   # the same, unfiltered
    ... train.py --libsvm kdda.bz2 --features 20216830               # a libsvm file

The seed's algorithm (Li et al., parameter server, Algorithm 3), first order:
features are cut into `--blocks` ranges; at clock t every worker takes the same
random range (the scheduler's pick, a function of t), computes the gradient of the
log-loss of its data on that range at the weights it last read, and pushes it through
the KKT filter, which skips every coordinate whose weight is zero and whose gradient
is within the L1 weight (its optimality condition already holds, so it carries no
update). The servers average the pushes, take the SGD step and then the proximal step
of the L1 norm (soft-thresholding by lr * l1: the server function prox-l1), so the
weights the workers read are sparse. Staleness is bounded by the job's SSP slack: a
worker reads weights at most `slack` clocks old.

The filter and the server function come from the manifest (spec.tables, entry "w");
the script reads the L1 weight from there too. The intercept lives in its own table
("bias"), unfiltered and unpenalised. `--no-filter` sends every coordinate of the
block (the baseline the filter is measured against: bench/bench_filters.py).
Printed at the end: each worker's bytes pushed against the dense pushes, and (rank 0)
the held-out log-loss and the fraction of weights that are exactly zero.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import scipy.sparse as sp

import geeps
from geeps_examples import datasets as gdata
from geeps.torch import init

WIDTH = 8           # weights per table row; a block is whole rows


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libsvm", help="train on this libsvm file instead of generated data")
    ap.add_argument("--features", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=20_000, help="generated training samples")
    ap.add_argument("--informative", type=int, default=500,
                    help="generated: features with a nonzero true weight")
    ap.add_argument("--blocks", type=int, default=4, help="feature ranges (DBPG's b)")
    ap.add_argument("--clocks", type=int, default=80)
    ap.add_argument("--lr", type=float, default=2.0, help="server SGD step (and prox scale)")
    ap.add_argument("--no-filter", action="store_true", help="push every coordinate")
    ap.add_argument("--report-every", type=int, default=10)
    ap.add_argument("--max-logloss", type=float, default=None,
                    help="exit 1 when the held-out log-loss ends above this")
    return ap.parse_args(argv)


def to_csr(batches, n_features: int):
    labels = np.concatenate([b.labels for b in batches])
    mats = [sp.csr_matrix((b.values, b.indices, b.indptr), shape=(len(b), n_features))
            for b in batches]
    return sp.vstack(mats, format="csr"), labels


def load(args, rank: int, num_workers: int):
    """This worker's samples (every W-th batch) and held-out samples (rank 0)."""
    if args.libsvm:
        every = list(gdata.iter_libsvm(args.libsvm, 1000, n_features=args.features))
        mine = every[rank::num_workers]
        return to_csr(mine, args.features), to_csr(every[:2], args.features), args.libsvm
    gen = gdata.KDDGenerator(n_samples=args.samples, n_features=args.features,
                             informative=args.informative, nnz=20, seed=5)
    batch = 1000
    n = gen.n_batches(batch)
    mine = [gen.batch(i, batch) for i in range(rank, n, num_workers)]
    held = [gen.heldout(i, batch) for i in range(2)]
    return to_csr(mine, args.features), to_csr(held, args.features), gen.describe()


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = init()
    client, rank, W = ctx.client, ctx.rank, ctx.num_workers
    (x, y), (xh, yh), describe = load(args, rank, W)
    x = x.tocsc()                                   # column blocks of the gradient
    n_rows = -(-args.features // WIDTH)
    bounds = np.linspace(0, n_rows, args.blocks + 1).astype(int)
    opts = client.table_options.get("w")
    fns = {f["name"]: f["args"] for f in (opts.functions if opts else ())}
    l1 = fns.get("prox-l1", {}).get("l1", 0.0)
    if rank == 0:
        print(f"data: {describe}; {n_rows:,} rows x {WIDTH}; blocks {args.blocks}; "
              f"L1 {l1:g}; filter {'none' if args.no_filter or not opts else opts.filter.kind}")
        w_t = client.create_table("w", n_rows, WIDTH, rule="sgd", lr=args.lr)
        b_t = client.create_table("bias", 1, 1, rule="sgd", lr=args.lr)
    else:
        w_t, b_t = client.open_table("w"), client.open_table("bias")
    if args.no_filter:
        client.set_filter(w_t, None)
    dense_bytes = 0
    t0 = time.monotonic()
    for t in range(client.clock_value, args.clocks):
        block = int(np.random.default_rng([7, t]).integers(args.blocks))
        r_lo, r_hi = int(bounds[block]), int(bounds[block + 1])
        w, _ = client.pull(w_t)                    # at most `slack` clocks stale
        bias, _ = client.pull(b_t)
        flat = w.reshape(-1)[:args.features]
        z = x @ flat + bias[0, 0]
        loss = gdata.logloss(z, y)
        r = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
        f_lo, f_hi = r_lo * WIDTH, min(r_hi * WIDTH, args.features)
        g = np.zeros((r_hi - r_lo) * WIDTH, np.float32)
        g[:f_hi - f_lo] = x[:, f_lo:f_hi].T @ r
        with client.batch():
            client.push_async(w_t, range(r_lo, r_hi), g.reshape(-1, WIDTH),
                              weights=w[r_lo:r_hi])
            client.push_async(b_t, None, np.array([[r.sum()]], np.float32))
            client.clock_async()
        dense_bytes += g.nbytes
        if (t + 1) % args.report_every == 0:
            geeps.report(clock=t + 1, loss=loss, samples=args.report_every * len(y),
                         clocks=args.clocks)
    client.pull(w_t, need=args.clocks)     # every worker's last push is in
    spans = client.filters(w_t)
    sent = sum(f.sent_bytes for _, _, f in spans) if spans else dense_bytes
    elapsed = time.monotonic() - t0
    print(f"worker {rank}: {args.clocks} clocks in {elapsed:.1f} s; pushed "
          f"{sent / 2**20:.3f} MiB of {dense_bytes / 2**20:.3f} MiB dense "
          f"(bytes ratio {sent / max(1, dense_bytes):.3f})")
    status = 0
    if rank == 0:
        w, _ = client.pull(w_t, need=args.clocks)
        bias, _ = client.pull(b_t, need=args.clocks)
        flat = w.reshape(-1)[:args.features]
        loss = gdata.logloss(xh @ flat + bias[0, 0], yh)
        base = float(yh.mean())
        constant = -sum(q * np.log(q) for q in (base, 1 - base) if q > 0)
        zeros = float(np.mean(flat == 0))
        geeps.report(clock=args.clocks, loss=loss)
        print(f"held-out log-loss {loss:.4f} (constant predictor {constant:.4f}); "
              f"zero weights {zeros:.3f} ({int((flat != 0).sum()):,} nonzero)")
        if args.max_logloss is not None and not loss <= args.max_logloss:
            print(f"held-out log-loss {loss:.4f} above --max-logloss {args.max_logloss}",
                  file=sys.stderr)
            status = 1
    client.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
