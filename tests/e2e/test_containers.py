"""The operator's pods as real containers: both images built with buildah (tools/
build_images.py), the operator run from its image against the API emulator, and every
pod a hardened podman container of the runtime image (tests/e2e/containers.py).

Marked `containers` (select with -m containers; `./dev test` runs them): they need
podman, buildah and debootstrap, and skip with the reason where those are missing.
The first build of the images takes minutes; later ones hit the caches (seconds).
"""
from __future__ import annotations

import functools
import os
import re

import pytest
import yaml

from geeps.server import checkpoint
from geeps_operator import manifests
from geeps_sandbox import engine, images
from tests.helpers import REPO, wait_for

from .containers import ContainerKubelet, ImageOperator, stand_in_or_skip
from .harness import Cluster
from .phases import PhaseRecorder

# A cold build (no stand-in base, no layers cached) takes about 10 minutes on 2 cores,
# all of it in the first test's set-up: more than the suite's per-test timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.containers, pytest.mark.timeout(1800)]

RUNTIME = images.runtime_tag("cpu")
# The examples name the CUDA image; this machine runs its CPU variant in its place.
MIRROR = {f"{images.RUNTIME}:{images.VERSION}": RUNTIME}


@pytest.fixture(scope="module")
def built():
    if not engine.available():
        pytest.skip("podman and buildah are needed (./dev test installs them)")
    if not engine.image_exists(images.stand_in_ref()) and not _can_debootstrap():
        pytest.skip("the stand-in base image is made with debootstrap, as root "
                    "(python tools/build_images.py as root makes it once)")
    stand_in_or_skip()
    return images.build(("operator", "runtime"), "cpu", wheels=images.host_wheels(),
                        log=lambda *a: None)


def _can_debootstrap() -> bool:
    import shutil
    return shutil.which("debootstrap") is not None and os.geteuid() == 0


@pytest.fixture(scope="module")
def owner():
    """The label value of this run's containers; containers of runs that crashed are
    removed first, and this run's at the end, whatever happened."""
    engine.remove_stale("e2e-")
    value = f"e2e-{os.getpid()}"
    yield value
    engine.remove_labelled(value)
    assert engine.containers(value) == []


@pytest.fixture(scope="module")
def ccluster(built, owner, tmp_path_factory):
    kubelet = functools.partial(ContainerKubelet, owner=owner, mirror=MIRROR)
    with Cluster(str(tmp_path_factory.mktemp("ccluster")), kubelet=kubelet) as c:
        yield c


@pytest.fixture(scope="module")
def coperator(ccluster, owner, tmp_path_factory):
    # --runtime-image as the chart passes it: jobs that name no image run this one.
    with ImageOperator(ccluster, str(tmp_path_factory.mktemp("coperator")), owner,
                       f"{images.OPERATOR}:{images.VERSION}", runtime_image=RUNTIME) as op:
        yield op


@pytest.fixture(scope="module")
def ckubectl(ccluster, tmp_path_factory):
    import shutil
    import subprocess
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    home = tmp_path_factory.mktemp("ckubectl")
    (home / "config").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": ccluster.url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator",
                                                      "user": "tester"}}]}))

    def run(ns: str, *args: str):
        return subprocess.run(["kubectl", "-n", ns, *args], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, KUBECONFIG=str(home / "config"),
                                                   HOME=str(home)))
    return run


def _hardened(seen) -> None:
    """What the kubelet saw inside one container (containers.Inside)."""
    uid = str(manifests.RUN_AS)
    assert not seen.error, f"{seen.pod}: {seen.error}"
    assert seen.uid.split() == [uid] * 4 and seen.gid.split() == [uid] * 4, seen
    assert int(seen.cap_eff, 16) == 0, f"{seen.pod}: CapEff {seen.cap_eff}"
    assert seen.seccomp == "2", f"{seen.pod}: no seccomp filter ({seen.seccomp})"
    assert seen.no_new_privs == "1", seen
    assert re.match(rf"uid={uid}\(geeps\) gid={uid}\(geeps\)", seen.id), seen.id
    assert "Read-only file system" in seen.root_write and "WRITTEN" not in seen.root_write, \
        seen.root_write
    # Every place the runtime writes is a volume: the pod spec points caches (CuPy's
    # kernel cache among them) and temp files at /tmp, checkpoints at their own volume.
    assert {"tmp", "CUPY_CACHE_DIR", "XDG_CACHE_HOME", "curve"} <= set(seen.writes), seen
    assert all(v is True for v in seen.writes.values()), f"{seen.pod}: {seen.writes}"


def test_runtime_image_imports_geeps_and_torch_without_kopf(built):
    out = images.check_runtime(RUNTIME)
    assert out.startswith(f"geeps {images.VERSION} torch 2."), out
    assert [b.size for b in built] and all(b.size > 0 for b in built)


