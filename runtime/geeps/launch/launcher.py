"""`geeps run`: a whole GeePS job as local processes, from a manifest or a command.

    geeps run examples/01-minimal/job.yaml                  # the manifest the operator runs
    geeps run examples/01-minimal/job.yaml --workers 4 --consistency ssp:2
    geeps run --servers 2 --workers 2 -- python train.py --epochs 3

The manifest is validated by the same schema as the operator's (geeps.job.spec); the
processes get the same GEEPS_* environment as pods (geeps.job.env). Servers bind
127.0.0.1 on free ports and start first; workers run the manifest's command from
the current directory (relative paths in it resolve there, as in a pod against its
image's working directory; a missing script is an error before anything starts). Progress lines (geeps.report) become a live status line; any
other output is relayed prefixed with the process name. A failed process is restarted
as the operator would restart its pod (the role's restartPolicy, within
runPolicy.backoffLimit; geeps.job.exits), unless a restart would only repeat the
failure (an import error, a missing script, an exit before progress: one traceback
and a line saying why); past that, the job ends as a unit: one failed process stops
all the others. Ctrl-C stops every process within a second (twice: at once) and
ends with a line saying how far the job got.

Exit codes: 0 every worker succeeded; 1 a process failed; 2 bad manifest or usage;
124 the time limit passed; 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129
SIGHUP), which is forwarded to every process before they are killed.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import sys
import tempfile
from typing import Sequence

from geeps.job import consistency as _consistency
from geeps.job import spec as _spec
from geeps.launch.plan import (LOOPBACK, LaunchPlan, Options, Ports, apply_overrides,
                               job_from_command, metrics_ports, plan)
from geeps.launch import elastic
from geeps.launch.supervise import GRACE, Supervisor
from geeps.wire import curve

EXIT_USAGE = 2
_EPILOG = """examples:
  geeps run examples/01-minimal/job.yaml
  geeps run examples/01-minimal/job.yaml --workers 4 --consistency ssp:2
  geeps run --servers 2 --workers 2 -- python train.py --epochs 3

exit codes: 0 every worker succeeded; 1 a process failed; 2 bad manifest or usage;
124 time limit passed; 128+N stopped by signal N (130 Ctrl-C)"""


class UsageError(Exception):
    """A problem with how `geeps run` was called; the message is shown as is."""


def _replicas(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {text!r})") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {n})")
    return n


def _consistency_arg(text: str) -> _consistency.Consistency:
    try:
        return _consistency.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (got {text!r})")
    return x


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port 0-65535 (got {text!r})")
    return int(text)


def _lab_arg(text: str):
    from geeps.lab import LabSpecError, parse_options
    try:
        return parse_options(text)
    except LabSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geeps run",
        usage="geeps run [options] JOB.yaml\n       geeps run [options] -- COMMAND [ARG...]",
        description="Run a GeePS job on this machine: parameter-server shards and "
                    "workers as local processes.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", metavar="JOB.yaml",
                   help="a GeePSJob manifest (omit it and give a command after --)")
    p.add_argument("--servers", type=_replicas, metavar="N",
                   help="server shards (overrides spec.servers.replicas; default 1)")
    p.add_argument("--workers", type=_replicas, metavar="N",
                   help="workers (overrides spec.workers.replicas; default 1)")
    p.add_argument("--consistency", type=_consistency_arg, metavar="MODEL",
                   help=f"{_consistency.ACCEPTED} (overrides spec.consistency)")
    p.add_argument("--checkpoint-dir", metavar="DIR", default="",
                   help="where servers checkpoint when spec.checkpoint.everyClocks > 0 "
                        "(default .geeps/<job>/checkpoints)")
    p.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="first metrics port: process i takes PORT+i, or any free port "
                        "when that one is in use (the banner says which moved; default "
                        "spec.metrics.port; 0 turns metrics off)")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help="stop the job when it runs longer "
                        "(default spec.runPolicy.activeDeadlineSeconds)")
    p.add_argument("--grace", type=_seconds, default=GRACE, metavar="SECONDS",
                   help=f"how long a stopped process may take before SIGKILL "
                        f"(default {GRACE:g})")
    p.add_argument("--colocate", action="store_true",
                   help="each worker serves one shard itself, reached in memory (GeePS's "
                        "layout); no server processes, --servers is ignored "
                        "(spec.servers.colocate in a manifest)")
    p.add_argument("--lab", type=_lab_arg, metavar="SPEC",
                   help="run each process on its own simulated host: a network namespace "
                        "whose link has the given rate and loss both ways, e.g. "
                        "rate=200mbit,loss=1 (or '' for unshaped); root only. `geeps lab` "
                        "cuts, slows or drops a host's link while the job runs")
    p.add_argument("--quiet", action="store_true", help="no live status line")
    p.add_argument("--resume", action="store_true",
                   help="start from the checkpoints a previous run left in the checkpoint "
                        "directory (default: remove them and start fresh)")
    p.add_argument("--insecure", action="store_true",
                   help="no CurveZMQ keys: traffic on loopback in clear (default: fresh "
                        "keys in a private temporary directory, removed at the end)")
    return p


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options and the command after `--` (empty when a manifest is given).

    Raises UsageError when neither or both of a manifest and a command are given;
    argparse itself exits 2 on a malformed option."""
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    args = _parser().parse_args(argv)
    if args.manifest and command:
        raise UsageError("give a manifest or a command after --, not both")
    if not args.manifest and not command:
        raise UsageError("nothing to run: give a JOB.yaml or `-- COMMAND [ARG...]` "
                         "(see geeps run --help)")
    return args, command


