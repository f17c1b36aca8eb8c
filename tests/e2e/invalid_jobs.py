"""Invalid GeePSJob manifests, each with the field a rejection must name and the layer
that catches it first on a real cluster; and valid ones that look odd (UNUSUAL).

Layers: "schema" = the CRD's OpenAPI schema (the API server refuses the object);
"cel" = a CEL rule of the CRD (x-kubernetes-validations); "pruned" = an unknown field,
which an API server drops (with a warning) or refuses under fieldValidation=Strict, as
kubectl sends it; "meta" = metadata the API server checks itself (the name's grammar);
"installed" = a server function no package installed where the job is validated
registers: the CRD cannot know what an image holds, so the API server admits it and
`geeps run` and the operator refuse it by name.
The emulated API server (test_strict_api) and `geeps run` refuse every one of them,
naming the field; the operator refuses them too when a CRD that predates a rule let
them through (test_invalid).
"""
from __future__ import annotations

import copy
from typing import Callable

from geeps.job import spec as _spec


def base(ns: str = "default", name: str = "bad") -> dict:
    return {"apiVersion": _spec.API_VERSION, "kind": _spec.KIND,
            "metadata": {"name": name, "namespace": ns},
            "spec": {"command": ["python", "-c", "pass"],
                     "workers": {"replicas": 1, "gpus": 0},
                     "security": {"insecure": True}}}


def _set(path: str, value) -> Callable[[dict], None]:
    def apply(m: dict) -> None:
        node = m
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return apply


def _del(path: str) -> Callable[[dict], None]:
    def apply(m: dict) -> None:
        node = m
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[p]
        del node[parts[-1]]
    return apply


