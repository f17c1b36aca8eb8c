"""Every Prometheus metric of geeps, and the HTTP endpoint that serves them.

    m = Metrics.from_config(geeps.load_config())    # binds the job, role and rank labels
    m.serve(cfg.metrics_port, cfg.metrics_addr)      # GEEPS_METRICS_PORT; 0 = off
    m.cache_reads("w", hits=120, misses=8)
    client = geeps.Client(..., metrics=m)            # counts push/pull bytes, clocks

The metric objects are module-level and labelled with job, role and rank, so any
number of Metrics objects (several workers as threads of one test process) share one
registry without registering a name twice. Names are fixed: dashboards and alerts
query them.

Worker: geeps_cache_reads_total{table,result}, geeps_transfer_bytes_total{direction},
geeps_clock, geeps_clock_lag, geeps_read_wait_seconds, geeps_iteration_seconds,
geeps_filter_bytes_total{table,stage} and geeps_filter_residual_norm{table} (push
filters, geeps.tables.filters).
Server: geeps_server_update_seconds, geeps_parked_reads, geeps_server_clock,
geeps_server_push_bytes_total, geeps_nonfinite_values_total{table,worker}. Any
process that calls geeps.report(): geeps_progress{field}, geeps_progress_samples_total.
A series
appears at its first use, so each process exports only what its role records. Every
call is thread-safe and never blocks.
"""
from __future__ import annotations

import sys
import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from geeps.job import progress

LABELS = ("job", "role", "rank")
DIRECTIONS = ("h2d", "d2h", "push", "pull")
RESULTS = ("hit", "miss")
_SECONDS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)

CACHE_READS = Counter(
    "geeps_cache_reads", "Rows read by the application; hit = resident in device memory "
    "before the read (pinned, or kept since an earlier read), miss = copied from host "
    "memory for it. geeps.torch: a forward pass reads every row of the model, a hit when "
    "the refresh the last step started had landed (no wait)",
    LABELS + ("table", "result"))
TRANSFER_BYTES = Counter(
    "geeps_transfer_bytes", "Bytes moved: h2d/d2h between host and device memory, "
    "push/pull to and from the servers", LABELS + ("direction",))
CLOCK = Gauge("geeps_clock", "Clocks this worker has completed", LABELS)
CLOCK_LAG = Histogram(
    "geeps_clock_lag", "Worker clock minus the clock of the data a read returned",
    LABELS, buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64))
READ_WAIT = Histogram(
    "geeps_read_wait_seconds", "Time a read blocked: consistency (server parked the "
    "refresh) plus transfers not yet done", LABELS, buckets=_SECONDS)
ITERATION = Histogram("geeps_iteration_seconds", "Time between two clocks of a worker",
                      LABELS, buckets=_SECONDS)
SERVER_UPDATE = Histogram("geeps_server_update_seconds",
                          "Time a server shard spent applying one clock's updates",
                          LABELS, buckets=_SECONDS)
PARKED_READS = Gauge("geeps_parked_reads", "Reads a server shard holds until slower "
                     "workers catch up", LABELS)
SERVER_CLOCK = Gauge("geeps_server_clock", "Minimum clock over the workers, as this "
                     "shard knows it", LABELS)
SERVER_PUSH_BYTES = Counter("geeps_server_push_bytes", "Update bytes a server shard "
                            "received, as sent (row ids, values; a sparse push's offsets "
                            "and values, not its dense rows)", LABELS)
MEMBERSHIP_EPOCH = Gauge("geeps_membership_epoch", "The membership epoch this process "
                         "routes by (server: holds; worker: sends with its requests)",
                         LABELS)
SHARD_BYTES = Gauge("geeps_shard_bytes", "Row bytes a server shard holds, as the primary "
                    "of its segments (holding=primary) and as their replica or catcher-up "
                    "(holding=replica)", (*LABELS, "holding"))
FAILOVERS = Counter("geeps_failovers", "Membership changes that moved rows off a failed "
                    "or demoted primary: on a server, those that promoted segments to it; "
                    "on a worker, those after which it sent pushes again", LABELS)
NONFINITE = Counter("geeps_nonfinite_values", "NaN or Inf values in pushes a server shard "
                    "received (refused, skipped or applied: spec.nonFinite)",
                    (*LABELS, "table", "worker"))

FILTER_BYTES = Counter(
    "geeps_filter_bytes", "Bytes of filtered pushes per table: stage raw = what the "
    "pushes would have sent dense, sent = the offsets and values the filter let through",
    (*LABELS, "table", "stage"))
FILTER_RESIDUAL = Gauge(
    "geeps_filter_residual_norm", "L2 norm of what a push filter holds back for the next "
    "pushes of a table (error feedback)", (*LABELS, "table"))
