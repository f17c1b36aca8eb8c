"""Pure manifest builders: names, labels, owner references, the environment contract,
pod-level knobs from the spec; every Pod and Service validates against the
Kubernetes API schemas."""
from __future__ import annotations

import kubernetes_validate
import pytest

from geeps.job import env as config
from geeps.wire import curve
from geeps.job import spec as _spec
from geeps_operator import manifests as m

UID = "0f3e4d2c-1111-2222-3333-444455556666"


def _job(**spec_changes) -> tuple[_spec.GeePSJob, dict]:
    body = {"apiVersion": _spec.API_VERSION, "kind": _spec.KIND,
            "metadata": {"name": "digits", "namespace": "ml", "uid": UID},
            "spec": {"image": "example.org/geeps/runtime:0.1",
                     "command": ["python", "train.py"], "args": ["--epochs", "2"],
                     "env": [{"name": "LR", "value": "0.05"},
                             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {
                                 "name": "s", "key": "k"}}}],
                     "servers": {"replicas": 2, "resources": {"requests": {"cpu": "1"}}},
                     "workers": {"replicas": 3, "gpus": 2,
                                 "resources": {"requests": {"cpu": "4", "memory": "8Gi"}},
                                 "nodeSelector": {"gpu": "a100"},
                                 "tolerations": [{"key": "gpu", "operator": "Exists",
                                                  "effect": "NoSchedule"}],
                                 "affinity": {"nodeAffinity": {}},
                                 "priorityClassName": "training",
                                 "volumes": [{"name": "data", "emptyDir": {}}],
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                     "consistency": {"model": "SSP", "slack": 2},
                     "cache": {"deviceMemory": "2Gi"},
                     "checkpoint": {"everyClocks": 10,
                                    "volume": {"persistentVolumeClaim": {"claimName": "ck"}}}}}
    body["spec"].update(spec_changes)
    return _spec.validate(body), m.owner_reference(body)


