"""The operator process on clusters of their own: namespaced mode (it serves jobs in its
namespaces and touches nothing elsewhere), a cluster without the Prometheus Operator,
and an operator restarted in the middle of a job (it picks up from what the API shows)."""
from __future__ import annotations

import pytest

from geeps_operator import rbac

from .harness import Cluster, Operator
from .jobs import WAIT_FOR_GO, env, job
from .test_rbac import request_triples

pytestmark = pytest.mark.e2e


def test_a_namespaced_operator_serves_only_its_namespace(tmp_path):
    with Cluster(str(tmp_path), prometheus_operator=False) as cluster:
        # Namespaces exist before the operator starts (the emulator's namespaces are
        # those holding objects, and its namespace watch reports no later arrivals).
        cluster.api.create_job(job("elsewhere", "ignored", "pass"))
        cluster.api.create_job(job("watched", "served", "pass"))
        cluster.api.create_job(job("also", "served", "pass"))
        # --namespace given twice: both served.
        with Operator(cluster, str(tmp_path), namespaces=("watched", "also")) as op:
            cluster.wait_phase("watched", "served", "Succeeded", timeout=30)
            cluster.wait_phase("also", "served", "Succeeded", timeout=30)
            requests_ = cluster.requests_on(cluster.operator_url)
            assert op.proc.poll() is None
        # Created first, still untouched after the other one ran to completion.
        assert "status" not in cluster.api.job("elsewhere", "ignored")
        assert cluster.api.pods("elsewhere", "ignored") == []
        touched = {r.namespace for r in requests_ if r.namespace}
        assert touched == {"watched", "also", Operator.LEASE_NAMESPACE}, touched
        # Namespaced requests need only JOB_RBAC_RULES (a Role); cluster-wide ones only
        # CRDs and namespaces (a ClusterRole with CLUSTER_RULES + NAMESPACE_RULES), all
        # of them used.
        triples = request_triples(requests_)
        assert {(g, r, v) for g, r, v, ns in triples if ns in ("watched", "also")} <= \
            rbac.triples(rbac.JOB_RBAC_RULES)
        assert {(g, r, v) for g, r, v, ns in triples if ns == Operator.LEASE_NAMESPACE} <= \
            rbac.triples(rbac.LEASE_RULES)
        assert {(g, r, v) for g, r, v, ns in triples if not ns} == \
            rbac.triples(rbac.CLUSTER_RULES) | rbac.triples(rbac.NAMESPACE_RULES)
        # No PodMonitor CRD here: the operator tried once, got 404, and the job ran anyway.
        assert ("monitoring.coreos.com", "podmonitors", "create", "watched") in triples


def test_a_restarted_operator_picks_up_where_the_last_one_left(tmp_path):
    with Cluster(str(tmp_path)) as cluster:
        with Operator(cluster, str(tmp_path)):
            cluster.api.create_job(job("ns", "long", WAIT_FOR_GO, workers=2,
                                       env=env(MARKS=tmp_path)))
            cluster.wait_phase("ns", "long", "Running", timeout=30)
        # No operator now; the pods run on. A new one adopts the job from the API.
        with Operator(cluster, str(tmp_path)):
            (tmp_path / "go").touch()
            done = cluster.wait_phase("ns", "long", "Succeeded", timeout=30)
        assert done["status"]["restartCount"] == 0
        assert sorted(p.name for p in cluster.processes("ns")) == \
            ["long-server-0", "long-worker-0", "long-worker-1"]     # nothing created twice
        created = [e for e in cluster.api.events("ns", "long") if e["reason"] == "Created"]
        assert len(created) == 1


def test_uninstall_with_the_operator_stopped_does_not_hang(tmp_path):
    """`helm uninstall` first, then `kubectl delete crd`: the API server deletes every
    GeePSJob, and one carrying a finalizer of the (gone) operator would hang there, and
    the CRD with it. The emulator does not cascade a CRD's deletion to its objects, so
    the test sends the deletes the API server's CRD cleanup would."""
    with Cluster(str(tmp_path)) as cluster:
        with Operator(cluster, str(tmp_path)):
            cluster.api.create_job(job("ns", "left", WAIT_FOR_GO, env=env(MARKS=tmp_path)))
            running = cluster.wait_phase("ns", "left", "Running", timeout=30)
        assert not running["metadata"].get("finalizers")
        r = cluster.api.send("DELETE", cluster.api.job_path("ns", "left"))
        assert r.status_code == 200, r.text
        assert cluster.api.job("ns", "left") is None
        crd = cluster.api.path("customresourcedefinitions", name="geepsjobs.geeps.dev",
                               group="apiextensions.k8s.io")
        assert cluster.api.send("DELETE", crd).status_code == 200
        assert cluster.api.get(crd) is None
