"""The GeePSJob manifest: its schema (one source of truth), defaults, validation, typed view.

`SCHEMA` is the OpenAPI v3 structural schema of `spec`; the operator's CRD is generated
from it (geeps_operator.crd) and `geeps run` validates manifests against it, so the
launcher, the operator and the API server accept exactly the same jobs. Rules across
fields, which a structural schema cannot state alone, are in CROSS_FIELD_RULES: each
carries the CEL expression the API server evaluates and the Python predicate the
launcher and operator evaluate. `GeePSJob` is the typed view, and the one place that
says who serves the shards (`shard_role`, `shards`, `server_processes`).

    job = spec.load_file("examples/01-minimal/job.yaml")   # raises SpecError
    job.workers.replicas, job.consistency, job.device_memory
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import jsonschema
import yaml

from geeps.job import consistency as _consistency
from geeps.job import exits
from geeps.job import memsettings
from geeps.job import tableopts
from geeps.job.units import QUANTITY_PATTERN, parse_bytes

GROUP = "geeps.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GeePSJob"
PLURAL = "geepsjobs"
# Pods are named <job>-worker-<i>; a Pod name is a DNS-1123 label of at most 63 characters.
MAX_NAME = 45
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DEFAULT_IMAGE = "geeps/runtime:0.1.0"
# More pods than this is a typo (a million workers), not a job; it also bounds the
# cost the API server estimates for CEL rules over per-pod lists.
MAX_REPLICAS = 1024
# Extra volumes or mounts per pod: bounded so the API server can price the CEL rules
# that compare the two lists.
MAX_VOLUMES = 64
# Pull secrets per job: a handful of registries, bounded like every list here.
MAX_PULL_SECRETS = 16
# Every shard listens on this port of its pod (the operator's manifests use it);
# a metrics port equal to it would make the pod's two listeners collide.
SERVER_PORT = 7777
# The coordinator of a coordinated job (`geeps coordinator`, GeePSJob.coordinated) serves
# its HTTP API here: GET /membership, POST /servers, DELETE /servers/<id>; the operator
# reaches it on the coordinator pod's IP.
COORDINATOR_PORT = 7778


class SpecError(ValueError):
    """A manifest that is not a valid GeePSJob; `problems` lists (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))

    @property
    def field(self) -> str:
        return self.problems[0][0]


def _preserve(description: str, type_: str = "object") -> dict:
    return {"type": type_, "description": description, "x-kubernetes-preserve-unknown-fields": True}


