"""Let no one in: a job's CurveZMQ keys come from a Secret the operator makes once, its
pods are hardened and fenced by a NetworkPolicy; an insecure job says so loudly."""
from __future__ import annotations

import base64
import os

import pytest
import yaml

from geeps.wire import curve
from tests.helpers import REPO, wait_for

from .jobs import job

pytestmark = pytest.mark.e2e

# A worker that makes one round trip to its server (so the server has started and
# logged how it runs before the job ends).
TALK = """
import geeps
with geeps.Client.from_env() as c:
    c.create_table("t", 1, 4, rule="add")
"""


def _minimal(ns: str, name: str, **spec) -> dict:
    with open(os.path.join(REPO, "examples", "01-minimal", "job.yaml")) as f:
        body = yaml.safe_load(f)
    body["metadata"] = {"name": name, "namespace": ns}
    body["spec"]["args"] = ["--epochs", "1"]
    body["spec"].update(spec)
    return body


def _secret(cluster, ns: str, name: str) -> dict | None:
    return cluster.api.get(cluster.api.path("secrets", ns, name))


def test_a_job_trains_with_curvezmq_keys_from_its_own_secret(cluster, operator, ns):
    uid = cluster.api.create_job(_minimal(ns, "sealed"))["metadata"]["uid"]
    owner = {"apiVersion": "geeps.dev/v1alpha1", "kind": "GeePSJob", "name": "sealed",
             "uid": uid, "controller": True, "blockOwnerDeletion": True}
    secret = wait_for(lambda: _secret(cluster, ns, "sealed-curve"), 15,
                      what="the job's CurveZMQ Secret")
    assert secret["metadata"]["ownerReferences"] == [owner]
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert sorted(keys) == sorted(curve.FILES)
    assert "secret-key" in keys["server.key_secret"] and "secret-key" not in keys["server.key"]

    done = cluster.wait_phase(ns, "sealed", "Succeeded", timeout=60)
    assert done["status"]["restartCount"] == 0
    procs = cluster.processes(ns)
    servers = [p for p in procs if "-server-" in p.name]
    assert len(servers) == 2
    for p in procs:
        # The keys were mounted from the Secret, and the mount named by GEEPS_CURVE_DIR.
        assert p.env["GEEPS_CURVE_DIR"] == p.mounts["/etc/geeps/curve"]
        assert p.env["GEEPS_INSECURE"] == "0"
    for p in servers:
        with open(p.log_path) as f:
            assert "CurveZMQ on" in f.read(), p.name

    # Made once: the same Secret, the same keys, after the whole run.
    again = _secret(cluster, ns, "sealed-curve")
    assert again["metadata"]["uid"] == secret["metadata"]["uid"]
    assert again["data"] == secret["data"]

    pol = cluster.api.get(cluster.api.path("networkpolicies", ns, "sealed-geeps",
                                           group="networking.k8s.io"))
    assert pol["metadata"]["ownerReferences"] == [owner]
    ps, metrics = pol["spec"]["ingress"]
    assert ps["from"] == [{"podSelector": {"matchLabels": {"geeps.dev/job-name": "sealed"}}}]
    assert ps["ports"] == [{"protocol": "TCP", "port": 7777}]
    assert metrics == {"ports": [{"protocol": "TCP", "port": 9400}]}


def test_pods_run_hardened(cluster, operator, ns, tmp_path):
    cluster.api.create_job(job(ns, "hard", "pass", run_policy={"cleanPodPolicy": "None"}))
    cluster.wait_phase(ns, "hard", "Succeeded", timeout=30)
    worker = next(p for p in cluster.api.pods(ns, "hard")
                  if p["metadata"]["name"] == "hard-worker-0")
    spec = worker["spec"]
    sc = spec["containers"][0]["securityContext"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"mountPath": "/tmp", "name": "geeps-tmp"} in spec["containers"][0]["volumeMounts"]
    # Only shard-serving pods get the server's secret key (the Secret's `items`).
    procs = cluster.processes(ns)
    assert procs
    for p in procs:
        files = p.files["/etc/geeps/curve"]
        assert "client.key_secret" in files, (p.name, files)
        assert ("server.key_secret" in files) == ("-server-" in p.name), (p.name, files)


def test_an_insecure_job_gets_no_keys_and_a_warning(cluster, operator, ns):
    cluster.api.create_job(job(ns, "open", TALK, security={"insecure": True},
                               checkpoint={"everyClocks": 5}))
    done = cluster.wait_phase(ns, "open", "Succeeded", timeout=30)
    assert _secret(cluster, ns, "open-curve") is None
    wait_for(lambda: {"Insecure", "CheckpointsNotDurable"} <= {
        e["reason"] for e in cluster.api.events(ns, "open")}, 10, what="both warnings")
    events = {e["reason"]: e for e in cluster.api.events(ns, "open")}
    assert events["Insecure"]["type"] == "Warning"
    assert "unencrypted" in events["Insecure"]["message"]
    # Checkpoints without a volume: an emptyDir, and the job says they are not durable.
    assert events["CheckpointsNotDurable"]["type"] == "Warning"
    durable = next(c for c in done["status"]["conditions"] if c["type"] == "CheckpointsDurable")
    assert durable["status"] == "False" and durable["reason"] == "EmptyDir"
    server = next(p for p in cluster.processes(ns) if "-server-" in p.name)
    assert server.env["GEEPS_INSECURE"] == "1" and server.env["GEEPS_CURVE_DIR"] == ""
    assert server.env["GEEPS_CHECKPOINT_DIR"] == \
        server.mounts["/var/lib/geeps/checkpoints"] + "/open"
    assert server.env["GEEPS_CHECKPOINT_EVERY"] == "5"
    with open(server.log_path) as f:
        assert "INSECURE" in f.read()


def test_a_host_path_volume_fails_the_job_naming_the_field(cluster, operator, ns):
    """A cluster's Pod Security admission (baseline) would refuse such pods with a 403
    the job never gets past; the operator refuses the job first, unless the chart's
    jobPods.allowHostPath passes it --allow-host-path (tests/unit: the pods then carry
    the volume)."""
    body = job(ns, "hostpath")
    body["spec"]["workers"]["volumes"] = [{"name": "host", "hostPath": {"path": "/etc"}}]
    body["spec"]["workers"]["volumeMounts"] = [{"name": "host", "mountPath": "/host"}]
    cluster.api.create_job(body)
    status = cluster.wait_phase(ns, "hostpath", "Failed")["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "HostPathNotAllowed"
    assert failed["message"].startswith("spec.workers.volumes[0].hostPath: ")
    assert cluster.api.pods(ns, "hostpath") == []
    wait_for(lambda: any(e["reason"] == "HostPathNotAllowed"
                         for e in cluster.api.events(ns, "hostpath")), 10,
             what="the Warning Event")
