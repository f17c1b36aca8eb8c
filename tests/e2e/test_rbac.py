"""Least privilege: every request the operator made to the API during the e2e session
is allowed by geeps_operator.rbac, and every rule there was needed.

The operator talks to the emulator through a port of its own, so its requests are
told apart from the tests' and the kubelet's. This test runs a job that exercises
every path (CurveZMQ Secret and NetworkPolicy, restart, events, clock from logs, TTL)
so it holds when run alone too."""
from __future__ import annotations

import pytest

from geeps_operator import rbac
from tests.helpers import wait_for

from .jobs import CRASH_ONCE, env, job

pytestmark = pytest.mark.e2e

VERBS = {"watch": "watch", "list": "list", "fetch": "get", "create": "create",
         "update": "patch", "delete": "delete"}


def request_triples(requests_) -> list[tuple[str, str, str, str | None]]:
    """(apiGroup, resource[/subresource], verb, namespace) of each resource request;
    discovery (/api, /apis/<group>/<version>) is a non-resource URL and is skipped."""
    out = []
    for r in requests_:
        if r.resource is None or not r.resource.plural or r.action is None:
            continue
        resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
        out.append((r.resource.group, resource, VERBS[r.action.value.lower()], r.namespace))
    return out


def test_the_operator_uses_exactly_the_declared_rules(cluster, operator, ns, tmp_path):
    body = job(ns, "rbac", CRASH_ONCE, env=env(MARKS=tmp_path),
               run_policy={"ttlSecondsAfterFinished": 0})
    # As an older operator left its jobs: with kopf's finalizer, which this one removes
    # (else the TTL's delete would leave the job terminating for ever).
    body["metadata"]["finalizers"] = ["geeps.dev/operator"]
    cluster.api.create_job(body)
    wait_for(lambda: cluster.api.job(ns, "rbac") is None, 40,
             what="the job to run, restart once, succeed and be deleted by its TTL")
    # The leader renews its Lease every lease-seconds / 3 (2 s here).
    wait_for(lambda: ("coordination.k8s.io", "leases", "patch") in {
        (g, res, v) for g, res, v, _ in request_triples(
            cluster.requests_on(cluster.operator_url))}, 10, what="a Lease renewal")
    used = {(g, res, v) for g, res, v, _ in request_triples(
        cluster.requests_on(cluster.operator_url))}
    declared = rbac.triples(rbac.JOB_RBAC_RULES) | rbac.triples(rbac.CLUSTER_RULES) | \
        rbac.triples(rbac.LEASE_RULES)
    # Progress comes from worker 0's metrics endpoint, not its log.
    assert ("", "pods/log", "get") not in used | declared
    assert used - declared == set(), "requests no rule allows"
    assert declared - used == set(), "rules the operator never needed"
