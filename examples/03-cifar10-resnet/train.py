"""ResNet-18 on CIFAR-10, data-parallel on geeps, from the standard binary files.

    geeps run examples/03-cifar10-resnet/job.yaml              # 2 servers, 2 workers, BSP
    geeps run --workers 2 -- python examples/03-cifar10-resnet/train.py --data DIR
    geeps run --workers 2 -- python examples/03-cifar10-resnet/train.py --synthetic --steps 50

--data names the folder holding data_batch_1.bin .. data_batch_5.bin and
test_batch.bin (the `cifar-10-batches-bin` folder of the binary archive). Without
them the script says where to put them and exits 2. --synthetic trains on random
images for throughput measurements only: it says so, and reports no accuracy.

Momentum SGD with weight decay runs on the servers, its learning rate on a cosine
schedule with a short warm-up that the servers follow themselves; BatchNorm statistics are
averaged over the workers every clock (see geeps.torch.DataParallel). Each worker
evaluates its share of the test set after every epoch; `geeps run` shows the mean.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import geeps
import geeps.torch as gt
from geeps_examples import datasets as gdata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet import ResNet18  # noqa: E402  (the example's own module, beside this file)

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)   # CIFAR-10 channel stats
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("CIFAR10_DIR", "data/cifar-10-batches-bin"),
                    help="folder with the CIFAR-10 binary files (default $CIFAR10_DIR or "
                         "data/cifar-10-batches-bin)")
    ap.add_argument("--synthetic", action="store_true",
                    help="random images instead of CIFAR-10: throughput runs only")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=0, help="stop after this many clocks (0: no limit)")
    ap.add_argument("--batch", type=int, default=128, help="images per worker per clock")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                    help="learning rate over the run: cosine decay to 0 (the servers "
                         "follow it), or constant")
    ap.add_argument("--warmup", type=int, default=200,
                    help="clocks of linear warm-up (at most a fifth of the run)")
    ap.add_argument("--width", type=int, default=64, help="channels of the first stage (64: ResNet-18)")
    ap.add_argument("--report-every", type=int, default=10, help="clocks between progress lines")
    ap.add_argument("--save", default="", help="rank 0 writes the trained state_dict here")
    return ap.parse_args(argv)


def load(args, rank: int):
    """(train images, train labels, test images, test labels) as uint8/int64 tensors."""
    if args.synthetic:
        if rank == 0:
            print("SYNTHETIC DATA (--synthetic): random images; this measures throughput, "
                  "accuracy means nothing and is not reported", flush=True)
        g = torch.Generator().manual_seed(0)
        n = max(1024, 4 * args.batch * gt.init().num_workers)
        x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        return x, y, None, None
    train = gdata.load_cifar10(args.data, train=True)       # DataMissing says where to look
    test = gdata.load_cifar10(args.data, train=False)
    return (torch.from_numpy(train[0]), torch.from_numpy(train[1]),
            torch.from_numpy(test[0]), torch.from_numpy(test[1]))


def prepare(x: torch.Tensor, device, augment: bool) -> torch.Tensor:
    """uint8 NCHW -> normalized float; random crop (pad 4) and flip when training."""
    x = x.to(device, non_blocking=True).float().div_(255)
    if augment:
        n = x.shape[0]
        padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
        i, j = np.random.randint(0, 9, size=2)       # one offset per batch: cheap, enough
        x = padded[:, :, i:i + 32, j:j + 32]
        flip = torch.rand(n, device=device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    return (x - MEAN.to(device)) / STD.to(device)


@torch.no_grad()
def evaluate(model, loader, device) -> float:
    model.eval()
    right = total = 0
    for x, y in loader:
        right += (model(prepare(x, device, False)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train()
    return right / max(1, total)


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = gt.init()
    try:
        x_train, y_train, x_test, y_test = load(args, ctx.rank)
    except gdata.DataMissing as e:
        print(f"03-cifar10-resnet: {e}", file=sys.stderr)
        return 2
    except gdata.DataError as e:
        print(f"03-cifar10-resnet: bad CIFAR-10 file: {e}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    np.random.seed(ctx.rank)                 # augmentation differs per worker
    model = gt.DataParallel(ResNet18(width=args.width).to(device))
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch, shuffle=True,
                       drop_last=True)
    total = args.epochs * len(gt.shard(train))            # clocks of the whole run
    if args.steps:
        total = min(total, args.steps)
    schedule = {"decay": "cosine", "total": total,
                "warmup": min(args.warmup, total // 5)} if args.schedule == "cosine" else {}
    opt = gt.ServerOptimizer(model, "momentum", lr=args.lr, momentum=0.9,
                             weight_decay=args.weight_decay, schedule=schedule)
    test = None if x_test is None else DataLoader(TensorDataset(x_test, y_test),
                                                  batch_size=256)
    clock, samples, t0 = 0, 0, time.monotonic()
    done = False
    for epoch in range(args.epochs):
        for x, y in gt.shard(train):
            loss = F.cross_entropy(model(prepare(x, device, True)), y.to(device))
            opt.zero_grad()
            loss.backward()
            clock = opt.step()
            samples += len(y)
            if clock % args.report_every == 0:
                geeps.report(clock=clock, loss=loss.item(), samples=samples, epoch=epoch,
                             epochs=args.epochs, clocks=total)
                samples = 0
            if args.steps and clock >= args.steps:
                done = True
                break
        if test is not None:
            acc = evaluate(model, gt.shard(test), device)
            geeps.report(clock=clock, accuracy=acc, epoch=epoch)
            print(f"worker {ctx.rank}: epoch {epoch} test accuracy (its share) {acc:.4f}")
        if done:
            break
    if samples:
        geeps.report(clock=clock, loss=loss.item(), samples=samples)
    elapsed = time.monotonic() - t0
    print(f"worker {ctx.rank}: {clock} clocks in {elapsed:.1f} s, "
          f"{clock * args.batch / max(elapsed, 1e-9):.1f} images/s on this worker")
    if args.save and ctx.rank == 0:
        torch.save(model.state_dict(), args.save)
        print(f"saved the model to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