# Kubernetes' own quantity grammar (resource.Quantity), for resources.requests/limits.
# No leading "-": a negative request or limit is grammatical, but the kubelet refuses the pod.
K8S_QUANTITY_PATTERN = (r"^(\+)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
                        r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


def _quantity_map(description: str) -> dict:
    return {"type": "object", "description": description,
            "additionalProperties": {"x-kubernetes-int-or-string": True,
                                     "anyOf": [{"type": "integer"}, {"type": "string"}],
                                     "pattern": K8S_QUANTITY_PATTERN}}


def _named(description: str, required: tuple[str, ...] = (), **props: dict) -> dict:
    """A Kubernetes object kept whole, with the fields our rules read declared: CEL
    sees only declared fields of an object that preserves unknown ones."""
    out = _preserve(description)
    out["required"] = ["name", *required]
    out["properties"] = {"name": {"type": "string", "minLength": 1}, **props}
    return out


def _role(description: str, *, workers: bool) -> dict:
    props: dict[str, Any] = {
        "replicas": {"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS, "default": 1,
                     "description": "number of pods (processes in local mode)"},
        "restartPolicy": {"type": "string", "enum": list(exits.POLICIES),
                          "default": "OnFailure",
                          "description": "Never; OnFailure: any non-zero exit; ExitCode: "
                                         + exits.RETRYABLE_TEXT},
        "resources": {"type": "object", "description": "Kubernetes ResourceRequirements",
                      "properties": {"requests": _quantity_map("minimum resources"),
                                     "limits": _quantity_map("maximum resources")}},
        "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "node labels the pods must match"},
        "tolerations": {"type": "array", "items": _preserve("a Kubernetes Toleration"),
                        "description": "taints the pods tolerate"},
        "affinity": _preserve("Kubernetes Affinity"),
        "priorityClassName": {"type": "string", "description": "PriorityClass of the pods"},
        "volumes": {"type": "array", "maxItems": MAX_VOLUMES,
                    "items": _named("a Kubernetes Volume"),
                    "description": "extra pod volumes"},
        "volumeMounts": {"type": "array", "maxItems": MAX_VOLUMES,
                         "items": _named("a Kubernetes VolumeMount", ("mountPath",),
                                         mountPath={"type": "string", "minLength": 1}),
                         "description": "mounts of the extra volumes into the container"},
        "serviceAccountName": {"type": "string", "description": "ServiceAccount of the pods"},
    }
    if workers:
        props["gpus"] = {"type": "integer", "minimum": 0, "default": 1,
                         "description": "nvidia.com/gpu per worker pod"}
    else:
        props["colocate"] = {
            "type": "boolean", "default": False,
            "description": "each worker serves one shard itself and reaches it in memory "
                           "(GeePS's layout): no server pods; replicas is ignored, there "
                           "is one shard per worker"}
        props["replication"] = {
            "type": "integer", "minimum": 1, "maximum": MAX_REPLICAS, "default": 1,
            "description": "copies of every row range: the primary and k-1 replicas on "
                           "the next servers of the ring; a server lost with k >= 2 fails "
                           "over to a replica without rolling the job back"}
        props["elastic"] = {
            "type": "boolean", "default": False,
            "description": "servers may be added and removed while the job runs (a "
                           "coordinator moves row ranges; spec.servers.replicas of a "
                           "running job may change); implied by replication >= 2"}
    return {"type": "object", "description": description, "default": {}, "properties": props}


def _quantity(description: str) -> dict:
    return {"type": "string", "pattern": QUANTITY_PATTERN, "description": description}


# spec.cache's memory-plan settings (geeps.job.memsettings), read by the workers.
_MEMORY_PLAN: dict = {
    "stalls": {"type": "string", "enum": list(memsettings.STALL_LEVELS), "default": "warn",
               "description": "a memory plan that makes the worker wait for host->device "
                              "copies: refuse it (the worker fails, naming the operation), "
                              "warn (logged) or accept it"},
    "regions": {"type": "object",
                "description": "separate caps within deviceMemory (the sparse-LR report's "
                               "configuration); a region left out shares what the budget "
                               "leaves",
                "properties": {field: _quantity(what) for (field, _v, _a), what in zip(
                    memsettings.REGIONS.values(),
                    ("the access-buffer pool, e.g. 256Mi",
                     "training data pinned in device memory across clocks",
                     "parameter and accumulator rows pinned in device memory"))}},
    "torchDeviceBudget": _quantity(
        "device memory geeps.torch's DataParallel pages parameters, gradients and saved "
        "activations through (models larger than the device); unset = the whole model "
        "stays in device memory"),
}


SCHEMA: dict = {
    "type": "object",
    "required": ["command"],
    "properties": {
        # No schema default: a job without one gets the operator's --runtime-image (the
        # chart's runtimeImage values), so a platform points every job at its registry.
        "image": {"type": "string", "minLength": 1,
                  "description": "runtime image; default: the operator's (the chart's "
                                 "runtimeImage); ignored by `geeps run`"},
        "imagePullSecrets": {"type": "array", "maxItems": MAX_PULL_SECRETS,
                             "items": {"type": "object", "required": ["name"],
                                       "properties": {"name": {"type": "string",
                                                               "minLength": 1}}},
                             "description": "Secrets (in the job's namespace) for pulling "
                                            "the image from a private registry: "
                                            "[{name: regcred}]"},
        "imagePullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"],
                            "default": "IfNotPresent", "description": "pull policy of the image"},
        "command": {"type": "array", "minItems": 1, "items": {"type": "string"},
                    "description": "what each worker runs"},
        "args": {"type": "array", "items": {"type": "string"}, "default": [],
                 "description": "arguments appended to command"},
        "env": {"type": "array", "default": [],
                "description": "extra environment of workers (and servers)",
                "items": {"type": "object", "required": ["name"],
                          "properties": {"name": {"type": "string",
                                                  "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                                         "value": {"type": "string"},
                                         "valueFrom": _preserve("Kubernetes EnvVarSource")}}},
        "workingDir": {"type": "string", "description": "working directory of the command"},
        "nonFinite": {"type": "string", "enum": ["reject", "skip", "apply"],
                      "default": "reject",
                      "description": "a pushed gradient holding NaN or Inf: reject (the push "
                                     "is refused with an error naming worker, table, clock), "
                                     "skip (dropped and counted) or apply"},
        "tables": tableopts.SCHEMA,
        "servers": _role("parameter-server shards", workers=False),
        "workers": _role("training workers", workers=True),
        "consistency": {
            "type": "object", "default": {}, "description": "BSP | SSP (slack >= 1) | Async",
            "properties": {"model": {"type": "string", "enum": ["BSP", "SSP", "Async"],
                                     "default": "BSP"},
                           "slack": {"type": "integer", "minimum": 0, "default": 0,
                                     "description": "clocks of staleness allowed under SSP"}}},
        "cache": {"type": "object", "default": {}, "description": "the worker's memory manager",
                  "properties": {"deviceMemory": {"type": "string", "pattern": QUANTITY_PATTERN,
                                                  "description": "device-memory budget, e.g. 4Gi; "
                                                                 "unset = unlimited"},
                                 **_MEMORY_PLAN}},
        "checkpoint": {"type": "object", "default": {}, "description": "server checkpoints",
                       "properties": {"everyClocks": {"type": "integer", "minimum": 0,
                                                      "default": 0,
                                                      "description": "0 disables checkpoints"},
                                      "volume": _preserve("a Kubernetes volume source "
                                                          "holding the checkpoints")}},
        "metrics": {"type": "object", "default": {}, "description": "Prometheus metrics",
                    "properties": {"port": {"type": "integer", "minimum": 1, "maximum": 65535,
                                            "default": 9400}}},
        "security": {"type": "object", "default": {}, "description": "transport security",
                     "properties": {"insecure": {"type": "boolean", "default": False,
                                                 "description": "disable CurveZMQ (not for "
                                                                "production)"}}},
        "runPolicy": {
            "type": "object", "default": {}, "description": "how the job runs and ends",
            "properties": {
                "backoffLimit": {"type": "integer", "minimum": 0, "default": 3,
                                 "description": "pod restarts allowed before the job fails"},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1,
                                          "description": "seconds the job may run"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0,
                                            "description": "delete the job this long after "
                                                           "it finishes"},
                "cleanPodPolicy": {"type": "string", "enum": ["All", "Running", "None"],
                                   "default": "Running",
                                   "description": "pods deleted when the job ends"},
                "suspend": {"type": "boolean", "default": False,
                            "description": "true removes the pods; false brings them back"}}},
    },
}


