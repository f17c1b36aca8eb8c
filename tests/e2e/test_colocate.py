"""A co-located GeePSJob (spec.servers.colocate): no server pods; every worker pod
serves one shard, reached by the others through the headless service."""
from __future__ import annotations

import pytest

from .jobs import SUM_TABLE, job

pytestmark = pytest.mark.e2e


def test_colocated_job_trains_with_no_server_pods(cluster, operator, ns):
    manifest = job(ns, "colo", SUM_TABLE, workers=3)
    manifest["spec"]["servers"] = {"colocate": True}
    cluster.api.create_job(manifest)
    done = cluster.wait_phase(ns, "colo", "Succeeded", timeout=90)
    assert done["status"]["replicaStatuses"]["workers"]["succeeded"] == 3
    procs = cluster.processes(ns)
    assert sorted(p.name for p in procs) == [f"colo-worker-{i}" for i in range(3)]
    assert all(p.exit_code == 0 for p in procs)
    for p in procs:
        with open(p.log_path) as f:
            assert "sum ok 30.0" in f.read(), p.name      # 5 clocks x (1 + 2 + 3)
    svc = cluster.api.get(cluster.api.path("services", ns, "colo-server"))
    assert svc["spec"]["selector"]["geeps.dev/role"] == "worker"
