"""The operator's decisions about a coordinated job's servers, pure: the coordinator pod,
joiners, drains before deletes, fencing after a failover, status.membership and its
Events; and the refusal to change a non-elastic job's server count."""
from __future__ import annotations

from geeps.job import membership as ms
from geeps_operator import manifests as m
from geeps_operator.policy import Observed, decide

from test_op_policy import T0, active, cond, job, pod, reasons, then


def elastic(servers: int = 2, status: dict | None = None, **kw) -> dict:
    body = job(status, servers=servers, **kw)
    body["spec"]["servers"]["elastic"] = True
    return body


def addr(i: int) -> str:
    return f"j-server-{i}.j-server.ns.svc:{m.SERVER_PORT}"


def answer(mem: ms.Membership, *, settled: bool = True, failovers: int = 0,
           queued=(), error=None) -> dict:
    return {"membership": mem.to_json(), "settled": settled, "failovers": failovers,
            "changes": 0, "error": error, "queued": [list(q) for q in queued],
            "recovering": False}


def spod(i: int, phase: str = "Running", uid: str | None = None, **kw) -> dict:
    """Server pod i; a running one has an IP (a replacement, with another uid, another
    IP)."""
    p = pod("server", i, phase, uid=uid, **kw)
    if phase == "Running":
        p["status"]["podIP"] = f"10.0.{1 if uid else 0}.{i + 1}"
    return p


def ip(i: int, new: bool = False) -> str:
    return f"10.0.{int(new)}.{i + 1}:{m.SERVER_PORT}"


def pods(servers, workers=2, coordinator=True, **uids) -> list[dict]:
    out = [spod(i, uid=uids.get(f"s{i}")) for i in servers]
    out += [pod("worker", i) for i in range(workers)]
    if coordinator:
        out.append(pod(m.COORDINATOR, 0))
    return out


def run(body, ps, coordinator=None):
    return decide(Observed(job=body, pods=ps, has_service=True, now=T0,
                           coordinator=coordinator))


def env_of(manifest: dict) -> dict:
    return {e["name"]: e.get("value") for e in manifest["spec"]["containers"][0]["env"]}


def created(plan) -> list[str]:
    return [o["metadata"]["name"] for o in plan.create]


M1 = ms.initial([addr(0), addr(1)], 1)


def test_a_coordinated_job_gets_a_small_coordinator_pod_and_its_port_admitted():
    p = decide(Observed(job=elastic(), pods=[], has_service=False, now=T0))
    pod_ = next(o for o in p.create if o["metadata"]["name"] == "j-coordinator-0")
    c = pod_["spec"]["containers"][0]
    assert c["command"] == ["geeps", "coordinator"]
    env = env_of(pod_)
    assert env["GEEPS_ROLE"] == "coordinator"
    assert env["GEEPS_SERVERS"] == f"{addr(0)},{addr(1)}"
    assert {"name": "coordinator", "containerPort": m.COORDINATOR_PORT,
            "protocol": "TCP"} in c["ports"]
    assert c["resources"] == m.COORDINATOR_RESOURCES
    # it gets the client's keys, not the servers' secret
    items = [i["key"] for v in pod_["spec"]["volumes"] if "secret" in v
             for i in v["secret"]["items"]]
    assert "server.key_secret" not in items
    netpol = next(o for o in p.create if o["kind"] == "NetworkPolicy")
    rule = next(r for r in netpol["spec"]["ingress"]
                if r["ports"][0]["port"] == m.COORDINATOR_PORT)
    assert rule["from"][0]["podSelector"]["matchLabels"] == m.OPERATOR_POD_LABELS
    # the first server pods are not joiners: there is no membership yet
    assert env_of(next(o for o in p.create if o["metadata"]["name"] == "j-server-0"))[
        "GEEPS_JOIN"] == "0"
    # a job without a coordinator has neither
    plain = decide(Observed(job=job(servers=2), pods=[], has_service=False, now=T0))
    assert "j-coordinator-0" not in created(plain)
    netpol = next(o for o in plain.create if o["kind"] == "NetworkPolicy")
    assert all(r["ports"][0]["port"] != m.COORDINATOR_PORT for r in netpol["spec"]["ingress"])


def test_the_membership_is_recorded_pod_by_pod_with_an_event():
    p = run(elastic(2, active()), pods([0, 1]), answer(M1))
    assert p.status["membership"] == {
        "epoch": 1, "settled": True, "failovers": 0, "joining": [], "error": "",
        "servers": [{"pod": "j-server-0", "uid": "server-0-uid", "server": 0,
                     "address": addr(0)},
                    {"pod": "j-server-1", "uid": "server-1-uid", "server": 1,
                     "address": addr(1)}]}
    assert reasons(p) == ["MembershipChanged"]
    assert "epoch 1: servers 0 (j-server-0), 1 (j-server-1)" in p.events[0].message
    # the same answer again: nothing to say
    again = run(then(elastic(2), p), pods([0, 1]), answer(M1))
    assert again.events == [] and again.join == [] and again.drain == []
    # no answer (the coordinator restarting): the record stays as it was
    assert run(then(elastic(2), p), pods([0, 1]), None).status["membership"] == \
        p.status["membership"]


