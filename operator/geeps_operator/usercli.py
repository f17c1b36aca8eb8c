"""`geeps submit|status|logs|delete`: GeePSJobs in a cluster from the command line, as
Kubeflow's SDK gives its users (geeps_operator.sdk does the work).

    geeps submit examples/01-minimal/job.yaml [--wait]
    geeps status minimal [--watch]            # or every job of the namespace
    geeps logs minimal [--role worker --rank 0]
    geeps delete minimal [--wait]

Each takes -n/--namespace, --context and --kubeconfig (default: the current context
of $KUBECONFIG or ~/.kube/config, and its namespace).
"""
from __future__ import annotations

import argparse
import sys

from geeps.job.spec import SpecError


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"geeps {prog}", description=doc)
    p.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or "
                                        "~/.kube/config)")
    return p


def _run(argv: list[str], prog: str, doc: str, add, act) -> int:
    from .sdk import JobError, Jobs
    p = _parser(prog, doc)
    add(p)
    args = p.parse_args(argv)
    try:
        jobs = Jobs(args.namespace, context=args.context, config_file=args.kubeconfig)
        return act(jobs, args)
    except SpecError as e:
        print(f"geeps {prog}: the manifest is not a valid GeePSJob:", file=sys.stderr)
        for field, msg in e.problems:
            print(f"  {field}: {msg}", file=sys.stderr)
        return 2
    except JobError as e:
        print(f"geeps {prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _follow(jobs, name: str, timeout: float) -> int:
    from .sdk import describe
    job = None
    for job in jobs.watch(name, timeout):
        print(describe(job), flush=True)
    return 0 if (job.get("status") or {}).get("phase") == "Succeeded" else 1


def submit(argv: list[str]) -> int:
    def add(p):
        p.add_argument("manifest", help="a GeePSJob YAML file")
        p.add_argument("--wait", action="store_true", help="follow it until it ends; "
                       "exit 0 if it Succeeded")
        p.add_argument("--timeout", type=float, default=3600.0)

    def act(jobs, a):
        name = jobs.submit(a.manifest)
        print(f"geepsjob {name} created in namespace {jobs.namespace}", flush=True)
        return _follow(jobs, name, a.timeout) if a.wait else 0
    return _run(argv, "submit", "create a GeePSJob from a manifest", add, act)


def status(argv: list[str]) -> int:
    def add(p):
        p.add_argument("name", nargs="?", help="a job (default: every job here)")
        p.add_argument("--watch", action="store_true", help="print each change until "
                       "it ends")
        p.add_argument("--timeout", type=float, default=3600.0)

    def act(jobs, a):
        from .sdk import describe
        if a.name and a.watch:
            return _follow(jobs, a.name, a.timeout)
        for job in [jobs.get(a.name)] if a.name else jobs.list():
            print(describe(job))
        return 0
    return _run(argv, "status", "show GeePSJobs: phase, progress, newest condition",
                add, act)


def logs(argv: list[str]) -> int:
    def add(p):
        p.add_argument("name")
        p.add_argument("--role", default="worker", choices=("worker", "server"))
        p.add_argument("--rank", type=int, default=0)

    def act(jobs, a):
        sys.stdout.write(jobs.logs(a.name, a.role, a.rank))
        return 0
    return _run(argv, "logs", "print the log of one of a job's pods", add, act)


def delete(argv: list[str]) -> int:
    def add(p):
        p.add_argument("name")
        p.add_argument("--wait", action="store_true", help="until it is gone")

    def act(jobs, a):
        jobs.delete(a.name, wait=a.wait)
        print(f"geepsjob {a.name} deleted")
        return 0
    return _run(argv, "delete", "delete a GeePSJob (its pods go with it)", add, act)