def load_job(args: argparse.Namespace, command: list[str]) -> _spec.GeePSJob:
    """The validated job with the command-line overrides applied; raises SpecError."""
    overrides = dict(servers=args.servers, workers=args.workers,
                     consistency=args.consistency, colocate=args.colocate or None)
    if command:
        return job_from_command(command, **overrides)
    return apply_overrides(_spec.load_file(args.manifest), **overrides)


def pick_ports(n_servers: int, n_processes: int, metrics_base: int,
               host: str = LOOPBACK) -> Ports:
    """Free ports: one per shard on `host`, and one metrics port per process.

    Metrics ports are metrics_base, metrics_base+1, ... where free (so a local
    Prometheus can be pointed at a predictable range), else any free port; 0 turns
    metrics off. Every socket stays open until all are picked, so no two picks
    collide; another program may still take one before the child binds it."""
    held: list[socket.socket] = []

    def take(addr: str, port: int, reuse: bool = False) -> int | None:
        s = socket.socket()
        try:
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(1)
        except OSError:
            s.close()
            return None
        held.append(s)
        return s.getsockname()[1]

    try:
        servers = tuple(take(host, 0) for _ in range(n_servers))
        metrics: list[int] = []
        if metrics_base:
            for i in range(n_processes):
                want = metrics_base + i
                # Probe as the metrics server binds (prometheus-client's HTTP server:
                # SO_REUSEADDR, listening): a TIME_WAIT connection left by the last
                # run's scrapes must not move a port a re-run can take.
                got = take(host, want, reuse=True) if want <= 65535 else None
                metrics.append(got if got is not None else take(host, 0, reuse=True))
        return Ports(servers, tuple(metrics))
    finally:
        for s in held:
            s.close()


def build_plan(job: _spec.GeePSJob, args: argparse.Namespace, *, cwd: str,
               server_command: Sequence[str] = (), curve_dir: str = "") -> LaunchPlan:
    base = job.metrics_port if args.metrics_port is None else args.metrics_port
    ports = pick_ports(job.shards, metrics_ports(job), base)
    return plan(job, ports, _options(args, cwd, server_command, curve_dir))


