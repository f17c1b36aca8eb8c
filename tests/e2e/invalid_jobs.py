"""Invalid GeePSJob manifests, each with the field a rejection must name and the layer
that catches it first on a real cluster.

Layers: "schema" = the CRD's OpenAPI schema (the API server refuses the object);
"cel" = a CEL rule of the CRD (x-kubernetes-validations); "pruned" = an unknown field,
which an API server drops silently (or refuses under kubectl's default strict field
validation). In every case the operator refuses it too (phase Failed, condition and
Event naming the field): that is what the e2e tests see, since the emulator does no
schema validation.
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
]


def manifest(case_id: str, ns: str = "default", name: str | None = None) -> dict:
    change = next(c for i, c, _, _ in CASES if i == case_id)
    m = copy.deepcopy(base(ns, name or f"bad-{case_id}"))
    change(m)
    return m