# (case id, change to the valid base, field the message must name, layer)
CASES: list[tuple[str, Callable[[dict], None], str, str]] = [
    ("zero-workers", _set("spec.workers.replicas", 0), "spec.workers.replicas", "schema"),
    ("zero-servers", _set("spec.servers.replicas", 0), "spec.servers.replicas", "schema"),
    ("replicas-string", _set("spec.workers.replicas", "two"), "spec.workers.replicas", "schema"),
    ("model-unknown", _set("spec.consistency.model", "Eventual"), "spec.consistency.model",
     "schema"),
    ("ssp-slack-0", _set("spec.consistency", {"model": "SSP", "slack": 0}),
     "spec.consistency.slack", "cel"),
    ("bsp-slack-2", _set("spec.consistency", {"model": "BSP", "slack": 2}),
     "spec.consistency.slack", "cel"),
    ("slack-negative", _set("spec.consistency", {"model": "SSP", "slack": -1}),
     "spec.consistency.slack", "schema"),
    ("device-memory-words", _set("spec.cache.deviceMemory", "lots"), "spec.cache.deviceMemory",
     "schema"),
    ("no-command", _del("spec.command"), "spec.command", "schema"),
    ("empty-command", _set("spec.command", []), "spec.command", "schema"),
    ("command-string", _set("spec.command", "python train.py"), "spec.command", "schema"),
    ("args-numbers", _set("spec.args", [1, 2]), "spec.args[0]", "schema"),
    ("restart-always", _set("spec.workers.restartPolicy", "Always"),
     "spec.workers.restartPolicy", "schema"),
    ("backoff-negative", _set("spec.runPolicy.backoffLimit", -1), "spec.runPolicy.backoffLimit",
     "schema"),
    ("clean-some", _set("spec.runPolicy.cleanPodPolicy", "Some"),
     "spec.runPolicy.cleanPodPolicy", "schema"),
    ("deadline-zero", _set("spec.runPolicy.activeDeadlineSeconds", 0),
     "spec.runPolicy.activeDeadlineSeconds", "schema"),
    ("ttl-negative", _set("spec.runPolicy.ttlSecondsAfterFinished", -5),
     "spec.runPolicy.ttlSecondsAfterFinished", "schema"),
    ("suspend-yes", _set("spec.runPolicy.suspend", "yes"), "spec.runPolicy.suspend", "schema"),
    ("metrics-port-high", _set("spec.metrics.port", 70000), "spec.metrics.port", "schema"),
    ("env-name-digit", _set("spec.env", [{"name": "1BAD", "value": "x"}]), "spec.env[0].name",
     "schema"),
    ("env-no-name", _set("spec.env", [{"value": "x"}]), "spec.env[0].name", "schema"),
    ("gpus-negative", _set("spec.workers.gpus", -1), "spec.workers.gpus", "schema"),
    ("pull-sometimes", _set("spec.imagePullPolicy", "Sometimes"), "spec.imagePullPolicy",
     "schema"),
    ("checkpoint-negative", _set("spec.checkpoint.everyClocks", -1),
     "spec.checkpoint.everyClocks", "schema"),
    ("node-selector-int", _set("spec.workers.nodeSelector", {"zone": 1}),
     "spec.workers.nodeSelector.zone", "schema"),
    ("image-empty", _set("spec.image", ""), "spec.image", "schema"),
    ("unknown-role-field", _set("spec.workers.replicaz", 2), "spec.workers.replicaz", "pruned"),
    ("unknown-top-field", _set("spec.worker", {"replicas": 2}), "spec.worker", "pruned"),
    ("name-too-long", _set("metadata.name", "x" * (_spec.MAX_NAME + 1)), "metadata.name", "cel"),
    # The four that both the API server and `geeps run` once let through.
    ("million-workers", _set("spec.workers.replicas", 1_000_000), "spec.workers.replicas",
     "schema"),
    ("negative-memory", _set("spec.workers.resources", {"requests": {"memory": "-1Gi"}}),
     "spec.workers.resources.requests.memory", "schema"),
    ("mount-names-no-volume", _set("spec.workers.volumeMounts",
                                   [{"name": "data", "mountPath": "/data"}]),
     "spec.workers.volumeMounts", "cel"),
    ("metrics-port-is-ps-port", _set("spec.metrics.port", _spec.SERVER_PORT),
     "spec.metrics.port", "cel"),
    # More of the schema.
    ("many-servers", _set("spec.servers.replicas", _spec.MAX_REPLICAS + 1),
     "spec.servers.replicas", "schema"),
    ("negative-cpu-limit", _set("spec.servers.resources", {"limits": {"cpu": "-500m"}}),
     "spec.servers.resources.limits.cpu", "schema"),
    ("memory-words", _set("spec.workers.resources", {"limits": {"memory": "lots"}}),
     "spec.workers.resources.limits.memory", "schema"),
    ("quantity-two-dots", _set("spec.workers.resources", {"requests": {"cpu": "1.5.5"}}),
     "spec.workers.resources.requests.cpu", "schema"),
    ("metrics-port-zero", _set("spec.metrics.port", 0), "spec.metrics.port", "schema"),
    ("metrics-port-string", _set("spec.metrics.port", "9400"), "spec.metrics.port", "schema"),
    ("gpus-string", _set("spec.workers.gpus", "one"), "spec.workers.gpus", "schema"),
    ("colocate-string", _set("spec.servers.colocate", "yes"), "spec.servers.colocate",
     "schema"),
    ("insecure-string", _set("spec.security.insecure", "no"), "spec.security.insecure",
     "schema"),
    ("checkpoint-string", _set("spec.checkpoint.everyClocks", "10"),
     "spec.checkpoint.everyClocks", "schema"),
    ("env-value-int", _set("spec.env", [{"name": "A", "value": 5}]), "spec.env[0].value",
     "schema"),
    ("env-string", _set("spec.env", "A=1"), "spec.env", "schema"),
    ("env-value-from-string", _set("spec.env", [{"name": "A", "valueFrom": "x"}]),
     "spec.env[0].valueFrom", "schema"),
    ("args-string", _set("spec.args", "--epochs 3"), "spec.args", "schema"),
    ("command-item-int", _set("spec.command", [1]), "spec.command[0]", "schema"),
    ("image-int", _set("spec.image", 5), "spec.image", "schema"),
    ("pull-secret-string", _set("spec.imagePullSecrets", "regcred"), "spec.imagePullSecrets",
     "schema"),
    ("pull-secret-no-name", _set("spec.imagePullSecrets", [{}]),
     "spec.imagePullSecrets[0].name", "schema"),
    ("pull-secret-empty-name", _set("spec.imagePullSecrets", [{"name": ""}]),
     "spec.imagePullSecrets[0].name", "schema"),
    ("model-lowercase", _set("spec.consistency.model", "bsp"), "spec.consistency.model",
     "schema"),
    ("server-restart-always", _set("spec.servers.restartPolicy", "Always"),
     "spec.servers.restartPolicy", "schema"),
    ("tolerations-map", _set("spec.workers.tolerations", {"key": "gpu"}),
     "spec.workers.tolerations", "schema"),
    ("volumes-map", _set("spec.workers.volumes", {"name": "data"}), "spec.workers.volumes",
     "schema"),
    ("volume-no-name", _set("spec.workers.volumes", [{"emptyDir": {}}]),
     "spec.workers.volumes[0].name", "schema"),
    ("mount-no-path", _set("spec.workers", {"replicas": 1, "gpus": 0,
                                            "volumes": [{"name": "v", "emptyDir": {}}],
                                            "volumeMounts": [{"name": "v"}]}),
     "spec.workers.volumeMounts[0].mountPath", "schema"),
    ("too-many-volumes", _set("spec.workers.volumes",
                              [{"name": f"v{i}", "emptyDir": {}}
                               for i in range(_spec.MAX_VOLUMES + 1)]),
     "spec.workers.volumes", "schema"),
    ("priority-int", _set("spec.workers.priorityClassName", 5),
     "spec.workers.priorityClassName", "schema"),
    ("service-account-int", _set("spec.servers.serviceAccountName", 1),
     "spec.servers.serviceAccountName", "schema"),
    ("deadline-string", _set("spec.runPolicy.activeDeadlineSeconds", "1h"),
     "spec.runPolicy.activeDeadlineSeconds", "schema"),
    ("clean-lowercase", _set("spec.runPolicy.cleanPodPolicy", "all"),
     "spec.runPolicy.cleanPodPolicy", "schema"),
    ("ttl-float", _set("spec.runPolicy.ttlSecondsAfterFinished", 1.5),
     "spec.runPolicy.ttlSecondsAfterFinished", "schema"),
    ("device-memory-negative", _set("spec.cache.deviceMemory", "-4Gi"),
     "spec.cache.deviceMemory", "schema"),
    ("device-memory-int", _set("spec.cache.deviceMemory", 4096), "spec.cache.deviceMemory",
     "schema"),
    ("slack-string", _set("spec.consistency", {"model": "SSP", "slack": "2"}),
     "spec.consistency.slack", "schema"),
    ("node-selector-list", _set("spec.workers.nodeSelector", ["gpu"]),
     "spec.workers.nodeSelector", "schema"),
    ("consistency-string", _set("spec.consistency", "BSP"), "spec.consistency", "schema"),
    ("run-policy-list", _set("spec.runPolicy", [{"backoffLimit": 1}]), "spec.runPolicy",
     "schema"),
    ("working-dir-int", _set("spec.workingDir", 1), "spec.workingDir", "schema"),
    ("no-spec", _del("spec"), "spec", "schema"),
    # More of the CEL rules.
    ("server-mount-names-no-volume", _set("spec.servers", {
        "volumes": [{"name": "a", "emptyDir": {}}],
        "volumeMounts": [{"name": "b", "mountPath": "/b"}]}),
     "spec.servers.volumeMounts", "cel"),
    ("second-mount-names-no-volume", _set("spec.workers", {
        "replicas": 1, "gpus": 0, "volumes": [{"name": "a", "emptyDir": {}}],
        "volumeMounts": [{"name": "a", "mountPath": "/a"}, {"name": "c", "mountPath": "/c"}]}),
     "spec.workers.volumeMounts", "cel"),
    ("async-slack-1", _set("spec.consistency", {"model": "Async", "slack": 1}),
     "spec.consistency.slack", "cel"),
    ("ssp-default-slack", _set("spec.consistency", {"model": "SSP"}),
     "spec.consistency.slack", "cel"),
    # Per-table options (issue 17): filters and server functions.
    ("filter-unknown-type", _set("spec.tables", [{"name": "w", "filter": {"type": "bloom"}}]),
     "spec.tables[0].filter.type", "schema"),
    ("filter-fraction-above-1", _set("spec.tables", [{"name": "w", "filter": {
        "type": "topk", "fraction": 2}}]), "spec.tables[0].filter.fraction", "schema"),
    ("function-name-not-a-name", _set("spec.tables", [{"name": "w", "functions": [
        {"name": "os:system"}]}]), "spec.tables[0].functions[0].name", "schema"),
    ("function-arg-string", _set("spec.tables", [{"name": "w", "functions": [
        {"name": "prox-l1", "args": {"l1": "big"}}]}]),
     "spec.tables[0].functions[0].args.l1", "schema"),
    ("table-no-name", _set("spec.tables", [{"filter": {"type": "kkt"}}]),
     "spec.tables[0].name", "schema"),
    ("unknown-filter-field", _set("spec.tables", [{"name": "w", "filter": {
        "type": "kkt", "lambda": 1}}]), "spec.tables[0].filter.lambda", "pruned"),
    ("function-not-installed", _set("spec.tables", [{"name": "w", "functions": [
        {"name": "no-such-function"}]}]), "spec.tables[0].functions[0].name", "installed"),
    # Unknown fields.
    ("unknown-consistency-field", _set("spec.consistency.stale", 2), "spec.consistency.stale",
     "pruned"),
    ("unknown-run-policy-field", _set("spec.runPolicy.backoff", 2), "spec.runPolicy.backoff",
     "pruned"),
    ("unknown-metrics-field", _set("spec.metrics.path", "/m"), "spec.metrics.path", "pruned"),
    ("unknown-checkpoint-field", _set("spec.checkpoint.every", 5), "spec.checkpoint.every",
     "pruned"),
    ("unknown-cache-field", _set("spec.cache.device", "4Gi"), "spec.cache.device", "pruned"),
    ("unknown-security-field", _set("spec.security.tls", True), "spec.security.tls",
     "pruned"),
    ("unknown-env-field", _set("spec.env", [{"name": "A", "valu": "1"}]), "spec.env[0].valu",
     "pruned"),
    ("unknown-resources-field", _set("spec.workers.resources", {"request": {"cpu": "1"}}),
     "spec.workers.resources.request", "pruned"),
    ("gpus-on-servers", _set("spec.servers.gpus", 1), "spec.servers.gpus", "pruned"),
    ("unknown-spec-replicas", _set("spec.replicas", 4), "spec.replicas", "pruned"),
    # No way to a privileged container: the schema has no securityContext to carry one.
    ("privileged-workers", _set("spec.workers.securityContext", {"privileged": True}),
     "spec.workers.securityContext", "pruned"),
    # Metadata.
    ("name-uppercase", _set("metadata.name", "Bad-Job"), "metadata.name", "meta"),
    ("name-underscore", _set("metadata.name", "bad_job"), "metadata.name", "meta"),
]

