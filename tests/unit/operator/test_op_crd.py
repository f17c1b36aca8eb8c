"""The CRD: generated from the spec model, valid for the API server, and refusing the
invalid manifests the schema and CEL can refuse (evaluated for real with cel-python)."""
from __future__ import annotations

import copy
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from geeps.job import spec as _spec
from geeps_operator import crd
from tests.e2e.invalid_jobs import CASES, base, manifest
from tests.helpers import REPO


def _version() -> dict:
    return crd.build_crd()["spec"]["versions"][0]


def test_the_crd_is_a_valid_kubernetes_object():
    kubernetes_validate.validate(crd.build_crd(), "1.33", strict=True)


def test_spec_schema_is_the_spec_models_one_source_of_truth():
    schema = _version()["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"] == _spec.crd_schema()
    for rule in _spec.CROSS_FIELD_RULES:      # each sits on the object its path names
        node = schema
        for part in rule.path.split("."):
            node = node["properties"][part]
        assert {"rule": rule.cel, "message": rule.message, "fieldPath": rule.field,
                "reason": "FieldValueInvalid"} in node["x-kubernetes-validations"]


def test_names_subresource_and_printer_columns():
    c = crd.build_crd()
    assert c["metadata"]["name"] == "geepsjobs.geeps.dev"
    assert c["spec"]["names"]["shortNames"] == ["gj"]
    assert c["spec"]["names"]["kind"] == "GeePSJob"
    v = _version()
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    assert v["subresources"] == {"status": {}}
    assert [col["name"] for col in v["additionalPrinterColumns"]] == \
        ["Phase", "Workers", "Clock", "Restarts", "Age"]
    # Each column's path leads to a field the status schema declares, with the same type.
    status = v["schema"]["openAPIV3Schema"]["properties"]["status"]
    for col in v["additionalPrinterColumns"]:
        parts = col["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        node = {"properties": {"status": status}}
        for p in parts:
            node = node["properties"][p]
        assert node["type"] == col["type"], col


def _structural_problems(node: dict, where: str = "") -> list[str]:
    """The rules of a structural schema the API server enforces on CRDs."""
    out = []
    if not (node.get("type") or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")):
        out.append(f"{where or '<root>'}: no type")
    if "properties" in node and isinstance(node.get("additionalProperties"), dict):
        out.append(f"{where}: properties and additionalProperties together")
    for k, sub in (node.get("properties") or {}).items():
        out += _structural_problems(sub, f"{where}.{k}")
    if isinstance(node.get("items"), dict):
        out += _structural_problems(node["items"], f"{where}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _structural_problems(node["additionalProperties"], f"{where}{{}}")
    for forbidden in ("$ref", "definitions", "oneOf", "not", "allOf"):
        if forbidden in node:
            out.append(f"{where}: {forbidden} is not allowed in a structural schema")
    return out


def test_the_schema_is_structural():
    assert _structural_problems(_version()["schema"]["openAPIV3Schema"]) == []


def test_python_m_prints_the_same_yaml():
    out = subprocess.run([sys.executable, "-m", "geeps_operator.crd"], capture_output=True,
                         text=True, cwd=REPO, check=True).stdout
    assert out == crd.to_yaml()
    assert yaml.safe_load(out) == crd.build_crd()


# ---- the CRD refuses what it can ---------------------------------------------------------

def _schema_errors(obj: dict) -> list[str]:
    schema = _version()["schema"]["openAPIV3Schema"]
    v = jsonschema.Draft202012Validator(schema)
    out = []
    for e in v.iter_errors(obj):
        path = ".".join(str(p) for p in e.absolute_path)
        out.append(path)
    return out


def _cel_rules(node: dict, path: str = ""):
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule
    for k, sub in (node.get("properties") or {}).items():
        yield from _cel_rules(sub, f"{path}.{k}" if path else k)


try:
    import celpy
except ImportError:         # the [dev] extra has it; without it the CEL checks are skipped
    celpy = None


def _cel_failures(obj: dict) -> list[str] | None:
    """Messages of the CEL rules `obj` breaks, evaluated on the defaulted object as the
    API server does (defaulting runs before validation); None without cel-python."""
    if celpy is None:
        return None
    if _schema_errors(obj):       # the API server reports these; its rules see typed values
        return []
    env = celpy.Environment()
    obj = copy.deepcopy(obj)
    _spec.apply_defaults(obj["spec"])
    out = []
    for path, rule in _cel_rules(_version()["schema"]["openAPIV3Schema"]):
        node = obj
        for p in path.split(".") if path else []:
            node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            continue
        result = env.program(env.compile(rule["rule"])).evaluate(
            {"self": celpy.json_to_cel(node)})
        if not bool(result):
            out.append(rule["message"])
    return out


def test_the_valid_base_passes_schema_and_cel():
    assert _schema_errors(base()) == []
    assert _cel_failures(base()) in ([], None)


@pytest.mark.skipif(celpy is None, reason="cel-python is not installed")
def test_cel_rules_compile_and_match_their_python_twins():
    for case_id, _, field, layer in CASES:
        failures = _cel_failures(manifest(case_id))
        if layer == "cel":
            assert failures, case_id
        elif layer == "pruned":          # (a schema case may break a rule as well)
            assert failures == [], (case_id, failures)


@pytest.mark.parametrize("case_id,field,layer", [(c[0], c[2], c[3]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_invalid_manifest_is_refused_by_the_layer_that_can(case_id, field, layer):
    m = manifest(case_id)
    schema_errors = _schema_errors(m)
    cel = _cel_failures(m)
    dotted = field.replace("[", ".").replace("]", "")
    if layer == "schema":
        assert any(dotted.startswith(p) or p.startswith(dotted) for p in schema_errors), \
            (schema_errors, field)
    elif layer == "cel":
        assert schema_errors == []
        assert cel is None or any(field in msg for msg in cel), cel
    else:   # pruned: valid for the schema (the field is dropped), refused by the operator
        assert schema_errors == [] and cel in ([], None)
    with pytest.raises(_spec.SpecError) as err:
        _spec.validate(m)
    assert field in [f for f, _ in err.value.problems]
