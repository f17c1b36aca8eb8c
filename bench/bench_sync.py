"""Synchronization cost: push+pull per clock of one table, geeps vs gloo vs raw ZeroMQ.

    python bench/bench_sync.py                 # 64 MiB, W=2 workers, S=2 servers
    python bench/bench_sync.py --mib 16 --clocks 10 --servers 1

Three measurements in the same run, same machine, same bytes:
- geeps: W worker processes each push a full-table gradient, clock, and pull the
  table back (BSP), against S server processes.
- gloo: torch.distributed all_reduce of a tensor of the same size in W processes.
- zmq echo: the PS's byte pattern on bare sockets: each of W processes sends its
  table split across S echo processes and receives the same bytes back.
Two layouts of the PS, both printed, each saying which it is:
- separate servers: all traffic crosses TCP loopback, so at W=2 the PS moves 2x the
  table per worker per clock (push + pull) where all-reduce's ring moves 2x(W-1)/W;
- co-located (S = W, GEEPS_COLOCATE): worker r serves shard r in its own process and
  reaches it in memory, so only (S-1)/S of the table crosses TCP: at W=2 the bytes of
  all-reduce.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import numpy as np

from geeps.wire.ports import free_port, free_ports
from procs import start_servers

ROW = 128



def _geeps_worker(rank, servers, workers, n_rows, clocks, out, colocate=False):
    import geeps
    import geeps.client
    if colocate:        # this worker serves shard `rank` itself (geeps.client.hosted)
        c = geeps.client.colocated(servers, rank, workers, timeout=120)
    else:
        c = geeps.Client(servers, rank, workers, "bsp", timeout=120)
    t = c.create_table("w", n_rows, ROW, rule="sgd", lr=1e-6) if rank == 0 else c.open_table("w")
    g = np.ones((n_rows, ROW), np.float32)
    buf = np.empty((n_rows, ROW), np.float32)
    times = []
    for i in range(clocks + 2):                      # 2 warm-up clocks
        t0 = time.perf_counter()
        c.push(t, None, g)
        c.clock()
        c.pull(t, out=buf)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    c.close()
    out.put(times)


def bench_geeps(n_rows, workers, servers_n, clocks, colocate=False):
    """Median over clocks of the slowest worker's push+clock+pull time. `colocate`:
    no server processes, worker r serves shard r (servers_n must equal workers)."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(servers_n)]
    procs = [] if colocate else start_servers(workers, addrs, "bsp")
    try:
        q = mp.Queue()
        ws = [mp.Process(target=_geeps_worker,
                         args=(r, addrs, workers, n_rows, clocks, q, colocate))
              for r in range(workers)]
        for w in ws:
            w.start()
        times = [q.get(timeout=600) for _ in ws]
        for w in ws:
            w.join()
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    return statistics.median(max(ts) for ts in zip(*times))


def _gloo_worker(rank, world, port, n, iters, out):
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    x = torch.ones(n)
    times = []
    for i in range(iters + 2):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    dist.destroy_process_group()
    out.put(times)


