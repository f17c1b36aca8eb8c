"""A cost model of data-parallel training on N machines, fitted to this machine's runs.

    from bench.scaling import Model, fit_sync, speedup
    m = Model(model_bytes=45e6, bandwidth=5e9, compute_s=0.6)
    [round(speedup(m, n), 1) for n in (1, 16, 64)]

Pure functions; bench/suite.py fits them to the measurements of the same run and
tabulates 1 to 64 machines.

Assumptions (each is a term below; what it leaves out is listed after):
- One GPU per machine; a server shard on every machine (GeePS's layout), rows split
  evenly. Per clock each machine sends its gradient for the N-1 remote shards and, as
  a server, sends the N-1 other workers their fresh rows: 2*M*(N-1)/N bytes each way
  on a full-duplex NIC of `bandwidth` bytes/s. The local shard's traffic never
  touches the wire.
- Software cannot move bytes faster than `software_bw` (serialisation, the server's
  update rule, copies): the wire runs at min(bandwidth, software_bw). Fitted from the
  loopback sweep, where no wire limits the rate, so it is what the code itself costs.
- A fixed `latency_s` per clock (message round trips, the vector-clock barrier),
  fitted as the intercept of the same sweep.
- Staging through host memory: GeePS keeps the parameter cache in GPU memory and
  the servers in host memory, so 2*M bytes cross PCIe per clock at `pcie_bw`.
- Communication runs on a background thread while the next iteration computes: a
  fraction `overlap` of the compute time hides it (1 = all of it, GeePS's goal).
- BSP waits for the slowest of N workers: with per-iteration compute times of
  coefficient of variation `jitter_cv`, the expected maximum of N is about
  compute * (1 + cv * sqrt(2 ln N)) (the Gaussian extreme-value bound).
- The baseline is the single-machine code without a parameter server: T(1) =
  compute_s, so speedup(1) = 1 and every term above is overhead the PS adds.
Left out: data loading, the servers' CPU time competing with the workers' (here it
lives in `software_bw`), congestion beyond one NIC per machine (no oversubscribed
switch), and the effect of the larger global batch on convergence (throughput, not
time to accuracy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Model:
    model_bytes: float               # M: parameter bytes synchronized per clock
    bandwidth: float                 # NIC bytes/s per direction (40 Gb/s = 5e9)
    compute_s: float                 # one iteration's forward+backward on one machine
    software_bw: float = math.inf    # bytes/s the PS code moves when no wire limits it
    latency_s: float = 0.0           # fixed cost per clock
    pcie_bw: float = math.inf        # host<->GPU bytes/s (PCIe 3 x16: about 12e9)
    overlap: float = 1.0             # share of compute_s that hides communication, 0..1
    jitter_cv: float = 0.0           # coefficient of variation of compute_s
    batch: int = 1                   # samples per machine per iteration


def sync_time(m: Model, n: int) -> float:
    """Seconds of communication per clock on n machines (nothing hidden yet)."""
    if n <= 1:
        wire = 0.0
    else:
        wire = 2 * m.model_bytes * (n - 1) / n / min(m.bandwidth, m.software_bw)
    return m.latency_s + wire + 2 * m.model_bytes / m.pcie_bw


def ps_sync_time(m: Model, n: int, servers: int, serial: bool = False) -> float:
    """Seconds per clock with `servers` server-only machines beside n workers (BytePS's
    layout): each worker sends its gradient once and receives the rows once, M bytes
    each way on its NIC; each server's NIC carries n/servers times its share, so with
    servers >= n the workers' NICs are what limits. `serial`: the pull starts after the
    push ends (push, clock, pull), so the two directions take turns instead of
    overlapping: twice the time."""
    wire = m.model_bytes * max(1.0, n / servers) / min(m.bandwidth, m.software_bw)
    return m.latency_s + wire * (2 if serial else 1) + 2 * m.model_bytes / m.pcie_bw


def ring_sync_time(m: Model, n: int) -> float:
    """Seconds per clock of a ring all-reduce: 2(n-1)/n M each way."""
    wire = 2 * m.model_bytes * (n - 1) / n / m.bandwidth if n > 1 else 0.0
    return m.latency_s + wire


def iteration_time(m: Model, n: int) -> float:
    """Seconds per clock on n machines: compute, the straggler wait, and the part of
    the communication the overlap does not hide."""
    if n <= 1:
        return m.compute_s
    straggle = m.compute_s * m.jitter_cv * math.sqrt(2 * math.log(n))
    exposed = max(0.0, sync_time(m, n) - m.overlap * m.compute_s)
    return m.compute_s + straggle + exposed


def speedup(m: Model, n: int) -> float:
    """Throughput on n machines over the single machine's (without a PS)."""
    return n * m.compute_s / iteration_time(m, n)