@pytest.mark.parametrize("example", ["01-minimal", "02-digits-cnn"])
def test_example_succeeds_with_every_pod_a_hardened_container(
        ccluster, coperator, ckubectl, example):
    # The manifests as shipped (01's three epochs also give the kubelet time to look
    # inside each worker before it ends).
    ns = f"c-{example[:2]}"
    path = os.path.join(REPO, "examples", example, "job.yaml")
    r = ckubectl(ns, "apply", "-f", path)
    assert r.returncode == 0, r.stderr
    with open(path) as f:
        name = yaml.safe_load(f)["metadata"]["name"]
    try:
        done = ccluster.wait_phase(ns, name, "Succeeded", timeout=300)
    except AssertionError:
        logs = {p.name: ccluster.kubelet.log_text(ns, p.name) for p in ccluster.processes(ns)}
        raise AssertionError(f"{logs}\noperator:\n{coperator.log()}") from None
    assert done["status"]["restartCount"] == 0
    pods = {p.name for p in ccluster.processes(ns)}
    spec = done["spec"]
    assert len(pods) == spec["workers"]["replicas"] + spec["servers"]["replicas"]
    for pod in sorted(pods):
        _hardened(ccluster.kubelet.inside[f"{ns}/{pod}"])
    if spec.get("checkpoint", {}).get("everyClocks", 0) > 0:
        for pod in (p for p in pods if "-server-" in p):
            assert ccluster.kubelet.inside[f"{ns}/{pod}"].writes["GEEPS_CHECKPOINT_DIR"]
    r = ckubectl(ns, "get", "gj")
    assert r.stdout.splitlines()[1].split()[:2] == [name, "Succeeded"], r.stdout
    # Nothing of the job is left running once its servers are stopped.
    wait_for(lambda: all(p.exit_code is not None for p in ccluster.processes(ns)), 30,
             what="every container to exit")


def test_a_killed_server_container_recovers_from_its_checkpoint_volume(ccluster, coperator):
    ns = "c-durable"
    with open(os.path.join(REPO, "examples", "01-minimal", "job.yaml")) as f:
        body = yaml.safe_load(f)
    body["metadata"] = {"name": "durable", "namespace": ns}
    del body["spec"]["image"]           # the operator's --runtime-image applies
    body["spec"]["args"] = ["--epochs", "6"]
    body["spec"]["checkpoint"] = {"everyClocks": 5,
                                  "volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}
    body["spec"]["runPolicy"] = {"backoffLimit": 2}
    shards = os.path.join(ccluster.kubelet.claim_dir(ns, "ckpt"), "durable")
    with PhaseRecorder(ccluster, ns, "durable") as seen:
        ccluster.api.create_job(body)
        wait_for(lambda: (checkpoint.clocks(shards, 0) or [0])[0] >= 20, 120,
                 what="shard 0 to checkpoint clock 20")
        first = next(p for p in ccluster.processes(ns) if p.name == "durable-server-0")
        assert {p["spec"]["containers"][0]["image"]
                for p in ccluster.api.pods(ns, "durable")} == {RUNTIME}
        engine.run(engine.podman("kill", "--signal=KILL",
                                 ContainerKubelet.container_name(first)))
        done = ccluster.wait_phase(ns, "durable", "Succeeded", timeout=180)
        phases = seen.wait("Succeeded")
    assert phases.index("Running") < phases.index("Restarting") < phases.index("Succeeded")
    assert done["status"]["restartCount"] == 1
    wait_for(lambda: all(p.exit_code is not None for p in ccluster.processes(ns)), 30,
             what="every container to exit")
    server0 = [p for p in ccluster.processes(ns) if p.name == "durable-server-0"]
    assert [p.exit_code for p in server0] == [137, 0]
    assert "restored checkpoint clock" in ccluster.kubelet.log_text(ns, "durable-server-0")
    # The checkpoints were written by the container's user onto the claim's directory.
    assert os.stat(shards).st_uid == manifests.RUN_AS


def test_containers_of_a_crashed_run_are_removed(built):
    # A run killed outright (SIGKILL: no teardown) leaves its containers running; the
    # next run removes every container whose owner process is gone.
    dead = f"e2e-{_dead_pid()}"
    engine.run(engine.podman("run", "-d", "--pull=never", f"--label={engine.LABEL}={dead}",
                             "--network=none", *engine.ulimits(), "--entrypoint=sleep",
                             RUNTIME, "300"))
    assert len(engine.containers(dead)) == 1
    assert dead in engine.remove_stale("e2e-")
    assert engine.containers(dead) == []


def _dead_pid() -> int:
    pid = 4_000_000          # above any pid_max: never a live process
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


LIMITS = """
import os
def first(*paths):
    for p in paths:
        if os.path.exists(p):
            return open(p).read().strip()
print("memory", first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"))
print("cpu", first("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))
"""


def test_limits_are_the_containers_cgroup_limits(ccluster, coperator):
    # limits.memory and limits.cpu reach the container's cgroup (requests do not: they
    # are a scheduler's business); read from inside the worker.
    from .jobs import job
    ns = "c-limits"
    body = job(ns, "limits", LIMITS, image=RUNTIME)
    body["spec"]["workers"]["resources"] = {"requests": {"cpu": "100m"},
                                            "limits": {"cpu": "500m", "memory": "300Mi"}}
    ccluster.api.create_job(body)
    ccluster.wait_phase(ns, "limits", "Succeeded", timeout=120)
    log = ccluster.kubelet.log_text(ns, "limits-worker-0")
    assert f"memory {300 * 2**20}" in log, log
    assert re.search(r"^cpu 50000\b", log, re.M), log      # 0.5 of a 100 ms period