def test_scaling_up_makes_a_joiner_and_posts_it_once_running():
    st = run(elastic(2, active()), pods([0, 1]), answer(M1)).status
    body = elastic(3, st)
    p = run(body, pods([0, 1]), answer(M1))
    assert created(p) == ["j-server-2"]
    assert env_of(p.create[0])["GEEPS_JOIN"] == "1"
    assert env_of(p.create[0])["GEEPS_SERVERS"].split(",")[2] == addr(2)
    assert p.join == []                               # not running yet
    pending = [spod(0), spod(1), spod(2, "Pending"),
               pod("worker", 0), pod("worker", 1), pod(m.COORDINATOR, 0)]
    assert run(then(body, p), pending, answer(M1)).join == []
    p = run(then(body, p), pods([0, 1, 2]), answer(M1))
    assert p.join == [ip(2)]                          # by its pod IP
    assert p.status["membership"]["joining"] == ["j-server-2"]
    # queued at the coordinator: not asked again
    assert run(then(body, p), pods([0, 1, 2]), answer(M1, queued=[("join", ip(2))])).join \
        == []
    m2 = ms.join(M1, ip(2))
    p = run(then(body, p), pods([0, 1, 2]), answer(m2, settled=False))
    assert p.join == [] and "MembershipChanged" in reasons(p)
    assert p.status["membership"]["joining"] == []     # written empty: a merge patch
    assert {"pod": "j-server-2", "uid": "server-2-uid", "server": 2, "address": ip(2)} in \
        p.status["membership"]["servers"]
    assert p.status["membership"]["settled"] is False
    assert "2 (j-server-2) catching up on 33% of the rows" in p.events[-1].message
    assert p.delete_pods == [] and p.status["phase"] == "Running"


def test_a_new_rank_waits_for_the_coordinator_when_it_has_not_answered_yet():
    st = run(elastic(2, active()), pods([0, 1])).status      # no answer: no membership
    assert "membership" not in st and st["servers"] == 2
    body = elastic(3, st)
    assert created(run(body, pods([0, 1]))) == []
    p = run(body, pods([0, 1]), answer(M1))
    assert created(p) == ["j-server-2"] and env_of(p.create[0])["GEEPS_JOIN"] == "1"


def test_scaling_down_drains_the_highest_server_then_deletes_its_pod():
    m3 = ms.promote(ms.join(M1, addr(2)))
    st = run(elastic(3, active()), pods([0, 1, 2]), answer(m3)).status
    body = elastic(2, st)
    p = run(body, pods([0, 1, 2]), answer(m3))
    assert p.drain == [2] and p.delete_pods == []     # drained before deleted
    leaving = ms.leave(m3, 2)
    p = run(then(body, p), pods([0, 1, 2]), answer(leaving, settled=False))
    assert p.drain == [] and p.delete_pods == []      # draining: its rows still move
    assert run(then(body, p), pods([0, 1, 2]),
               answer(m3, queued=[("leave", 2)])).drain == []
    gone = ms.promote(leaving)
    p = run(then(body, p), pods([0, 1, 2]), answer(gone))
    assert p.delete_pods == ["j-server-2"]
    assert "ServerDrained" in reasons(p) and "ServerFailedOver" not in reasons(p)
    assert [r["server"] for r in p.status["membership"]["servers"]] == [0, 1]
    # its deletion is the operator's: no restart is counted when it terminates
    terminating = pods([0, 1]) + [spod(2, terminating=True)]
    q = run(then(body, p), terminating, answer(gone))
    assert q.status["restartCount"] == 0 and "Restarting" not in reasons(q)


def test_a_failed_over_server_is_fenced_and_replaced_by_a_joiner():
    m2 = ms.initial([addr(0), addr(1), addr(2)], 2)
    st = run(elastic(3, active(), server_restart="OnFailure"), pods([0, 1, 2]),
             answer(m2)).status
    body = elastic(3, st)
    # the coordinator failed server 1 over (silent): its pod still runs
    failed = ms.fail(m2, 1)
    p = run(body, pods([0, 1, 2]), answer(failed, failovers=1, settled=False))
    assert p.delete_pods == ["j-server-1"]
    assert "ServerFailedOver" in reasons(p)
    assert "never serves again" in next(e.message for e in p.events
                                        if e.reason == "ServerFailedOver")
    assert p.status["membership"]["failovers"] == 1
    # gone: the replacement is a joiner, posted once running
    ps = pods([0, 2])
    p = run(then(body, p), ps, answer(failed, failovers=1))
    assert created(p) == ["j-server-1"] and env_of(p.create[0])["GEEPS_JOIN"] == "1"
    p = run(then(body, p), pods([0, 1, 2], s1="server-1-new"), answer(failed, failovers=1))
    assert p.join == [ip(1, new=True)] and p.delete_pods == []


