"""`geeps operator`: run the GeePSJob operator.

    geeps operator --all-namespaces                       # in a pod: its service account
    geeps operator --namespace team-a --namespace team-b  # only these namespaces
    geeps operator --kubeconfig ~/.kube/config -A         # from a laptop
    geeps operator --server http://127.0.0.1:8001 -A      # behind `kubectl proxy`

Serves /healthz on --health-port (kopf's liveness endpoint) and the operator's own
Prometheus metrics on --metrics-port. SIGTERM or SIGINT stops it; exit code 0. With
--leader-elect, replicas wait as standbys until they hold the Lease (geeps_operator.leader);
a leader that cannot renew it exits 1.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

import kopf

from geeps.job.spec import DEFAULT_IMAGE

from . import handlers, metrics
from .config import OperatorConfig
from .kube import Kube
from .leader import LeaseElector
from .reconcile import Reconciler


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geeps operator", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default when no --namespace)")
    p.add_argument("--health-port", type=int, default=8080,
                   help="port of GET /healthz; 0 disables (default 8080)")
    p.add_argument("--metrics-port", type=int, default=9090,
                   help="port of GET /metrics; 0 disables (default 9090)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service "
                                        "account, else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--server", help="API server URL, e.g. http://127.0.0.1:8001 "
                                    "(kubectl proxy); overrides --kubeconfig")
    p.add_argument("--token-file", help="bearer token for --server")
    p.add_argument("--insecure-skip-tls-verify", action="store_true",
                   help="with --server over https: do not verify its certificate")
    p.add_argument("--runtime-image", default=DEFAULT_IMAGE, metavar="IMAGE",
                   help="image of the pods of jobs that name no spec.image (the chart "
                        "passes its runtimeImage; default: %(default)s)")
    p.add_argument("--resync-seconds", type=float, default=10.0,
                   help="reconcile every job at least this often (default 10)")
    p.add_argument("--allow-host-path", action="store_true",
                   help="let jobs mount hostPath volumes (refused by default, naming the "
                        "field: Pod Security admission would refuse the pods)")
    p.add_argument("--blocked-deadline-seconds", type=float, default=600.0,
                   help="fail a job whose pods cannot start (unschedulable, image pull, "
                        "config errors) or whose writes the API server refuses for this "
                        "long (default 600)")
    p.add_argument("--terminating-grace-seconds", type=float, default=300.0,
                   help="force-delete a job's pod still terminating this long after its "
                        "deletion (a lost node), so it can be replaced (default 300)")
    p.add_argument("--leader-elect", action="store_true",
                   help="reconcile only while holding a coordination.k8s.io Lease, so "
                        "replicas can run side by side (one acts, the others wait)")
    p.add_argument("--lease-namespace", help="namespace of the Lease (default: the pod's "
                                             "own, else default)")
    p.add_argument("--lease-name", default="geeps-operator", help="name of the Lease")
    p.add_argument("--lease-seconds", type=float, default=15.0,
                   help="a standby takes over after the leader's Lease went this long "
                        "without renewal (default 15)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def connection(args: argparse.Namespace) -> kopf.ConnectionInfo:
    """Where the API is, from flags, else the pod's service account, else kubeconfig."""
    base = kopf.OperatorSettings()
    if args.server:
        token = None
        if args.token_file:
            try:
                with open(args.token_file) as f:
                    token = f.read().strip()
            except OSError as e:
                raise UsageError(f"--token-file {args.token_file}: {e.strerror}") from None
        return kopf.ConnectionInfo(server=args.server, token=token,
                                   insecure=args.insecure_skip_tls_verify or None)
    if args.kubeconfig:
        if not os.path.exists(args.kubeconfig):
            raise UsageError(f"--kubeconfig {args.kubeconfig}: no such file")
        os.environ["KUBECONFIG"] = args.kubeconfig
    try:
        info = (None if args.kubeconfig else kopf.login_with_service_account(settings=base)) \
            or kopf.login_with_kubeconfig(settings=base)
    except (kopf.LoginError, OSError, KeyError) as e:
        raise UsageError(f"cannot read the kubeconfig: {e}") from None
    if info is None:
        raise UsageError("no Kubernetes API found: not in a pod, no $KUBECONFIG, no "
                         "~/.kube/config; pass --kubeconfig or --server")
    return info


