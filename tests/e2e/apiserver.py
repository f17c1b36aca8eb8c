"""What kube-apiserver does to a write before storing it, for the emulator (emulator.py).

    admission = CustomResource(crd, "v1alpha1")
    obj, warnings = admission.admit(body, old=None, subresource=None, field_validation="Strict")
    builtin_problems(pod, "Strict")          # Pods, Services... through kubernetes-validate

CustomResource follows apiextensions-apiserver, step by step:

1. decoding: fields the structural schema does not declare (outside
   x-kubernetes-preserve-unknown-fields) are refused under fieldValidation=Strict
   (HTTP 400, "strict decoding error: unknown field ..."), reported in Warning headers
   under Warn (the API server's default) and silently dropped under Ignore; they are
   pruned in every case;
2. defaulting from the schema's `default`s;
3. the status subresource: a write to the object keeps the stored status, a write to
   /status keeps everything but status (and labels, annotations and finalizers);
4. validation of the whole object (status included) against openAPIV3Schema
   (jsonschema), then every `x-kubernetes-validations` rule, evaluated with cel-python
   on the defaulted object, where CEL sees only the declared fields (as on a cluster);
   failures answer HTTP 422 with one cause per field, as the API server's Status does.

Where this cannot match the real server, on purpose or not: CEL rules are evaluated,
never priced (the API server refuses a CRD whose rules' estimated cost is too high;
bounding lists with maxItems is what keeps ours cheap there), transition rules
(oldSelf) and validation ratcheting of unchanged fields are not emulated, cel-python's
library lacks some Kubernetes CEL extensions (quantity(), url(), format), messages
follow the API server's wording but not to the letter, and metadata is checked only for
a name (the CRD's own root rule checks its length).
"""
from __future__ import annotations

import copy
import json
import re
from typing import Any

import celpy
import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.33"
FIELD_VALIDATION = ("Strict", "Warn", "Ignore")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Metadata keys a /status write may change besides status (the API server's
# status strategy resets the rest of metadata and spec).
STATUS_METADATA = ("labels", "annotations", "finalizers", "ownerReferences",
                   "resourceVersion")


class Refused(Exception):
    """The API server's refusal: HTTP `code`, and (field, message) causes."""

    def __init__(self, code: int, reason: str, message: str,
                 causes: list[tuple[str, str]] = ()):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.causes = list(causes)

    def status(self, kind: str, name: str | None) -> dict:
        """The `Status` body the API server answers with."""
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": self.code, "reason": self.reason, "message": self.message,
                "details": {"name": name or "", "kind": kind,
                            "causes": [{"reason": "FieldValueInvalid", "field": f,
                                        "message": m} for f, m in self.causes]}}


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# ---- 1. unknown fields ----------------------------------------------------------------

def prune(obj: Any, schema: dict, where: str = "") -> list[str]:
    """Drop the fields `schema` does not declare, in place; their paths, for the
    warnings or the refusal. ObjectMeta is the API server's own: left as it is."""
    dropped: list[str] = []
    # A value of the wrong type is validation's to refuse, not pruning's to empty.
    if isinstance(obj, dict) and schema.get("type") in (None, "object"):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key in list(obj):
            sub = where + "." + key if where else key
            if props is not None and key in props:
                if sub != "metadata":
                    dropped += prune(obj[key], props[key], sub)
            elif isinstance(extra, dict):
                dropped += prune(obj[key], extra, sub)
            elif schema.get("x-kubernetes-preserve-unknown-fields") or extra is True:
                continue
            elif where == "" and key in ("apiVersion", "kind", "metadata"):
                continue
            else:
                dropped.append(sub)
                del obj[key]
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            dropped += prune(item, schema["items"], f"{where}[{i}]")
    return dropped


# ---- 2. defaulting --------------------------------------------------------------------

def default(obj: Any, schema: dict) -> Any:
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                default(obj[key], sub)
        if isinstance(schema.get("additionalProperties"), dict):
            for value in obj.values():
                default(value, schema["additionalProperties"])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            default(item, schema["items"])
    return obj


# ---- 4. validation --------------------------------------------------------------------

