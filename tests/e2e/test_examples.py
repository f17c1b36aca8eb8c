"""Every example job, applied with kubectl, trains to Succeeded through the operator:
real `geeps server` shards and real training workers run by the test kubelet.
Also: what kubectl can and cannot do against the emulator."""
from __future__ import annotations

import glob
import json
import os

import pytest
import yaml

from geeps.job import progress
from tests.helpers import REPO, wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = sorted(glob.glob(os.path.join(REPO, "examples", "*", "job.yaml")))
# The CI-sized arguments `geeps run`'s test uses (None: the manifest's own); one list,
# so an example gets the same small run whether a launcher or the operator starts it.
from tests.integration.test_examples import SMALL  # noqa: E402


def _job_name(path: str) -> str:
    with open(path) as f:
        return next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "GeePSJob")[
            "metadata"]["name"]


def test_there_are_examples():
    assert EXAMPLES, "examples/*/job.yaml: none found"


@pytest.mark.parametrize("path", EXAMPLES,
                         ids=[os.path.basename(os.path.dirname(p)) for p in EXAMPLES])
def test_example_trains_to_succeeded_and_servers_stop(cluster, operator, kubectl, ns, path,
                                                      tmp_path):
    small = SMALL[os.path.basename(os.path.dirname(path))]
    if small is not None:                   # the same manifest, only `args` cut down
        with open(path) as f:
            manifest = yaml.safe_load(f)
        manifest["spec"]["args"] = list(small)
        path = str(tmp_path / "job.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(manifest, f)
    r = kubectl(ns, "apply", "-f", path)
    assert r.returncode == 0, r.stderr
    name = _job_name(path)
    spec = cluster.api.job(ns, name)["spec"]
    done = cluster.wait_phase(ns, name, "Succeeded", timeout=180)
    st = done["status"]
    assert st["replicaStatuses"]["workers"]["succeeded"] == spec["workers"]["replicas"]
    assert st["restartCount"] == 0
    assert st["clock"] > 0                            # learned from worker 0's progress lines

    procs = cluster.processes(ns)
    workers = [p for p in procs if "-worker-" in p.name]
    assert len(workers) == spec["workers"]["replicas"]
    assert all(p.exit_code == 0 for p in workers)
    for p in workers:                                 # training really happened
        with open(p.log_path) as f:
            lines = [progress.parse(line) for line in f]
        reports = [x for x in lines if x]
        assert any("loss" in x for x in reports), p.name
        assert max(x.get("clock", 0) for x in reports) >= st["clock"] - 5
    # The servers are stopped at the end: their pods deleted, their processes exited 0
    # on SIGTERM, nothing of the job left running.
    wait_for(lambda: not [p for p in cluster.api.pods(ns, name)
                          if p["metadata"]["labels"]["geeps.dev/role"] == "server"], 15,
             what="server pods deleted")
    servers = [p for p in cluster.processes(ns) if "-server-" in p.name]
    assert len(servers) == spec.get("servers", {}).get("replicas", 1)
    wait_for(lambda: all(p.exit_code is not None for p in servers), 15,
             what="server processes to exit")
    assert [p.exit_code for p in servers] == [0] * len(servers)

    table = kubectl(ns, "get", "gj")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "WORKERS", "CLOCK", "AGE"]
    assert row.split()[:2] == [name, "Succeeded"]
    assert row.split()[3] == str(st["clock"])


def test_kubectl_against_the_emulator(cluster, operator, kubectl, ns, tmp_path):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "geeps.dev/v1alpha1", "kind": "GeePSJob", "metadata": {"name": "kc"},
        "spec": {"command": ["python", "-c", "import geeps; geeps.report(clock=3)"],
                 "workers": {"replicas": 2, "gpus": 0}, "security": {"insecure": True}}}))
    # kubectl reads /openapi/v3, sees that the server validates GeePSJobs and leaves it
    # to the server (fieldValidation=Strict), which refuses a bad manifest by field:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dict(yaml.safe_load(manifest.read_text()), spec={
        "command": ["python"], "workers": {"replicas": 1_000_000}})))
    r = kubectl(ns, "apply", "-f", str(bad))
    assert r.returncode != 0 and "spec.workers.replicas" in r.stderr, r.stderr
    r = kubectl(ns, "apply", "-f", str(manifest))
    assert r.returncode == 0 and "geepsjob.geeps.dev/kc created" in r.stdout, r.stderr
    cluster.wait_phase(ns, "kc", "Succeeded", timeout=30)

    # `kubectl get gj`: the short name resolves, the CRD's printer columns show.
    r = kubectl(ns, "get", "gj")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "WORKERS", "CLOCK", "AGE"]
    assert lines[1].split()[:2] == ["kc", "Succeeded"]
    wide = kubectl(ns, "get", "gj", "-o", "wide")
    assert wide.stdout.splitlines()[0].split() == ["NAME", "PHASE", "WORKERS", "CLOCK",
                                                   "RESTARTS", "AGE"]
    r = kubectl(ns, "get", "gj", "kc", "-o", "json")
    assert json.loads(r.stdout)["status"]["phase"] == "Succeeded"
    # Events of the job, as `kubectl describe` shows them.
    r = kubectl(ns, "describe", "gj", "kc")
    assert r.returncode == 0 and "AllWorkersSucceeded" in r.stdout, r.stderr
    # Pod logs come through pods/log (for users: the operator reads progress over HTTP).
    r = kubectl(ns, "logs", "kc-worker-0")
    assert r.returncode == 0 and 'geeps:progress {"clock": 3}' in r.stdout, r.stderr