def test_a_lost_server_pod_is_replaced_only_once_the_coordinator_dropped_it():
    m2 = ms.initial([addr(0), addr(1), addr(2)], 2)
    st = run(elastic(3, active()), pods([0, 1, 2]), answer(m2)).status
    body = elastic(3, st)
    lost = pods([0, 2])                         # deleted from outside, gone at once
    p = run(body, lost, answer(m2))
    assert created(p) == []                     # server 1 still holds its address
    assert "Restarting" in reasons(p)
    p = run(then(body, p), lost, answer(ms.fail(m2, 1), failovers=1))
    assert created(p) == ["j-server-1"] and "ServerFailedOver" in reasons(p)
    assert "a joiner takes its place" in next(e.message for e in p.events
                                              if e.reason == "ServerFailedOver")


def test_an_ended_coordinator_is_replaced_without_counting():
    body = elastic(2, active(), backoffLimit=0)
    ps = pods([0, 1], coordinator=False) + [pod(m.COORDINATOR, 0, "Failed", code=1)]
    p = run(body, ps)
    assert p.delete_pods == ["j-coordinator-0"] and p.status["restartCount"] == 0
    assert reasons(p) == ["CoordinatorRestarted"] and p.status["phase"] == "Running"
    p = run(then(body, p), pods([0, 1], coordinator=False))
    assert created(p) == ["j-coordinator-0"]


def test_a_coordinator_error_is_a_warning_once():
    body = elastic(2, active())
    p = run(body, pods([0, 1]), answer(M1, error="fail of 1: arcs lost"))
    assert p.status["membership"]["error"] == "fail of 1: arcs lost"
    assert "MembershipError" in reasons(p)
    again = run(then(body, p), pods([0, 1]), answer(M1, error="fail of 1: arcs lost"))
    assert "MembershipError" not in reasons(again)


def test_the_coordinator_pod_stops_with_the_servers_when_the_job_succeeds():
    ps = pods([0, 1], workers=0) + [pod("worker", i, "Succeeded", code=0) for i in range(2)]
    p = run(elastic(2, active()), ps, answer(M1))
    assert p.status["phase"] == "Succeeded"
    assert sorted(p.delete_pods) == ["j-coordinator-0", "j-server-0", "j-server-1"]


def test_changing_the_servers_of_a_running_job_that_is_not_elastic_is_refused():
    st = run(job(active(), servers=2), pods([0, 1], coordinator=False)).status
    assert st["servers"] == 2
    body = job(st, servers=3)
    p = run(body, pods([0, 1], coordinator=False))
    assert created(p) == [] and p.delete_pods == []
    c = cond(p, "ScaleRefused")
    assert c["status"] == "True" and "spec.servers.elastic" in c["message"]
    assert "from 2 to 3" in c["message"] and reasons(p) == ["ScaleRefused"]
    assert p.status["servers"] == 2 and p.status["phase"] == "Running"
    # said once, not on every reconcile
    assert reasons(run(then(body, p), pods([0, 1], coordinator=False))) == []
    # shrinking is refused the same way: no server pod is deleted
    q = run(job(st, servers=1), pods([0, 1], coordinator=False))
    assert q.delete_pods == [] and cond(q, "ScaleRefused")["status"] == "True"
    # back to 2: accepted again
    r = run(job(p.status, servers=2), pods([0, 1], coordinator=False))
    assert cond(r, "ScaleRefused")["status"] == "False"


def test_a_lost_joiner_is_replaced_only_once_its_ip_address_is_dropped_too():
    # server 2 joined by IP; its pod is lost, and its replacement may get the same IP
    m2 = ms.promote(ms.join(ms.initial([addr(0), addr(1)], 2), ip(2)))
    st = run(elastic(3, active()), pods([0, 1, 2]), answer(m2)).status
    body = elastic(3, st)
    p = run(body, pods([0, 1]), answer(m2))
    assert created(p) == []
    p = run(then(body, p), pods([0, 1]), answer(ms.fail(m2, 2), failovers=1))
    assert created(p) == ["j-server-2"]


def test_describe_shows_a_coordinated_jobs_servers_and_epoch():
    from geeps_operator.sdk import describe
    st = run(elastic(2, active()), pods([0, 1]), answer(M1, settled=False)).status
    line = describe(dict(elastic(2), status=st))
    assert "servers 2 epoch 1 (changing)" in line
    assert "epoch" not in describe(job(active(), servers=2))