def _schema_message(e: jsonschema.ValidationError) -> tuple[str, str]:
    """(field, message) in the API server's words."""
    field = _path(e.absolute_path)
    v, want, got = e.validator, e.validator_value, e.instance
    if v == "required":
        missing = e.message.split("'")[1]
        return _path([*e.absolute_path, missing]), "Required value"
    if v == "enum":
        return field, (f"Unsupported value: {json.dumps(got)}: supported values: "
                       + ", ".join(json.dumps(x) for x in want))
    if v == "minimum":
        return field, f"Invalid value: {json.dumps(got)}: should be greater than or equal to {want}"
    if v == "maximum":
        return field, f"Invalid value: {json.dumps(got)}: should be less than or equal to {want}"
    if v == "type":
        return field, f"Invalid value: {json.dumps(got)}: {field} in body must be of type {want}"
    if v == "pattern":
        return field, f"Invalid value: {json.dumps(got)}: {field} in body should match '{want}'"
    if v == "minLength":
        return field, f"Invalid value: {json.dumps(got)}: should be at least {want} chars long"
    if v == "minItems":
        return field, f"Invalid value: {len(got)}: {field} in body should have at least " \
                      f"{want} items"
    if v == "maxItems":
        return field, f"Too many: {len(got)}: must have at most {want} items"
    if v == "format":
        return field, f"Invalid value: {json.dumps(got)}: {field} in body must be of type {want}"
    if v == "anyOf":     # x-kubernetes-int-or-string
        return field, f"Invalid value: {json.dumps(got)}: {e.message}"
    return field, f"Invalid value: {json.dumps(got)}: {e.message}"


def declared(value: Any, schema: dict) -> Any:
    """`value` as CEL sees it: the undeclared fields of a preserve-unknown-fields object
    are invisible to rules on a cluster, so a rule may not read them here either."""
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is not None:
            return {k: declared(v, props[k]) for k, v in value.items() if k in props}
        if isinstance(extra, dict):
            return {k: declared(v, extra) for k, v in value.items()}
        return {} if schema.get("x-kubernetes-preserve-unknown-fields") else value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [declared(v, schema["items"]) for v in value]
    return value


class CelRules:
    """Every x-kubernetes-validations rule of a schema, compiled once."""

    def __init__(self, schema: dict):
        self.env = celpy.Environment()
        self._programs: dict[str, Any] = {}
        self.schema = schema

    def _program(self, rule: str):
        if rule not in self._programs:
            self._programs[rule] = self.env.program(self.env.compile(rule))
        return self._programs[rule]

    def failures(self, obj: Any, schema: dict | None = None, where: str = "") \
            -> list[tuple[str, str]]:
        schema = self.schema if schema is None else schema
        out: list[tuple[str, str]] = []
        if obj is None:
            return out
        for rule in schema.get("x-kubernetes-validations", []):
            activation = {"self": celpy.json_to_cel(declared(obj, schema))}
            try:
                ok = bool(self._program(rule["rule"]).evaluate(activation))
                message = rule.get("message") or f"failed rule: {rule['rule']}"
            except celpy.CELEvalError as e:       # the API server reports these too
                ok, message = False, f"{rule['rule']}: {e}"
            if not ok:
                field = where + rule.get("fieldPath", "")
                out.append((field.lstrip(".") or "<root>", f"Invalid value: {message}"))
        if isinstance(obj, dict):
            for key, sub in (schema.get("properties") or {}).items():
                if key in obj:
                    out += self.failures(obj[key], sub, f"{where}.{key}")
            if isinstance(schema.get("additionalProperties"), dict):
                for key, value in obj.items():
                    out += self.failures(value, schema["additionalProperties"], f"{where}.{key}")
        elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(obj):
                out += self.failures(item, schema["items"], f"{where}[{i}]")
        return out


