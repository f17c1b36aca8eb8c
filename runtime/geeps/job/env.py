"""The environment contract: every GEEPS_* variable, read and validated here only.

`load()` reads a process's variables into a Config; `job_env()` writes them for one
process of a GeePSJob. Both `geeps run` and the operator call `job_env`, so a process
sees the same variables on a laptop and in a pod.

The operator sets these in pods and `geeps run` sets them for local processes; a
script reads them with `geeps.job.env.load()`. A bad value raises ConfigError naming
the variable and what it accepts. `geeps env` prints the table below as Markdown
(docs/environment.md is that output, checked by a test).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from geeps.job import consistency as _consistency
from geeps.job import memsettings as _memsettings
from geeps.job import tableopts as _tableopts
from geeps.job.units import parse_bytes

if TYPE_CHECKING:   # the spec pulls in jsonschema, which a worker never needs
    from geeps.job.spec import GeePSJob


class ConfigError(ValueError):
    """A GEEPS_* variable holds a value outside what it accepts."""

    def __init__(self, var: str, value: str, accepts: str):
        super().__init__(f"{var}={value!r} is invalid: accepted {accepts}")
        self.var = var


def _int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(v: str) -> int:
        n = int(v)
        if n < lo or (hi is not None and n > hi):
            raise ValueError(v)
        return n
    return parse


def _positive_float(v: str) -> float:
    x = float(v)
    if not (x > 0 and math.isfinite(x)):     # inf would make a stuck job wait for good
        raise ValueError(v)
    return x


def _servers(v: str) -> tuple[str, ...]:
    out = []
    for part in (p.strip() for p in v.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(part)
        out.append(part)
    return tuple(out)


def _choice(*options: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v.lower() not in options:
            raise ValueError(v)
        return v.lower()
    return parse


def _bool(v: str) -> bool:
    t = v.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(v)


def _optional_bytes(v: str) -> int | None:
    return None if v.strip() in ("", "unlimited") else parse_bytes(v)


def _optional_clock(v: str) -> int | None:
    return None if not v.strip() else _int_in(0)(v)


@dataclass(frozen=True)
class Var:
    name: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    accepts: str
    doc: str
    # A fault hook for tests: read like every other variable, but written into a job's
    # environment only when set, so pods and local processes show just what users set.
    hook: bool = False


VARS: tuple[Var, ...] = (
    Var("GEEPS_JOB", "job", "local", str, "any name", "job name; a label on every metric"),
    Var("GEEPS_ROLE", "role", "worker", _choice("server", "worker", "coordinator"),
        "server | worker | coordinator",
        "what this process is (coordinator: `geeps coordinator`, the membership of a "
        "coordinated job's servers on Kubernetes)"),
    Var("GEEPS_RANK", "rank", "0", _int_in(0), "an integer >= 0",
        "index of this process within its role"),
    Var("GEEPS_NUM_WORKERS", "num_workers", "1", _int_in(1), "an integer >= 1",
        "workers in the job; servers track a clock for each"),
    Var("GEEPS_SERVERS", "servers", "", _servers, "host:port[,host:port...]",
        "every server shard, in rank order"),
    Var("GEEPS_REPLICATION", "replication", "1", _int_in(1), "an integer >= 1",
        "holders of every row range (spec.servers.replication): a primary and k-1 "
        "replicas on the next servers of the ring (geeps.job.membership)"),
    Var("GEEPS_CONSISTENCY", "consistency", "bsp", _consistency.parse, _consistency.ACCEPTED,
        "how far a reader may run ahead of the slowest worker"),
    Var("GEEPS_DEVICE_MEMORY", "device_memory", "", _optional_bytes,
        "a quantity (bytes, e.g. 2Gi) or empty for unlimited",
        "device-memory budget of the worker's memory manager"),
    # The memory-plan settings (spec.cache; geeps.job.memsettings): read by the
    # operation API's Worker and by geeps.torch when not given in code.
    Var("GEEPS_MEMORY_STALLS", "memory_stalls", "warn", _choice(*_memsettings.STALL_LEVELS),
        " | ".join(_memsettings.STALL_LEVELS),
        "what a worker does with a memory plan that makes it wait for host->device copies "
        "(spec.cache.stalls): refuse it (StallError), warn (logged) or accept it"),
    *(Var(var, attr, "", _optional_bytes, "a quantity (bytes, e.g. 64Mi) or empty for no cap",
          f"cap on the {what} within the device-memory budget (spec.cache.regions.{field}); "
          "empty: it shares what the budget leaves")
      for (field, var, attr), what in zip(_memsettings.REGIONS.values(), (
          "access-buffer pool", "training data pinned in device memory",
          "parameter and accumulator rows pinned in device memory"))),
    Var("GEEPS_TORCH_DEVICE_BUDGET", "torch_device_budget", "", _optional_bytes,
        "a quantity (bytes, e.g. 2Gi) or empty for unlimited",
        "device memory geeps.torch's DataParallel pages parameters, gradients and saved "
        "activations through (spec.cache.torchDeviceBudget); empty: the whole model stays "
        "in device memory"),
    Var("GEEPS_BACKEND", "backend", "auto", _choice("auto", "numpy", "cupy"),
        "auto | numpy | cupy", "array backend; auto takes CuPy when a GPU is present"),
    Var("GEEPS_SERVER_BACKEND", "server_backend", "numpy",
        _choice("numpy", "cupy", "host-cuda", "auto"), "numpy | cupy | host-cuda | auto",
        "where a shard applies its update rules: numpy on host rows; cupy keeps rows and "
        "optimizer state in device memory and runs the CUDA kernels (a co-located shard "
        "in a worker with a GPU); host-cuda runs those kernels compiled for the CPU "
        "(tests); auto takes cupy when a GPU is present"),
    Var("GEEPS_CHECKPOINT_DIR", "checkpoint_dir", "", str, "a directory path or empty",
        "where servers write checkpoints; empty disables them"),
    Var("GEEPS_CHECKPOINT_EVERY", "checkpoint_every", "0", _int_in(0), "an integer >= 0 (clocks)",
        "checkpoint every K clocks; 0 disables"),
    Var("GEEPS_METRICS_PORT", "metrics_port", "0", _int_in(0, 65535), "a port 0-65535",
        "Prometheus metrics HTTP port; 0 disables"),
    Var("GEEPS_METRICS_ADDR", "metrics_addr", "", str, "an address or empty",
        "address the metrics endpoint binds; empty = every interface (a pod)"),
    Var("GEEPS_BIND_HOST", "bind_host", "*", str, "an address or *",
        "address a server binds (its port comes from GEEPS_SERVERS[rank])"),
    Var("GEEPS_TIMEOUT", "timeout", "30", _positive_float, "seconds > 0 (finite)",
        "how long a server may stay silent before a request fails naming it"),
    Var("GEEPS_WAIT_TIMEOUT", "wait_timeout", "600", _positive_float, "seconds > 0 (finite)",
        "how long a read may stay parked waiting for slower workers"),
    Var("GEEPS_MAX_PARKED", "max_parked", "4096", _int_in(1), "an integer >= 1",
        "reads a server parks at once; past it a read gets an error"),
    Var("GEEPS_PEER_PARKED", "peer_parked", "1024", _int_in(1), "an integer >= 1",
        "reads a server parks at once for one client connection (a client has at most 64 "
        "requests in flight per shard); parked reads also end after GEEPS_WAIT_TIMEOUT "
        "and when their client disconnects"),
    Var("GEEPS_PEER_QUEUE", "peer_queue", "256", _int_in(1), "an integer >= 1 (messages)",
        "replies a server queues for one client that does not read them; past it the "
        "client's requests are refused (logged, naming it) until it reads"),
    Var("GEEPS_PEER_REPLY_BYTES", "peer_reply_bytes", "512Mi", parse_bytes,
        "a quantity (bytes, e.g. 256Mi)",
        "bytes of zero-copy replies (of 1 MiB and more) a server holds unsent for one "
        "client; past it, as GEEPS_PEER_QUEUE"),
    Var("GEEPS_MAX_MESSAGE", "max_message", "", _optional_bytes,
        "a quantity (bytes, e.g. 64Mi) or empty for a quarter of the server's memory",
        "largest message frame a server takes; a peer sending more is disconnected "
        "before the server buffers it. Empty: a quarter of the memory the server may use "
        "(its cgroup's memory.max, else the machine's), at most 8Gi, the largest legal "
        "frame (a shard of 2^31 floats at create); set it to your largest shard's bytes"),
    Var("GEEPS_PUSH_BUFFER", "push_buffer", "", _optional_bytes,
        "a quantity (bytes, e.g. 256Mi) or empty for the shard's size x (slack + 1)",
        "bytes of pushes a server keeps for workers ahead of their turn in the rank-order "
        "sum; past it their pushes wait (`busy`) and are sent again when lower ranks catch "
        "up. A shard holds its rows, one sum per clock in flight and this, whatever the "
        "number of workers (empty: the shard's size for each clock SSP lets a worker run "
        "ahead, plus one; at least 8 MiB)"),
    Var("GEEPS_SEND_BUFFER", "send_buffer", "", _optional_bytes,
        "a quantity (bytes, e.g. 64Ki) or empty for the kernel's autotuning",
        "the kernel send buffer (SO_SNDBUF) of each connection between a worker and a "
        "shard, both ends. A worker sends to every shard at once over one link, and a "
        "shard answers every worker over one; on a link with a deep queue (a shaped or "
        "oversubscribed one), autotuned buffers let some of those flows run ahead, others "
        "finish late or overflow the queue, and a clock waits for the last. A small "
        "buffer (32Ki measured best on 50-200 Mbit/s links, docs/lab.md) keeps them even; "
        "too small caps each flow at buffer / round-trip time"),
    Var("GEEPS_NONFINITE", "nonfinite", "reject", _choice("reject", "skip", "apply"),
        "reject | skip | apply", "a pushed gradient holding NaN or Inf (spec.nonFinite): "
        "reject refuses the push with an error naming worker, table, clock and count; skip "
        "drops it; both count the values in geeps_nonfinite_values_total; apply applies it"),
    Var("GEEPS_TABLES", "tables", "", _tableopts._env_value,
        "JSON: a list of {name, filter, functions} or empty",
        "per-table options (spec.tables): the push filter a worker applies to a table or "
        "geeps.torch parameter group, and the server functions its shards run"),
    Var("GEEPS_CURVE_DIR", "curve_dir", "", str, "a directory path or empty",
        "CurveZMQ keys (server.key, client.key); empty means no encryption"),
    Var("GEEPS_INSECURE", "insecure", "0", _bool, "0 | 1",
        "run without CurveZMQ even where keys are expected (logged loudly)"),
    Var("GEEPS_COLOCATE", "colocate", "0", _bool, "0 | 1",
        "1: this worker serves shard GEEPS_RANK of GEEPS_SERVERS itself and reaches it "
        "in memory (GeePS's layout: one shard per worker, no server processes)"),
    Var("GEEPS_JOIN", "join", "0", _bool, "0 | 1",
        "1: this server joins a running job (added, or replacing a lost one): it restores "
        "no checkpoint and serves nothing until the coordinator's membership gives it "
        "rows, which it copies from their holders first"),
    Var("GEEPS_TEST_CRASH_BEFORE_RENAME", "test_crash_before_rename", "", _optional_clock,
        "a clock >= 0 or empty", "fault hook for tests only: a server kills itself (SIGKILL) "
        "after writing the checkpoint of this clock, before renaming it into place",
        hook=True),
)


@dataclass(frozen=True)
class Config:
    job: str = "local"                          # job name
    role: str = "worker"                        # server | worker | coordinator
    rank: int = 0                               # index within the role
    num_workers: int = 1                        # workers in the job
    servers: tuple[str, ...] = ()               # host:port of every shard, rank order
    replication: int = 1                        # holders of every row range
    consistency: _consistency.Consistency = field(
        default_factory=lambda: _consistency.parse("bsp"))
    device_memory: int | None = None            # bytes; None = unlimited
    memory_stalls: str = "warn"                 # refuse | warn | accept
    pool_memory: int | None = None              # region caps, bytes; None = no cap
    pinned_data_memory: int | None = None
    pinned_params_memory: int | None = None
    torch_device_budget: int | None = None      # bytes; None = whole model on device
    backend: str = "auto"                       # auto | numpy | cupy
    server_backend: str = "numpy"               # numpy | cupy | host-cuda | auto
    checkpoint_dir: str = ""                    # empty = no checkpoints
    checkpoint_every: int = 0                   # clocks; 0 = off
    metrics_port: int = 0                       # 0 = no metrics endpoint
    metrics_addr: str = ""                      # empty = every interface
    bind_host: str = "*"                        # server bind address
    timeout: float = 30.0                       # seconds of server silence tolerated
    wait_timeout: float = 600.0                 # seconds a read may be parked
    max_parked: int = 4096                      # parked reads per server
    peer_parked: int = 1024                     # parked reads per client connection
    peer_queue: int = 256                       # unread replies queued per client
    peer_reply_bytes: int = 512 << 20           # unsent zero-copy reply bytes per client
    max_message: int | None = None              # bytes per frame; None = from memory
    push_buffer: int | None = None              # bytes kept ahead of turn; None = shard size
    send_buffer: int | None = None              # SO_SNDBUF of a worker's shard connections
    nonfinite: str = "reject"                   # reject | skip | apply
    tables: str = ""                            # spec.tables as JSON (geeps.job.tableopts)
    curve_dir: str = ""                         # CurveZMQ key directory
    insecure: bool = False                      # explicit opt-out of CurveZMQ
    colocate: bool = False                      # worker hosts shard `rank` in-process
    join: bool = False                          # a server joining a running job
    test_crash_before_rename: int | None = None  # tests' fault hook; None = off

    def to_env(self) -> dict[str, str]:
        """The environment that `load()` turns back into this config."""
        out = {}
        for var in VARS:
            v = getattr(self, var.attr)
            if var.hook and v is None:
                continue
            if isinstance(v, tuple):
                v = ",".join(v)
            elif isinstance(v, bool):
                v = "1" if v else "0"
            elif v is None:
                v = ""
            out[var.name] = str(v)
        return out


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Read every GEEPS_* variable from `environ` (default os.environ) and validate it."""
    env = os.environ if environ is None else environ
    values = {}
    for var in VARS:
        raw = env.get(var.name, var.default)
        try:
            values[var.attr] = var.parse(raw)
        except (ValueError, TypeError):
            raise ConfigError(var.name, raw, var.accepts) from None
    return check(Config(**values))


