"""The Kubernetes permissions the operator needs, declared once.

    from geeps_operator.rbac import JOB_RBAC_RULES, CLUSTER_RULES, NAMESPACE_RULES, LEASE_RULES
    # --all-namespaces: one ClusterRole with [*JOB_RBAC_RULES, *CLUSTER_RULES]
    # --namespace NS..: a Role with JOB_RBAC_RULES in each NS, and a ClusterRole with
    #                   [*CLUSTER_RULES, *NAMESPACE_RULES]
    # --leader-elect: a Role with LEASE_RULES in the operator's own namespace

The Helm chart renders its ClusterRole/Role from these lists; an end-to-end test
records every request the running operator makes and checks both directions: each
request is covered by a rule, and each rule is used (least privilege).
`python -m geeps_operator.rbac` prints them as YAML.
"""
from __future__ import annotations

import sys

import yaml

from geeps.job import spec as _spec

# RBAC rules on the jobs and what they make (namespaced), in every namespace the
# operator watches.
JOB_RBAC_RULES: tuple[dict, ...] = (
    # kopf lists and watches jobs; the operator removes the finalizer older versions put
    # on them (patch); the TTL deletes them.
    {"apiGroups": [_spec.GROUP], "resources": [_spec.PLURAL],
     "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": [_spec.GROUP], "resources": [f"{_spec.PLURAL}/status"],
     "verbs": ["patch"]},
    # Pods are listed by label on each reconcile, watched by kopf, created and deleted.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create"]},
    # The job's CurveZMQ keys, created with its service; the operator never reads,
    # lists or changes a Secret (the garbage collector removes them with the job).
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    # The job's NetworkPolicy, created with its service.
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["create"]},
    # The job's PodDisruptionBudget over its shard-serving pods, created with its service.
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["monitoring.coreos.com"], "resources": ["podmonitors"], "verbs": ["create"]},
)

# In the operator's own namespace, with --leader-elect (the chart's Role there): the
# Lease that decides which replica reconciles (geeps_operator.leader).
LEASE_RULES: tuple[dict, ...] = (
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "verbs": ["get", "create", "patch"]},
)

# Cluster-scoped, always: kopf watches CRDs to learn when GeePSJob is served.
CLUSTER_RULES: tuple[dict, ...] = (
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
)

# Cluster-scoped, only with --namespace: kopf lists and watches namespaces to find the
# ones it serves (cluster-wide it watches resources across all of them instead).
NAMESPACE_RULES: tuple[dict, ...] = (
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
)


def covers(rules, group: str, resource: str, verb: str) -> bool:
    """Whether some rule grants `verb` on `resource` ("pods", "pods/log") of `group`."""
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in rules)


def triples(rules) -> set[tuple[str, str, str]]:
    return {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"]
            for v in r["verbs"]}


def main(argv: list[str] | None = None) -> int:
    yaml.safe_dump({"rules": list(JOB_RBAC_RULES), "leaseRules": list(LEASE_RULES),
                    "clusterRules": list(CLUSTER_RULES),
                    "namespaceRules": list(NAMESPACE_RULES)}, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
