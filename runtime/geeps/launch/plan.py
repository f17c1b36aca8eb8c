"""What `geeps run` starts for a job on one host: the pure launch plan (names, argv, env).

No process is started and no port is probed here; the launcher picks the ports and
hands them in, so every decision about a local job is testable without running it.
Who serves the shards (servers, or the workers themselves) is the job's to say
(GeePSJob.shard_role); `--colocate` is an override of the job like `--workers`.

    job = spec.load_file("examples/01-minimal/job.yaml")
    job = apply_overrides(job, workers=4, consistency=consistency.parse("ssp:2"))
    p = plan(job, Ports(servers=(5001, 5002), metrics=()), Options(cwd="/repo"))
    [(x.name, x.argv) for x in p.processes]      # server-0, server-1, worker-0 .. worker-3
"""
from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field
from typing import Sequence

from geeps.job import consistency as _consistency
from geeps.job import spec as _spec
from geeps.job.consistency import Consistency
from geeps.job.env import job_env
from geeps.job.spec import GeePSJob

LOOPBACK = "127.0.0.1"
# The interpreter names a manifest uses for "Python"; locally they mean the launcher's
# own interpreter, so a job runs in the virtualenv that has geeps installed.
PYTHON_NAMES = ("python", "python3")
# How a shard starts when nothing else is asked for: the `geeps server` of this install.
SERVER_MODULE = ("-m", "geeps", "server")
LOCAL_JOB_NAME = "local"        # name of a job given as a command instead of a manifest


@dataclass(frozen=True)
class ProcessSpec:
    """One local process: `env` is added to the launcher's own environment."""
    name: str                   # "server-0", "worker-1": how messages name it
    role: str                   # server | worker
    rank: int                   # index within the role
    argv: tuple[str, ...]
    env: dict[str, str]
    metrics_port: int = 0       # 0 = serves no metrics


@dataclass(frozen=True)
class Ports:
    servers: tuple[int, ...]    # one per shard, rank order
    metrics: tuple[int, ...] = ()   # one per process in plan order (servers, then
                                    # workers), then the coordinator's for a coordinated
                                    # job (the launcher runs it); empty = metrics off


@dataclass(frozen=True)
class Options:
    cwd: str = "."                          # where commands run and relative paths resolve
    checkpoint_dir: str = ""                # empty = <cwd>/.geeps/<job>/checkpoints
    python: str = sys.executable            # replaces python/python3 in the command
    server_command: tuple[str, ...] = ()    # empty = <python> -m geeps server
    host: str = LOOPBACK                    # servers bind it; workers dial it
    curve_dir: str = ""                     # the job's CurveZMQ keys; empty = none


@dataclass(frozen=True)
class LaunchPlan:
    job: GeePSJob
    processes: tuple[ProcessSpec, ...]      # servers first, then workers
    servers: tuple[str, ...]                # GEEPS_SERVERS, host:port in rank order
    checkpoint_dir: str                     # empty = checkpoints off
    warnings: tuple[str, ...] = field(default=())
    coordinator_metrics_port: int = 0       # a coordinated job's coordinator; 0 = none

    def role(self, role: str) -> tuple[ProcessSpec, ...]:
        return tuple(p for p in self.processes if p.role == role)

    def shard_layout(self) -> str:
        """Where the shards run, as the launcher's lines say it."""
        n = len(self.servers)
        return f"{n} shards served by the workers themselves" if self.job.colocate \
            else f"{n} servers"


def apply_overrides(job: GeePSJob, *, servers: int | None = None, workers: int | None = None,
                    consistency: Consistency | None = None,
                    colocate: bool | None = None) -> GeePSJob:
    """The job with replicas, consistency or spec.servers.colocate replaced (None: as
    the job says), revalidated by the same schema.

    Raises SpecError (a ValueError) naming the spec field, e.g. spec.workers.replicas,
    when an override is out of range."""
    if servers is None and workers is None and consistency is None and colocate is None:
        return job
    spec = copy.deepcopy(job.spec)
    _override(spec, servers, workers, consistency, colocate)
    return _spec.validate(_manifest(job.name, job.namespace, spec))


def job_from_command(command: list[str] | tuple[str, ...], *, servers: int | None = None,
                     workers: int | None = None, consistency: Consistency | None = None,
                     colocate: bool | None = None, name: str = LOCAL_JOB_NAME) -> GeePSJob:
    """An in-memory GeePSJob for `geeps run --servers 2 --workers 2 -- python x.py`.

    It goes through the same validation as a manifest, so the two paths cannot drift."""
    spec: dict = {"command": list(command)}
    _override(spec, servers, workers, consistency, colocate)
    return _spec.validate(_manifest(name, "default", spec))


def _override(spec: dict, servers: int | None, workers: int | None,
              consistency: Consistency | None, colocate: bool | None) -> None:
    if servers is not None:
        spec.setdefault("servers", {})["replicas"] = servers
    if colocate is not None:
        spec.setdefault("servers", {})["colocate"] = colocate
    if workers is not None:
        spec.setdefault("workers", {})["replicas"] = workers
    if consistency is not None:
        spec["consistency"] = _consistency.to_spec(consistency)


