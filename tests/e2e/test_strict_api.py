"""The emulated API server refuses what kube-apiserver refuses (tests/e2e/apiserver.py),
and the CRD, `geeps run` and the operator's status writes agree with it.

The valid manifests go in with dryRun=All (admitted and answered, never stored, as
`kubectl apply --dry-run=server`), so the shared operator never runs a thousand-worker
job; the invalid ones for real, so that one let through would show in the namespace."""
from __future__ import annotations

import copy
import datetime as _dt
import os

import pytest
import yaml

from geeps.job import spec as _spec
from geeps.launch import launcher
from geeps_operator import crd, manifests
from geeps_operator import status as s
from tests.helpers import REPO

from .apiserver import CustomResource, Refused
from .invalid_jobs import CASES, UNUSUAL, base, manifest
from .jobs import job

pytestmark = pytest.mark.e2e

STRICT = {"fieldValidation": "Strict"}                  # as kubectl sends it
DRY = {**STRICT, "dryRun": "All"}


def _post(cluster, ns: str, body: dict, params: dict | None = None):
    return cluster.api.send("POST", cluster.api.job_path(ns), body, params=params)


def test_each_invalid_manifest_is_refused_by_the_api_server_naming_the_field(cluster, ns):
    assert len(CASES) >= 60
    for case_id, _, field, layer in CASES:
        if layer == "installed":        # the API server cannot know what is installed
            r = _post(cluster, ns, manifest(case_id, ns), DRY)
            assert r.status_code == 201, (case_id, r.text[:300])
            continue
        r = _post(cluster, ns, manifest(case_id, ns), STRICT)
        assert r.status_code in (400, 422), (case_id, r.status_code, r.text[:300])
        status = r.json()
        assert status["kind"] == "Status" and field in status["message"], (case_id, status)
        assert field in [c["field"] for c in status["details"]["causes"]], (case_id, status)
    assert cluster.api.items(cluster.api.job_path(ns)) == []


def test_geeps_run_refuses_each_invalid_manifest_naming_the_field(tmp_path, capsys):
    for case_id, _, field, _ in CASES:
        path = tmp_path / f"{case_id}.yaml"
        path.write_text(yaml.safe_dump(manifest(case_id)))
        assert launcher.run([str(path)]) == launcher.EXIT_USAGE, case_id
        err = capsys.readouterr().err
        assert f"geeps run: {path}: {field}: " in err, (case_id, err)


def test_unusual_but_valid_manifests_pass_both(cluster, ns, tmp_path):
    assert len(UNUSUAL) >= 6
    for case_id, _ in UNUSUAL:
        m = manifest(case_id, ns)
        r = _post(cluster, ns, m, DRY)
        assert r.status_code == 201, (case_id, r.text[:500])
        assert "Warning" not in r.headers, (case_id, r.headers["Warning"])
        path = tmp_path / f"{case_id}.yaml"
        path.write_text(yaml.safe_dump(m))
        args, command = launcher.parse_args([str(path)])
        assert launcher.load_job(args, command).name == m["metadata"]["name"]


def test_field_validation_strict_warn_ignore(cluster, ns):
    body = base(ns, "typo")
    body["spec"]["workers"]["replicaz"] = 3
    body["spec"]["runPolicy"] = {"suspend": True}       # no pods: the operator just waits
    strict = _post(cluster, ns, body, {"fieldValidation": "Strict"})
    assert strict.status_code == 400
    assert 'unknown field "spec.workers.replicaz"' in strict.json()["message"]
    assert cluster.api.job(ns, "typo") is None

    warned = _post(cluster, ns, body)                  # the API server's default: Warn
    assert warned.status_code == 201
    assert warned.headers["Warning"] == r'299 - "unknown field \"spec.workers.replicaz\""'
    stored = cluster.api.job(ns, "typo")
    assert "replicaz" not in stored["spec"]["workers"]
    # Defaulted as the schema says, on the stored object.
    assert stored["spec"]["workers"]["restartPolicy"] == "OnFailure"
    assert stored["spec"]["consistency"] == {"model": "BSP", "slack": 0}

    body["metadata"]["name"] = "typo-quiet"
    quiet = _post(cluster, ns, body, {"fieldValidation": "Ignore"})
    assert quiet.status_code == 201 and "Warning" not in quiet.headers
    assert "replicaz" not in quiet.json()["spec"]["workers"]


