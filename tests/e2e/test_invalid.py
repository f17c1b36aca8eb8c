"""Invalid GeePSJobs that reach the operator (through a cluster whose CRD predates the
schema: Cluster.stale_crd) end Failed with a condition and an Event that name the field
at fault, and no pod is created. That the current CRD keeps every one of them out is
test_strict_api's; which layer refuses each first, tests/unit/operator/test_op_crd.py's."""
from __future__ import annotations

import pytest

from tests.helpers import wait_for

from .invalid_jobs import CASES, manifest

pytestmark = pytest.mark.e2e


def test_invalid_manifests_fail_naming_the_field(cluster, operator, ns):
    assert len(CASES) >= 20
    names = {}
    with cluster.stale_crd():
        for case_id, _, field, layer in CASES:
            if layer == "meta":            # the API server checks names whatever the CRD
                continue
            m = manifest(case_id, ns, name=f"bad-{len(names)}")
            cluster.api.create_job(m)
            names[m["metadata"]["name"]] = (case_id, field)

        def all_failed():
            jobs = cluster.api.items(cluster.api.job_path(ns))
            done = {j["metadata"]["name"]: j for j in jobs
                    if (j.get("status") or {}).get("phase") == "Failed"}
            return done if len(done) == len(names) else None

        # Still under the stale CRD: a job stored unchecked takes its Failed status only
        # while the schema that refuses its spec is not the one the API server holds (a
        # status write is validated with the whole object), so the operator must get to
        # every one of them before it changes back, however loaded the machine.
        failed = wait_for(all_failed, 60, 0.1, f"all {len(names)} invalid jobs to be Failed")
    for name, (case_id, field) in names.items():
        cond = next(c for c in failed[name]["status"]["conditions"] if c["type"] == "Failed")
        assert cond["status"] == "True" and cond["reason"] == "InvalidSpec", case_id
        assert cond["message"].startswith(f"{field}: "), (case_id, cond["message"])
        assert "Traceback" not in cond["message"]

    def events_posted():
        events = [e for e in cluster.api.items(cluster.api.path("events", ns))
                  if e["reason"] == "InvalidSpec"]
        by_name = {e["involvedObject"]["name"]: e for e in events}
        return by_name if len(by_name) == len(names) else None

    events = wait_for(events_posted, 20, 0.1, "an InvalidSpec Event for every job")
    for name, (case_id, field) in names.items():
        assert events[name]["type"] == "Warning"
        assert field in events[name]["message"], case_id
        assert events[name]["involvedObject"]["kind"] == "GeePSJob"
    assert cluster.api.items(cluster.api.path("pods", ns)) == []
    assert cluster.api.items(cluster.api.path("services", ns)) == []