def _manifest(name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": _spec.API_VERSION, "kind": _spec.KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def command_argv(job: GeePSJob, python: str = sys.executable) -> tuple[str, ...]:
    """What a worker runs: command + args, `python` meaning the launcher's interpreter."""
    argv = list(job.command) + list(job.args)
    if argv[0] in PYTHON_NAMES:
        argv[0] = python
    return tuple(argv)


def default_checkpoint_dir(job: GeePSJob, cwd: str) -> str:
    return os.path.join(os.path.abspath(cwd), ".geeps", job.name, "checkpoints")


def local_warnings(job: GeePSJob) -> list[str]:
    """Parts of the manifest that mean something in a cluster and nothing here."""
    out = []
    for i, e in enumerate(job.env):
        if "valueFrom" in e and "value" not in e:
            out.append(f"spec.env[{i}] ({e['name']}): valueFrom is ignored by geeps run "
                       f"(it needs Kubernetes); {e['name']} is left unset")
    if job.spec.get("workingDir"):
        out.append(f"spec.workingDir ({job.spec['workingDir']}) is ignored by geeps run: "
                   "commands run from the current directory")
    return out


def plan(job: GeePSJob, ports: Ports, options: Options = Options()) -> LaunchPlan:
    """Every process of `job` on this host, servers first, with argv and environment.

    Pure: the same inputs give the same plan. Raises ValueError when `ports` does not
    match the job (one server port per shard, one metrics port per process or none)."""
    n_servers, n_procs = job.shards, job.processes()
    if len(ports.servers) != n_servers:
        raise ValueError(f"{n_servers} server ports needed, got {len(ports.servers)}")
    if ports.metrics and len(ports.metrics) != metrics_ports(job):
        raise ValueError(f"{metrics_ports(job)} metrics ports needed (one per process"
                         + (", one for the coordinator" if job.coordinated else "")
                         + f"), got {len(ports.metrics)}")
    servers = tuple(f"{options.host}:{p}" for p in ports.servers)
    ckpt = _checkpoint_dir(job, options)
    server_argv = _server_argv(options)
    worker_argv = command_argv(job, options.python)
    # Pipes are not terminals: without this, a Python child's prints would reach the
    # launcher in 8 KiB bursts instead of line by line.
    base = {"PYTHONUNBUFFERED": "1"}

    procs = []
    roles = [(role, rank, argv) for role, argv in (("server", server_argv),
                                                   ("worker", worker_argv))
             for rank in range(job.processes(role))]
    for i, (role, rank, argv) in enumerate(roles):
        metrics = ports.metrics[i] if ports.metrics else 0
        env = dict(base)
        env.update(job_env(job, role, rank, servers,
                           bind_host=options.host if job.serves_shards(role) else "*",
                           checkpoint_dir=ckpt, metrics_port=metrics,
                           metrics_addr=options.host,
                           curve_dir=options.curve_dir))
        procs.append(ProcessSpec(f"{role}-{rank}", role, rank, argv, env, metrics))
    return LaunchPlan(job, tuple(procs), servers, ckpt, tuple(local_warnings(job)),
                      coordinator_metrics_port=ports.metrics[n_procs]
                      if ports.metrics and job.coordinated else 0)


def metrics_ports(job: GeePSJob) -> int:
    """Metrics ports a local run of `job` takes: one per process, and the coordinator's
    when the launcher runs one."""
    return job.processes() + (1 if job.coordinated else 0)


def _checkpoint_dir(job: GeePSJob, options: Options) -> str:
    if job.checkpoint_every <= 0:
        return ""
    return os.path.abspath(os.path.join(options.cwd, options.checkpoint_dir)) \
        if options.checkpoint_dir else default_checkpoint_dir(job, options.cwd)


def _server_argv(options: Options) -> tuple[str, ...]:
    return tuple(options.server_command) or (options.python, *SERVER_MODULE)


def joiner(p: LaunchPlan, added: Sequence[str], options: Options = Options()) -> ProcessSpec:
    """A server added to the running job of plan `p` (or replacing a lost one): `added`
    are the addresses of the servers added so far, its own last. GEEPS_JOIN=1, so it
    waits for the coordinator's membership instead of restoring a checkpoint; its rank
    is its place in the plan's servers followed by `added` (its peers and their rows
    come from the membership, not from GEEPS_SERVERS)."""
    if not added:
        raise ValueError("a joining server needs its own address (the last of `added`)")
    servers = tuple(p.servers) + tuple(added)
    rank = len(servers) - 1
    env = {"PYTHONUNBUFFERED": "1"}
    env.update(job_env(p.job, "server", rank, servers, bind_host=options.host,
                       checkpoint_dir=p.checkpoint_dir, metrics_port=0,
                       metrics_addr=options.host, curve_dir=options.curve_dir, join=True))
    return ProcessSpec(f"server-{rank}", "server", rank, _server_argv(options), env)
