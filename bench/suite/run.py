"""The benchmark suite: every comparison of issue 8 in one run, written to
bench/RESULTS.md with PNG plots beside it.

    python -m bench.suite                  # the full suite, about 10 minutes on 2 cores
    python -m bench.suite --quick          # a tiny subset of each, seconds
    python -m bench.suite --only sync,scaling --out out/

Sections (each measured against a baseline in the same run):
    sync      push+pull per clock vs model size: geeps S=1/S=2 vs gloo vs ZeroMQ echo
    cache     batched gather/scatter-add vs memcpy vs a per-row loop
    memory    memory manager bytes moved and stalled vs Belady's MIN, 25..100% budgets
    training  digits CNN: ms/iteration and time to 95% accuracy (geeps BSP/SSP, DDP,
              one process); ResNet-18 ms/iteration; updates overlapping backward
              (early apply vs at the clock's end); sparse LR samples/s at two sizes
    operator  50 GeePSJobs at once on the API emulator
    scaling   the cost model of bench/scaling.py fitted to the above, 1..64 machines
    gpu       on a GPU: every CuPy kernel vs its NumPy twin, gather/scatter-add vs
              device memcpy (skipped, saying why, without one; tools/gpu_check.sh)
    filters   push filters: sparse LR with the KKT filter and L1 on the servers vs
              unfiltered; digits CNN top-1% + error feedback vs dense vs DDP
    seed001   the sparse-LR report's Tables 1-3 on KDD2010-shaped data at 1/200 of
              its size (bench/bench_seed001.py), the report's figures beside ours
    membership  the ring's balance vs hashed virtual nodes; a server SIGKILLed: failover
              to a replica vs rollback to a checkpoint, on one job
    torch_budget  geeps.torch under a device budget at 100/50/35% of the working set:
              time per step and bytes moved vs no budget, bytes vs Belady's MIN
              (bench/bench_torch_budget.py)
Sections run in separate processes where they start workers, so a crash or a hung
process in one is reported and the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "bench")
SECTIONS = ("sync", "cache", "memory", "training", "operator", "scaling", "gpu", "filters",
            "seed001", "torch_budget", "membership")


def _path():
    for p in (REPO, BENCH):
        if p not in sys.path:
            sys.path.insert(0, p)


# ---- sections --------------------------------------------------------------------------

def sec_sync(quick: bool) -> dict:
    import bench_sync
    sizes = (1, 4) if quick else (1, 4, 16, 64, 256)
    servers = (1,) if quick else (1, 2)
    rounds = 1 if quick else 2
    # Whole sweeps repeated rather than clocks within one: a burst of load from another
    # process then spoils one round's point, and the median across rounds drops it.
    runs = [bench_sync.sweep(sizes, workers=2, servers=servers, clocks=3 if quick else 10)
            for _ in range(rounds)]
    rows = []
    for cells in zip(*runs):
        row = dict(cells[0])
        for k in ("geeps_s", "gloo_s", "zmq_s"):
            row[k] = statistics.median(c[k] for c in cells)
        row.update(bench_sync.ratios(row), rounds=rounds)
        rows.append(row)
    return {"rows": rows, "rounds": rounds}


def sec_cache(quick: bool) -> dict:
    import numpy as np
    from bench_cache_ops import timings
    import bench_cache_ops
    from geeps.backend import make_index, select
    mib = 1.0 if quick else 8.0
    repeat = 3 if quick else 15
    rows_out = []
    for width in (32, 128):
        n = int(mib * 2**20) // (width * 4)
        rng = np.random.default_rng(0)
        cache = rng.standard_normal((4 * n, width)).astype(np.float32)
        acc = np.zeros_like(cache)
        rows = rng.permutation(4 * n)[:n]
        buf = np.empty((n, width), np.float32)
        src = rng.standard_normal((n, width)).astype(np.float32)
        # The per-row loop on a slice: it is 100x slower and linear in rows, so a
        # tenth of them measures it as well in a tenth of the time.
        ln = max(1, n // 10)
        loop_gather, loop_scatter = bench_cache_ops.row_loops(cache, acc, buf, src, rows[:ln])
        be = select(os.environ.get("GEEPS_BACKEND", "auto"))
        ix = be.prepare(make_index(rows))
        fns = {"memcpy": lambda: np.copyto(buf, src),
               "loop gather": loop_gather, "loop scatter-add": loop_scatter,
               "gather": lambda: be.take(cache, ix, buf),
               "scatter-add": lambda: be.put_add(acc, ix, src)}
        t = timings(fns, repeat)
        nbytes = n * width * 4
        for op in ("gather", "scatter-add"):
            loop = t["loop " + op] * n / ln
            rows_out.append({"width": width, "op": op, "rows": n, "bytes": nbytes,
                             "backend": be.name, "gbps": nbytes / t[op] / 1e9,
                             "memcpy_gbps": nbytes / t["memcpy"] / 1e9,
                             "loop_gbps": nbytes / loop / 1e9,
                             "vs_memcpy": t["memcpy"] / t[op], "vs_loop": loop / t[op]})
    return {"rows": rows_out}


def sec_memory(quick: bool, h2d_gbps: float | None) -> dict:
    from geeps.worker.memory import POLICIES, BudgetError, belady, make_plan, working_set
    from tests.workloads import (DenseModel, SparseModel, dense_batches, dense_step, record,
                                 sparse_batches, sparse_step)
    cycles = {"dense": record(dense_step, DenseModel(), dense_batches(1)),
              "sparse": record(sparse_step, SparseModel(), sparse_batches(6))}
    out = []
    for name, cyc in cycles.items():
        ws = working_set(cyc)
        for frac in (0.25, 0.5, 0.75, 1.0):
            budget = int(ws * frac)
            ref = belady(cyc, budget)
            row = {"workload": name, "budget_frac": frac, "budget": budget,
                   "working_set": ws, "belady_bytes": ref.total, "belady_h2d": ref.h2d}
            for policy in POLICIES:
                t0 = time.perf_counter()
                try:
                    plan = make_plan(cyc, budget, policy)
                except BudgetError:          # below what the sequence needs at all
                    row[policy] = None
                    continue
                row[policy] = {"moved": plan.moved_bytes, "stalled": plan.stalled_bytes,
                               "stalls": plan.stalls, "plan_s": time.perf_counter() - t0}
            out.append(row)
    return {"rows": out, "h2d_gbps": h2d_gbps}


def _bench_training(model: str, block_steps: int, blocks: int, timeout: float) -> dict | None:
    script = os.path.join(BENCH, "bench_training.py")
    if not os.path.exists(script):
        return None
    p = subprocess.run([sys.executable, script, "--model", model, "--block-steps",
                        str(block_steps), "--blocks", str(blocks)], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    out = {"text": p.stdout.strip(), "ok": p.returncode == 0}
    labels = {"single process": "single", "DDP gloo": "ddp", "geeps BSP": "bsp",
              "geeps SSP(1)": "ssp", "geeps BSP co-located": "bsp_co",
              "geeps SSP(1) co-located": "ssp_co"}
    for line in p.stdout.splitlines():
        m = re.match(r"\s+(single process|DDP gloo|geeps BSP|geeps SSP\(1\))"
                     r"( co-located)?\s+([\d.]+) ms/iter\s+x\s*([\d.]+) DDP", line)
        if m:
            key = labels[m.group(1) + (m.group(2) or "")]
            out[key] = float(m.group(3)) / 1e3
            out.setdefault("vs_ddp", {})[key] = float(m.group(4))
    if not out["ok"]:
        out["error"] = (p.stdout + p.stderr)[-800:]
    return out


def _bench_overlap() -> list[dict]:
    """Early apply against updating at the clock's end, both layouts."""
    import bench_overlap
    out = []
    for colocate in (False, True):
        r = bench_overlap.bench(32, 8, 20.0, 2, 2, 10, colocate)
        out.append(dict(r, text=bench_overlap.report(r)))
    return out


