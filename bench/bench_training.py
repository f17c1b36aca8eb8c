"""Time per training iteration: geeps vs DistributedDataParallel (gloo) vs one process.

    python bench/bench_training.py                       # digits CNN and ResNet-18
    python bench/bench_training.py --model digits --steps 100
    python bench/bench_training.py --model resnet --resnet-batch 32 --steps 10

For each model, in the same run, the same per-worker batch of random data, SGD with
momentum, torch on one thread per process:
- single: one process, plain torch.optim.SGD.
- DDP: torch.nn.parallel.DistributedDataParallel, gloo, W processes.
- geeps BSP / SSP: W worker processes (geeps.torch: gradients pushed from backward
  hooks, momentum on the servers) and S `geeps server` processes; SSP slack 1.
- geeps co-located: the same with no server processes: worker r serves shard r itself
  (GEEPS_COLOCATE=1, GeePS's layout), reached in memory by its own worker.
Each figure is the median over iterations of the slowest worker's iteration time,
then the median over interleaved rounds.
Printed as milliseconds and as ratios to DDP and to one process. The target: geeps
BSP within 1.1x of DDP's time per iteration.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

from geeps.ports import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP = 3



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


def _worker(kind, rank, world, model_name, width, batch, steps, extra, out):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, shape = make_model(model_name, width)
    g = torch.Generator().manual_seed(rank)
    xs = [torch.randn(batch, *shape, generator=g) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), generator=g) for _ in range(4)]
    if kind == "single":
        model, opt = net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        barrier = lambda: None        # noqa: E731
    elif kind == "ddp":
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{extra}", rank=rank,
                                world_size=world)
        model = DistributedDataParallel(net)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        barrier = dist.barrier
    else:
        import geeps
        import geeps.torch as gt
        servers, consistency, colocate = extra
        if colocate:        # worker `rank` serves shard `rank` itself (geeps.colocate)
            client = geeps.Client.from_env({
                "GEEPS_SERVERS": ",".join(servers), "GEEPS_RANK": str(rank),
                "GEEPS_NUM_WORKERS": str(world), "GEEPS_CONSISTENCY": consistency,
                "GEEPS_COLOCATE": "1", "GEEPS_BIND_HOST": "127.0.0.1", "GEEPS_TIMEOUT": "120"})
        else:
            client = geeps.Client(servers, rank, world, consistency, timeout=120)
        model = gt.DataParallel(net, client=client)
        opt = gt.ServerOptimizer(model, "sgd", lr=0.01, momentum=0.9)
        barrier = lambda: None        # noqa: E731  (the first clocks line the workers up)
    barrier()
    times = []
    for i in range(WARMUP + steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(xs[i % 4]), ys[i % 4])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    if kind == "geeps":
        model.sync()
        model.close()
        client.close()
    elif kind == "ddp":
        import torch.distributed as dist
        dist.destroy_process_group()
    out.put((rank, times))


def run_workers(kind, world, model, width, batch, steps, extra=None) -> float:
    q = mp.Queue()
    ps = [mp.Process(target=_worker, args=(kind, r, world, model, width, batch, steps, extra, q))
          for r in range(world)]
    for p in ps:
        p.start()
    try:
        results = dict(q.get(timeout=1800) for _ in ps)
    finally:
        for p in ps:
            p.join(60)
            if p.is_alive():
                p.terminate()
    per_iter = [max(ts) for ts in zip(*(results[r] for r in range(world)))]
    return statistics.median(per_iter)


def run_geeps(world, servers_n, consistency, model, width, batch, steps,
              colocate=False) -> float:
    """`colocate`: no server processes; worker r serves shard r (one per worker)."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(world if colocate else servers_n)]
    procs = []
    for r in range(0 if colocate else servers_n):
        env = dict(os.environ, GEEPS_ROLE="server", GEEPS_RANK=str(r),
                   GEEPS_NUM_WORKERS=str(world), GEEPS_SERVERS=",".join(addrs),
                   GEEPS_BIND_HOST="127.0.0.1", GEEPS_CONSISTENCY=consistency)
        procs.append(subprocess.Popen([sys.executable, "-m", "geeps", "server"], env=env,
                                      stderr=subprocess.DEVNULL))
    try:
        return run_workers("geeps", world, model, width, batch, steps,
                           (addrs, consistency, colocate))
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def bench(model, width, batch, steps, workers, servers, rounds) -> dict:
    """Each configuration `rounds` times, interleaved, so that load from anything else
    on the machine falls on all of them alike; the median round counts."""
    runs = {"single": [], "ddp": [], "bsp": [], "ssp": [], "bsp_co": [], "ssp_co": []}
    for _ in range(rounds):
        runs["single"].append(run_workers("single", 1, model, width, batch, steps))
        runs["ddp"].append(run_workers("ddp", workers, model, width, batch, steps, free_port()))
        for key, cons, co in (("bsp", "bsp", False), ("ssp", "ssp:1", False),
                              ("bsp_co", "bsp", True), ("ssp_co", "ssp:1", True)):
            runs[key].append(run_geeps(workers, servers, cons, model, width, batch, steps, co))
    r = {"model": model, "batch": batch, "workers": workers, "servers": servers,
         "rounds": rounds, "load": os.getloadavg()[0]}
    r.update({k: statistics.median(v) for k, v in runs.items()})
    return r


def report(r: dict) -> str:
    name = {"digits": "digits CNN (40k parameters)",
            "resnet": "ResNet-18 (11.2M parameters)"}[r["model"]]
    lines = [f"{name}, batch {r['batch']} per worker, {r['workers']} workers, "
             f"{r['servers']} servers, CPU ({os.cpu_count()} cores, load {r['load']:.1f}), "
             f"one torch thread per process, median of {r['rounds']} interleaved rounds:"]
    for key, label in (("single", "single process"), ("ddp", "DDP gloo"),
                       ("bsp", "geeps BSP"), ("ssp", "geeps SSP(1)"),
                       ("bsp_co", "geeps BSP co-located"), ("ssp_co", "geeps SSP(1) co-located")):
        lines.append(f"  {label:24s} {r[key] * 1e3:9.1f} ms/iter   "
                     f"x{r[key] / r['ddp']:5.2f} DDP   x{r[key] / r['single']:5.2f} single")
    lines.append(f"  geeps BSP / DDP = {r['bsp'] / r['ddp']:.2f} with {r['servers']} server "
                 f"processes, {r['bsp_co'] / r['ddp']:.2f} with the shards in the workers "
                 f"(target <= 1.10)")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("digits", "resnet", "all"), default="all")
    ap.add_argument("--steps", type=int, default=0, help="measured iterations (default: "
                                                         "50 digits, 8 ResNet-18)")
    ap.add_argument("--digits-batch", type=int, default=32)
    ap.add_argument("--resnet-batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 first-stage channels")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    a = ap.parse_args()
    mp.set_start_method("spawn")
    for m in (("digits", "resnet") if a.model == "all" else (a.model,)):
        batch = a.digits_batch if m == "digits" else a.resnet_batch
        steps = a.steps or (50 if m == "digits" else 8)
        print(report(bench(m, a.width, batch, steps, a.workers, a.servers, a.rounds)),
              flush=True)
