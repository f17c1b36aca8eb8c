"""Servers added and removed while a coordinated job runs, through the operator, on the
API emulator with the real kubelet of tests/e2e (pods as processes): the coordinator
pod, joiners posted to it, drains before deletes, status.membership and its Events.

The servers' side of the membership (the `membership` op, catching up, `ready`) is the
data path; until it is in, a change stays pending at the coordinator, so the first
test checks what the operator does up to there, and the second (the whole 2 -> 3 -> 2
run, its final parameters against a fixed server count) is skipped."""
from __future__ import annotations

import os

import pytest

from geeps.wire import protocol as P
from tests.helpers import wait_for

from .jobs import WAIT_FOR_GO, env, job

pytestmark = pytest.mark.e2e

DATA_PATH = "membership" in P.OPS


def _membership(j: dict) -> dict:
    return (j.get("status") or {}).get("membership") or {}


def _pod_env(pod: dict) -> dict:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def _worker_logs(cluster, ns: str, name: str) -> str:
    """The tails of the job's worker logs, every pod of them (a failed one too), for a
    failure's message: why a worker stopped is in its log."""
    import glob
    out = []
    for f in sorted(glob.glob(os.path.join(cluster.workdir, "pod-logs",
                                           f"{ns}_{name}-worker-*.log"))):
        with open(f, errors="replace") as fh:
            out.append(f"--- {os.path.basename(f)}\n{fh.read()[-1200:]}")
    return "\n".join(out)


def _uids(cluster, ns: str, name: str, role: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.api.pods(ns, name)
            if p["metadata"]["labels"]["geeps.dev/role"] == role}


def test_a_coordinated_job_gets_its_coordinator_and_a_new_server_joins_it(
        cluster, operator, ns, tmp_path):
    body = job(ns, "grow", WAIT_FOR_GO, servers=2, env=env(MARKS=tmp_path))
    body["spec"]["servers"]["elastic"] = True
    cluster.api.create_job(body)
    cluster.wait_phase(ns, "grow", "Running")
    first = cluster.wait_job(ns, "grow", lambda j: _membership(j).get("epoch") == 1, 20,
                             "the coordinator's membership in the status")
    assert [(r["pod"], r["server"]) for r in _membership(first)["servers"]] == \
        [("grow-server-0", 0), ("grow-server-1", 1)]
    names = {p["metadata"]["name"] for p in cluster.api.pods(ns, "grow")}
    assert "grow-coordinator-0" in names
    wait_for(lambda: any(e.get("reason") == "MembershipChanged"
                         for e in cluster.api.events(ns, "grow")), 10,
             what="a MembershipChanged Event")
    workers = _uids(cluster, ns, "grow", "worker")

    cluster.api.patch(cluster.api.job_path(ns, "grow"), {"spec": {"servers": {"replicas": 3}}})
    grown = cluster.wait_job(ns, "grow", lambda j: any(
        r["pod"] == "grow-server-2" for r in _membership(j).get("servers", [])), 30,
        "the new server posted to the coordinator and recorded")
    rec = next(r for r in _membership(grown)["servers"] if r["pod"] == "grow-server-2")
    assert rec["server"] == 2 and _membership(grown)["epoch"] >= 2
    new = next(p for p in cluster.api.pods(ns, "grow")
               if p["metadata"]["name"] == "grow-server-2")
    assert _pod_env(new)["GEEPS_JOIN"] == "1"
    if not DATA_PATH:       # the servers cannot catch up yet: the join stays pending
        assert _membership(grown)["settled"] is False
    assert _uids(cluster, ns, "grow", "worker") == workers        # no worker restarted
    assert grown["status"]["restartCount"] == 0
    (tmp_path / "go").write_text("")
    cluster.wait_phase(ns, "grow", "Succeeded", timeout=30)
    # stopped with the servers (the status is written before the deletes)
    wait_for(lambda: not any(p["metadata"]["name"] == "grow-coordinator-0"
                             and not p["metadata"].get("deletionTimestamp")
                             for p in cluster.api.pods(ns, "grow")), 10,
             what="the coordinator pod deleted with the servers")


# BSP: each worker adds (rank + 1) to every row each clock, pausing at clocks 3 and 6
# for the test to change the servers; at the end it writes the table's bytes.
PAUSING_SUM = """
import os, time, numpy as np, geeps
cfg = geeps.load_config()
marks = os.environ["MARKS"]
c = geeps.Client.from_env()
t = c.create_table("w", n_rows=64, row_width=8, rule="add")
for k in range(1, 10):
    c.push(t, None, np.full((64, 8), cfg.rank + k, np.float32))
    c.clock()
    values, _ = c.pull(t)
    geeps.report(clock=k, loss=float(values[0, 0]))
    for pause in (3, 6):
        if k == pause and os.environ.get("PAUSE") == "1":
            open(os.path.join(marks, f"at{pause}-{cfg.rank}"), "w").close()
            while not os.path.exists(os.path.join(marks, f"go{pause}")):
                time.sleep(0.05)
open(os.path.join(marks, f"final-{cfg.rank}"), "wb").write(values.tobytes())
c.close()
"""


