"""The GPU section of `geeps bench`: the CuPy backend's row kernels and transfers on
the device, against named baselines in the same run, timed with CUDA events.

    python bench/bench_gpu.py                    # on a GPU: 64 MiB per operation
    python bench/bench_gpu.py --quick --json out/bench_gpu.json
    python bench/bench_gpu.py --dry-run          # the CPU stand-in; numbers meaningless

Part 1, kernels. A batched gather (cache rows in random order -> a contiguous buffer)
and a scatter-add (buffer -> accumulator rows), indices built once, against
- memcpy: a device-to-device copy of the same bytes, contiguous to contiguous;
- a per-row loop: one CuPy slice operation per row (what batching replaces),
  timed on a slice of the rows and scaled.
Targets: >= 0.5x memcpy bandwidth and >= 20x the per-row loop, at every row width.

Part 2, transfers. Host->device and device->host on the backend's transfer stream,
from pinned memory (what the cache uses) and from pageable memory, in GB/s.

Part 3, a shard's update rule on the device. Adam over a shard of rows kept in device
memory (GEEPS_SERVER_BACKEND=cupy: geeps.server.rules), one update = the gradient up,
adam_update, the rows down into the host copy, against the NumPy twins on the host
rows (GEEPS_SERVER_BACKEND=numpy, the default) in the same run; also the kernel alone,
and whether both left the same bits. Reported, no target: whether a co-located shard
should take the device is this ratio against what the worker's own step costs.

For the suite (bench/suite/run.py): `run(quick) -> dict`, `report(result) -> str`.
Without a usable GPU `run()` returns {"skipped": why} and the CLI says so and exits 0
(`geeps bench --script` runs every bench_*.py), or 3 with --strict.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_cache_ops import row_loops  # noqa: E402

F32 = np.float32
TARGET_VS_MEMCPY = 0.5
TARGET_VS_LOOP = 20.0
WIDTHS = (32, 128, 512)


def _device(dry_run: bool):
    """(cupy, backend, None), or (None, None, why not)."""
    if dry_run:
        from geeps.backend import hostcuda, hostcupy
        if hostcuda.compiler() is None:
            return None, None, "the dry run needs g++ to compile the CUDA sources for the CPU"
        hostcupy.install()
    try:
        import cupy
    except ImportError as e:
        return None, None, f"CuPy is not installed ({e})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, None, "no CUDA device visible"
        from geeps.backend import select
        return cupy, select("cupy"), None
    except Exception as e:      # no driver, a driver too old, the backend refusing
        return None, None, f"{type(e).__name__}: {e}"


def _timer(cp):
    def best(fn, repeat: int) -> float:
        """Best wall time of fn() in seconds, by CUDA events on the current stream."""
        fn()
        s = cp.cuda.get_current_stream()
        out = float("inf")
        for _ in range(repeat):
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            e0.record(s)
            fn()
            e1.record(s)
            e1.synchronize()
            out = min(out, cp.cuda.get_elapsed_time(e0, e1) / 1e3)
        return max(out, 1e-9)
    return best


def kernels(cp, be, mib: float, repeat: int, loop_rows: int) -> list[dict]:
    from geeps.backend import make_index
    best = _timer(cp)
    rows_out = []
    for width in WIDTHS:
        n = max(2, int(mib * 2**20) // (width * 4))
        rng = np.random.default_rng(0)
        cache = cp.asarray(rng.standard_normal((4 * n, width)).astype(F32))
        acc = cp.zeros((4 * n, width), dtype=F32)
        rows = rng.permutation(4 * n)[:n]
        ix = be.prepare(make_index(rows))
        buf = cp.empty((n, width), dtype=F32)
        src = cp.asarray(rng.standard_normal((n, width)).astype(F32))
        ln = max(1, min(n, loop_rows))
        loop_gather, loop_scatter = row_loops(cache, acc, buf, src, rows[:ln])
        t = {"memcpy": best(lambda: cp.copyto(buf, src), repeat),
             "gather": best(lambda: be.take(cache, ix, buf), repeat),
             "scatter-add": best(lambda: be.put_add(acc, ix, src), repeat),
             "loop gather": best(loop_gather, 1) * n / ln,
             "loop scatter-add": best(loop_scatter, 1) * n / ln}
        nbytes = n * width * 4
        for op in ("gather", "scatter-add"):
            r = {"width": width, "op": op, "rows": n, "bytes": nbytes,
                 "gbps": nbytes / t[op] / 1e9, "memcpy_gbps": nbytes / t["memcpy"] / 1e9,
                 "loop_gbps": nbytes / t["loop " + op] / 1e9,
                 "vs_memcpy": t["memcpy"] / t[op], "vs_loop": t["loop " + op] / t[op]}
            r["ok"] = r["vs_memcpy"] >= TARGET_VS_MEMCPY and r["vs_loop"] >= TARGET_VS_LOOP
            rows_out.append(r)
    return rows_out


def transfers(cp, be, mib: float, repeat: int) -> dict:
    n = max(1, int(mib * 2**20) // 4)
    dev = cp.empty((n,), dtype=F32)
    pinned = be.host_empty((n,))
    pinned[...] = 1.0
    pageable = np.ones((n,), F32)
    s = be.transfer_stream()
    out = {"mib": mib}

    def timed(fn) -> float:
        best = float("inf")
        fn()
        for _ in range(repeat):
            with s:
                e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                e0.record(s)
                fn()
                e1.record(s)
            e1.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(e0, e1) / 1e3)
        return max(best, 1e-9)
    nbytes = n * 4
    out["h2d_pinned_gbps"] = nbytes / timed(lambda: dev.set(pinned, stream=s)) / 1e9
    out["h2d_pageable_gbps"] = nbytes / timed(lambda: dev.set(pageable, stream=s)) / 1e9
    out["d2h_pinned_gbps"] = nbytes / timed(
        lambda: dev.get(out=pinned, stream=s, blocking=False)) / 1e9
    s.synchronize()
    return out


def rules(cp, be, mib: float, repeat: int) -> dict:
    import time

    from geeps.server.rules import RuleState
    width = 512
    n = max(2, int(mib * 2**20) // (width * 4))
    rng = np.random.default_rng(0)
    init = rng.standard_normal((n, width)).astype(F32)
    grad = (rng.standard_normal((n, width)) * 0.01).astype(F32)
    hyper = {"lr": 0.01, "weight_decay": 0.001}
    twin = RuleState("adam", hyper, init.shape)
    dev = RuleState("adam", hyper, init.shape, be)
    p_twin, p_dev = twin.hold(init.copy()), dev.hold(init)
    twin.apply(p_twin, grad)
    dev.apply(p_dev, grad)
    bitwise = p_twin.tobytes() == p_dev.tobytes() and \
        all(twin.slots[k].tobytes() == dev.slots[k].tobytes() for k in twin.slots)

    def wall(st, p) -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            st.apply(p, grad)
            best = min(best, time.perf_counter() - t0)
        return max(best, 1e-9)
    t_twin, t_dev = wall(twin, p_twin), wall(dev, p_dev)
    res = dev.device
    g = res._grad(n)
    slots = {k: dev.slots.device(k) for k in dev.slots}
    with res.on():
        t_kernel = _timer(cp)(lambda: dev.launch(res.params, g, slots), repeat)
    return {"mib": n * width * 4 / 2**20, "rows": n, "width": width, "bitwise": bitwise,
            "numpy_s": t_twin, "device_s": t_dev, "kernel_s": t_kernel,
            "vs_numpy": t_twin / t_dev, "kernel_vs_numpy": t_twin / t_kernel}


def run(quick: bool = False, dry_run: bool | None = None) -> dict:
    if dry_run is None:
        dry_run = os.environ.get("GEEPS_GPU_DRYRUN", "") not in ("", "0")
    cp, be, why = _device(dry_run)
    if why:
        return {"skipped": why}
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    mib = 0.25 if dry_run else (16.0 if quick else 64.0)
    res = {"dry_run": dry_run,
           "device": name.decode() if isinstance(name, bytes) else str(name),
           "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "cupy": cp.__version__,
           "targets": {"vs_memcpy": TARGET_VS_MEMCPY, "vs_loop": TARGET_VS_LOOP}}
    res["kernels"] = kernels(cp, be, mib, repeat=3 if dry_run or quick else 10,
                             loop_rows=50 if dry_run else 2000)
    res["transfers"] = transfers(cp, be, 1.0 if dry_run else (64.0 if quick else 256.0),
                                 repeat=2 if dry_run else 5)
    res["rules"] = rules(cp, be, 0.25 if dry_run else (16.0 if quick else 64.0),
                         repeat=2 if dry_run else 5)
    res["ok"] = all(r["ok"] for r in res["kernels"]) and res["rules"]["bitwise"]
    return res


def report(res: dict) -> str:
    if "skipped" in res:
        return f"GPU section skipped: {res['skipped']}\n"
    lines = [f"Device: {res['device']} (CUDA runtime {res['cuda_runtime']}, CuPy {res['cupy']})"
             + ("  [DRY RUN on the CPU: numbers meaningless]" if res.get("dry_run") else ""),
             "",
             "| width | op | GB/s | memcpy GB/s | per-row loop GB/s | x memcpy | x loop | targets |",
             "|---|---|---|---|---|---|---|---|"]
    judged = not res.get("dry_run")
    for r in res["kernels"]:
        verdict = ("met" if r["ok"] else "MISSED") if judged else "not judged"
        lines.append(f"| {r['width']} | {r['op']} | {r['gbps']:.1f} | {r['memcpy_gbps']:.1f} | "
                     f"{r['loop_gbps']:.3f} | {r['vs_memcpy']:.2f} | {r['vs_loop']:.0f} | "
                     f"{verdict} |")
    t = res["transfers"]
    lines += ["", f"Transfers of {t['mib']:g} MiB on the transfer stream: host->device "
              f"{t['h2d_pinned_gbps']:.1f} GB/s pinned, {t['h2d_pageable_gbps']:.1f} GB/s "
              f"pageable; device->host {t['d2h_pinned_gbps']:.1f} GB/s pinned",
              f"Targets (>= {TARGET_VS_MEMCPY}x memcpy, >= {TARGET_VS_LOOP:.0f}x the per-row "
              f"loop): " + (("all met" if res["ok"] else "MISSED") if judged
                             else "not judged in a dry run")]
    r = res.get("rules")
    if r:
        lines += ["", "A shard's update on the device (rows and moments in device memory) "
                  "against the NumPy twins on the host rows:", "",
                  "| rule | shard | NumPy twins s | device s, with transfers | kernel s | "
                  "x NumPy | kernel x NumPy | same bits |", "|---|---|---|---|---|---|---|---|",
                  f"| server adam | {r['mib']:.1f} MiB ({r['rows']} x {r['width']}) | "
                  f"{r['numpy_s']:.4f} | {r['device_s']:.4f} | {r['kernel_s']:.5f} | "
                  f"{r['vs_numpy']:.1f} | {r['kernel_vs_numpy']:.1f} | "
                  f"{'yes' if r['bitwise'] else 'NO'} |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    ap.add_argument("--dry-run", action="store_true",
                    help="CuPy replaced by the CPU stand-in (checks this script still runs)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--strict", action="store_true",
                    help="exit 3 without a GPU, 1 when a target is missed")
    args = ap.parse_args(argv)
    res = run(args.quick, args.dry_run or None)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print(report(res), end="")
    if "skipped" in res:
        return 3 if args.strict else 0
    return 1 if args.strict and not res["ok"] and not res.get("dry_run") else 0


if __name__ == "__main__":
    sys.exit(main())
