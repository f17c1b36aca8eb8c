"""The sandbox's background process (started by `geeps sandbox up`, stopped by `down`
with SIGTERM): the e2e API emulator with the CRD installed, the test kubelet, and the
operator; writes a kubeconfig and state.json once all are ready.

The emulator and kubelet are imported from the checkout's tests/e2e (cli.checkout()
puts it on the path); with --containers the runtime and operator images are built
first if missing (buildah's caches make that quick after the first time).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import threading

import yaml

from . import cli, engine, images


def kubeconfig(url: str) -> dict:
    return {"apiVersion": "v1", "kind": "Config", "current-context": "geeps-sandbox",
            "clusters": [{"name": "geeps-sandbox", "cluster": {"server": url}}],
            "users": [{"name": "geeps-sandbox", "user": {}}],
            "contexts": [{"name": "geeps-sandbox",
                          "context": {"cluster": "geeps-sandbox", "user": "geeps-sandbox",
                                      "namespace": "default"}}]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="geeps_sandbox.serve")
    p.add_argument("--dir", required=True)
    p.add_argument("--containers", action="store_true")
    a = p.parse_args(argv)
    repo = cli.checkout()
    sys.path.insert(0, repo)
    from tests.e2e.containers import ContainerKubelet, ImageOperator
    from tests.e2e.harness import Cluster, Operator
    from tests.e2e.kubelet import Kubelet

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    owner = f"sandbox-{os.getpid()}"
    kubelet = Kubelet
    if a.containers:
        images.build(("operator", "runtime"), "cpu", wheels=images.host_wheels())
        runtime = images.runtime_tag("cpu")
        kubelet = functools.partial(ContainerKubelet, owner=owner, mirror={
            f"{images.RUNTIME}:{images.VERSION}": runtime})
    print(cli.BANNER, flush=True)
    work = os.path.join(a.dir, "cluster")
    os.makedirs(work, exist_ok=True)
    try:
        with Cluster(work, kubelet=kubelet) as cluster:
            operator = (ImageOperator(cluster, a.dir, owner,
                                      f"{images.OPERATOR}:{images.VERSION}")
                        if a.containers else Operator(cluster, a.dir))
            with operator:
                config = os.path.join(a.dir, "kubeconfig")
                with open(config, "w") as f:
                    yaml.safe_dump(kubeconfig(cluster.url), f)
                state = {"pid": os.getpid(), "url": cluster.url, "kubeconfig": config,
                         "containers": a.containers, "owner": owner}
                tmp = os.path.join(a.dir, "state.json.tmp")
                with open(tmp, "w") as f:
                    json.dump(state, f)
                os.replace(tmp, os.path.join(a.dir, "state.json"))
                print(f"up: {cluster.url}", flush=True)
                stop.wait()
    finally:
        if a.containers:
            engine.remove_labelled(owner)
    print("down", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
