"""Softmax regression on scikit-learn's digits through geeps' low-level client.

    geeps run examples/01-minimal/job.yaml                      # 2 servers, 2 workers, BSP
    geeps run --servers 1 --workers 3 -- python examples/01-minimal/train.py --epochs 2

Each worker computes gradients on its share of every batch with NumPy, pushes them,
and clocks; the servers average them and apply momentum SGD once per clock. Rank 0
creates the table, the others open it.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import geeps

WIDTH = 128                                   # floats per table row


def grad_and_loss(params, x, y, n_in, n_out):
    W = params[:n_in * n_out].reshape(n_in, n_out)
    b = params[n_in * n_out:n_in * n_out + n_out]
    z = x @ W + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    p[np.arange(len(y)), y] -= 1
    p /= len(y)
    g = np.zeros_like(params)
    g[:n_in * n_out] = (x.T @ p).ravel()
    g[n_in * n_out:n_in * n_out + n_out] = p.sum(axis=0)
    return g, loss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32, help="samples per worker per clock")
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--save", metavar="FILE", help="rank 0 saves the final parameters (.npy)")
    args = ap.parse_args(argv)

    cfg = geeps.load_config()
    d = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        (d.data / 16.0).astype(np.float32), d.target, test_size=0.25, random_state=0)
    n_in, n_out = x_train.shape[1], 10
    n_params = n_in * n_out + n_out
    n_rows = -(-n_params // WIDTH)

    with geeps.Client.from_env() as client:
        if cfg.rank == 0:
            table = client.create_table("softmax", n_rows, WIDTH, rule="momentum",
                                        lr=args.lr, momentum=0.9)
        else:
            table = client.open_table("softmax")
        global_batch = args.batch * cfg.num_workers
        steps = len(x_train) // global_batch
        total = args.epochs * steps
        t0 = time.monotonic()
        while True:
            # Everything follows from the clock, so a worker that replaces a dead one, or
            # one rolled back after a server restart, resumes at the right sample.
            try:
                while client.clock_value < total:
                    epoch, step = divmod(client.clock_value, steps)
                    order = np.random.default_rng(epoch).permutation(len(x_train))
                    rows, data_clock = client.pull(table)
                    lo = step * global_batch + cfg.rank * args.batch
                    idx = order[lo:lo + args.batch]
                    g, loss = grad_and_loss(rows.ravel(), x_train[idx], y_train[idx],
                                            n_in, n_out)
                    client.push(table, None, g.reshape(n_rows, WIDTH))
                    clock = client.clock()
                    if clock % 5 == 0:
                        geeps.report(clock=clock, loss=loss, samples=5 * args.batch,
                                     epoch=epoch, epochs=args.epochs, clocks=total)
                rows, _ = client.pull(table)
                break
            except geeps.RolledBack as e:
                print(f"worker {cfg.rank}: {e}; resuming", flush=True)
        params = rows.ravel()
        W = params[:n_in * n_out].reshape(n_in, n_out)
        b = params[n_in * n_out:n_params]
        accuracy = float(((x_test @ W + b).argmax(axis=1) == y_test).mean())
        geeps.report(clock=client.clock_value, accuracy=accuracy)
        if args.save and cfg.rank == 0:
            np.save(args.save, params)
        print(f"worker {cfg.rank}: test accuracy {accuracy:.3f} after {client.clock_value} "
              f"clocks in {time.monotonic() - t0:.1f} s")
    return 0 if accuracy > 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
