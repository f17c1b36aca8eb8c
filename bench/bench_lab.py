"""Sync per clock on a simulated cluster: geeps against gloo's ring all-reduce, on hosts
whose links are rate-limited (geeps.lab: network namespaces, tbf both ways; root only).

    python bench/bench_lab.py                         # W=4, 200mbit, 16 MiB per worker
    python bench/bench_lab.py --workers 8 --rate 100mbit
    python bench/bench_lab.py --quick                 # W=2, 2 MiB: a smoke run

Each worker moves a table of `--mib` MiB of float32 per clock. Modes, each on fresh hosts:
- gloo: torch.distributed all_reduce over W worker hosts (ring; baseline).
- geeps S=W push-clock-pull: W extra server hosts; push the whole table, clock, pull it.
- geeps S=W pipelined: Client.exchange_async, the table in chunks (exchange_async's
  default, or `--chunks` of them), each pushed marked last and at once read back for
  the next clock (the shard updates and answers a range as soon as every worker's last
  push of it is in), so replies flow in while pushes still flow out on the full-duplex
  links (BytePS's schedule).
- geeps co-located: worker r serves shard r (GeePS's layout: all-reduce's bytes),
  pipelined the same way.
- geeps S=W/2 pipelined: half as many server hosts.
Workers and shards run with GEEPS_SEND_BUFFER=`--send-buffer` (see SEND_BUFFER).

Theory, per clock with S bytes per worker and link rate R (bench/scaling.py): ring
all-reduce moves 2(W-1)/W S each way, so t_ring = 2(W-1)/W S/R; a PS with >= W server
hosts moves S each way, t_ps = S/R when push and pull overlap (pipelined): up to
2(W-1)/W times faster (1.5x at W=4); push, clock, pull one after the other take 2 S/R. Printed: median seconds per
clock (after a warm-up clock), each mode's ratio to gloo and to its theory, CPU
utilisation of the machine during the mode (the network, not the 2 cores, must be what
limits), and the bytes each host's link carried; when the pipelined S=W mode is short
of 90% of its theoretical advantage, where the time went (each host's bytes and link
use, the last clock's schedule per chunk).

    python bench/bench_lab.py --straggler             # BSP vs SSP(3) vs DDP, W=4
    python bench/bench_lab.py --scaling               # bench/scaling.py against the lab
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from geeps.job.units import parse_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# GEEPS_SEND_BUFFER of workers and shards: with the kernel's autotuned buffers a
# worker's flows to its shards (and a shard's replies to its workers), sharing one
# link with a 100 ms queue, finish far apart or overflow the queue, and the clock
# waits for the last; 32 KiB keeps them even at W=4/200 Mbit/s and W=8/50 Mbit/s
# (docs/lab.md).
SEND_BUFFER = "32Ki"

ROW_WIDTH = 1024            # floats per row: 4 KiB, so a chunk is a few contiguous rows
PORT = 7400                 # every host has its own ports: one number serves all


# ---- inside a host ---------------------------------------------------------------------

def _worker(args) -> None:
    """One worker's clocks; prints its per-clock seconds as one JSON line."""
    n_rows = max(args.chunks, int(args.mib * 2**20) // (4 * ROW_WIDTH))
    grads = np.full((n_rows, ROW_WIDTH), 1.0 / args.world, np.float32)
    times = []
    if args.mode == "gloo":
        import torch
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://{args.peers.split(',')[0]}",
                                rank=args.rank, world_size=args.world)
        t = torch.from_numpy(grads.copy())
        for _ in range(args.clocks + 1):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        dist.destroy_process_group()
    else:
        import geeps.client
        from geeps.job import consistency, env
        servers = args.peers.split(",")
        if args.mode == "colocated":
            c = geeps.client.colocated(servers, args.rank, args.world, timeout=120,
                                       host=args.ip,
                                       send_buffer=parse_bytes(args.send_buffer) or None)
        else:
            c = geeps.client.Client.from_config(env.check(env.Config(
                rank=args.rank, num_workers=args.world, servers=tuple(servers),
                consistency=consistency.parse("bsp"), timeout=120,
                send_buffer=parse_bytes(args.send_buffer) or None)))
        with c:
            table = c.create_table("t", n_rows, ROW_WIDTH, rule="add")
            out = np.empty_like(grads)
            c.pull(table, out=out)
            for _ in range(args.clocks + 1):
                t0 = time.perf_counter()
                if args.mode in ("pipelined", "colocated"):
                    m0 = time.monotonic()
                    step = c.exchange_async(table, grads, out, chunk_bytes=(
                        grads.nbytes // args.chunks if args.chunks else None))
                    step.wait()
                    # The last clock's schedule: when each chunk's push was acknowledged
                    # (the shard has it) and its reply came, on the clock every host
                    # shares (CLOCK_MONOTONIC is not per namespace).
                    trace = {"t0": m0, "push": [h.done_at for h in step.pushes],
                             "read": [h.done_at for h in step.reads]}
                else:
                    c.push(table, None, grads)
                    c.clock()
                    c.pull(table, out=out)
                times.append(time.perf_counter() - t0)
    if args.mode in ("pipelined", "colocated"):
        print("trace " + json.dumps(trace), flush=True)
    print(json.dumps(times[1:]), flush=True)


def _straggler(args) -> None:
    """Iterations of a compute stand-in (a sleep the length of a GPU's forward/backward)
    and a sync; each iteration one worker, drawn at random from a seed all share, computes
    `--slow` times as long. Prints the worker's wall time for all iterations."""
    n_rows = max(1, int(args.mib * 2**20) // (4 * ROW_WIDTH))
    grads = np.full((n_rows, ROW_WIDTH), 1.0 / args.world, np.float32)
    slow = np.random.default_rng(7).integers(0, args.world, size=args.clocks)
    compute = args.compute_ms / 1e3

    def work(i):
        time.sleep(compute * (args.slow if slow[i] == args.rank else 1.0))
    if args.mode == "ddp":
        import torch
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://{args.peers.split(',')[0]}",
                                rank=args.rank, world_size=args.world)
        t = torch.from_numpy(grads.copy())
        dist.barrier()
        t0 = time.perf_counter()
        for i in range(args.clocks):
            work(i)
            dist.all_reduce(t)
        wall = time.perf_counter() - t0
        dist.destroy_process_group()
    else:
        import geeps.client
        from geeps.job import consistency, env
        c = geeps.client.Client.from_config(env.check(env.Config(
            rank=args.rank, num_workers=args.world, servers=tuple(args.peers.split(",")),
            consistency=consistency.parse(args.mode), timeout=120,
            send_buffer=parse_bytes(args.send_buffer) or None)))
        with c:
            table = c.create_table("t", n_rows, ROW_WIDTH, rule="add")
            # Two buffers: under SSP the next compute reads the one the last finished
            # exchange filled while the exchange in flight fills the other.
            outs = [np.empty_like(grads), np.empty_like(grads)]
            c.pull(table, out=outs[0])
            overlap = args.mode != "bsp"
            t0 = time.perf_counter()
            step = None
            for i in range(args.clocks):
                work(i)
                # BSP: this iteration's exchange must end before the next compute (it
                # reads this clock's update). SSP(s): the next compute may read rows up
                # to s clocks old, so the exchange (pipelined push, clock, refresh) runs
                # under it, and the one before it is what must have ended.
                if step is not None:
                    step.wait()
                step = c.exchange_async(table, grads, outs[i % 2])
                if not overlap:
                    step.wait()
                    step = None
            if step is not None:
                step.wait()
            wall = time.perf_counter() - t0
    print(json.dumps([wall]), flush=True)


# ---- the driver ------------------------------------------------------------------------

def _cpu() -> tuple[float, float]:
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]          # total, idle + iowait


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_mode(mode: str, workers: int, servers: int, rate: str, mib: float, clocks: int,
             chunks: int, extra: tuple[str, ...] = (), send_buffer: str = SEND_BUFFER) -> dict:
    from bench.procs import server_env
    from geeps.lab import netns
    from geeps.lab.topology import Link
    names = [f"worker-{r}" for r in range(workers)]
    if mode not in ("gloo", "colocated", "ddp"):
        names += [f"server-{k}" for k in range(servers)]
    procs, ws = [], []
    with netns.running(names, Link(rate=rate)) as lab:
        if mode in ("gloo", "ddp"):
            peers = [f"{lab.host('worker-0').ip}:{PORT}"]
        elif mode == "colocated":
            peers = [f"{lab.host(f'worker-{r}').ip}:{PORT}" for r in range(workers)]
        else:
            peers = [f"{lab.host(f'server-{k}').ip}:{PORT}" for k in range(servers)]
            for k in range(servers):
                h = lab.host(f"server-{k}")
                env = server_env(k, workers, peers, mode if mode.startswith(("bsp", "ssp"))
                                 else "bsp")
                env["GEEPS_BIND_HOST"] = h.ip
                env["GEEPS_SEND_BUFFER"] = "" if send_buffer == "0" else send_buffer
                procs.append(subprocess.Popen(
                    netns.exec_argv(h, [sys.executable, "-m", "geeps", "server"]), env=env,
                    stderr=subprocess.DEVNULL))
        own0 = _children_cpu()
        try:
            cpu0, wall0 = _cpu(), time.monotonic()
            for r in range(workers):
                h = lab.host(f"worker-{r}")
                argv = [sys.executable, os.path.abspath(__file__), "--role", "worker",
                        "--mode", mode, "--rank", str(r), "--world", str(workers),
                        "--peers", ",".join(peers), "--ip", h.ip, "--mib", str(mib),
                        "--clocks", str(clocks), "--chunks", str(chunks),
                        "--send-buffer", send_buffer, *extra]
                # gloo binds the address its hostname resolves to unless told the interface:
                # the root namespace's, which a lab host cannot reach.
                path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
                env = dict(os.environ, PYTHONPATH=path, GLOO_SOCKET_IFNAME=h.inner)
                ws.append(subprocess.Popen(netns.exec_argv(h, argv), stdout=subprocess.PIPE,
                                           text=True, env=env))
            per_worker, traces = [], []
            for w in ws:
                out, _ = w.communicate(timeout=300)
                if w.returncode != 0:
                    raise RuntimeError(f"{mode}: a worker exited {w.returncode}")
                lines = out.strip().splitlines()
                per_worker.append(json.loads(lines[-1]))
                traces += [json.loads(ln[6:]) for ln in lines if ln.startswith("trace ")]
            cpu1, wall = _cpu(), time.monotonic() - wall0
            moved = netns.traffic(lab)
        finally:
            for p in ws + procs:        # a worker still waiting on a dead peer included
                if p.poll() is None:
                    p.kill()
                p.wait(30)
    busy = 1 - (cpu1[1] - cpu0[1]) / max(1e-9, cpu1[0] - cpu0[0])
    # The mode's own processes (reaped above): the machine's busy share includes
    # whatever else runs on it.
    own = (_children_cpu() - own0) / (wall * (os.cpu_count() or 1))
    per_clock = [max(ts) for ts in zip(*per_worker)]
    return {"mode": mode, "workers": workers, "servers": servers,
            "seconds": statistics.median(per_clock), "cpu_busy": busy, "wall": wall,
            "cpu_own": own,
            "bytes": moved, "trace": schedule(traces)}


def schedule(traces: list[dict]) -> list[dict]:
    """Per chunk of the last pipelined clock, in ms from the first worker's start:
    when the last worker's push of it was acknowledged (the shard had every push, so
    it could update the rows and answer) and when the first and last worker had its
    reply."""
    if not traces:
        return []
    t0 = min(t["t0"] for t in traces)
    ms = lambda v: None if v is None else round((v - t0) * 1e3)
    return [{"chunk": i, "all_pushed": ms(max(t["push"][i] for t in traces)),
             "first_reply": ms(min(t["read"][i] for t in traces)),
             "last_reply": ms(max(t["read"][i] for t in traces))}
            for i in range(len(traces[0]["push"]))]


def theory(mode: str, workers: int, servers: int, mib: float, rate_bps: int,
           latency_s: float = 0.0) -> float:
    """bench/scaling.py's sync time for the mode, from the link's rate alone (plus a
    fixed per-clock latency when one is given)."""
    from bench.scaling import Model, ps_sync_time, ring_sync_time, sync_time
    m = Model(model_bytes=mib * 2**20, bandwidth=rate_bps / 8, compute_s=0.0,
              latency_s=latency_s)
    if mode == "gloo":
        return ring_sync_time(m, workers)
    if mode == "colocated":       # a shard per worker: all-reduce's bytes, 2(W-1)/W M each way
        return sync_time(m, workers)
    return ps_sync_time(m, workers, servers, serial=mode == "push-clock-pull")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=0)
    ap.add_argument("--peers", default="")
    ap.add_argument("--ip", default="")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rate", default="200mbit")
    ap.add_argument("--mib", type=float, default=16.0)
    ap.add_argument("--clocks", type=int, default=5)
    ap.add_argument("--chunks", type=int, default=0,
                    help="pipelined: the table in this many chunks (0: exchange_async's "
                         "default chunk size)")
    ap.add_argument("--straggler", action="store_true",
                    help="instead: iterations of a compute stand-in with one random worker "
                         "--slow times slower each, BSP vs SSP(3) vs DDP")
    ap.add_argument("--scaling", action="store_true",
                    help="instead: bench/scaling.py's predicted sync per clock against the "
                         "measured one at W = 1, 2, 4, 8 (co-located and S=W)")
    ap.add_argument("--compute-ms", type=float, default=100.0)
    ap.add_argument("--slow", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--send-buffer", default=SEND_BUFFER,
                    help="GEEPS_SEND_BUFFER of workers and shards (0: the kernel's "
                         "autotuning)")
    ap.add_argument("--modes", default="",
                    help="only these modes, comma-separated (gloo is always measured: "
                         "the ratios are to it), e.g. pipelined")
    ap.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = ap.parse_args(argv)
    if args.role == "worker":
        (_straggler if args.straggler else _worker)(args)
        return 0
    from geeps.lab import netns
    from geeps.lab.topology import rate_bits
    try:
        netns.check_tools()
    except netns.LabError as e:
        print(f"bench_lab: {e}", file=sys.stderr)
        return 2
    if args.straggler:
        return straggler(args)
    if args.scaling:
        return scaling(args)
    if args.quick:
        args.workers, args.mib, args.clocks, args.chunks = 2, 2.0, 2, 4
    w = args.workers
    modes = [("gloo", w, 0), ("push-clock-pull", w, w), ("pipelined", w, w),
             ("colocated", w, w), ("pipelined", w, max(1, w // 2))]
    if args.modes:
        keep = set(args.modes.split(",")) | {"gloo"}
        modes = [m for m in modes if m[0] in keep]
    rows = []
    for mode, workers, servers in modes:
        r = run_mode(mode, workers, servers, args.rate, args.mib, args.clocks, args.chunks,
                     send_buffer=args.send_buffer)
        r["theory"] = theory(mode, workers, servers, args.mib, rate_bits(args.rate))
        rows.append(r)
        if not args.json:
            print(f"  {mode:<16} S={servers:<2} {r['seconds'] * 1e3:8.0f} ms/clock  "
                  f"(theory {r['theory'] * 1e3:6.0f} ms)  cpu {r['cpu_busy']:.0%} "
                  f"(its own {r['cpu_own']:.0%})", flush=True)
    gloo = rows[0]["seconds"]
    for r in rows:
        r["vs_gloo"] = gloo / r["seconds"]       # > 1: faster than gloo
        r["vs_theory"] = r["theory"] / r["seconds"]
    if args.json:
        print(json.dumps({"rate": args.rate, "mib": args.mib, "rows": rows}))
        return 0
    ideal = 2 * (w - 1) / w
    print(f"\nW={w}, {args.mib:g} MiB per worker, links {args.rate} both ways; the "
          f"theoretical PS advantage over a ring is {ideal:.2f}x")
    print(f"{'mode':<16} {'S':>2} {'ms/clock':>9} {'gloo/this':>9} {'theory/this':>11} "
          f"{'cpu':>5} {'own':>5} {'drops':>6}  busiest link (MB sent/received)")
    for r in rows:
        top = max(r["bytes"].items(), key=lambda kv: kv[1]["sent"] + kv[1]["received"])
        print(f"{r['mode']:<16} {r['servers']:>2} {r['seconds'] * 1e3:9.0f} "
              f"{r['vs_gloo']:9.2f} {r['vs_theory']:11.2f} {r['cpu_busy']:5.0%} "
              f"{r['cpu_own']:5.0%} "
              f"{sum(v.get('drops', 0) for v in r['bytes'].values()):6d}  "
              f"{top[0]} {top[1]['sent'] / 1e6:.1f}/{top[1]['received'] / 1e6:.1f}")
    best = next((r for r in rows if r["mode"] == "pipelined" and r["servers"] == w), None)
    if best is not None and best["vs_gloo"] < 0.9 * ideal:
        where_the_time_went(best, rate_bits(args.rate), args.clocks)
    return 0


def where_the_time_went(r: dict, rate_bps: int, clocks: int) -> None:
    """What a mode short of its target did: each host's bytes each way and how busy its
    link was over the run (the qdisc's counters), the CPU, and the last clock's
    schedule per chunk."""
    print(f"\n{r['mode']} S={r['servers']} is short of 90% of the theoretical advantage; "
          f"CPU {r['cpu_busy']:.0%} busy ({r['cpu_own']:.0%} its own). Per host, MB "
          "sent/received over the run "
          f"({clocks + 1} clocks, the first a warm-up, and the set-up's table and read), "
          "and its link's busier direction per clock as a share of the link's rate:")
    for host, v in sorted(r["bytes"].items()):
        per_clock = max(v["sent"], v["received"]) / (clocks + 1)
        busy = per_clock * 8 / (rate_bps * r["seconds"])
        print(f"  {host:<10} {v['sent'] / 1e6:7.1f}/{v['received'] / 1e6:7.1f}  "
              f"{busy:4.0%}  drops {v.get('drops', 0)}")
    if r["trace"]:
        print("The last clock per chunk (ms from the first worker's start): every "
              "worker's push in / first reply / last reply")
        print("  " + "  ".join(f"{c['all_pushed']}/{c['first_reply']}/{c['last_reply']}"
                               for c in r["trace"]))


def straggler(args) -> int:
    """Per-iteration throughput with a random straggler: geeps BSP, geeps SSP(3), DDP."""
    if args.quick:
        args.workers, args.mib, args.clocks, args.compute_ms = 2, 1.0, 10, 50.0
    else:
        args.clocks = max(args.clocks, 40)
        args.mib = min(args.mib, 4.0)
    extra = ("--straggler", "--compute-ms", str(args.compute_ms), "--slow", str(args.slow))
    rows = {}
    for mode in ("ddp", "bsp", "ssp:3"):
        r = run_mode(mode, args.workers, args.workers, args.rate, args.mib, args.clocks,
                     1, extra, send_buffer=args.send_buffer)
        rows[mode] = r
    # run_mode's "seconds" is the median over workers' single entries: the job's wall time
    its = {m: args.clocks / r["seconds"] for m, r in rows.items()}
    w = args.workers
    ideal = args.slow / (1 + (args.slow - 1) / w)
    out = {"workers": w, "iterations": args.clocks, "compute_ms": args.compute_ms,
           "slow": args.slow, "rate": args.rate, "mib": args.mib,
           "iterations_per_s": its, "ssp_vs_bsp": its["ssp:3"] / its["bsp"],
           "bsp_vs_ddp": its["bsp"] / its["ddp"], "ideal_ssp_vs_bsp": ideal,
           "cpu_busy": {m: r["cpu_busy"] for m, r in rows.items()},
           "cpu_own": {m: r["cpu_own"] for m, r in rows.items()}}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"W={w}, compute {args.compute_ms:g} ms per iteration, one random worker "
          f"{args.slow:g}x slower each iteration, {args.mib:g} MiB synced, links {args.rate}")
    for m in ("ddp", "bsp", "ssp:3"):
        print(f"  {m:<6} {its[m]:6.2f} iterations/s  cpu {rows[m]['cpu_busy']:.0%} "
              f"(its own {rows[m]['cpu_own']:.0%})")
    print(f"SSP(3) / BSP: {out['ssp_vs_bsp']:.2f}x (the straggler alone, without sync "
          f"cost, allows {ideal:.2f}x: every iteration of BSP waits for that iteration's "
          "straggler; SSP also runs each exchange under the next compute, which BSP "
          f"cannot); BSP / DDP: {out['bsp_vs_ddp']:.2f}x")
    return 0


def scaling(args) -> int:
    """The cost model's sync time per clock, from the link rate and one latency fitted at
    W=2, against the lab's measurement at every W."""
    from geeps.lab.topology import rate_bits
    ws = (1, 2) if args.quick else (1, 2, 4, 8)
    mib = 1.0 if args.quick else min(args.mib, 4.0)
    rate = args.rate if args.rate != "200mbit" else "50mbit"   # W=8: 16 processes, 2 cores
    bps = rate_bits(rate)
    measured, drops = {}, {}
    for mode in ("colocated", "push-clock-pull"):
        for w in ws:
            r = run_mode(mode, w, w, rate, mib, 3 if args.quick else args.clocks, 1,
                         send_buffer=args.send_buffer)
            measured[(mode, w)] = r["seconds"]
            drops[(mode, w)] = sum(v.get("drops", 0) for v in r["bytes"].values())
    # One fixed per-clock latency (round trips, the clock barrier), from W=2's residual.
    lat = {m: max(0.0, measured[(m, 2)] - theory(m, 2, 2, mib, bps)) for m in
           ("colocated", "push-clock-pull")}
    rows = []
    for (mode, w), t in sorted(measured.items()):
        # A lone co-located worker's shard is in its own memory: no round trip to fit.
        pred = theory(mode, w, w, mib, bps, lat[mode] if w > 1 or mode != "colocated" else 0)
        rows.append({"mode": mode, "workers": w, "measured": t, "predicted": pred,
                     "error": (pred - t) / t, "drops": drops[(mode, w)]})
    if args.json:
        print(json.dumps({"rate": rate, "mib": mib, "latency": lat, "rows": rows}))
        return 0
    print(f"{mib:g} MiB per worker, links {rate}; per-clock latency fitted at W=2: " +
          ", ".join(f"{m} {v * 1e3:.0f} ms" for m, v in lat.items()))
    print(f"{'mode':<16} {'W':>2} {'measured':>9} {'predicted':>9} {'error':>7} "
          f"{'drops':>6}")
    for r in rows:
        print(f"{r['mode']:<16} {r['workers']:>2} {r['measured'] * 1e3:7.0f}ms "
              f"{r['predicted'] * 1e3:7.0f}ms {r['error']:+7.0%} {r['drops']:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