def _options(args: argparse.Namespace, cwd: str, server_command: Sequence[str],
             curve_dir: str) -> Options:
    return Options(cwd=cwd, checkpoint_dir=args.checkpoint_dir, python=sys.executable,
                   curve_dir=curve_dir, server_command=tuple(server_command))


def _describe(p: LaunchPlan, metrics_base: int = 0) -> list[str]:
    job = p.job
    lines = [f"job {job.name}: {p.shard_layout()} ({','.join(p.servers)}), "
             f"{job.workers.replicas} workers, {job.consistency}; "
             f"worker command: {' '.join(p.role('worker')[0].argv)}"]
    with_metrics = [(x.name, x.metrics_port) for x in p.processes if x.metrics_port]
    if p.coordinator_metrics_port:
        with_metrics.append(("coordinator", p.coordinator_metrics_port))
    if with_metrics:
        lines.append(f"metrics at http://{LOOPBACK}:PORT/metrics: " +
                     ", ".join(f"{name} {port}" for name, port in with_metrics))
        moved = [f"{name} {metrics_base + i} -> {port}"
                 for i, (name, port) in enumerate(with_metrics)
                 if port != metrics_base + i]
        if moved:
            lines.append("metrics ports taken by another program, moved: " +
                         ", ".join(moved))
    if p.checkpoint_dir:
        lines.append(f"checkpoints every {job.checkpoint_every} clocks in {p.checkpoint_dir}")
    return lines


def run(argv: Sequence[str], *, server_command: Sequence[str] = ()) -> int:
    """Run a job to its end; returns the exit code (blocks until every process is gone).

    `server_command` replaces `python -m geeps server` (tests use stand-in servers);
    the `geeps run` command always runs the real one."""
    def fail(text: str) -> int:
        print(f"geeps run: {text}", file=sys.stderr)
        return EXIT_USAGE

    try:
        args, command = parse_args(argv)
    except UsageError as e:
        return fail(str(e))
    try:
        job = load_job(args, command)
    except _spec.SpecError as e:
        where = f"{args.manifest}: " if args.manifest else ""
        for field, message in e.problems:
            # "(file)", "(yaml)", "(document)" messages name the file themselves.
            print(f"geeps run: {message}" if field.startswith("(")
                  else f"geeps run: {where}{field}: {message}", file=sys.stderr)
        return EXIT_USAGE
    cwd = os.getcwd()
    if args.insecure or job.insecure:
        print("geeps run: INSECURE: CurveZMQ is off (--insecure or spec.security.insecure)",
              file=sys.stderr)
        return _run(job, args, cwd, server_command, "")
    # Fresh keys for this run only: readable by this user alone, gone when it ends.
    keys = tempfile.mkdtemp(prefix="geeps-keys-")
    try:
        curve.generate(keys)
        return _run(job, args, cwd, server_command, keys)
    finally:
        shutil.rmtree(keys, ignore_errors=True)


