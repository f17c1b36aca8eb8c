"""Fixtures of the e2e tier: one emulator, kubelet and operator for the whole session.

Each test works in a namespace of its own (the `ns` fixture), so the shared operator
serves all of them as it would serve teams on one cluster.
"""
from __future__ import annotations

import itertools

import pytest

from .harness import Cluster, Operator

_ns = itertools.count()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    with Cluster(str(tmp_path_factory.mktemp("cluster"))) as c:
        yield c


@pytest.fixture(scope="session")
def operator(cluster, tmp_path_factory):
    with Operator(cluster, str(tmp_path_factory.mktemp("operator"))) as op:
        yield op


@pytest.fixture
def ns(request):
    """A fresh namespace name per test (the emulator needs no Namespace object)."""
    return f"t{next(_ns)}-{request.node.name[5:25].replace('_', '-').strip('-').lower()}"