@dataclass(frozen=True)
class Rule:
    path: str                          # the object the rule sits on, dotted
    cel: str                           # as the API server evaluates it
    message: str                       # names the field at fault
    check: Callable[[dict], bool]      # the same rule in Python, on the defaulted object
    field: str                         # the field at fault, relative to path (fieldPath)

    @property
    def field_path(self) -> str:
        return self.path + self.field


def _mounts_rule(role: str) -> Rule:
    def check(r: dict) -> bool:
        declared = {v.get("name") for v in r.get("volumes", [])}
        return all(m.get("name") in declared for m in r.get("volumeMounts", []))
    return Rule(f"spec.{role}",
                "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
                "self.volumes.exists(v, v.name == m.name))",
                f"spec.{role}.volumeMounts must each name a volume of spec.{role}.volumes",
                check, ".volumeMounts")


CROSS_FIELD_RULES: tuple[Rule, ...] = (
    Rule("spec.consistency", "self.model != 'SSP' || self.slack >= 1",
         "spec.consistency.slack must be >= 1 when model is SSP",
         lambda c: c["model"] != "SSP" or c["slack"] >= 1, ".slack"),
    Rule("spec.consistency", "self.model == 'SSP' || self.slack == 0",
         "spec.consistency.slack must be 0 unless model is SSP",
         lambda c: c["model"] == "SSP" or c["slack"] == 0, ".slack"),
    _mounts_rule("servers"),
    _mounts_rule("workers"),
    Rule("spec.servers", "self.replication <= self.replicas",
         "spec.servers.replication must not exceed spec.servers.replicas",
         lambda r: r["replication"] <= r["replicas"], ".replication"),
    Rule("spec.servers", "self.replication == 1 || !self.colocate",
         "spec.servers.replication must be 1 when spec.servers.colocate is true (a "
         "co-located shard lives and dies with its worker)",
         lambda r: r["replication"] == 1 or not r["colocate"], ".replication"),
    Rule("spec", "self.consistency.model != 'Async' || "
                 "(self.servers.replication == 1 && !self.servers.elastic)",
         "spec.servers.replication must be 1 and spec.servers.elastic false under Async "
         "consistency (replicas and moved rows follow each clock's sum; Async has none)",
         lambda s: s["consistency"]["model"] != "Async" or (
             s["servers"]["replication"] == 1 and not s["servers"]["elastic"]),
         ".servers.replication"),
    Rule("spec", f"self.metrics.port != {SERVER_PORT}",
         f"spec.metrics.port must not be {SERVER_PORT}, the parameter-server port",
         lambda s: s["metrics"]["port"] != SERVER_PORT, ".metrics.port"),
    Rule("spec", f"self.metrics.port != {COORDINATOR_PORT}",
         f"spec.metrics.port must not be {COORDINATOR_PORT}, the coordinator's port",
         lambda s: s["metrics"]["port"] != COORDINATOR_PORT, ".metrics.port"),
)