class CustomResource:
    """The API server's handling of writes to one version of a CRD."""

    def __init__(self, crd: dict, version: str):
        spec = crd["spec"]
        v = next(x for x in spec["versions"] if x["name"] == version)
        self.kind = spec["names"]["kind"]
        self.version = version
        self.group_kind = f"{self.kind}.{spec['group']}"
        self.schema = v["schema"]["openAPIV3Schema"]
        self.status_subresource = "status" in (v.get("subresources") or {})
        self.validator = jsonschema.Draft202012Validator(
            self.schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        self.rules = CelRules(self.schema)

    def admit(self, body: dict, *, old: dict | None, subresource: str | None,
              field_validation: str | None) -> tuple[dict, list[str]]:
        """The object to store for a create (old None) or an update whose result is
        `body`, and the warnings to send; raises Refused."""
        mode = field_validation or "Warn"
        if mode not in FIELD_VALIDATION:
            raise Refused(400, "BadRequest", f"fieldValidation must be one of "
                                             f"{', '.join(FIELD_VALIDATION)} (got {mode!r})")
        obj = copy.deepcopy(body)
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str) or not DNS_SUBDOMAIN.match(name) or len(name) > 253:
            raise Refused(422, "Invalid", f'{self.group_kind} "{name}" is invalid: '
                          f"metadata.name: Invalid value: {json.dumps(name)}: a lowercase "
                          f"RFC 1123 subdomain must consist of lower case alphanumeric "
                          f"characters, '-' or '.'", [("metadata.name", "Invalid value")])
        unknown = prune(obj, self.schema)
        # Unknown fields in a part the subresource ignores anyway are not the writer's.
        if self.status_subresource:
            unknown = [u for u in unknown if u.startswith("status") == (subresource == "status")
                       or u.startswith("metadata")]
        if unknown and mode == "Strict":
            raise Refused(400, "BadRequest",
                          f'{self.kind} in version "{self.version}" cannot be handled as a '
                          f"{self.kind}: strict "
                          f"decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown),
                          [(u, "field not declared in schema") for u in unknown])
        warnings = [f'unknown field "{u}"' for u in unknown] if mode == "Warn" else []
        if self.status_subresource:
            obj = self._subresource(obj, old, subresource)
        default(obj, self.schema)
        problems = sorted({_schema_message(e) for e in self.validator.iter_errors(obj)})
        if not problems:
            problems = self.rules.failures(obj)
        if problems:
            raise Refused(422, "Invalid",
                          f'{self.group_kind} "{name}" is invalid: '
                          + ", ".join(f"{f}: {m}" for f, m in problems), problems)
        if old is not None and subresource != "status" and obj.get("spec") != old.get("spec"):
            # A spec change moves metadata.generation (the status subresource's rule).
            meta = obj.setdefault("metadata", {})
            meta["generation"] = int((old.get("metadata") or {}).get("generation") or 1) + 1
        return obj, warnings

    @staticmethod
    def _subresource(obj: dict, old: dict | None, subresource: str | None) -> dict:
        if old is None:                       # a create never sets status
            obj.pop("status", None)
            return obj
        if subresource == "status":
            out = copy.deepcopy(old)
            meta = obj.get("metadata") or {}
            for key in STATUS_METADATA:
                if key in meta:
                    out.setdefault("metadata", {})[key] = meta[key]
            if "status" in obj:
                out["status"] = obj["status"]
            else:
                out.pop("status", None)
            return out
        obj.pop("status", None)
        if "status" in old:
            obj["status"] = copy.deepcopy(old["status"])
        return obj


def builtin_problems(obj: dict, field_validation: str | None) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a built-in object, from the upstream OpenAPI schemas
    (kubernetes-validate): a wrong type or a missing field is an error; an unknown
    field an error under Strict, a warning otherwise. [] for kinds it has no schema of."""
    def messages(strict: bool) -> list[str]:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=strict)
        except kubernetes_validate.SchemaNotFoundError:
            return []
        except kubernetes_validate.ValidationError as e:
            where = _path(list(getattr(e, "path", []) or []))
            return [f"{where or '<root>'}: {str(e).splitlines()[0]}"]
        return []
    errors = messages(strict=False)
    if errors:
        return errors, []
    unknown = messages(strict=True)
    if field_validation == "Strict":
        return unknown, []
    return [], unknown if field_validation != "Ignore" else []