def test_status_is_a_subresource_validated_by_its_schema(cluster, ns):
    body = base(ns, "sub")
    body["spec"]["runPolicy"] = {"suspend": True}
    body["status"] = {"phase": "Succeeded"}
    created = _post(cluster, ns, body).json()
    assert "status" not in created                    # a create never sets status
    path = cluster.api.job_path(ns, "sub")
    merge = "application/merge-patch+json"

    r = cluster.api.send("PATCH", path, {"status": {"phase": "Failed"},
                                         "spec": {"args": ["x"]}}, content_type=merge)
    assert r.status_code == 200
    assert r.json()["spec"]["args"] == ["x"]
    assert (r.json().get("status") or {}).get("phase") != "Failed"

    r = cluster.api.send("PATCH", path + "/status", {"spec": {"args": ["y"]},
                                                     "status": {"clock": 3}},
                         content_type=merge)
    assert r.status_code == 200
    assert r.json()["spec"]["args"] == ["x"] and r.json()["status"]["clock"] == 3

    bad = cluster.api.send("PATCH", path + "/status", {"status": {"conditions": [
        {"type": "Bogus", "status": "True"}]}}, content_type=merge)
    assert bad.status_code == 422
    assert "status.conditions[0].type" in [c["field"] for c in bad.json()["details"]["causes"]]
    bad = cluster.api.send("PATCH", path + "/status", {"status": {"phase": "Done"}},
                           content_type=merge)
    assert bad.status_code == 422 and "status.phase" in bad.json()["message"]


def test_the_crd_without_checkpoints_durable_refuses_the_operators_write():
    """What a cluster did before the condition joined the CRD's enum: the very status
    write the operator makes for a job with checkpoints and no volume is refused."""
    old = copy.deepcopy(crd.build_crd())
    item = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"][
        "properties"]["conditions"]["items"]["properties"]["type"]
    item["enum"] = [t for t in item["enum"] if t != "CheckpointsDurable"]
    stored, _ = CustomResource(old, _spec.VERSION).admit(
        base(), old=None, subresource=None, field_validation="Strict")
    write = copy.deepcopy(stored)
    now = _dt.datetime.now(_dt.timezone.utc)
    conditions = s.set_condition([], "Created", "Created", "made", now)
    write["status"] = {"conditions": s.set_condition(conditions, "CheckpointsDurable",
                                                      "EmptyDir", "emptyDir", now, "False")}
    with pytest.raises(Refused) as err:
        CustomResource(old, _spec.VERSION).admit(write, old=stored, subresource="status",
                                                 field_validation=None)
    assert err.value.code == 422
    assert err.value.causes[0][0] == "status.conditions[1].type"
    # Today's CRD takes it.
    CustomResource(crd.build_crd(), _spec.VERSION).admit(
        write, old=stored, subresource="status", field_validation=None)


def test_a_readme_job_with_checkpoints_and_no_volume_succeeds(cluster, operator, ns):
    cluster.api.create_job(job(ns, "ckpt", "pass", checkpoint={"everyClocks": 10}))
    done = cluster.wait_phase(ns, "ckpt", "Succeeded", timeout=30)
    durable = s.condition(done["status"]["conditions"], "CheckpointsDurable")
    assert durable["status"] == "False" and durable["reason"] == "EmptyDir"


def test_one_list_of_condition_types():
    status = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["status"]
    enum = status["properties"]["conditions"]["items"]["properties"]["type"]["enum"]
    assert enum == list(s.CONDITIONS)
    with pytest.raises(ValueError, match="Bogus"):
        s.set_condition([], "Bogus", "R", "m", _dt.datetime.now(_dt.timezone.utc))
    # The docs' table of conditions is this list, word for word.
    with open(os.path.join(REPO, "docs", "install.md")) as f:
        text = f.read()
    table = text[text.index("| condition | meaning |"):].split("\n\n")[0].splitlines()[2:]
    assert table == [f"| `{t}` | {m} |" for t, m in s.CONDITIONS.items()]


def test_the_schema_knows_the_server_port():
    assert _spec.SERVER_PORT == manifests.SERVER_PORT


def test_builtin_objects_are_validated_like_the_api_server(cluster, ns):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": ns},
           "spec": {"containers": [{"name": "c", "image": "i", "imagePolicy": "Always"}]}}
    path = cluster.api.path("pods", ns)
    r = cluster.api.send("POST", path, pod, params=DRY)
    assert r.status_code == 422 and "imagePolicy" in r.json()["message"]
    r = cluster.api.send("POST", path, pod, params={"dryRun": "All"})
    assert r.status_code == 201 and "imagePolicy" in r.headers["Warning"]
    broken = copy.deepcopy(pod)
    broken["spec"]["containers"][0] = {"name": "c", "image": "i", "ports": "80"}
    r = cluster.api.send("POST", path, broken, params={"dryRun": "All"})
    assert r.status_code == 422 and "ports" in r.json()["message"]