def sec_training(quick: bool) -> dict:
    from bench.suite import train
    r: dict = {}
    if quick:
        r["tta"] = train.time_to_accuracy(epochs=1, eval_every=10, modes=("single", "bsp"))
        r["sparse"] = train.sparse_lr(sizes=((20_000, 200_000),), epochs=1)
        r["jitter"] = train.compute_jitter(batch=128, iters=10)
        return r
    r["jitter"] = train.compute_jitter()
    # Three rounds, interleaved; per mode the round with the median time to 95% is kept.
    rounds = [train.time_to_accuracy(epochs=8, eval_every=5) for _ in range(3)]
    r["tta"] = {}
    for mode in rounds[0]:
        runs = sorted((x[mode] for x in rounds),
                      key=lambda v: (v["to_target_s"] != v["to_target_s"], v["to_target_s"]))
        r["tta"][mode] = dict(runs[1], rounds=[v["to_target_s"] for v in runs])
    r["digits"] = _bench_training("digits", 40, 15, 1200)
    r["resnet"] = _bench_training("resnet", 2, 8, 1800)
    r["overlap"] = _bench_overlap()
    r["sparse"] = train.sparse_lr(sizes=((100_000, 1_000_000), (400_000, 4_000_000)), epochs=2)
    return r


def sec_operator(quick: bool) -> dict:
    p = subprocess.run([sys.executable, os.path.join(BENCH, "bench_operator.py"), "--jobs",
                        "5" if quick else "50", "--json"], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        return {"error": (p.stdout + p.stderr)[-800:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def sec_filters(quick: bool) -> dict:
    # Its own process: it spawns workers and `geeps run` jobs (bench_filters.py).
    p = subprocess.run([sys.executable, os.path.join(BENCH, "bench_filters.py"), "--json",
                        *(["--quick"] if quick else [])], cwd=REPO, capture_output=True,
                       text=True, timeout=7200)
    if p.returncode != 0:
        return {"error": (p.stdout + p.stderr)[-800:]}
    return {"results": json.loads(p.stdout.strip().splitlines()[-1])}


def sec_gpu(quick: bool) -> dict:
    import bench_gpu
    return bench_gpu.run(quick)


def sec_seed001(quick: bool) -> dict:
    import bench_seed001
    return bench_seed001.run(quick=quick)


def sec_membership(quick: bool) -> dict:
    # Their own processes: bench_failover runs `geeps run` jobs and kills a server.
    out = {}
    for name, args in (("ring", []), ("failover", ["--clocks", "60", "--kill-at", "20"]
                                      if quick else [])):
        p = subprocess.run([sys.executable, os.path.join(BENCH, f"bench_{name}.py"), *args],
                           cwd=REPO, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            return {"error": (p.stdout + p.stderr)[-800:]}
        out[name] = p.stdout.strip()
    return out


def sec_torch_budget(quick: bool) -> dict:
    import bench_torch_budget
    return bench_torch_budget.run(quick=quick)


def sec_scaling(results: dict) -> dict:
    from bench.suite import model_fit
    return model_fit.fit_and_predict(results)


# ---- the run ---------------------------------------------------------------------------

def machine() -> dict:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = False
    try:
        import cupy   # noqa: F401
        gpu = True
    except Exception:
        pass
    return {"cores": os.cpu_count(), "memory_gib": mem / 2**30, "cpu": cpu,
            "python": platform.python_version(), "gpu": gpu,
            "load_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                  time.gmtime())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="geeps bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny subset of each section "
                                                         "(seconds; numbers not meaningful)")
    ap.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument("--out", default=BENCH, help="folder for RESULTS.md and the PNGs "
                                                 "(default: bench/)")
    ap.add_argument("--list", action="store_true", help="list the sections and exit")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: refit the scaling model and rewrite RESULTS.md "
                         "and the plots from the last run's results.json")
    args = ap.parse_args(argv)
    if args.list:
        for line in __doc__.split("Sections (")[1].splitlines()[1:]:
            if not line.startswith("    "):        # the table ends with the indent
                break
            print(line[4:])
        return 0
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        print(f"geeps bench: no section {', '.join(bad)} (sections: {', '.join(SECTIONS)})",
              file=sys.stderr)
        return 2
    _path()
    import multiprocessing as mp
    try:
        mp.set_start_method("spawn")
    except RuntimeError:
        pass
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        with open(_json_path(args.out)) as f:
            results = json.load(f)
        if "scaling" in results:
            results["scaling"] = sec_scaling(results)
        return _write(results, args.out)
    results: dict = {"machine": machine(), "quick": args.quick, "seconds": {}}
    status = 0
    t_all = time.perf_counter()
    for name in SECTIONS:
        if name not in only:
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            if name == "memory":
                cache = results.get("cache") or {}
                h2d = max((r["memcpy_gbps"] for r in cache.get("rows", [])), default=None)
                results[name] = sec_memory(args.quick, h2d)
            elif name == "scaling":
                results[name] = sec_scaling(results)
            else:
                results[name] = globals()["sec_" + name](args.quick)
        except Exception as e:        # one broken section must not lose the others
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            status = 1
        results["seconds"][name] = time.perf_counter() - t0
        results.setdefault("load", {})[name] = os.getloadavg()[0]
        print(f"   {results['seconds'][name]:.0f} s", flush=True)
    results["machine"]["load_end"] = os.getloadavg()
    results["seconds"]["total"] = time.perf_counter() - t_all
    with open(_json_path(args.out), "w") as f:
        json.dump(results, f, indent=1, default=str)
    return _write(results, args.out) or status


def _json_path(out: str) -> str:
    """The raw numbers, for --render: beside RESULTS.md, except in bench/ itself, where
    they would be one more untracked file; there under .geeps/ (ignored by git)."""
    if os.path.abspath(out) == os.path.abspath(BENCH):
        d = os.path.join(REPO, ".geeps", "bench")
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, "results.json")
    return os.path.join(out, "results.json")


def _write(results: dict, out: str) -> int:
    from bench.suite import plots, report
    pngs = plots.draw(results, out)
    text = report.render(results, pngs)
    path = os.path.join(out, "RESULTS.md")
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path} and {len(pngs)} plots ({results['seconds'].get('total', 0):.0f} s "
          "of measurement)")
    return 0
