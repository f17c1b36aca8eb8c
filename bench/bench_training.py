"""Time per training iteration: geeps vs DistributedDataParallel (gloo) vs one process.

    python bench/bench_training.py                       # digits CNN and ResNet-18
    python bench/bench_training.py --model digits --blocks 20
    python bench/bench_training.py --model resnet --resnet-batch 32 --block-steps 3

Modes, each with its own copy of the model (same initial weights), the same per-worker
batch of random data, SGD with momentum, torch on one thread per process:
- DDP: torch.nn.parallel.DistributedDataParallel, gloo.
- geeps BSP / SSP: geeps.torch (gradients pushed from backward hooks, momentum on the
  servers) against S `geeps server` processes; SSP slack 1.
- geeps co-located: the same with no server processes: worker r serves shard r itself
  (GEEPS_COLOCATE=1, GeePS's layout).
The W worker processes hold every mode at once and take turns: a block of iterations
of each mode, then the next, for `blocks` rounds. A virtual machine's slow spells
last long against a millisecond iteration; this way they fall on neighbouring blocks
of every mode alike instead of on whole runs. Per block: the slowest worker's wall
time over its iterations, divided by their number, from a point where the workers are
lined up (after the first WARMUP iterations of the block) to the next (the last
step's refresh in, for geeps): the job's time per iteration. (Not a per-iteration
maximum over workers: a BSP worker that waits at the top of an iteration and one that
waits in the middle time their iterations from different points, and the larger of
their two times overstates the job's by about the workers' jitter.) Times: the median
block; ratios: the median over rounds of each block's time over the same round's DDP
block.
- single: one process, plain torch.optim.SGD, run alone before the others (its ratio
  is of medians).
The target: geeps BSP within 1.1x of DDP's time per iteration.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

from geeps.wire.ports import free_ports
from procs import run_ranks, start_servers, stop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Iterations at the start of each block that are not counted (the workers line up
# again after the other modes' blocks); a ResNet-18 step is long enough for one.
WARMUP = {"digits": 3, "resnet": 1}
MODES = ("ddp", "bsp", "ssp", "bsp_co", "ssp_co")
KEYS = ("single",) + MODES
CONSISTENCY = {"bsp": "bsp", "ssp": "ssp:1", "bsp_co": "bsp", "ssp_co": "ssp:1"}


def make_model(name: str, width: int):
    import torch.nn as nn
    if name == "digits":
        sys.path.insert(0, os.path.join(REPO, "examples", "02-digits-cnn"))
        import cnn
        return cnn.Net(), (1, 8, 8)
    sys.path.insert(0, os.path.join(REPO, "examples", "03-cifar10-resnet"))
    from resnet import ResNet18
    model: nn.Module = ResNet18(width=width)
    return model, (3, 32, 32)


def _geeps_client(mode: str, rank: int, world: int, addrs: list[str]):
    import geeps
    import geeps.client
    if mode.endswith("_co"):        # worker `rank` serves shard `rank` itself
        return geeps.client.colocated(addrs, rank, world, CONSISTENCY[mode], timeout=120)
    return geeps.Client(addrs, rank, world, CONSISTENCY[mode], timeout=120)


def _aligned(model) -> None:
    """Wait until every worker is at the same point of its training loop, as far as
    the mode makes them: geeps workers leave sync() when the last step's refresh is
    in (under BSP every worker's clock is in it); DDP workers leave step() together
    already (its all-reduce ends backward on every worker at once)."""
    if hasattr(model, "sync"):
        model.sync()


def _worker(rank, world, model_name, width, batch, block_steps, blocks, modes, extra, out):
    """One worker process holding every mode in `modes`; `extra`: the gloo port and
    each geeps mode's server addresses."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(rank)
    _, shape = make_model(model_name, width)
    xs = [torch.randn(batch, *shape, generator=g) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), generator=g) for _ in range(4)]
    runs, clients = {}, []
    for mode in modes:
        torch.manual_seed(0)
        net, _ = make_model(model_name, width)
        if mode == "single":
            runs[mode] = (net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
        elif mode == "ddp":
            import torch.distributed as dist
            from torch.nn.parallel import DistributedDataParallel
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{extra['ddp']}",
                                    rank=rank, world_size=world)
            model = DistributedDataParallel(net)
            runs[mode] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
        else:
            import geeps.torch as gt
            client = _geeps_client(mode, rank, world, extra[mode])
            clients.append(client)
            model = gt.DataParallel(net, client=client, name=mode)
            runs[mode] = (model, gt.ServerOptimizer(model, "sgd", lr=0.01, momentum=0.9))
    times = {m: [] for m in modes}
    i = 0
    for _ in range(blocks):
        for mode in modes:
            model, opt = runs[mode]
            for k in range(WARMUP[model_name] + block_steps):
                if k == WARMUP[model_name]:
                    _aligned(model)
                    t0 = time.perf_counter()
                loss = F.cross_entropy(model(xs[i % 4]), ys[i % 4])
                opt.zero_grad()
                loss.backward()
                opt.step()
                i += 1
            _aligned(model)
            times[mode].append((time.perf_counter() - t0) / block_steps)
    for mode in modes:
        if mode not in ("single", "ddp"):
            runs[mode][0].sync()
            runs[mode][0].close()
    for c in clients:
        c.close()
    if "ddp" in modes:
        import torch.distributed as dist
        dist.destroy_process_group()
    out.put((rank, times))