PROGRESS = Gauge("geeps_progress", "The latest value of each numeric field the script "
                 "reported with geeps.report(): clock, loss, accuracy, epoch, and the totals "
                 "clocks and epochs; the operator reads worker 0's for the job's status",
                 (*LABELS, "field"))
PROGRESS_SAMPLES = Counter("geeps_progress_samples", "Samples the script reported with "
                           "geeps.report(samples=n)", LABELS)
# Fields of a progress line that are gauges (samples is a count, summed into a counter).
PROGRESS_FIELDS = ("clock", "loss", "accuracy", "epoch", "clocks", "epochs")

_servers: dict[int, object] = {}
_serve_lock = threading.Lock()


class MetricsPortError(OSError):
    """The metrics port cannot be bound; the message names GEEPS_METRICS_PORT."""


def serve(port: int, addr: str | None = None):
    """Serve every geeps metric over HTTP on `port`; 0 = off.

    `addr` (Config.metrics_addr, GEEPS_METRICS_ADDR) empty = every interface: a pod
    is scraped from outside; `geeps run` passes 127.0.0.1. Idempotent per port within a process;
    returns the server (None when off). MetricsPortError names the variable when the
    port is taken."""
    if not port:
        return None
    if not 0 < int(port) < 65536:
        raise ValueError(f"metrics port {port} outside 1..65535 (GEEPS_METRICS_PORT)")
    addr = addr or "0.0.0.0"
    with _serve_lock:
        if port not in _servers:
            try:
                _servers[port] = start_http_server(int(port), addr=addr, registry=REGISTRY)
            except OSError as e:
                raise MetricsPortError(
                    e.errno, f"cannot serve metrics on {addr}:{port} "
                    f"(GEEPS_METRICS_PORT={port}): {e.strerror or e}; pick another port "
                    f"or 0 to turn metrics off") from None
        return _servers[port]


class Metrics:
    """The metrics of one process (or one worker thread), labels bound."""

    def __init__(self, job: str = "local", role: str = "worker", rank: int = 0):
        self.labels = {"job": str(job), "role": str(role), "rank": str(rank)}
        lv = (self.labels["job"], self.labels["role"], self.labels["rank"])
        self._lv = lv
        self._reads: dict[tuple[str, str], object] = {}
        self._transfer: dict[str, object] = {}

    # A labelled child is exported from its creation on, so each is made at its first
    # use: a worker shows no geeps_server_* zeros, a server no geeps_clock, and a
    # co-located worker (it serves a shard) shows both because it does both.
    def _child(self, attr: str, metric):
        child = self.__dict__.get(attr)
        if child is None:
            child = self.__dict__[attr] = metric.labels(*self._lv)
        return child

    clock = property(lambda self: self._child("_clock", CLOCK))
    clock_lag = property(lambda self: self._child("_clock_lag", CLOCK_LAG))
    read_wait = property(lambda self: self._child("_read_wait", READ_WAIT))
    iteration = property(lambda self: self._child("_iteration", ITERATION))
    server_update = property(lambda self: self._child("_server_update", SERVER_UPDATE))
    parked_reads = property(lambda self: self._child("_parked_reads", PARKED_READS))
    server_clock = property(lambda self: self._child("_server_clock", SERVER_CLOCK))
    server_push_bytes = property(
        lambda self: self._child("_server_push_bytes", SERVER_PUSH_BYTES))
    membership_epoch = property(lambda self: self._child("_epoch", MEMBERSHIP_EPOCH))
    failovers = property(lambda self: self._child("_failovers", FAILOVERS))

    def shard_bytes(self, primary: int, replica: int) -> None:
        """The row bytes a shard holds as primary and as replica (geeps_shard_bytes)."""
        SHARD_BYTES.labels(*self._lv, "primary").set(primary)
        SHARD_BYTES.labels(*self._lv, "replica").set(replica)

    @classmethod
    def from_config(cls, cfg) -> "Metrics":
        """From a geeps.Config (GEEPS_JOB, GEEPS_ROLE, GEEPS_RANK)."""
        return cls(cfg.job, cfg.role, cfg.rank)

    def serve(self, port: int, addr: str | None = None):
        return serve(port, addr)

    def cache_reads(self, table: str, hits: int = 0, misses: int = 0) -> None:
        for result, n in (("hit", hits), ("miss", misses)):
            if n:
                key = (table, result)
                child = self._reads.get(key)
                if child is None:
                    child = self._reads[key] = CACHE_READS.labels(*self._lv, table, result)
                child.inc(n)

    def transfer(self, direction: str, nbytes: int) -> None:
        """Count bytes moved; the signature of Client(on_transfer=...)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"transfer direction {direction!r} is not one of "
                             f"{', '.join(DIRECTIONS)}")
        if nbytes:
            child = self._transfer.get(direction)
            if child is None:
                child = self._transfer[direction] = TRANSFER_BYTES.labels(*self._lv,
                                                                          direction)
            child.inc(nbytes)

    def nonfinite(self, table: str, worker: int, n: int) -> None:
        """Count NaN/Inf values in a push (geeps_nonfinite_values_total)."""
        if n:
            NONFINITE.labels(*self._lv, table, str(worker)).inc(n)

    def filtered(self, table: str, raw: int, sent: int, residual_norm: float) -> None:
        """One filtered push: its dense and its sent bytes, the residual after it."""
        FILTER_BYTES.labels(*self._lv, table, "raw").inc(raw)
        FILTER_BYTES.labels(*self._lv, table, "sent").inc(sent)
        FILTER_RESIDUAL.labels(*self._lv, table).set(residual_norm)

    def progress(self, fields: dict) -> None:
        """Record one geeps.report() call (geeps_progress, geeps_progress_samples_total)."""
        for key in PROGRESS_FIELDS:
            v = fields.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                PROGRESS.labels(*self._lv, key).set(v)
        n = fields.get("samples")
        if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0:
            PROGRESS_SAMPLES.labels(*self._lv).inc(n)

    def value(self, name: str, **labels) -> float:
        """This object's current value of a sample (for tests and logs); 0 if unset."""
        v = REGISTRY.get_sample_value(name, dict(self.labels, **labels))
        return 0.0 if v is None else v


