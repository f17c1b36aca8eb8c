"""What the container kubelet (containers.py) asks podman for, from a pod spec: checked
without podman, so a change to the translation fails here in a second, not minutes
into a container run. test_containers.py checks that podman really enforces it."""
from __future__ import annotations

import pytest

from geeps.job import spec as _spec
from geeps_operator import manifests as m

from .containers import ContainerKubelet, _cpus, _memory

pytestmark = pytest.mark.e2e


def _pod(**container_changes) -> dict:
    body = {"apiVersion": _spec.API_VERSION, "kind": _spec.KIND,
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {"command": ["python", "t.py"], "workers": {"gpus": 0}}}
    pod = m.worker_pod(_spec.validate(body), 0, m.owner_reference(body))
    pod["spec"]["containers"][0].update(container_changes)
    return pod


def test_the_operators_pod_spec_becomes_hardened_flags():
    flags = ContainerKubelet._security(None, _pod())
    uid = m.RUN_AS
    assert f"--user={uid}:{uid}" in flags and f"--group-add={uid}" in flags
    assert "--read-only" in flags and "--read-only-tmpfs=false" in flags
    assert "--security-opt=no-new-privileges" in flags and "--cap-drop=ALL" in flags
    assert not any("seccomp=unconfined" in f for f in flags)   # RuntimeDefault: podman's


def test_the_containers_settings_win_over_the_pods():
    pod = _pod(securityContext={"runAsUser": 2000, "runAsGroup": 3000,
                                "capabilities": {"add": ["NET_BIND_SERVICE"]}})
    flags = ContainerKubelet._security(None, pod)
    assert "--user=2000:3000" in flags and "--cap-add=NET_BIND_SERVICE" in flags
    assert "--read-only" not in flags        # the container's context replaced the pod's


@pytest.mark.parametrize("sc,field", [({"privileged": True}, "privileged"),
                                      ({"runAsUser": 0, "runAsNonRoot": True}, "runAsNonRoot"),
                                      ({"seccompProfile": {"type": "Localhost"}},
                                       "seccompProfile")])
def test_what_cannot_be_honoured_fails_the_pod_naming_the_field(sc, field):
    with pytest.raises(ValueError, match=field):
        ContainerKubelet._security(None, _pod(securityContext=sc))


def test_limits_become_podman_limits_and_requests_do_not():
    c = {"resources": {"requests": {"cpu": "4", "memory": "8Gi"},
                       "limits": {"cpu": "1500m", "memory": "512Mi", "nvidia.com/gpu": 1}}}
    assert ContainerKubelet._limits(c) == ["--cpus=1.5", f"--memory={512 * 2**20}b"]
    assert ContainerKubelet._limits({"resources": {"requests": {"cpu": "1"}}}) == []
    assert _cpus("2") == "2" and _memory("1G") == f"{10**9}b" and _memory("100") == "100b"