def check(cfg: Config) -> Config:
    """`cfg`, if its variables agree with each other (ConfigError naming one if not)."""
    if cfg.role == "server" and cfg.servers and cfg.rank >= len(cfg.servers):
        raise ConfigError("GEEPS_RANK", str(cfg.rank),
                          f"a server rank below {len(cfg.servers)} (the number of GEEPS_SERVERS)")
    if cfg.role == "worker" and cfg.rank >= cfg.num_workers:
        raise ConfigError("GEEPS_RANK", str(cfg.rank),
                          f"a worker rank below GEEPS_NUM_WORKERS={cfg.num_workers}")
    if cfg.servers and cfg.replication > len(cfg.servers):
        raise ConfigError("GEEPS_REPLICATION", str(cfg.replication),
                          f"at most the number of GEEPS_SERVERS ({len(cfg.servers)})")
    if cfg.role == "coordinator" and not cfg.servers:
        raise ConfigError("GEEPS_SERVERS", "", "host:port of every server when "
                          "GEEPS_ROLE=coordinator (the servers it coordinates)")
    if cfg.join and cfg.role != "server":
        raise ConfigError("GEEPS_JOIN", "1", "1 only in a server (GEEPS_ROLE=server)")
    if cfg.colocate and cfg.replication != 1:
        raise ConfigError("GEEPS_REPLICATION", str(cfg.replication),
                          "1 when GEEPS_COLOCATE=1 (a co-located shard has no replicas)")
    if cfg.colocate and (cfg.role != "worker" or len(cfg.servers) != cfg.num_workers):
        raise ConfigError("GEEPS_COLOCATE", "1",
                          f"1 only in a worker, with one GEEPS_SERVERS entry per worker "
                          f"(got role {cfg.role}, {len(cfg.servers)} servers for "
                          f"{cfg.num_workers} workers)")
    return cfg