def crd_schema() -> dict:
    """The spec schema with the CROSS_FIELD_RULES attached as CEL validations (for the CRD)."""
    out = copy.deepcopy(SCHEMA)
    for rule in CROSS_FIELD_RULES:
        node = _node(out, rule.path)
        node.setdefault("x-kubernetes-validations", []).append(
            {"rule": rule.cel, "message": rule.message, "fieldPath": rule.field,
             "reason": "FieldValueInvalid"})
    return out


def _node(schema: dict, path: str) -> dict:
    node = schema
    for part in path.split(".")[1:]:
        node = node["properties"][part]
    return node


def _strict(schema: dict) -> dict:
    """Unknown fields are errors for us (the API server would prune them silently)."""
    s = copy.deepcopy(schema)
    if s.get("type") == "object" and "properties" in s and not s.get(
            "x-kubernetes-preserve-unknown-fields"):
        s.setdefault("additionalProperties", False)
    for key in ("properties",):
        for k, v in s.get(key, {}).items():
            s[key][k] = _strict(v)
    if isinstance(s.get("items"), dict):
        s["items"] = _strict(s["items"])
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _strict(s["additionalProperties"])
    return s


_VALIDATOR = jsonschema.Draft202012Validator(_strict(SCHEMA))


def apply_defaults(obj: Any, schema: dict = SCHEMA) -> Any:
    """Fill schema defaults in place, as the API server does for a structural schema."""
    if isinstance(obj, dict) and "properties" in schema:
        for k, sub in schema["properties"].items():
            if k not in obj and "default" in sub:
                obj[k] = copy.deepcopy(sub["default"])
            if k in obj:
                apply_defaults(obj[k], sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])
    return obj


