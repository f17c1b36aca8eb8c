"""`geeps sandbox up|down|status`: try GeePSJobs with kubectl on one machine, no cluster.

    geeps sandbox up                      # prints the KUBECONFIG to export
    kubectl apply -f examples/01-minimal/job.yaml
    kubectl get gj -w
    geeps sandbox down                    # stops everything it started

What runs is an EMULATOR of the Kubernetes API (the one the project's end-to-end tests
use), the real operator, and a test kubelet that runs each pod as a hardened podman
container of the runtime image where podman is installed (--processes: as local
processes). It is a way to see the flow, not a cluster: no scheduler, no real DNS or
network policy, no image pulls. Try it here, then on kind or a real cluster
(docs/install.md).

The emulator and kubelet live in the repository's tests/e2e, so the sandbox runs from a
checkout of the repository (with the [operator,dev] extras installed).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from . import engine

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BANNER = ("geeps sandbox: this is an EMULATOR of the Kubernetes API with a test kubelet on "
          "this machine, not a cluster.")


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "geeps", "sandbox")


def checkout() -> str:
    """The repository checkout this package runs from, with the e2e emulator in it."""
    if not os.path.isfile(os.path.join(REPO, "tests", "e2e", "harness.py")):
        raise SystemExit(
            "geeps sandbox: the API emulator and test kubelet it runs live in tests/e2e of "
            f"the geeps repository, and there is none beside this package ({HERE}). "
            "Run it from a clone of the repository (pip install -e '.[operator,dev]').")
    return REPO


def _state(d: str) -> dict | None:
    try:
        with open(os.path.join(d, "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(a) -> int:
    repo = checkout()
    d = os.path.abspath(a.dir)
    st = _state(d)
    if st and _alive(st["pid"]):
        print(f"{BANNER}\nAlready up (pid {st['pid']}): export KUBECONFIG={st['kubeconfig']}")
        return 0
    os.makedirs(d, exist_ok=True)
    for stale in ("state.json",):
        try:
            os.remove(os.path.join(d, stale))
        except FileNotFoundError:
            pass
    containers = not a.processes and engine.available()
    if containers:
        engine.remove_stale("sandbox-")     # what a sandbox killed outright left behind
    if not a.processes and not containers:
        print("geeps sandbox: podman/buildah not found: pods run as local processes",
              file=sys.stderr)
    env = dict(os.environ)
    paths = [repo, os.path.join(repo, "runtime"), os.path.join(repo, "operator"),
             os.path.join(repo, "examples")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                 else []))
    log = open(os.path.join(d, "sandbox.log"), "ab")
    cmd = [sys.executable, "-m", "geeps_sandbox.serve", "--dir", d]
    if containers:
        cmd.append("--containers")
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    print(BANNER)
    if containers:
        print("Pods run as podman containers; the first start builds the images "
              "(minutes), later ones take seconds.")
    deadline = time.monotonic() + a.timeout
    while (st := _state(d)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
            with open(os.path.join(d, "sandbox.log"), errors="replace") as f:
                tail = f.read()[-4000:]
            print(f"geeps sandbox: did not come up; its log ({d}/sandbox.log):\n{tail}",
                  file=sys.stderr)
            return 1
        time.sleep(0.2)     # polling a file the background process writes when ready
    print(f"API (emulated): {st['url']}\n"
          f"Pods run as: {'podman containers' if st['containers'] else 'local processes'}\n"
          f"\n    export KUBECONFIG={st['kubeconfig']}\n"
          f"    kubectl apply -f examples/01-minimal/job.yaml\n"
          f"    kubectl get gj -w\n\n"
          f"Stop it with `geeps sandbox down`.")
    return 0


def down(a) -> int:
    d = os.path.abspath(a.dir)
    st = _state(d)
    if st is None or not _alive(st["pid"]):
        print("geeps sandbox: not running")
        left = engine.containers(st["owner"]) if st and engine.available() else []
        if left:
            engine.remove_labelled(st["owner"])
            print(f"removed {len(left)} container(s) left by a sandbox that crashed")
        return 0
    os.kill(st["pid"], signal.SIGTERM)
    deadline = time.monotonic() + a.timeout
    while _alive(st["pid"]):
        if time.monotonic() > deadline:
            os.killpg(st["pid"], signal.SIGKILL)
            break
        time.sleep(0.1)     # polling a process that is not our child
    if st.get("containers"):
        engine.remove_labelled(st["owner"])
    os.remove(os.path.join(d, "state.json"))
    print("geeps sandbox: down (emulator, operator and every pod stopped)")
    return 0


def status(a) -> int:
    st = _state(os.path.abspath(a.dir))
    if st is None or not _alive(st["pid"]):
        print("geeps sandbox: not running")
        return 1
    print(f"{BANNER}\nup (pid {st['pid']}), API {st['url']}, KUBECONFIG={st['kubeconfig']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="geeps sandbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, func in (("up", up), ("down", down), ("status", status)):
        s = sub.add_parser(name)
        s.set_defaults(func=func)
        s.add_argument("--dir", default=default_dir(),
                       help="where the kubeconfig, logs and volumes go (default: %(default)s)")
        s.add_argument("--timeout", type=float, default=900 if name == "up" else 60,
                       help="seconds to wait (up: includes a first image build)")
        if name == "up":
            s.add_argument("--processes", action="store_true",
                           help="run pods as local processes even where podman is installed")
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