def markdown_table() -> str:
    """The contract as a Markdown table (docs/environment.md)."""
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    def cell(text: str) -> str:     # "0 | 1" must not split the cell
        return text.replace("|", "\\|")
    for v in VARS:
        rows.append(f"| `{v.name}` | `{v.default}` | {cell(v.accepts)} | {cell(v.doc)} |")
    return "\n".join(rows) + "\n"


assert {f.name for f in fields(Config)} == {v.attr for v in VARS}, "VARS and Config drifted"


def job_env(job: GeePSJob, role: str, rank: int, servers: Sequence[str], *,
            bind_host: str = "*", checkpoint_dir: str = "", curve_dir: str = "",
            metrics_port: int | None = None, metrics_addr: str = "",
            join: bool = False) -> dict[str, str]:
    """GEEPS_* variables plus the manifest's plain `env` entries (valueFrom is the
    operator's business: it is not a value a local process can resolve).

    A worker of a co-located job gets GEEPS_COLOCATE=1 (the job says who serves the
    shards: GeePSJob.shard_role)."""
    cfg = Config(
        job=job.name, role=role, rank=rank, num_workers=job.workers.replicas,
        servers=tuple(servers), replication=job.replication, consistency=job.consistency,
        device_memory=job.device_memory, checkpoint_dir=checkpoint_dir,
        memory_stalls=job.memory_stalls, torch_device_budget=job.torch_device_budget,
        **{attr: job.regions.get(name) for name, (_f, _v, attr) in
           _memsettings.REGIONS.items()},
        checkpoint_every=job.checkpoint_every if checkpoint_dir else 0,
        metrics_port=job.metrics_port if metrics_port is None else metrics_port,
        metrics_addr=metrics_addr,
        bind_host=bind_host, curve_dir=curve_dir, insecure=job.insecure,
        colocate=role == "worker" and job.serves_shards(role), nonfinite=job.non_finite,
        tables=_tableopts.to_text(job.spec.get("tables", [])), join=join,
    )
    env = {e["name"]: e["value"] for e in job.env if "value" in e}
    for var in VARS:    # the manifest's value of a tunable is checked where it enters
        if var.name in env and var.attr not in JOB_DECIDES:
            try:
                var.parse(env[var.name])
            except (ValueError, TypeError):
                raise ConfigError(var.name, env[var.name], var.accepts) from None
    # Only what the job decides is written: a tunable the job leaves alone (timeouts,
    # caps, limits) keeps the manifest's value, else the launcher's or the pod's
    # environment, else the process's default. Writing every default here silently
    # replaced what users set (issue 23, F6).
    decided = {var.name for var in VARS if var.attr in JOB_DECIDES}
    env.update((k, v) for k, v in cfg.to_env().items() if k in decided)
    return env


# The Config fields job_env derives from the job itself; every other variable is a
# tunable that reaches a process from the manifest's env or its environment.
JOB_DECIDES = frozenset({
    "job", "role", "rank", "num_workers", "servers", "replication", "consistency",
    "device_memory",
    "checkpoint_dir", "checkpoint_every", "metrics_port", "metrics_addr", "bind_host",
    "curve_dir", "insecure", "colocate", "nonfinite", "tables", "join"}) | frozenset({
    # spec.cache's memory-plan settings
    "memory_stalls", "pool_memory", "pinned_data_memory", "pinned_params_memory",
    "torch_device_budget"})
