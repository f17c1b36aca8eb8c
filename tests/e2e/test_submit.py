"""`geeps submit|status|logs|delete` and their Python API (geeps_operator.sdk), with the
official Kubernetes client, against the API emulator and the operator."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.e2e


def geeps(kubeconfig: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geeps", *args, "--kubeconfig", kubeconfig],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def minimal(epochs: int = 1) -> dict:
    import yaml
    with open(os.path.join(REPO, "examples", "01-minimal", "job.yaml")) as f:
        body = yaml.safe_load(f)
    body["spec"]["args"] = ["--epochs", str(epochs)]
    return body


def test_submit_status_logs_delete_from_the_command_line(cluster, operator, ns, kubeconfig,
                                                          tmp_path):
    import yaml
    job = tmp_path / "job.yaml"             # examples/01-minimal, one epoch
    job.write_text(yaml.safe_dump(minimal()))
    out = geeps(kubeconfig, "submit", str(job), "-n", ns, "--wait", "--timeout", "90")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"geepsjob minimal created in namespace {ns}" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("minimal  Succeeded"), out.stdout

    out = geeps(kubeconfig, "status", "minimal", "-n", ns)
    assert out.returncode == 0 and out.stdout.startswith("minimal  Succeeded"), out.stderr
    out = geeps(kubeconfig, "status", "-n", ns)
    assert out.stdout.splitlines()[0].startswith("minimal  Succeeded")

    out = geeps(kubeconfig, "logs", "minimal", "-n", ns, "--role", "worker", "--rank", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "worker 0's log is empty"
    out = geeps(kubeconfig, "logs", "minimal", "-n", ns, "--rank", "7")
    assert out.returncode == 1 and "no worker 7 pod" in out.stderr

    out = geeps(kubeconfig, "delete", "minimal", "-n", ns, "--wait")
    assert out.returncode == 0, out.stderr
    assert cluster.api.job(ns, "minimal") is None
    out = geeps(kubeconfig, "status", "minimal", "-n", ns)
    assert out.returncode == 1 and "HTTP 404" in out.stderr


def test_a_bad_manifest_is_named_before_anything_is_sent(cluster, ns, kubeconfig, tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("apiVersion: geeps.dev/v1alpha1\nkind: GeePSJob\nmetadata: {name: x}\n"
                   "spec: {command: [python], workers: {replicas: -1}}\n")
    out = geeps(kubeconfig, "submit", str(bad), "-n", ns)
    assert out.returncode == 2 and "spec.workers.replicas" in out.stderr, out.stderr
    assert cluster.api.job(ns, "x") is None


def test_the_python_api_submits_and_follows_a_job(cluster, operator, ns, kubeconfig):
    from geeps_operator.sdk import Jobs, describe
    body = minimal()
    body["metadata"]["name"] = "notebook"
    jobs = Jobs(ns, config_file=kubeconfig)
    assert jobs.submit(body) == "notebook"
    phases = [(j.get("status") or {}).get("phase") for j in jobs.watch("notebook", 90,
                                                                        poll=0.2)]
    assert phases[-1] == "Succeeded" and "Running" in phases, phases
    assert describe(jobs.get("notebook")).startswith("notebook  Succeeded")
    assert [p["metadata"]["labels"]["geeps.dev/role"]
            for p in jobs.pods("notebook", role="worker")] == ["worker", "worker"]
