"""`geeps operator --namespace NS` on a cluster of its own: it serves jobs in NS and
never reads or writes anything elsewhere."""
from __future__ import annotations

import pytest

from geeps_operator import rbac

from .harness import Cluster, Operator
from .jobs import job
from .test_rbac import request_triples

pytestmark = pytest.mark.e2e


def test_a_namespaced_operator_serves_only_its_namespace(tmp_path):
    with Cluster(str(tmp_path)) as cluster:
        # Namespaces exist before the operator starts (the emulator's namespaces are
        # those holding objects, and its namespace watch reports no later arrivals).
        cluster.api.create_job(job("elsewhere", "ignored", "pass"))
        cluster.api.create_job(job("watched", "served", "pass"))
        with Operator(cluster, str(tmp_path), namespaces=("watched",)) as op:
            cluster.wait_phase("watched", "served", "Succeeded", timeout=30)
            requests_ = cluster.requests_on(cluster.operator_url)
            assert op.proc.poll() is None
        # Created first, still untouched after the other one ran to completion.
        assert "status" not in cluster.api.job("elsewhere", "ignored")
        assert cluster.api.pods("elsewhere", "ignored") == []
        touched = {r.namespace for r in requests_ if r.namespace}
        assert touched == {"watched"}, touched
        # Namespaced requests need only RULES (a Role); cluster-wide ones only CRDs and
        # namespaces (a ClusterRole with CLUSTER_RULES + NAMESPACE_RULES), all of them used.
        triples = request_triples(requests_)
        assert {(g, r, v) for g, r, v, ns in triples if ns} <= rbac.triples(rbac.RULES)
        assert {(g, r, v) for g, r, v, ns in triples if not ns} == \
            rbac.triples(rbac.CLUSTER_RULES) | rbac.triples(rbac.NAMESPACE_RULES)
