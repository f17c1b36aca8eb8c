"""The GeePSJob CustomResourceDefinition, generated from the spec model.

    python -m geeps_operator.crd > charts/geeps-operator/crds/geepsjobs.geeps.dev.yaml

`spec` comes from geeps.job.spec.crd_schema() (the schema `geeps run` validates against,
with the CEL rules attached), so the API server, the launcher and the operator accept
the same jobs. This module adds only what is the API server's business: the status
schema, printer columns, the short name and the subresource.
"""
from __future__ import annotations

import sys

import yaml

from geeps.job import spec as _spec

from .status import CONDITION_TYPES

PHASES = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
SHORT_NAMES = ["gj"]
CATEGORIES = ["geeps"]

_COUNTS = {
    "type": "object",
    "description": "pods of one role",
    "properties": {
        "active": {"type": "integer", "description": "pods pending or running"},
        "succeeded": {"type": "integer", "description": "pods that exited 0"},
        "failed": {"type": "integer", "description": "pods that failed and are still present"},
        "ready": {"type": "integer", "description": "pods running, not being deleted"},
    },
}

STATUS_SCHEMA: dict = {
    "type": "object",
    "description": "observed state, written by the operator only",
    "properties": {
        "phase": {"type": "string", "enum": list(PHASES)},
        "conditions": {
            "type": "array",
            "description": "one entry per condition type ever reached",
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string", "enum": list(CONDITION_TYPES)},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string", "description": "CamelCase cause"},
                    "message": {"type": "string", "description": "for humans; names the field "
                                                                 "or pod at fault"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                },
            },
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
        "replicaStatuses": {
            "type": "object",
            "properties": {"servers": _COUNTS, "workers": _COUNTS},
        },
        "observedGeneration": {"type": "integer", "description": "metadata.generation of the "
                                                                 "spec this status reflects"},
        "workers": {"type": "string", "description": "workers ready (running or finished) / "
                                                     "desired, for the Workers column"},
        "restartCount": {"type": "integer", "description": "pod restarts counted against "
                                                           "runPolicy.backoffLimit"},
        "clock": {"type": "integer", "description": "last clock worker 0 reported "
                                                    "(geeps.report, read from its metrics)"},
        "progress": {
            "type": "object",
            "description": "what worker 0 reports with geeps.report(), read from its "
                           "metrics endpoint: the figures known so far",
            "properties": {
                "loss": {"type": "number"}, "accuracy": {"type": "number"},
                "epoch": {"type": "number"},
                "clocks": {"type": "number", "description": "total clocks, if reported"},
                "epochs": {"type": "number", "description": "total epochs, if reported"},
                "samplesPerSecond": {"type": "number",
                                     "description": "worker 0's samples/s, recent"},
                "etaSeconds": {"type": "integer", "description": "until worker 0 reaches "
                                                                 "the reported total clocks"},
            },
        },
        "startTime": {"type": "string", "format": "date-time",
                      "description": "when pods were first created (reset on resume); "
                                     "activeDeadlineSeconds counts from here"},
        "completionTime": {"type": "string", "format": "date-time",
                           "description": "when the job reached Succeeded or Failed; "
                                          "ttlSecondsAfterFinished counts from here"},
        "countedFailures": {"type": "array", "items": {"type": "string"},
                            "description": "uids of failed pods already counted as restarts "
                                           "but not yet deleted (so a retry never counts twice)"},
        "trackedPods": {"type": "array", "description": "the pod each server and worker slot "
                                                        "had when last seen alive; one that "
                                                        "vanishes was lost (counted as a restart)",
                        "items": {"type": "object", "required": ["name", "uid"],
                                  "properties": {"name": {"type": "string"},
                                                 "uid": {"type": "string"}}}},
        "servers": {"type": "integer", "description": "server pods the running job has: "
                                                      "a change to spec.servers.replicas "
                                                      "takes effect only for an elastic job "
                                                      "(spec.servers.elastic or replication "
                                                      ">= 2)"},
        "membership": {
            "type": "object",
            "description": "a coordinated job's membership, as its coordinator last "
                           "answered: which servers hold the rows (geeps.job.membership)",
            "properties": {
                "epoch": {"type": "integer", "description": "bumped by every change"},
                "settled": {"type": "boolean", "description": "no change in flight: every "
                                                              "server holds this epoch"},
                "failovers": {"type": "integer", "description": "servers failed over by "
                                                                "this coordinator"},
                "error": {"type": "string", "description": "why the coordinator stopped "
                                                           "changing the membership; empty "
                                                           "when nothing is wrong"},
                "joining": {"type": "array", "items": {"type": "string"},
                            "description": "server pods handed to the coordinator, "
                                           "waiting for their turn (one change at a time)"},
                "servers": {"type": "array", "description": "which pod is which server id",
                            "items": {"type": "object", "required": ["pod", "server"],
                                      "properties": {"pod": {"type": "string"},
                                                     "uid": {"type": "string"},
                                                     "address": {"type": "string"},
                                                     "draining": {"type": "boolean"},
                                                     "server": {"type": "integer"}}}},
            },
        },
        # kopf keeps its own bookkeeping under status.kopf; a structural schema would prune it.
        "kopf": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}

PRINTER_COLUMNS: list[dict] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "Pending, Running, Restarting, Succeeded, Failed or Suspended"},
    {"name": "Workers", "type": "string", "jsonPath": ".status.workers",
     "description": "workers ready (running or succeeded) / desired"},
    {"name": "Clock", "type": "integer", "jsonPath": ".status.clock",
     "description": "last clock reported by worker 0"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restartCount", "priority": 1,
     "description": "pod restarts counted against backoffLimit"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# CEL at the root may read metadata.name: pod names append "-worker-<i>" and must stay
# DNS labels, which a schema on spec alone cannot say.
NAME_RULE = {"rule": f"size(self.metadata.name) <= {_spec.MAX_NAME}",
             "message": f"metadata.name must be at most {_spec.MAX_NAME} characters "
                        f"(pod names append -worker-<index>)",
             "fieldPath": ".metadata.name", "reason": "FieldValueInvalid"}


def openapi_schema() -> dict:
    """The openAPIV3Schema of the single served version."""
    return {
        "type": "object",
        "description": "A data-parallel training job on GeePS parameter servers",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": _spec.crd_schema(),
            "status": STATUS_SCHEMA,
        },
        "x-kubernetes-validations": [NAME_RULE],
    }


def build_crd() -> dict:
    """The whole CustomResourceDefinition object (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{_spec.PLURAL}.{_spec.GROUP}",
                     "labels": {"app.kubernetes.io/name": "geeps",
                                "app.kubernetes.io/component": "crd"}},
        "spec": {
            "group": _spec.GROUP,
            "scope": "Namespaced",
            "names": {"plural": _spec.PLURAL, "singular": _spec.KIND.lower(),
                      "kind": _spec.KIND, "listKind": f"{_spec.KIND}List",
                      "shortNames": list(SHORT_NAMES), "categories": list(CATEGORIES)},
            "versions": [{
                "name": _spec.VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": openapi_schema()},
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def to_yaml() -> str:
    header = ("# Generated by `python -m geeps_operator.crd` from geeps.job.spec; do not edit.\n"
              "# Helm installs CRDs but never upgrades them: after a chart upgrade run\n"
              "#   kubectl apply --server-side -f <this file>\n")
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    sys.stdout.write(to_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