def _path(prefix: str, parts) -> str:
    out = prefix
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _message(err: jsonschema.ValidationError) -> tuple[str, str]:
    where = _path("spec", err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        known = ", ".join(sorted(err.schema.get("properties", {})))
        return f"{where}.{extra[0]}", f"unknown field (known fields: {known})"
    if err.validator == "required":
        missing = err.message.split("'")[1]
        return f"{where}.{missing}", "is required"
    if err.validator == "enum":
        return where, f"{err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "pattern" and err.validator_value in (QUANTITY_PATTERN,
                                                              K8S_QUANTITY_PATTERN):
        return where, f"{err.instance!r} is not a quantity (e.g. 4Gi, 512Mi, 500m)"
    if err.validator in ("minimum", "maximum"):
        op = ">=" if err.validator == "minimum" else "<="
        return where, f"must be {op} {err.validator_value} (got {err.instance!r})"
    if err.validator == "type":
        return where, f"must be {'an' if err.validator_value[0] in 'aeiou' else 'a'} " \
                      f"{err.validator_value} (got {err.instance!r})"
    return where, err.message


def validate(manifest: Any) -> "GeePSJob":
    """Check a whole GeePSJob manifest, fill defaults, return the typed view.

    Raises SpecError listing every problem, each naming its field."""
    problems: list[tuple[str, str]] = []
    if not isinstance(manifest, dict):
        raise SpecError([("(document)", "must be a mapping with apiVersion, kind, metadata, spec")])
    if manifest.get("apiVersion") != API_VERSION:
        problems.append(("apiVersion", f"must be {API_VERSION} (got {manifest.get('apiVersion')!r})"))
    if manifest.get("kind") != KIND:
        problems.append(("kind", f"must be {KIND} (got {manifest.get('kind')!r})"))
    meta = manifest.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name) or len(name) > MAX_NAME:
        problems.append(("metadata.name", f"must be a DNS-1123 label of at most {MAX_NAME} "
                                          f"characters (got {name!r})"))
    spec = copy.deepcopy(manifest.get("spec"))
    if not isinstance(spec, dict):
        problems.append(("spec", "is required and must be a mapping"))
        raise SpecError(problems)
    errors = sorted(_VALIDATOR.iter_errors(spec), key=lambda e: list(map(str, e.absolute_path)))
    problems.extend(_message(e) for e in errors)
    if problems:
        raise SpecError(problems)
    apply_defaults(spec)
    for rule in CROSS_FIELD_RULES:
        if not rule.check(_node_value(spec, rule.path)):
            problems.append((rule.field_path, rule.message))
    # What only this environment knows (the server functions installed here) and what
    # depends on a filter's type: checked here, by `geeps run` and the operator alike.
    problems.extend(tableopts.problems(spec.get("tables", [])))
    if problems:
        raise SpecError(problems)
    namespace = meta.get("namespace", "default") if isinstance(meta, dict) else "default"
    return GeePSJob.from_spec(name, namespace, spec)


def _node_value(spec: dict, path: str) -> Any:
    node = spec
    for part in path.split(".")[1:]:
        node = node[part]
    return node


def load_file(path: str) -> "GeePSJob":
    """Read one GeePSJob from a YAML file; SpecError for bad YAML or a bad manifest."""
    return validate(read_manifest(path))


def read_manifest(path: str) -> dict:
    """The one GeePSJob document of a YAML file, as written (not validated)."""
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except OSError as e:
        raise SpecError([("(file)", f"cannot read {path}: {e.strerror}")]) from None
    except yaml.YAMLError as e:
        raise SpecError([("(yaml)", f"{path} is not valid YAML: {e}")]) from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(jobs) != 1:
        raise SpecError([("(document)", f"{path} must hold exactly one {KIND} (found {len(jobs)})")])
    return jobs[0]


@dataclass(frozen=True)
class Role:
    replicas: int
    restart_policy: str
    raw: dict                           # the defaulted role object (pod-level knobs)
    gpus: int = 0


