"""`geeps sandbox up`, then kubectl with the kubeconfig it wrote, then `down`: the flow
docs/install.md promises a laptop, as a user runs it (separate processes, real
kubectl). In containers where podman is installed (marked `containers`), and as
processes.

`python -m geeps_sandbox` is the same command as `geeps sandbox` (an entry point of
the geeps.commands group, registered by `pip install -e .`)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from geeps_sandbox import engine
from tests.helpers import REPO, wait_for

pytestmark = pytest.mark.e2e


def _sandbox(d, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO] + [os.path.join(REPO, p) for p in ("runtime", "operator", "examples")]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-m", "geeps_sandbox", *args, "--dir", str(d)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _flow(d, containers: bool) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    up = _sandbox(d, "up", *([] if containers else ["--processes"]))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "EMULATOR of the Kubernetes API" in up.stdout and "not a cluster" in up.stdout
        state = json.loads((d / "state.json").read_text())
        assert state["containers"] is containers
        env = dict(os.environ, KUBECONFIG=str(d / "kubeconfig"), HOME=str(d))

        def kubectl(*args):
            return subprocess.run(["kubectl", *args], capture_output=True, text=True,
                                  timeout=60, env=env, cwd=REPO)
        r = kubectl("apply", "-f", "examples/01-minimal/job.yaml")
        assert r.returncode == 0 and "geepsjob.geeps.dev/minimal created" in r.stdout, r.stderr

        def phase():
            out = kubectl("get", "gj", "minimal", "-o", "jsonpath={.status.phase}").stdout
            assert out != "Failed", kubectl("describe", "gj", "minimal").stdout
            return out == "Succeeded"
        wait_for(phase, 300, 0.5, "the job to reach Succeeded")
        table = kubectl("get", "gj").stdout.splitlines()
        assert table[1].split()[:2] == ["minimal", "Succeeded"], table
        if containers:
            assert engine.run(engine.podman("ps", "-a", "--filter",
                                            f"label={engine.LABEL}={state['owner']}",
                                            "--format", "{{.Names}}")).stdout.strip()
    finally:
        down = _sandbox(d, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not os.path.exists(f"/proc/{state['pid']}"), "the sandbox process is still there"
    if engine.available():
        assert engine.containers(state["owner"]) == []
    assert _sandbox(d, "status").returncode == 1


def test_sandbox_with_processes(tmp_path):
    _flow(tmp_path, containers=False)


@pytest.mark.containers
@pytest.mark.timeout(1800)      # `up` builds the images if this run has not yet
def test_sandbox_with_containers(tmp_path):
    if not engine.available():
        pytest.skip("podman and buildah are needed (./dev test installs them)")
    from .containers import stand_in_or_skip
    stand_in_or_skip()
    _flow(tmp_path, containers=True)


def test_sandbox_says_what_it_needs_without_a_checkout(tmp_path):
    # Installed without the repository (a wheel), it cannot find tests/e2e: it says so.
    pkg = tmp_path / "site" / "geeps_sandbox"
    shutil.copytree(os.path.join(REPO, "operator", "geeps_sandbox"), pkg)
    r = subprocess.run([sys.executable, "-m", "geeps_sandbox", "up", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                       env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")))
    assert r.returncode != 0 and "tests/e2e" in r.stderr and "clone" in r.stderr, r.stderr
