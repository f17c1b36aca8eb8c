"""Issue 23, item 7: the servers' secret CurveZMQ key reaches only the pods that serve
shards; a plain worker can read the public keys and its client secret, nothing more."""
from __future__ import annotations

import kubernetes_validate
import pytest

from geeps.job import spec as _spec
from geeps.wire import curve
from geeps_operator import manifests as m


def job(**spec_changes):
    body = {"apiVersion": _spec.API_VERSION, "kind": _spec.KIND,
            "metadata": {"name": "k", "namespace": "ml", "uid": "u-1"},
            "spec": {"command": ["python", "train.py"], "servers": {"replicas": 2},
                     "workers": {"replicas": 2}}}
    body["spec"].update(spec_changes)
    return _spec.validate(body), m.owner_reference(body)


def mounted_files(pod: dict) -> set[str]:
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == m.CURVE_VOLUME)
    return {item["path"] for item in volume["secret"]["items"]}


@pytest.mark.parametrize("colocate,role,gets_server_secret", [
    (False, "server", True), (False, "worker", False), (True, "worker", True)])
def test_only_shard_serving_pods_mount_the_server_secret(colocate, role, gets_server_secret):
    j, owner = job(servers={"replicas": 2, "colocate": colocate})
    pod = m.role_pod(j, role, 0, owner)
    kubernetes_validate.validate(pod, "1.33", strict=True)
    files = mounted_files(pod)
    assert files <= set(curve.FILES)
    assert {"server.key", "client.key", "client.key_secret"} <= files
    assert ("server.key_secret" in files) == gets_server_secret
