"""JSON schemas for the Prometheus Operator kinds the chart renders (ServiceMonitor, PodMonitor).

kubernetes-validate knows only built-in kinds, and the Prometheus Operator's CRDs cannot be
fetched here, so these are our own: transcribed from the monitoring.coreos.com/v1 CRDs
(prometheus-operator v0.7x), cut down to the fields this chart sets. Unknown fields are
rejected, which a real API server with those CRDs would prune silently: stricter than the
real thing on purpose, so a misspelt field fails here instead of vanishing.
"""
from __future__ import annotations

# The CRDs' pattern for monitoringv1.Duration.
DURATION = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                       r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"},
                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
NAMESPACE_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {"any": {"type": "boolean"},
                   "matchNames": {"type": "array", "items": {"type": "string"}}},
}
ENDPOINT = {
    "type": "object", "additionalProperties": False,
    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                   "scheme": {"enum": ["http", "https"]},
                   "interval": DURATION, "scrapeTimeout": DURATION,
                   "honorLabels": {"type": "boolean"}},
}
METADATA = {
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                            "maxLength": 253},
                   "namespace": {"type": "string"},
                   "labels": STRING_MAP, "annotations": STRING_MAP},
}


def _kind(kind: str, endpoints_field: str) -> dict:
    return {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": {
                "type": "object", "additionalProperties": False,
                # The CRDs require selector; endpoints are optional there but an object
                # without any scrapes nothing, so we require them too.
                "required": ["selector", endpoints_field],
                "properties": {"selector": LABEL_SELECTOR,
                               "namespaceSelector": NAMESPACE_SELECTOR,
                               "jobLabel": {"type": "string"},
                               endpoints_field: {"type": "array", "minItems": 1,
                                                 "items": ENDPOINT}},
            },
        },
    }


SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _kind("ServiceMonitor", "endpoints"),
    ("monitoring.coreos.com/v1", "PodMonitor"): _kind("PodMonitor", "podMetricsEndpoints"),
}
