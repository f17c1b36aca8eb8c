"""`geeps operator` flags, API connection resolution, RBAC rule shapes and metrics."""
from __future__ import annotations

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from geeps_operator import main, metrics, rbac
from tests.helpers import REPO


def test_namespaces_and_cluster_wide():
    cfg = main.config(["--server", "http://127.0.0.1:1", "-n", "a", "--namespace", "b"])
    assert cfg.namespaces == ("a", "b") and not cfg.clusterwide
    cfg = main.config(["--server", "http://127.0.0.1:1", "--all-namespaces",
                       "--resync-seconds", "2.5", "--health-port", "0", "--metrics-port", "0"])
    assert cfg.clusterwide and cfg.resync_seconds == 2.5 and cfg.health_port == 0
    assert cfg.connection.server == "http://127.0.0.1:1"


def test_server_with_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cfg = main.config(["--server", "https://api:6443", "--token-file", str(token),
                       "--insecure-skip-tls-verify"])
    assert cfg.connection.as_http_headers() == {"Authorization": "Bearer s3cret"}
    assert cfg.connection.insecure is True


def test_kubeconfig(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    kc = tmp_path / "config"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://k:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u",
                                               "namespace": "ml"}}]}))
    cfg = main.config(["--kubeconfig", str(kc)])
    assert cfg.connection.server == "https://k:6443"
    assert cfg.connection.default_namespace == "ml"


@pytest.mark.parametrize("argv,message", [
    (["--kubeconfig", "/nonexistent/kubeconfig"], "no such file"),
    (["--server", "http://x", "--resync-seconds", "0"], "--resync-seconds must be > 0"),
    (["--server", "http://x", "--metrics-port", "70000"], "--metrics-port must be 0-65535"),
    (["--server", "http://x", "--token-file", "/nonexistent/token"], "--token-file"),
])
def test_bad_flags_are_refused_with_a_message(argv, message, capsys):
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_namespace_and_all_namespaces_exclude_each_other():
    r = subprocess.run([sys.executable, "-m", "geeps", "operator", "-n", "a", "-A"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_rules_render_as_valid_rbac():
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "geeps-operator"},
            "rules": [*rbac.JOB_RBAC_RULES, *rbac.CLUSTER_RULES, *rbac.NAMESPACE_RULES]}
    kubernetes_validate.validate(role, "1.33", strict=True)
    assert rbac.covers(rbac.JOB_RBAC_RULES, "", "pods", "create")
    assert not rbac.covers(rbac.JOB_RBAC_RULES, "", "pods/log", "get")   # progress: HTTP
    assert not rbac.covers(rbac.JOB_RBAC_RULES, "", "secrets", "get")
    out = subprocess.run([sys.executable, "-m", "geeps_operator.rbac"], capture_output=True,
                         text=True, cwd=REPO, check=True, timeout=60).stdout
    assert yaml.safe_load(out)["rules"] == [dict(r) for r in rbac.JOB_RBAC_RULES]


def test_metrics_live_in_their_own_registry():
    from prometheus_client import REGISTRY as DEFAULT, generate_latest
    metrics.observe_phase("ns/a", "Running")
    metrics.observe_phase("ns/b", "Running")
    metrics.observe_phase("ns/b", "Succeeded")
    with metrics.reconciling("timer"):
        pass
    with pytest.raises(KeyError):
        with metrics.reconciling("pod"):
            raise KeyError("x")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'geeps_operator_jobs{phase="Running"} 1.0' in text
    assert 'geeps_operator_jobs{phase="Succeeded"} 1.0' in text
    assert 'geeps_operator_reconcile_errors_total{kind="KeyError"} 1.0' in text
    assert 'geeps_operator_reconciles_total{trigger="timer"}' in text
    assert "geeps_operator" not in generate_latest(DEFAULT).decode()
    metrics.observe_phase("ns/a", None)
    metrics.observe_phase("ns/b", None)