def _env(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_owner_reference_points_at_the_job_as_controller():
    _, owner = _job()
    assert owner == {"apiVersion": "geeps.dev/v1alpha1", "kind": "GeePSJob", "name": "digits",
                     "uid": UID, "controller": True, "blockOwnerDeletion": True}


def test_headless_service_gives_servers_stable_names():
    job, owner = _job()
    svc = m.service(job, owner)
    kubernetes_validate.validate(svc, "1.33", strict=True)
    assert svc["metadata"]["name"] == "digits-server"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {m.LABEL_JOB: "digits", m.LABEL_ROLE: "server"}
    assert svc["metadata"]["ownerReferences"] == [owner]
    assert m.server_addresses(job) == ["digits-server-0.digits-server.ml.svc:7777",
                                       "digits-server-1.digits-server.ml.svc:7777"]


def test_server_pod():
    job, owner = _job()
    pod = m.server_pod(job, 1, owner)
    kubernetes_validate.validate(pod, "1.33", strict=True)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "digits-server-1"
    assert meta["labels"][m.LABEL_JOB] == "digits"
    assert meta["labels"][m.LABEL_ROLE] == "server" and meta["labels"][m.LABEL_INDEX] == "1"
    assert meta["ownerReferences"] == [owner]
    assert spec["hostname"] == "digits-server-1" and spec["subdomain"] == "digits-server"
    assert spec["restartPolicy"] == "Never"
    c = spec["containers"][0]
    assert c["command"] == ["geeps", "server"] and c["image"] == "example.org/geeps/runtime:0.1"
    assert {"name": "ps", "containerPort": 7777, "protocol": "TCP"} in c["ports"]
    assert c["resources"] == {"requests": {"cpu": "1"}}
    env = _env(pod)
    cfg = config.load({k: v for k, v in env.items() if v is not None})
    assert (cfg.role, cfg.rank, cfg.num_workers) == ("server", 1, 3)
    assert cfg.servers == tuple(m.server_addresses(job))
    assert str(cfg.consistency) == "ssp:2"
    assert env["GEEPS_CHECKPOINT_DIR"] == m.CHECKPOINT_MOUNT + "/digits"
    assert env["GEEPS_CHECKPOINT_EVERY"] == "10"
    assert {"name": m.CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": "ck"}} \
        in spec["volumes"]
    assert {"name": m.CHECKPOINT_VOLUME, "mountPath": m.CHECKPOINT_MOUNT} in c["volumeMounts"]
    assert m.checkpoints_durable(job)


def test_worker_pod_carries_the_spec_pod_knobs():
    job, owner = _job()
    pod = m.worker_pod(job, 2, owner)
    kubernetes_validate.validate(pod, "1.33", strict=True)
    spec = pod["spec"]
    c = spec["containers"][0]
    assert pod["metadata"]["name"] == "digits-worker-2"
    assert c["command"] == ["python", "train.py"] and c["args"] == ["--epochs", "2"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert spec["nodeSelector"] == {"gpu": "a100"}
    assert spec["tolerations"][0]["key"] == "gpu"
    assert spec["affinity"] == {"nodeAffinity": {}}
    assert spec["priorityClassName"] == "training"
    assert spec["volumes"][0] == {"name": "data", "emptyDir": {}}
    assert c["volumeMounts"][0] == {"name": "data", "mountPath": "/data"}
    assert m.CHECKPOINT_VOLUME not in {v["name"] for v in spec["volumes"]}   # servers only
    assert "hostname" not in spec
    env = _env(pod)
    assert env["LR"] == "0.05" and env["GEEPS_ROLE"] == "worker" and env["GEEPS_RANK"] == "2"
    assert env["GEEPS_DEVICE_MEMORY"] == str(2 * 2**30)
    token = next(e for e in c["env"] if e["name"] == "TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "s"     # resolved by the kubelet


def test_no_gpus_no_gpu_limit():
    job, owner = _job(workers={"replicas": 1, "gpus": 0})
    c = m.worker_pod(job, 0, owner)["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in (c.get("resources") or {}).get("limits", {})


@pytest.mark.parametrize("role,index", [("server", 0), ("worker", 0)])
def test_every_child_is_named_within_dns_label_limits(role, index):
    name = "x" * _spec.MAX_NAME
    body = {"apiVersion": _spec.API_VERSION, "kind": _spec.KIND,
            "metadata": {"name": name, "namespace": "n", "uid": UID},
            "spec": {"command": ["true"], "servers": {"replicas": 100},
                     "workers": {"replicas": 100}}}
    job = _spec.validate(body)
    pod = m.role_pod(job, role, 99, m.owner_reference(body))
    assert len(pod["metadata"]["name"]) <= 63
    assert len(m.service_name(name)) <= 63
    kubernetes_validate.validate(pod, "1.33", strict=True)


def test_pod_monitor():
    job, owner = _job()
    pm = m.pod_monitor(job, owner)
    assert pm["spec"]["selector"] == {"matchLabels": {m.LABEL_JOB: "digits"}}
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics",
                                                  "honorLabels": True}]
    assert pm["metadata"]["ownerReferences"] == [owner]


@pytest.mark.parametrize("role", ["server", "worker"])
def test_curve_secret_is_mounted_read_only_and_named_by_geeps_curve_dir(role):
    job, owner = _job()
    secret = m.curve_secret(job, owner, curve.keys_as_files())
    kubernetes_validate.validate(secret, "1.33", strict=True)
    assert secret["metadata"]["name"] == "digits-curve"
    assert secret["metadata"]["ownerReferences"] == [owner]
    assert sorted(secret["stringData"]) == sorted(curve.FILES)
    pod = m.role_pod(job, role, 0, owner)
    spec, c = pod["spec"], pod["spec"]["containers"][0]
    volume = next(v for v in spec["volumes"] if v["name"] == m.CURVE_VOLUME)
    assert volume["secret"]["secretName"] == "digits-curve"
    assert {"name": m.CURVE_VOLUME, "mountPath": m.CURVE_MOUNT, "readOnly": True} \
        in c["volumeMounts"]
    env = _env(pod)
    assert env["GEEPS_CURVE_DIR"] == m.CURVE_MOUNT and env["GEEPS_INSECURE"] == "0"


@pytest.mark.parametrize("role", ["server", "worker"])
def test_insecure_jobs_get_no_keys(role):
    job, owner = _job(security={"insecure": True})
    pod = m.role_pod(job, role, 0, owner)
    assert m.CURVE_VOLUME not in {v["name"] for v in pod["spec"]["volumes"]}
    env = _env(pod)
    assert env["GEEPS_INSECURE"] == "1" and env["GEEPS_CURVE_DIR"] == ""


def test_checkpoints_without_a_volume_go_to_an_empty_dir_that_is_not_durable():
    job, owner = _job(checkpoint={"everyClocks": 5})
    pod = m.server_pod(job, 0, owner)
    kubernetes_validate.validate(pod, "1.33", strict=True)
    assert {"name": m.CHECKPOINT_VOLUME, "emptyDir": {}} in pod["spec"]["volumes"]
    env = _env(pod)
    assert env["GEEPS_CHECKPOINT_DIR"] == m.CHECKPOINT_MOUNT + "/digits"
    assert env["GEEPS_CHECKPOINT_EVERY"] == "5"
    assert not m.checkpoints_durable(job)
    off, _ = _job(checkpoint={"everyClocks": 0})
    pod = m.server_pod(off, 0, owner)
    assert m.CHECKPOINT_VOLUME not in {v["name"] for v in pod["spec"]["volumes"]}
    assert _env(pod)["GEEPS_CHECKPOINT_DIR"] == "" and m.checkpoints_durable(off)


@pytest.mark.parametrize("role", ["server", "worker"])
def test_pods_are_hardened(role):
    job, owner = _job()
    pod = m.role_pod(job, role, 0, owner)
    kubernetes_validate.validate(pod, "1.33", strict=True)
    spec, c = pod["spec"], pod["spec"]["containers"][0]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["fsGroup"] == m.RUN_AS
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == m.RUN_AS != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # A read-only root still leaves Python, CuPy and torch somewhere to write.
    assert {"name": m.TMP_VOLUME, "emptyDir": {}} in spec["volumes"]
    assert {"name": m.TMP_VOLUME, "mountPath": "/tmp"} in c["volumeMounts"]
    env = _env(pod)
    assert all(env[k].startswith("/tmp/") for k in m.WRITABLE_CACHES)
    # Each pod gets its own securityContext objects (no shared mutable state).
    other = m.role_pod(job, role, 1, owner)["spec"]["containers"][0]["securityContext"]
    assert other == sc and other is not sc


def test_a_users_own_tmp_mount_is_kept():
    job, owner = _job(workers={"replicas": 1, "volumes": [{"name": "t", "emptyDir": {}}],
                               "volumeMounts": [{"name": "t", "mountPath": "/tmp"}]})
    pod = m.worker_pod(job, 0, owner)
    kubernetes_validate.validate(pod, "1.33", strict=True)
    assert [mt["name"] for mt in pod["spec"]["containers"][0]["volumeMounts"]
            if mt["mountPath"] == "/tmp"] == ["t"]


def test_network_policy_admits_the_ps_port_only_from_the_job():
    job, owner = _job(metrics={"port": 9555})
    pol = m.network_policy(job, owner)
    kubernetes_validate.validate(pol, "1.33", strict=True)
    assert pol["metadata"]["name"] == "digits-geeps"
    assert pol["metadata"]["ownerReferences"] == [owner]
    spec = pol["spec"]
    assert spec["podSelector"] == {"matchLabels": {m.LABEL_JOB: "digits"}}
    assert spec["policyTypes"] == ["Ingress"]
    ps, metrics = spec["ingress"]
    assert ps == {"from": [{"podSelector": {"matchLabels": {m.LABEL_JOB: "digits"}}}],
                  "ports": [{"protocol": "TCP", "port": m.SERVER_PORT}]}
    assert metrics == {"ports": [{"protocol": "TCP", "port": 9555}]}     # any source


def test_colocated_workers_take_the_servers_place():
    job, owner = _job(servers={"colocate": True, "replicas": 2})
    assert job.shards == 3 and job.server_processes == 0
    svc = m.service(job, owner)
    assert svc["spec"]["selector"] == {m.LABEL_JOB: "digits", m.LABEL_ROLE: "worker"}
    pod = m.worker_pod(job, 1, owner)
    kubernetes_validate.validate(pod, "1.33", strict=True)
    cfg = config.load({k: v for k, v in _env(pod).items() if v is not None})
    assert cfg.colocate and cfg.role == "worker" and cfg.rank == 1
    assert cfg.servers == tuple(f"digits-worker-{i}.digits-server.ml.svc:{m.SERVER_PORT}"
                                for i in range(3))
    assert cfg.checkpoint_dir == f"{m.CHECKPOINT_MOUNT}/digits"     # the shard's own
    spec = pod["spec"]
    assert (spec["hostname"], spec["subdomain"]) == ("digits-worker-1", "digits-server")
    assert spec["containers"][0]["ports"][0] == {
        "name": m.SERVER_PORT_NAME, "containerPort": m.SERVER_PORT, "protocol": "TCP"}
    assert any(v["name"] == m.CHECKPOINT_VOLUME for v in spec["volumes"])


def test_image_pull_secrets_reach_every_pod():
    job, owner = _job(imagePullSecrets=[{"name": "regcred"}, {"name": "mirror"}])
    for pod in (m.server_pod(job, 0, owner), m.worker_pod(job, 1, owner)):
        assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
        kubernetes_validate.validate(pod, "1.33", strict=True)
    job, owner = _job()
    assert "imagePullSecrets" not in m.worker_pod(job, 0, owner)["spec"]


def test_a_job_without_an_image_gets_the_operators_runtime_image():
    body = {"apiVersion": _spec.API_VERSION, "kind": _spec.KIND,
            "metadata": {"name": "noimg", "namespace": "ml", "uid": UID},
            "spec": {"command": ["python", "t.py"], "workers": {"gpus": 0}}}
    # The CRD no longer defaults spec.image, so the operator's choice can apply.
    assert "image" not in _spec.validate(body).spec
    filled = m.with_default_image(body, "registry.example.com/geeps/runtime:0.1.0")
    assert "image" not in body["spec"]                       # the input is left alone
    job = _spec.validate(filled)
    pod = m.worker_pod(job, 0, m.owner_reference(filled))
    assert pod["spec"]["containers"][0]["image"] == "registry.example.com/geeps/runtime:0.1.0"
    named = dict(body, spec=dict(body["spec"], image="mine:1"))
    assert m.with_default_image(named, "other:2")["spec"]["image"] == "mine:1"
    empty = dict(body, spec=dict(body["spec"], image=""))
    with pytest.raises(_spec.SpecError, match="spec.image"):
        _spec.validate(m.with_default_image(empty, "other:2"))