def _own_namespace() -> str:
    """The pod's namespace from its service account mount, else `default`."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def config(argv: list[str]) -> OperatorConfig:
    args = _parser().parse_args(argv)
    for value, flag in ((args.resync_seconds, "--resync-seconds"),
                        (args.blocked_deadline_seconds, "--blocked-deadline-seconds"),
                        (args.terminating_grace_seconds, "--terminating-grace-seconds"),
                        (args.lease_seconds, "--lease-seconds")):
        if not value > 0:
            raise UsageError(f"{flag} must be > 0")
    for port, flag in ((args.health_port, "--health-port"), (args.metrics_port, "--metrics-port")):
        if not 0 <= port <= 65535:
            raise UsageError(f"{flag} must be 0-65535")
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    return OperatorConfig(connection=connection(args), namespaces=tuple(args.namespace),
                          resync_seconds=args.resync_seconds, health_port=args.health_port,
                          metrics_port=args.metrics_port, runtime_image=args.runtime_image,
                          allow_host_path=args.allow_host_path,
                          blocked_deadline_seconds=args.blocked_deadline_seconds,
                          terminating_grace_seconds=args.terminating_grace_seconds,
                          leader_election=args.leader_elect,
                          lease_namespace=args.lease_namespace or _own_namespace(),
                          lease_name=args.lease_name, lease_seconds=args.lease_seconds,
                          identity=f"{socket.gethostname()}-{os.getpid()}")


async def run(cfg: OperatorConfig, stop_flag: asyncio.Event | None = None) -> int:
    """Run until stopped (0), or until this replica loses its Lease (1: the pod
    restarts and queues up as a standby again)."""
    kube = Kube(cfg.connection, user_agent=cfg.user_agent)
    if not cfg.leader_election:
        await _operate(cfg, kube, stop_flag)
        return 0
    elector = LeaseElector(kube, cfg.lease_namespace, cfg.lease_name, cfg.identity,
                           lease_seconds=cfg.lease_seconds,
                           renew_seconds=cfg.lease_seconds / 3,
                           retry_seconds=max(0.2, cfg.lease_seconds / 7))
    log = logging.getLogger(__name__)
    log.info("standby: waiting for lease %s/%s as %s", cfg.lease_namespace, cfg.lease_name,
             cfg.identity)
    health = await _standby_health(cfg.health_port)
    try:
        if not await elector.acquire(stop_flag):
            return 0
    finally:
        if health is not None:
            await health.cleanup()
    log.info("leader: holding lease %s/%s", cfg.lease_namespace, cfg.lease_name)
    lost, stop = asyncio.Event(), asyncio.Event()
    holder = asyncio.ensure_future(elector.hold(lost))
    relay = asyncio.ensure_future(_first(stop, lost, stop_flag))
    try:
        await _operate(cfg, kube, stop)
    finally:
        holder.cancel()
        relay.cancel()
        if not lost.is_set():
            await elector.release()
        await kube.close()
    return 1 if lost.is_set() else 0


async def _first(out: asyncio.Event, *flags: asyncio.Event | None) -> None:
    """Set `out` once any of `flags` is set."""
    waits = [asyncio.ensure_future(f.wait()) for f in flags if f is not None]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    out.set()


async def _standby_health(port: int):
    """/healthz of a standby replica: alive and waiting (kopf serves it once leading)."""
    if not port:
        return None
    from aiohttp import web

    async def ok(_request):
        return web.Response(text="standby")
    app = web.Application()
    app.router.add_get("/healthz", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


async def _operate(cfg: OperatorConfig, kube: Kube, stop_flag: asyncio.Event | None) -> None:
    registry = kopf.OperatorRegistry()
    reconciler = Reconciler(kube, cfg)
    handlers.register(registry, cfg, reconciler)
    await kopf.operator(
        registry=registry, settings=handlers.settings(cfg), standalone=True,
        clusterwide=cfg.clusterwide, namespaces=list(cfg.namespaces), stop_flag=stop_flag,
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz" if cfg.health_port
        else None)


def main(argv: list[str] | None = None) -> int:
    kopf.configure(verbose="-v" in (argv or []) or "--verbose" in (argv or []),
                   log_format=kopf.LogFormat.PLAIN)
    try:
        cfg = config(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        print(f"geeps operator: {e}", file=sys.stderr)
        return 2
    try:
        metrics.serve(cfg.metrics_port)
    except OSError as e:
        print(f"geeps operator: --metrics-port {cfg.metrics_port}: {e.strerror}",
              file=sys.stderr)
        return 2
    logging.getLogger(__name__).info(
        "watching %s; resync every %g s", ", ".join(cfg.namespaces) or "all namespaces",
        cfg.resync_seconds)
    return asyncio.run(run(cfg))


if __name__ == "__main__":
    sys.exit(main())