def throughput(m: Model, n: int) -> float:
    """Samples per second on n machines."""
    return n * m.batch / iteration_time(m, n)


def bottleneck(m: Model, n: int) -> str:
    """Which term limits n machines: compute, stragglers or communication."""
    if n <= 1:
        return "compute"
    straggle = m.compute_s * m.jitter_cv * math.sqrt(2 * math.log(n))
    exposed = max(0.0, sync_time(m, n) - m.overlap * m.compute_s)
    if exposed > straggle and exposed > 0.02 * m.compute_s:
        wire = m.bandwidth <= m.software_bw
        return "network" if wire else "PS software"
    return "stragglers" if straggle > 0.02 * m.compute_s else "compute"


def fit_sync(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Fit seconds = latency + bytes / bw over (bytes, seconds) points; returns
    (latency_s, bw). Least squares on the relative error (weights 1/seconds^2): sizes
    span 1 to 256 MiB, and an absolute fit would let the largest decide the intercept
    alone. The latency is clamped at 0 (noise can push the intercept below it) and the
    fit redone through the origin."""
    if len(points) < 2:
        raise ValueError("fit_sync needs at least two (bytes, seconds) points")
    xs = [float(b) for b, _ in points]
    ys = [float(s) for _, s in points]
    if len({x for x in xs}) < 2:
        raise ValueError("fit_sync needs points of at least two sizes")
    if min(ys) <= 0:
        raise ValueError("fit_sync needs positive times")
    ws = [1.0 / (y * y) for y in ys]
    sw = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs)) / sw
    my = sum(w * y for w, y in zip(ws, ys)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
    slope = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys)) / sxx
    lat = my - slope * mx
    if lat < 0:
        lat = 0.0
        slope = (sum(w * x * y for w, x, y in zip(ws, xs, ys)) /
                 sum(w * x * x for w, x in zip(ws, xs)))
    if slope <= 0:
        raise ValueError("fit_sync: time does not grow with bytes; no bandwidth to fit")
    return lat, 1.0 / slope


def fit_overlap(compute_s: float, sync_s: float, iter_s: float) -> float:
    """The overlap that makes iteration_time match a measurement: iter = compute +
    max(0, sync - overlap*compute). When nothing is exposed any larger overlap fits
    too; the least one is returned (a lower bound). Clamped to [0, 1]."""
    if compute_s <= 0:
        raise ValueError("compute_s must be > 0")
    exposed = max(0.0, iter_s - compute_s)
    phi = (sync_s - exposed) / compute_s
    return min(1.0, max(0.0, phi))


def cv(samples: list[float]) -> float:
    """Coefficient of variation (population), 0 for fewer than two samples."""
    if len(samples) < 2:
        return 0.0
    mean = sum(samples) / len(samples)
    var = sum((s - mean) ** 2 for s in samples) / len(samples)
    return math.sqrt(var) / mean if mean > 0 else 0.0


def table(m: Model, machines=(1, 2, 4, 8, 16, 32, 64)) -> list[dict]:
    """One row per machine count: iteration time, throughput, speedup, bottleneck."""
    return [{"n": n, "iter_s": iteration_time(m, n), "throughput": throughput(m, n),
             "speedup": speedup(m, n), "bottleneck": bottleneck(m, n)} for n in machines]


def with_(m: Model, **changes) -> Model:
    """A copy of m with some fields changed (for what-if rows)."""
    return replace(m, **changes)


def robust_cv(samples: list[float]) -> float:
    """Spread of per-iteration times as a Gaussian-equivalent coefficient of
    variation, from the 10th and 90th percentiles over the median: a shared machine's
    rare long pauses (another process scheduled) do not dominate it as they do the
    standard deviation."""
    if len(samples) < 10:
        return cv(samples)
    s = sorted(samples)
    q = lambda p: s[min(len(s) - 1, int(round(p * (len(s) - 1))))]     # noqa: E731
    med = q(0.5)
    return (q(0.9) - q(0.1)) / (2 * 1.2816 * med) if med > 0 else 0.0


def machines_for(m: Model, target_speedup: float, limit: int = 1024) -> int | None:
    """The fewest machines that reach target_speedup, None if none up to limit does."""
    for n in range(1, limit + 1):
        if speedup(m, n) >= target_speedup:
            return n
    return None


def jitter_for(m: Model, n: int, target_speedup: float) -> float:
    """The compute jitter (cv) at which n machines give exactly target_speedup, the
    rest of m unchanged; 0 when m without jitter is already at or below it."""
    base = replace(m, jitter_cv=0.0)
    if speedup(base, n) <= target_speedup:
        return 0.0
    want = n * m.compute_s / target_speedup                  # iteration time needed
    return (want - iteration_time(base, n)) / (m.compute_s * math.sqrt(2 * math.log(n)))