def _run(job: _spec.GeePSJob, args: argparse.Namespace, cwd: str,
         server_command: Sequence[str], curve_dir: str) -> int:
    def fail(text: str) -> int:
        print(f"geeps run: {text}", file=sys.stderr)
        return EXIT_USAGE

    p = build_plan(job, args, cwd=cwd, server_command=server_command, curve_dir=curve_dir)
    script = missing_script(p.role("worker")[0].argv, cwd)
    if script is not None:
        # Checked here: otherwise every worker fails on it, each with a traceback.
        field = "spec.command/args" if args.manifest else "the command"
        text = (f"{script} ({field}) does not exist in {cwd}: geeps run resolves "
                f"commands against the current directory")
        found = _where_it_is(script, args.manifest) if args.manifest else None
        if found:
            text += f"; it is in {found}: run there (cd {os.path.relpath(found, cwd)})"
        return fail(text)
    for w in p.warnings:
        print(f"geeps run: warning: {w}", file=sys.stderr)
    if p.checkpoint_dir:
        try:
            os.makedirs(p.checkpoint_dir, exist_ok=True)
            stale = [] if args.resume else _checkpoint_files(p.checkpoint_dir)
            for f in stale:
                os.remove(f)
        except OSError as e:
            return fail(f"cannot prepare checkpoint directory {p.checkpoint_dir}: {e.strerror}")
        if stale:
            print(f"geeps run: removed {len(stale)} checkpoints of an earlier run from "
                  f"{p.checkpoint_dir} (--resume keeps them)", file=sys.stderr)
    base = job.metrics_port if args.metrics_port is None else args.metrics_port
    for line in _describe(p, base):
        print(f"geeps run: {line}", file=sys.stderr)
    timeout, source = args.timeout, "--timeout"
    if timeout is None and job.run_policy.get("activeDeadlineSeconds"):
        timeout = float(job.run_policy["activeDeadlineSeconds"])
        source = "spec.runPolicy.activeDeadlineSeconds"
    if getattr(args, "lab", None) is None:
        el = None
        if elastic.wanted(p):
            el = elastic.Elastic(p, _options(args, cwd, server_command, curve_dir),
                                 say=lambda t: print(f"geeps run: {t}", file=sys.stderr),
                                 kill=os.killpg, cwd=cwd)
        return Supervisor(p, cwd=cwd, timeout=timeout, timeout_source=source,
                          grace=args.grace, quiet=args.quiet, elastic=el).run()
    from geeps.lab import netns
    from geeps.launch import onlab
    try:
        with netns.running(onlab.host_names(p), args.lab.link) as lab:
            p = onlab.place(p, lab)
            link = lab.link.rate or "unshaped"
            print(f"geeps run: lab {lab.id}: {len(lab.hosts)} hosts ({link}, "
                  f"{lab.link.loss:g}% loss): " + ", ".join(
                      f"{h.name} {h.ip}" for h in lab.hosts), file=sys.stderr)
            print(f"geeps run: shards at {','.join(p.servers)}; faults: geeps lab cut "
                  f"HOST [--for S], loss HOST PCT, rate HOST RATE", file=sys.stderr)
            el = None
            if elastic.wanted(p):
                # the coordinator runs here, in the launcher, and reaches the hosts
                # through the bridge's address; a joiner gets a new host of its own
                el = elastic.Elastic(p, _options(args, cwd, server_command, curve_dir),
                                     say=lambda t: print(f"geeps run: {t}", file=sys.stderr),
                                     kill=os.killpg, cwd=cwd,
                                     hosts=onlab.JoinHosts(lab, p))
            return Supervisor(p, cwd=cwd, timeout=timeout, timeout_source=source,
                              grace=args.grace, quiet=args.quiet, elastic=el).run()
    except netns.LabError as e:
        return fail(f"--lab: {e}")


def missing_script(argv: Sequence[str], cwd: str) -> str | None:
    """The relative script path of a worker's argv that does not exist under `cwd`
    (a Python script, or a command given as a path), or None."""
    path = None
    if os.path.basename(argv[0]).startswith("python"):
        for a in argv[1:]:
            if a in ("-m", "-c", "-"):
                return None                 # a module or inline code: nothing to check
            if not a.startswith("-"):
                path = a
                break
    elif "/" in argv[0]:
        path = argv[0]
    if path is None or os.path.isabs(path) or os.path.exists(os.path.join(cwd, path)):
        return None
    return path


def _where_it_is(path: str, manifest: str) -> str | None:
    """The nearest directory at or above the manifest's that holds `path`."""
    d = os.path.dirname(os.path.abspath(manifest))
    while True:
        if os.path.exists(os.path.join(d, path)):
            return d
        up = os.path.dirname(d)
        if up == d:
            return None
        d = up


def _checkpoint_files(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "shard-*-clock-*.ckpt")))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `geeps run` (see the module docstring)."""
    return run(sys.argv[1:] if argv is None else argv)
