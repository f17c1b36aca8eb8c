"""Push filters: what they save and what they cost, against unfiltered runs (issue 17).

    python bench/bench_filters.py                  # both parts, full size
    python bench/bench_filters.py --quick          # small sizes (numbers not meaningful)
    python bench/bench_filters.py --only lr        # or: --only digits
    geeps bench --only filters                     # the same, in bench/RESULTS.md

Sparse LR (examples/05-sparse-lr-proximal through `geeps run`, 2 servers, 2 workers,
SSP 2): the KKT filter with the servers' L1 proximal step against the same job with
--no-filter (every coordinate of each block pushed), same data, same seed. Prints
held-out log-loss of both (target: filtered within 0.005), the bytes the filtered
workers pushed over the unfiltered ones' (target <= 0.40), and the share of weights
exactly zero (target >= 0.90).

Digits CNN (examples/02-digits-cnn's model, 2 workers, batch 32 each, momentum on
the servers, BSP): geeps dense, geeps with top-1% per bucket and error feedback, and
DistributedDataParallel (gloo) with torch's SGD, the same steps of the same batches.
Prints steps to 95% test accuracy (target: top-1% within 1.10x of dense), ms per
iteration and bytes pushed per iteration and worker. DDP's bytes are those a ring
all-reduce sends per worker, 2 (W - 1) / W of the gradient: computed, not measured.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "05-sparse-lr-proximal", "job.yaml")
LR_SIZES = {"quick": ["--samples", "8000", "--features", "40000", "--clocks", "40"],
            "full": ["--samples", "200000", "--features", "1000000", "--informative",
                     "5000", "--clocks", "160"]}


# ---- sparse LR ------------------------------------------------------------------------
def _geeps_run(args: list[str]) -> str:
    with open(EXAMPLE) as f:
        job = yaml.safe_load(f)
    job["spec"]["args"] = args
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "job.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(job, f)
        p = subprocess.run([sys.executable, "-m", "geeps", "run", "--quiet", "--metrics-port",
                            "0", path], cwd=REPO, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"geeps run {' '.join(args)} failed:\n{(p.stdout + p.stderr)[-2000:]}")
    return p.stdout


def _lr_numbers(out: str) -> dict:
    loss = float(re.search(r"held-out log-loss (\d\.\d+)", out).group(1))
    zeros = float(re.search(r"zero weights (\d\.\d+)", out).group(1))
    sent = [float(x) for x in re.findall(r"pushed (\d+\.\d+) MiB of", out)]
    secs = [float(x) for x in re.findall(r"clocks in (\d+\.\d+) s", out)]
    return {"logloss": loss, "zeros": zeros, "pushed_mib": sum(sent), "seconds": max(secs)}


def bench_lr(quick: bool) -> dict:
    args = LR_SIZES["quick" if quick else "full"]
    filtered = _lr_numbers(_geeps_run(args))
    dense = _lr_numbers(_geeps_run(args + ["--no-filter"]))
    return {"args": args, "filtered": filtered, "unfiltered": dense,
            "logloss_delta": filtered["logloss"] - dense["logloss"],
            "bytes_ratio": filtered["pushed_mib"] / dense["pushed_mib"],
            "time_ratio": filtered["seconds"] / dense["seconds"]}


def report_lr(r: dict) -> str:
    f, d = r["filtered"], r["unfiltered"]
    return "\n".join([
        f"sparse LR, DBPG (examples/05, {' '.join(r['args'])}; 2 servers, 2 workers, SSP 2):",
        f"  held-out log-loss  KKT filter {f['logloss']:.4f}   unfiltered {d['logloss']:.4f}"
        f"   delta {r['logloss_delta']:+.4f} (target <= 0.005)",
        f"  bytes pushed       KKT filter {f['pushed_mib']:.2f} MiB   unfiltered "
        f"{d['pushed_mib']:.2f} MiB   ratio {r['bytes_ratio']:.4f} (target <= 0.40)",
        f"  zero weights       KKT filter {f['zeros']:.3f}   unfiltered {d['zeros']:.3f} "
        "(target >= 0.90)",
        f"  wall time          ratio {r['time_ratio']:.2f} of unfiltered"])


# ---- digits CNN -----------------------------------------------------------------------
def _digits_worker(rank, world, mode, addrs, port, steps, eval_every, out):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(REPO, "examples", "02-digits-cnn"))
    import cnn
    loader, (x_test, y_test) = cnn.data(32)
    torch.manual_seed(0)
    net = cnn.Net()
    metrics = None
    if mode == "ddp":
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        model = DistributedDataParallel(net)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        import geeps
        import geeps.torch as gt
        from geeps.metrics import Metrics
        from geeps.tables.filters import filter_spec
        metrics = Metrics(job=f"bf-{uuid.uuid4().hex[:6]}", rank=rank)
        client = geeps.Client(addrs, rank, world, "bsp", timeout=120, metrics=metrics)
        groups = {"*": filter_spec("topk", fraction=0.01)} if mode == "topk" else None
        model = gt.DataParallel(net, client=client, name=mode, filters=groups)
        opt = gt.ServerOptimizer(model, "sgd", lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1000 + rank)
    xs, ys = loader.dataset.tensors
    curve, train_s, step = [], 0.0, 0
    while step < steps:
        order = torch.randperm(len(xs), generator=g)
        for i in range(0, len(order) - 31, 32):
            idx = order[i:i + 32]
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            train_s += time.perf_counter() - t0
            step += 1
            if step % eval_every == 0 or step == steps:
                if hasattr(model, "sync"):
                    model.sync()
                with torch.no_grad():
                    acc = float((net(x_test).argmax(1) == y_test).float().mean())
                curve.append((step, acc))
            if step == steps:
                break
    pushed = None
    if metrics is not None:
        model.sync()
        pushed = metrics.value("geeps_transfer_bytes_total", direction="push")
        model.close()
        client.close()
    else:
        import torch.distributed as dist
        dist.destroy_process_group()
    n_params = sum(p.numel() for p in net.parameters())
    out.put((rank, {"curve": curve, "train_s": train_s, "pushed": pushed,
                    "n_params": int(n_params), "steps": steps}))


def bench_digits(quick: bool) -> dict:
    from geeps.wire.ports import free_ports
    from procs import run_ranks, start_servers, stop
    world = 2
    # Accuracy every 5 steps: the ratio of steps to 95% is that coarse.
    steps, eval_every = (60, 20) if quick else (600, 5)
    out = {}
    for mode in ("dense", "topk", "ddp"):
        ports = free_ports(2)
        addrs = [f"127.0.0.1:{ports[0]}"]
        procs = [] if mode == "ddp" else start_servers(world, addrs, "bsp")
        try:
            res = dict(run_ranks(_digits_worker, [(r, world, mode, addrs, ports[1], steps,
                                                   eval_every) for r in range(world)],
                                 timeout=3600))
        finally:
            stop(procs)
        r0 = res[0]
        first = next((s for s, a in r0["curve"] if a >= 0.95), None)
        n = r0["n_params"]
        pushed = (sum(res[r]["pushed"] for r in res) / world / steps if mode != "ddp"
                  else 2 * (world - 1) / world * n * 4)
        out[mode] = {"steps_to_95": first, "final_acc": r0["curve"][-1][1],
                     "ms_per_iter": max(res[r]["train_s"] for r in res) / steps * 1e3,
                     "bytes_per_iter": pushed, "curve": r0["curve"]}
    d, t = out["dense"], out["topk"]
    out["steps_ratio"] = (t["steps_to_95"] / d["steps_to_95"]
                          if t["steps_to_95"] and d["steps_to_95"] else None)
    out["world"], out["steps"] = world, steps
    return out


def report_digits(r: dict) -> str:
    lines = [f"digits CNN, {r['world']} workers, batch 32 each, BSP, {r['steps']} steps "
             "(bytes: pushed per iteration and worker; DDP's computed):"]
    for mode, label in (("dense", "geeps dense"), ("topk", "geeps top-1% + EF"),
                        ("ddp", "DDP gloo")):
        m = r[mode]
        lines.append(f"  {label:18s} steps to 95% {str(m['steps_to_95']):>6s}   final "
                     f"{m['final_acc']:.3f}   {m['ms_per_iter']:6.1f} ms/iter "
                     f"(x{m['ms_per_iter'] / r['ddp']['ms_per_iter']:.2f} DDP, "
                     f"x{m['ms_per_iter'] / r['dense']['ms_per_iter']:.2f} dense)   "
                     f"{m['bytes_per_iter'] / 1024:8.1f} KiB/iter "
                     f"(x{m['bytes_per_iter'] / r['ddp']['bytes_per_iter']:.3f} DDP, "
                     f"x{m['bytes_per_iter'] / r['dense']['bytes_per_iter']:.3f} dense)")
    ratio = r["steps_ratio"]
    lines.append(f"  top-1% steps to 95% / dense = "
                 f"{'n/a (one never reached it)' if ratio is None else f'{ratio:.2f}'} "
                 "(target <= 1.10)")
    return "\n".join(lines)


def run(quick: bool, only: str = "") -> dict:
    out = {}
    if only in ("", "lr"):
        out["lr"] = bench_lr(quick)
    if only in ("", "digits"):
        out["digits"] = bench_digits(quick)
    return out


def report(r: dict) -> str:
    parts = []
    if "lr" in r:
        parts.append(report_lr(r["lr"]))
    if "digits" in r:
        parts.append(report_digits(r["digits"]))
    return "\n\n".join(parts)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("lr", "digits"), default="")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON last")
    a = ap.parse_args()
    import multiprocessing as mp
    mp.set_start_method("spawn")
    res = run(a.quick, a.only)
    print(report(res))
    if a.json:
        print(json.dumps(res, default=str))