_reporter: list = []            # [Metrics | None]: this process's, made at the first report


def report(**fields) -> None:
    """geeps.report(): print the progress line (geeps.job.progress) and export its fields
    as geeps_progress on this process's metrics endpoint (GEEPS_METRICS_PORT), started
    here if the script has no Client to start it. The operator reads worker 0's over
    HTTP (no pods/log). A script outside a job (no valid GEEPS_* environment) or a port
    already taken only prints: reporting progress must never stop training."""
    progress.report(**fields)
    if not _reporter:
        from geeps.job.env import ConfigError, load
        try:
            cfg = load()
            m = Metrics.from_config(cfg)
            m.serve(cfg.metrics_port, cfg.metrics_addr)
        except OSError as e:            # the port: say so once, keep training
            print(f"geeps.report: progress not exported: {e}", file=sys.stderr)
            m = None
        except ConfigError:             # not in a job: printing is all there is to do
            m = None
        _reporter.append(m)
    if _reporter[0] is not None:
        _reporter[0].progress(fields)


# ---- the coordinator (`geeps coordinator`, geeps.launch.coordinator_http) -------------------
# The membership as the one place that decides it sees it, under names of their own: the
# shards and clients export the epoch they route by and their failovers themselves.
COORDINATOR_EPOCH = Gauge(
    "geeps_coordinator_epoch", "The epoch of the job's membership the coordinator holds "
    "(each change to which servers hold which rows bumps it)", LABELS)
COORDINATOR_FAILOVERS = Counter(
    "geeps_coordinator_failovers", "Servers the coordinator failed over (lost or silent: "
    "their replicas took their rows, nobody rolled back)", LABELS)
COORDINATOR_CHANGES = Counter(
    "geeps_coordinator_changes", "Membership changes the coordinator made (failovers, "
    "joins, drains; a promote that completes one is not counted again)", LABELS)
COORDINATOR_CATCHING_UP = Gauge(
    "geeps_coordinator_catching_up_ratio", "The ring's arcs servers are still catching up "
    "on, as a share of the ring, summed over the servers catching up (a join of a third "
    "server with replication 2: about 0.67): 0 when no change is in flight", LABELS)


def coordinator_state(metrics: Metrics, *, epoch: int, failovers: int, changes: int,
                      catching_up: float) -> None:
    """Export the coordinator's counts. They are totals kept by the coordinator, so the
    counters move by what changed since the last call (a counter cannot be set)."""
    lv = metrics._lv
    COORDINATOR_EPOCH.labels(*lv).set(epoch)
    COORDINATOR_CATCHING_UP.labels(*lv).set(catching_up)
    seen = metrics.__dict__.setdefault("_coordinator_seen", {"failovers": 0, "changes": 0})
    for key, counter, total in (("failovers", COORDINATOR_FAILOVERS, failovers),
                                ("changes", COORDINATOR_CHANGES, changes)):
        child = counter.labels(*lv)     # exported from the first call on, at 0
        if total > seen[key]:
            child.inc(total - seen[key])
            seen[key] = total