def bench_gloo(n_floats, workers, iters):
    port = free_port()
    q = mp.Queue()
    ps = [mp.Process(target=_gloo_worker, args=(r, workers, port, n_floats, iters, q))
          for r in range(workers)]
    for p in ps:
        p.start()
    times = [q.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    return statistics.median(max(ts) for ts in zip(*times))


def _echo_server(port, ready):
    import zmq
    from geeps.wire.memtune import keep_freed_memory
    keep_freed_memory()         # the same allocator settings as a geeps server
    s = zmq.Context().socket(zmq.ROUTER)
    s.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    while True:
        msg = s.recv_multipart(copy=False)
        if len(msg) == 2 and msg[1].bytes[:4] == b"stop":
            break
        s.send_multipart(msg, copy=False)


def _echo_client(ports, nbytes_each, iters, out, chunked=True):
    import zmq
    from geeps.wire.protocol import CHUNK_BYTES
    from geeps.wire.memtune import keep_freed_memory
    keep_freed_memory()
    ctx = zmq.Context()
    socks = []
    for p in ports:
        d = ctx.socket(zmq.DEALER)
        d.connect(f"tcp://127.0.0.1:{p}")
        socks.append(d)
    payload = np.ones(nbytes_each // 4, np.float32)
    # In messages of the size geeps' client cuts pushes and pulls into: the same
    # allocator behaviour on both sides (see geeps.wire.protocol.CHUNK_BYTES).
    step = CHUNK_BYTES // 4 if chunked else len(payload)
    chunks = [payload[i:i + step] for i in range(0, len(payload), step)]
    times = []
    for i in range(iters + 2):
        t0 = time.perf_counter()
        for d in socks:
            for c in chunks:
                d.send(c, copy=False)
        for d in socks:
            for _ in chunks:
                d.recv(copy=False)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    out.put(times)


def bench_zmq(nbytes, workers, servers_n, iters, chunked=True):
    """Median per-clock time of the raw echo; `chunked`: in geeps' 4 MiB messages, else
    one message per echo process."""
    ports = free_ports(servers_n)
    evs = [mp.Event() for _ in ports]
    srv = [mp.Process(target=_echo_server, args=(p, e), daemon=True) for p, e in zip(ports, evs)]
    for s in srv:
        s.start()
    for e in evs:
        e.wait(30)
    q = mp.Queue()
    cl = [mp.Process(target=_echo_client,
                     args=(ports, nbytes // servers_n, iters, q, chunked))
          for _ in range(workers)]
    for c in cl:
        c.start()
    times = [q.get(timeout=600) for _ in cl]
    for c in cl:
        c.join()
    for s in srv:
        s.terminate()
    return statistics.median(max(ts) for ts in zip(*times))


def measure(mib: int, workers: int, servers: int, clocks: int, colocate: bool,
            gloo_s: float) -> dict:
    """One row: geeps and its raw ZeroMQ baseline for one layout; gloo measured by the
    caller (it does not depend on the layout).

    Separate servers: every byte of the PS crosses TCP, and the echo sends the same
    bytes (the whole table per worker, split over S echo processes). Co-located (S = W,
    worker r serves shard r): a worker's own shard is reached in memory, so only the
    (S-1)/S of the table held by the other shards crosses TCP, and the echo sends those
    bytes to S-1 echo processes."""
    n_rows = mib * 2**20 // (ROW * 4)
    nbytes = n_rows * ROW * 4
    g = bench_geeps(n_rows, workers, servers, clocks, colocate=colocate)
    remote = servers - 1 if colocate else servers
    wire = nbytes * remote // servers                  # bytes per worker per direction
    z = bench_zmq(wire, workers, remote, clocks) if remote else float("nan")
    row = {"mib": mib, "workers": workers, "servers": servers, "colocated": colocate,
           "clocks": clocks, "bytes": nbytes, "wire_bytes": wire, "geeps_s": g,
           "gloo_s": gloo_s, "zmq_s": z}
    return dict(row, **ratios(row))


def ratios(row: dict) -> dict:
    """The figures of a row, from its times (pure: the suite recomputes them from
    medians). The PS moves 2x the table per worker per clock (push + pull) whatever the
    layout; `ps_gbps` counts all of it, `wire_gbps` what crossed TCP. The bandwidth
    ratio is the PS's bandwidth over the raw ZeroMQ echo's (both moving the TCP bytes
    of their layout): co-located, the in-memory half counts for the PS, not for the
    transport it never touched."""
    w = row["workers"]
    ps = 2 * row["bytes"] * w
    wire = 2 * row["wire_bytes"] * w
    g, z = row["geeps_s"], row["zmq_s"]
    return {"ps_gbps": ps / g / 1e9, "wire_gbps": wire / g / 1e9, "zmq_gbps": wire / z / 1e9,
            "bw_ratio": (ps / g) / (wire / z), "gloo_ratio": g / row["gloo_s"]}


def run(mib: int = 64, workers: int = 2, servers: int = 2, clocks: int = 10) -> list[dict]:
    """The separate-server row and, when S == W, the co-located row."""
    n_rows = mib * 2**20 // (ROW * 4)
    a = bench_gloo(n_rows * ROW, workers, clocks)
    rows = [measure(mib, workers, servers, clocks, False, a)]
    if servers == workers:
        rows.append(measure(mib, workers, servers, clocks, True, a))
    return rows


def sweep(sizes=(1, 4, 16, 64, 256), workers: int = 2, servers=(1, 2),
          clocks: int = 10, colocate: bool = True) -> list[dict]:
    """measure() over model sizes (MiB) and server counts, plus the co-located layout
    (S = W) when `colocate`. gloo does not depend on the layout, so it runs once per
    size and the rows share it. Big tables get fewer clocks (at least 5): their time
    per clock is long."""
    out = []
    for mib in sizes:
        n_rows = mib * 2**20 // (ROW * 4)
        k = max(5, min(clocks, clocks * 16 // max(mib, 1)))
        a = bench_gloo(n_rows * ROW, workers, k)
        for s in servers:
            out.append(measure(mib, workers, s, k, False, a))
        if colocate and workers > 1:
            out.append(measure(mib, workers, workers, k, True, a))
    return out


def report(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r["colocated"]:
            case = (f"S={r['servers']} shards served by the workers themselves: each "
                    f"worker's own shard in memory, {r['servers'] - 1} of {r['servers']} "
                    "over TCP loopback (the bytes all-reduce moves)")
        else:
            case = (f"S={r['servers']} server processes, all traffic over TCP loopback "
                    "(no shard traffic stays local: twice all-reduce's bytes at W=2)")
        lines += [
            f"sync of a {r['mib']} MiB table, W={r['workers']} workers, {case}:",
            f"  geeps push+clock+pull  {r['geeps_s'] * 1e3:8.1f} ms/clock "
            f"({r['ps_gbps']:.2f} GB/s pushed and pulled, {r['wire_gbps']:.2f} GB/s of it "
            "across TCP)",
            f"  raw ZeroMQ echo of the TCP bytes {r['zmq_s'] * 1e3:8.1f} ms "
            f"({r['zmq_gbps']:.2f} GB/s)",
            f"  gloo all_reduce         {r['gloo_s'] * 1e3:8.1f} ms",
            f"  geeps bandwidth / raw ZeroMQ bandwidth = {r['bw_ratio']:.2f}  (target >= 0.70)",
            f"  geeps time / gloo time                 = {r['gloo_ratio']:.2f}  (target <= 1.50)"]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--clocks", type=int, default=10)
    a = ap.parse_args()
    mp.set_start_method("spawn")
    print(report(run(a.mib, a.workers, a.servers, a.clocks)))
    # Why geeps cuts messages at protocol.CHUNK_BYTES: the same echo, same bytes, in one
    # message per echo process (each received into freshly mapped, page-faulted memory).
    nbytes = a.mib * 2**20
    whole = bench_zmq(nbytes, a.workers, a.servers, a.clocks, chunked=False)
    cut = bench_zmq(nbytes, a.workers, a.servers, a.clocks)
    print(f"raw ZeroMQ echo of {a.mib} MiB per worker: one message per echo process "
          f"{whole * 1e3:.1f} ms, 4 MiB messages {cut * 1e3:.1f} ms: "
          f"{whole / cut:.2f}x the time in one message")