@pytest.mark.skipif(not DATA_PATH, reason="needs servers that answer the `membership` op "
                                          "and catch up (the data path)")
def test_servers_go_2_3_2_under_bsp_and_the_model_is_bitwise_a_fixed_run(
        cluster, operator, ns, tmp_path):
    fixed_dir, elastic_dir = tmp_path / "fixed", tmp_path / "elastic"
    fixed_dir.mkdir()
    elastic_dir.mkdir()
    cluster.api.create_job(job(ns, "fixed", PAUSING_SUM, servers=2, workers=2,
                               env=env(MARKS=fixed_dir, PAUSE="0")))
    body = job(ns, "scaled", PAUSING_SUM, servers=2, workers=2,
               env=env(MARKS=elastic_dir, PAUSE="1"))
    body["spec"]["servers"]["elastic"] = True
    cluster.api.create_job(body)
    path = cluster.api.job_path(ns, "scaled")

    def paused(k: int) -> bool:
        return all(os.path.exists(elastic_dir / f"at{k}-{r}") for r in range(2))

    def wait_paused(k: int) -> None:
        try:
            wait_for(lambda: paused(k), 60, what=f"both workers at clock {k}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_worker_logs(cluster, ns, 'scaled')}") from None

    wait_paused(3)
    workers = _uids(cluster, ns, "scaled", "worker")
    cluster.api.patch(path, {"spec": {"servers": {"replicas": 3}}})
    cluster.wait_job(ns, "scaled", lambda j: _membership(j).get("settled") and len(
        _membership(j).get("servers", [])) == 3, 60, "3 servers, settled")
    (elastic_dir / "go3").write_text("")
    wait_paused(6)
    cluster.api.patch(path, {"spec": {"servers": {"replicas": 2}}})
    cluster.wait_job(ns, "scaled", lambda j: _membership(j).get("settled") and len(
        _membership(j).get("servers", [])) == 2, 60, "back to 2 servers, settled")
    wait_for(lambda: "scaled-server-2" not in _uids(cluster, ns, "scaled", "server"), 30,
             what="the drained server's pod deleted")
    (elastic_dir / "go6").write_text("")
    done = cluster.wait_phase(ns, "scaled", "Succeeded", timeout=60)
    cluster.wait_phase(ns, "fixed", "Succeeded", timeout=60)
    assert done["status"]["restartCount"] == 0
    assert _uids(cluster, ns, "scaled", "worker") == workers        # no worker restarted
    reasons = {e.get("reason") for e in cluster.api.events(ns, "scaled")}
    assert {"MembershipChanged", "ServerDrained"} <= reasons
    for r in range(2):
        assert (elastic_dir / f"final-{r}").read_bytes() == \
            (fixed_dir / f"final-{r}").read_bytes()


def test_a_lost_server_is_failed_over_and_a_joiner_takes_its_slot(
        cluster, operator, ns, tmp_path):
    body = job(ns, "heal", WAIT_FOR_GO, servers=3, env=env(MARKS=tmp_path),
               run_policy={"backoffLimit": 2})
    body["spec"]["servers"]["replication"] = 2
    cluster.api.create_job(body)
    cluster.wait_phase(ns, "heal", "Running")
    cluster.wait_job(ns, "heal", lambda j: len(_membership(j).get("servers", [])) == 3, 20,
                     "three servers in the membership")
    workers = _uids(cluster, ns, "heal", "worker")
    old = _uids(cluster, ns, "heal", "server")["heal-server-1"]
    cluster.api.send("DELETE", cluster.api.path("pods", ns, "heal-server-1"))
    # The coordinator hears nothing from server 1 and fails it over; only then is the
    # slot's replacement made (as a joiner), and posted once it runs. Without the data
    # path the failover's re-replication never completes, so the join waits its turn.
    healed = cluster.wait_job(ns, "heal", lambda j: "heal-server-1" in (
        _membership(j).get("joining", []) if not DATA_PATH else
        [r["pod"] for r in _membership(j).get("servers", []) if r["server"] == 3]), 60,
        "server 1 failed over and its replacement posted to the coordinator")
    assert 1 not in [r["server"] for r in _membership(healed)["servers"]]
    assert _membership(healed)["failovers"] >= 1
    new = next(p for p in cluster.api.pods(ns, "heal")
               if p["metadata"]["name"] == "heal-server-1")
    assert new["metadata"]["uid"] != old and _pod_env(new)["GEEPS_JOIN"] == "1"
    failed_over = [e for e in cluster.api.events(ns, "heal")
                   if e.get("reason") == "ServerFailedOver"]
    assert failed_over and "server 1 (pod heal-server-1)" in failed_over[0]["message"]
    assert _uids(cluster, ns, "heal", "worker") == workers        # no worker restarted
    (tmp_path / "go").write_text("")
    cluster.wait_phase(ns, "heal", "Succeeded", timeout=30)
