"""Training to a target: time to 95% test accuracy on the digits CNN, and sparse LR
throughput at two data sizes.

Time to accuracy, digits CNN (examples/02-digits-cnn/cnn.py), same run, same data
order for every mode: each epoch the training set is permuted with the epoch's seed,
worker r of W takes every W-th sample of it, batches of `batch` per worker; SGD with
momentum 0.9, lr 0.05; one torch thread per process. Modes:
- single: one process, torch.optim.SGD (the baseline);
- ddp: DistributedDataParallel over gloo, W processes;
- bsp / ssp: geeps.torch with W workers and S `geeps server` shards (momentum on the
  servers), SSP slack 1.
Worker 0 measures the test accuracy every `eval_every` steps with its clock paused;
the time to 95% is its training time at the first evaluation at or above 0.95.

Sparse LR: examples/04-sparse-lr/train.py under `geeps run` (W=2, S=2, SSP 1), at two
data sizes (the feature count grows with the samples, as KDD2010's does); samples/s
from the clocks and seconds worker 0 prints.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
import sys
import time

from bench.procs import run_ranks, start_servers, stop
from geeps.wire.ports import free_port, free_ports

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = 0.95



def _batches(x, y, epoch: int, rank: int, world: int, batch: int):
    import torch
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))[rank::world]
    for i in range(0, len(perm) - batch + 1, batch):
        j = perm[i:i + batch]
        yield x[j], y[j]


def _worker(mode, rank, world, epochs, batch, eval_every, extra, out):
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, os.path.join(REPO, "examples", "02-digits-cnn"))
    import cnn
    torch.set_num_threads(1)
    torch.manual_seed(0)
    loader, (x_test, y_test) = cnn.data(batch)
    x_train = torch.stack([x for x, _ in loader.dataset])
    y_train = torch.stack([y for _, y in loader.dataset])
    net = cnn.Net()
    if mode == "single":
        model, opt = net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    elif mode == "ddp":
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{extra}", rank=rank,
                                world_size=world)
        model = DistributedDataParallel(net)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        import geeps
        import geeps.torch as gt
        servers, consistency = extra
        client = geeps.Client(servers, rank, world, consistency, timeout=120)
        model = gt.DataParallel(net, client=client)
        opt = gt.ServerOptimizer(model, "sgd", lr=0.05, momentum=0.9)
    curve, iters = [], []
    train_s, step = 0.0, 0
    for epoch in range(epochs):
        for x, y in _batches(x_train, y_train, epoch, rank, world, batch):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t0
            train_s += dt
            iters.append(dt)
            step += 1
            if rank == 0 and step % eval_every == 0:
                curve.append((step, train_s, cnn.accuracy(model, x_test, y_test)))
    if mode in ("bsp", "ssp"):
        model.sync()
        if rank == 0:
            curve.append((step, train_s, cnn.accuracy(model, x_test, y_test)))
        model.close()
        client.close()
    elif mode == "ddp":
        import torch.distributed as dist
        dist.destroy_process_group()
    if mode != "bsp" and mode != "ssp" and rank == 0:
        curve.append((step, train_s, cnn.accuracy(model, x_test, y_test)))
    out.put((rank, curve, iters))


def _servers(n: int, world: int, consistency: str):
    # Every port at once: ports picked one by one may repeat.
    addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
    return addrs, start_servers(world, addrs, consistency)


def run_mode(mode: str, workers: int, servers: int, epochs: int, batch: int,
             eval_every: int) -> dict:
    world = 1 if mode == "single" else workers
    procs = []
    extra = None
    if mode == "ddp":
        extra = free_port()
    elif mode in ("bsp", "ssp"):
        consistency = "bsp" if mode == "bsp" else "ssp:1"
        addrs, procs = _servers(servers, world, consistency)
        extra = (addrs, consistency)
    try:
        results = {rank: (curve, iters) for rank, curve, iters in run_ranks(
            _worker, [(mode, r, world, epochs, batch, eval_every, extra)
                      for r in range(world)], timeout=900)}
    finally:
        stop(procs)
    curve = results[0][0]
    per_iter = sorted(max(ts) for ts in zip(*(results[r][1] for r in range(world))))
    hit = next(((s, t, a) for s, t, a in curve if a >= TARGET), None)
    return {"mode": mode, "workers": world, "batch": batch,
            "iter_s": per_iter[len(per_iter) // 2], "iters": [t for t in results[0][1]],
            "steps": curve[-1][0], "final_acc": curve[-1][2], "curve": curve,
            "to_target_s": hit[1] if hit else float("nan"),
            "to_target_steps": hit[0] if hit else None,
            "samples_to_target": hit[0] * batch * world if hit else None}


def time_to_accuracy(workers=2, servers=2, epochs=8, batch=32, eval_every=5,
                     modes=("single", "ddp", "bsp", "ssp")) -> dict:
    return {m: run_mode(m, workers, servers, epochs, batch, eval_every) for m in modes}


def sparse_lr(sizes=((50_000, 500_000), (200_000, 2_000_000)), workers=2, servers=2,
              epochs=1, batch=500, timeout=600) -> list[dict]:
    script = os.path.join(REPO, "examples", "04-sparse-lr", "train.py")
    if not os.path.exists(script):
        return []
    out = []
    for samples, features in sizes:
        cmd = [sys.executable, "-m", "geeps", "run", "--workers", str(workers), "--servers",
               str(servers), "--consistency", "ssp:1", "--quiet", "--insecure",
               "--metrics-port", "0", "--", sys.executable, script, "--samples", str(samples),
               "--features", str(features), "--epochs", str(epochs), "--batch", str(batch)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        text = p.stdout + p.stderr
        m = re.search(r"worker 0: (\d+) clocks in ([\d.]+) s", text)
        row = {"samples": samples, "features": features, "workers": workers, "batch": batch,
               "epochs": epochs, "wall_s": wall, "ok": p.returncode == 0 and m is not None}
        if m:
            clocks, secs = int(m.group(1)), float(m.group(2))
            row.update(clocks=clocks, train_s=secs,
                       samples_per_s=clocks * batch * workers / secs)
        h = re.search(r"cache hit ratio ([\d.]+)", text)
        if h:
            row["hit_ratio"] = float(h.group(1))
        if not row["ok"]:
            row["error"] = text[-600:]
        out.append(row)
    return out


def _jitter_worker(batch, iters, out):
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, os.path.join(REPO, "examples", "02-digits-cnn"))
    import cnn
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = cnn.Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 1, 8, 8), torch.randint(0, 10, (batch,))
    times = []
    for i in range(iters + 2):
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    out.put(times)


def compute_jitter(batch: int = 1024, iters: int = 30) -> dict:
    """Per-iteration compute times of one process at a step long enough (~0.1 s) that
    the scheduler's tick does not dominate: the spread BSP's stragglers come from."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_jitter_worker, args=(batch, iters, q))
    p.start()
    try:
        times = q.get(timeout=600)
    finally:
        p.join(30)
        if p.is_alive():
            p.terminate()
    return {"batch": batch, "iters": times}