# Valid manifests at the edges: the API server (Strict) and `geeps run` accept each.
UNUSUAL: list[tuple[str, Callable[[dict], None]]] = [
    ("most-workers", _set("spec.workers", {"replicas": _spec.MAX_REPLICAS, "gpus": 0})),
    ("longest-name", _set("metadata.name", "x" * _spec.MAX_NAME)),
    ("wide-ssp", _set("spec.consistency", {"model": "SSP", "slack": 1000})),
    ("colocated-ignores-servers", _set("spec.servers", {"colocate": True, "replicas": 7})),
    ("volumes-of-every-kind", _set("spec.workers", {
        "replicas": 2, "gpus": 0,
        "resources": {"requests": {"cpu": "+500m", "memory": 1073741824},
                      "limits": {"memory": "1.5e9", "nvidia.com/gpu": 0}},
        "volumes": [{"name": "cfg", "configMap": {"name": "c", "items": [{"key": "k",
                                                                           "path": "p"}]}},
                    {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                         {"name": "scratch", "mountPath": "/scratch", "subPath": "a"},
                         {"name": "scratch", "mountPath": "/scratch2"}]})),
    ("filters-and-functions", _set("spec.tables", [
        {"name": "w", "filter": {"type": "kkt", "l1": 0.5},
         "functions": [{"name": "prox-elastic-net", "args": {"l1": 0.5, "l2": 0.1}},
                       {"name": "clip-norm", "args": {"max_norm": 10}}]},
        {"name": "model", "filter": {"type": "topk", "fraction": 0.01, "feedback": True}}])),
    ("everything-odd", lambda m: m["spec"].update({
        "env": [{"name": "_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "metrics": {"port": 1}, "consistency": {"model": "Async", "slack": 0},
        "checkpoint": {"everyClocks": 1,
                       "volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}},
        "runPolicy": {"backoffLimit": 0, "activeDeadlineSeconds": 1,
                      "ttlSecondsAfterFinished": 0, "cleanPodPolicy": "None"},
        "cache": {"deviceMemory": "0.5Gi"}, "args": []})),
]


def manifest(case_id: str, ns: str = "default", name: str | None = None) -> dict:
    change = next((c for i, c, _, _ in CASES if i == case_id), None) or \
        next(c for i, c in UNUSUAL if i == case_id)
    m = copy.deepcopy(base(ns, name or f"bad-{case_id}"))
    change(m)
    return m
