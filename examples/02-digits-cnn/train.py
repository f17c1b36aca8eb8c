"""A small CNN on scikit-learn's digits, data-parallel on geeps.

    geeps run examples/02-digits-cnn/job.yaml                  # 2 servers, 2 workers, BSP
    geeps run --servers 1 --workers 3 -- python examples/02-digits-cnn/train.py
    python examples/02-digits-cnn/train.py                     # alone: one in-process shard

train_single.py with three lines changed and the import added (see README.md).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import cnn
import geeps.torch as gt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32, help="samples per step (per worker)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--min-accuracy", type=float, default=0.95,
                    help="exit 1 when the test accuracy ends below this")
    ap.add_argument("--report-every", type=int, default=5, help="steps between progress lines")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    loader, (x_test, y_test) = cnn.data(args.batch)
    model = gt.DataParallel(cnn.Net())
    opt = gt.ServerOptimizer(model, "sgd", lr=args.lr, momentum=0.9)
    batches = gt.shard(loader)                      # reshuffled at each epoch's iter()
    total = args.epochs * len(batches)              # clocks: geeps run shows an ETA
    step, samples, t0 = 0, 0, time.monotonic()
    for epoch in range(args.epochs):
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step, samples = step + 1, samples + len(x)
            if step % args.report_every == 0:
                cnn.report(clock=step, loss=loss.item(), samples=samples, epoch=epoch,
                           epochs=args.epochs, clocks=total)
                samples = 0
        acc = cnn.accuracy(model, x_test, y_test)
        cnn.report(clock=step, accuracy=acc, epoch=epoch)
    print(f"test accuracy {acc:.4f} after {args.epochs} epochs, {step} steps, "
          f"{time.monotonic() - t0:.1f} s")
    return 0 if acc >= args.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main())