def run_workers(world, model, width, batch, block_steps, blocks, modes, extra) -> dict:
    """mode -> [per block: the slowest worker's time per iteration]"""
    results = dict(run_ranks(_worker, [(r, world, model, width, batch, block_steps, blocks,
                                        modes, extra) for r in range(world)], timeout=3600))
    return {m: [max(results[r][m][b] for r in range(world)) for b in range(blocks)]
            for m in modes}


def bench(model, width, batch, block_steps, workers, servers, blocks) -> dict:
    single = run_workers(1, model, width, batch, block_steps, blocks, ("single",), {})
    # Every port at once: ports picked one by one may repeat.
    ports = iter(free_ports(1 + sum(workers if m.endswith("_co") else servers
                                    for m in MODES[1:])))
    extra, procs = {"ddp": next(ports)}, []
    try:
        for mode in MODES[1:]:
            # Co-located: one shard per worker, in the worker.
            n = workers if mode.endswith("_co") else servers
            extra[mode] = [f"127.0.0.1:{next(ports)}" for _ in range(n)]
            if not mode.endswith("_co"):
                procs += start_servers(workers, extra[mode], CONSISTENCY[mode])
        runs = run_workers(workers, model, width, batch, block_steps, blocks, MODES, extra)
    finally:
        stop(procs)
    runs["single"] = single["single"]
    r = {"model": model, "batch": batch, "workers": workers, "servers": servers,
         "blocks": blocks, "block_steps": block_steps, "load": os.getloadavg()[0]}
    r.update({k: statistics.median(v) for k, v in runs.items()})
    r["vs_ddp"] = {k: statistics.median(a / b for a, b in zip(runs[k], runs["ddp"]))
                   for k in MODES}
    r["vs_ddp"]["single"] = r["single"] / r["ddp"]
    r["vs_single"] = {k: r[k] / r["single"] for k in KEYS}
    return r


def report(r: dict) -> str:
    name = {"digits": "digits CNN (40k parameters)",
            "resnet": "ResNet-18 (11.2M parameters)"}[r["model"]]
    lines = [f"{name}, batch {r['batch']} per worker, {r['workers']} workers, "
             f"{r['servers']} servers, CPU ({os.cpu_count()} cores, load {r['load']:.1f}), "
             f"one torch thread per process; {r['blocks']} rounds of {r['block_steps']} "
             "iterations of each mode, taking turns in the same processes (a block: the "
             "slowest worker's wall time per iteration between two points where the "
             "workers are lined up; time: median block; x DDP: median of each block's "
             "ratio to the same round's DDP block):"]
    for key, label in (("single", "single process"), ("ddp", "DDP gloo"),
                       ("bsp", "geeps BSP"), ("ssp", "geeps SSP(1)"),
                       ("bsp_co", "geeps BSP co-located"), ("ssp_co", "geeps SSP(1) co-located")):
        lines.append(f"  {label:24s} {r[key] * 1e3:9.1f} ms/iter   "
                     f"x{r['vs_ddp'][key]:5.2f} DDP   x{r['vs_single'][key]:5.2f} single")
    lines.append(f"  geeps BSP / DDP = {r['vs_ddp']['bsp']:.2f} with {r['servers']} server "
                 f"processes, {r['vs_ddp']['bsp_co']:.2f} with the shards in the workers "
                 f"(target <= 1.10)")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("digits", "resnet", "all"), default="all")
    ap.add_argument("--block-steps", type=int, default=0,
                    help="measured iterations per block (default: 40 digits, 2 ResNet-18)")
    ap.add_argument("--blocks", type=int, default=0,
                    help="rounds of blocks (default: 15 digits, 6 ResNet-18)")
    ap.add_argument("--digits-batch", type=int, default=32)
    ap.add_argument("--resnet-batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 first-stage channels")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--servers", type=int, default=2)
    a = ap.parse_args()
    mp.set_start_method("spawn")
    for m in (("digits", "resnet") if a.model == "all" else (a.model,)):
        batch = a.digits_batch if m == "digits" else a.resnet_batch
        steps = a.block_steps or (40 if m == "digits" else 2)
        blocks = a.blocks or (15 if m == "digits" else 6)
        print(report(bench(m, a.width, batch, steps, a.workers, a.servers, blocks)),
              flush=True)
