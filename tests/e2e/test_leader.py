"""Two operator replicas against one API server: one reconciles, the other waits on
the Lease; nothing is created or posted twice; killing the leader hands over.

A cluster of its own (not the package's shared operator, which would be a third
replica on the same jobs)."""
from __future__ import annotations

import collections
import os
import signal
import time

import pytest

from tests.helpers import wait_for

from .harness import Cluster, Operator
from .jobs import job

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 4.0


def _holder(cluster) -> str:
    lease = cluster.api.get(cluster.api.path("leases", Operator.LEASE_NAMESPACE,
                                              "geeps-operator", group="coordination.k8s.io"))
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or ""


def test_two_operators_act_once_and_hand_over(tmp_path):
    with Cluster(str(tmp_path / "cluster")) as c, \
            Operator(c, str(tmp_path), lease_seconds=LEASE_SECONDS, name="a") as a, \
            Operator(c, str(tmp_path), lease_seconds=LEASE_SECONDS, name="b",
                     standby=True) as b:
        ops = {a.proc.pid: a, b.proc.pid: b}
        wait_for(lambda: _holder(c), 15, what="a leader")
        leader = ops[int(_holder(c).rsplit("-", 1)[1])]
        for i in range(3):
            c.api.create_job(job("team", f"j{i}", servers=1, workers=2))
        for i in range(3):
            c.wait_phase("team", f"j{i}", "Succeeded", timeout=40)

        creates = collections.Counter(
            (r.resource.plural, (r.data or {}).get("metadata", {}).get("name"))
            for r in c.requests_on(c.operator_url)
            if r.action is not None and r.action.value.lower() == "create"
            and r.resource is not None and r.resource.plural != "events"
            and r.resource.plural != "leases")
        assert creates and max(creates.values()) == 1, \
            [k for k, n in creates.items() if n > 1]
        assert creates[("pods", "j0-worker-1")] == 1
        events = collections.Counter(
            (e["involvedObject"]["name"], e["reason"], e["message"])
            for e in c.api.items(c.api.path("events", "team")))
        assert events and max(events.values()) == 1, [k for k, n in events.items() if n > 1]
        for i in range(3):
            assert events[(f"j{i}", "Created", next(
                m for (n, r, m) in events if n == f"j{i}" and r == "Created"))] == 1

        # The leader dies without a word (no release): the standby takes over once the
        # lease lapses, and a new job runs.
        os.killpg(leader.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        c.api.create_job(job("team", "after", servers=1, workers=1))
        c.wait_phase("team", "after", "Succeeded", timeout=30)
        assert time.monotonic() - killed < 30
        other = b if leader is a else a
        assert _holder(c).endswith(f"-{other.proc.pid}")
