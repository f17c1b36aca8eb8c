"""Fixtures of the e2e tier: one emulator, kubelet and operator for the e2e package
(package scope: they stop when the last e2e test ends, not with the whole session).

Each test works in a namespace of its own (the `ns` fixture), so the shared operator
serves all of them as it would serve teams on one cluster.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import pytest
import yaml

from .harness import Cluster, Operator

_ns = itertools.count()


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    with Cluster(str(tmp_path_factory.mktemp("cluster"))) as c:
        yield c


@pytest.fixture(scope="package")
def operator(cluster, tmp_path_factory):
    with Operator(cluster, str(tmp_path_factory.mktemp("operator"))) as op:
        yield op


@pytest.fixture
def ns(request):
    """A fresh namespace name per test (the emulator needs no Namespace object)."""
    return f"t{next(_ns)}-{request.node.name[5:25].replace('_', '-').strip('-').lower()}"


@pytest.fixture(scope="package")
def kubeconfig(cluster, tmp_path_factory) -> str:
    """A kubeconfig whose current context is the emulator (what kubectl and the
    official client read)."""
    config = tmp_path_factory.mktemp("kube") / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator",
                                                      "user": "tester"}}]}))
    return str(config)


@pytest.fixture(scope="package")
def kubectl(kubeconfig, tmp_path_factory):
    """Run the real kubectl against the emulator: kubectl(ns, *args) -> CompletedProcess."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    home = tmp_path_factory.mktemp("kubectl")
    env = dict(os.environ, KUBECONFIG=kubeconfig, HOME=str(home))

    def run(ns: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["kubectl", "-n", ns, *args], env=env, capture_output=True,
                              text=True, timeout=60)
    return run