@dataclass(frozen=True)
class GeePSJob:
    name: str
    namespace: str
    spec: dict                          # the defaulted spec, as the CRD stores it
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[dict, ...]
    servers: Role
    workers: Role
    consistency: _consistency.Consistency
    device_memory: int | None           # bytes; None = unlimited
    checkpoint_every: int               # clocks; 0 = off
    metrics_port: int
    insecure: bool
    run_policy: dict = field(default_factory=dict)

    # Who serves the shards: decided here only; `geeps run` and the operator ask.

    @property
    def colocate(self) -> bool:
        """spec.servers.colocate: worker r serves shard r (geeps.client.hosted)."""
        return bool(self.servers.raw.get("colocate"))

    @property
    def shard_role(self) -> str:
        """The role whose processes serve the shards: "worker" when co-located, else
        "server". They bind GEEPS_SERVERS[rank] and keep the checkpoints."""
        return "worker" if self.colocate else "server"

    @property
    def replication(self) -> int:
        """spec.servers.replication: holders of every row range (1 = no replicas)."""
        return int(self.servers.raw.get("replication", 1))

    @property
    def coordinated(self) -> bool:
        """Whether a coordinator runs the job's membership (geeps.job.membership):
        server processes of its own, and replicas or spec.servers.elastic."""
        return self.server_processes > 0 and (
            self.replication > 1 or bool(self.servers.raw.get("elastic")))

    @property
    def non_finite(self) -> str:
        """spec.nonFinite: what a server does with a push holding NaN or Inf."""
        return self.spec.get("nonFinite", "reject")

    # spec.cache's memory-plan settings, as the workers read them (GEEPS_MEMORY_STALLS,
    # GEEPS_*_MEMORY of the regions, GEEPS_TORCH_DEVICE_BUDGET).

    @property
    def memory_stalls(self) -> str:
        return self.spec.get("cache", {}).get("stalls", "warn")

    @property
    def regions(self) -> dict[str, int]:
        """Region caps in bytes by geeps.worker.memory.Regions' names (pool, data,
        params); a region without a cap is absent."""
        given = self.spec.get("cache", {}).get("regions", {})
        return {name: parse_bytes(given[field])
                for name, (field, _v, _a) in memsettings.REGIONS.items() if field in given}

    @property
    def torch_device_budget(self) -> int | None:
        v = self.spec.get("cache", {}).get("torchDeviceBudget")
        return None if v is None else parse_bytes(v)

    def serves_shards(self, role: str) -> bool:
        return role == self.shard_role

    def processes(self, role: str | None = None) -> int:
        """Processes (pods) of `role` the job runs, or of both roles when None: no
        server processes of their own when co-located."""
        if role is None:
            return self.processes("server") + self.processes("worker")
        if role == "worker":
            return self.workers.replicas
        return 0 if self.colocate else self.servers.replicas

    @property
    def shards(self) -> int:
        """Parameter-server shards: one per process of the shard role (one per worker
        when co-located; servers.replicas is then ignored)."""
        return self.processes(self.shard_role)

    @property
    def server_processes(self) -> int:
        """Server processes (pods) of their own: none when co-located."""
        return self.processes("server")

    @classmethod
    def from_spec(cls, name: str, namespace: str, spec: dict) -> "GeePSJob":
        def role(r: dict, workers: bool) -> Role:
            return Role(r["replicas"], r["restartPolicy"], r, r.get("gpus", 0) if workers else 0)
        dm = spec["cache"].get("deviceMemory")
        return cls(
            name=name, namespace=namespace, spec=spec,
            command=tuple(spec["command"]), args=tuple(spec["args"]),
            env=tuple(spec["env"]),
            servers=role(spec["servers"], False), workers=role(spec["workers"], True),
            consistency=_consistency.from_spec(spec["consistency"]),
            device_memory=None if dm is None else parse_bytes(dm),
            checkpoint_every=spec["checkpoint"]["everyClocks"],
            metrics_port=spec["metrics"]["port"],
            insecure=spec["security"]["insecure"],
            run_policy=spec["runPolicy"],
        )
