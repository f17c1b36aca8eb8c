"""`geeps coordinator` against real `geeps server` processes over loopback: its HTTP API
(listing, joins, drains, refusals), its metrics, and a restart that recovers the newest
membership from the servers.

What needs the servers' side of the membership (the `membership` op, `epoch` and
`ready` in their pings: the data path) is marked so: until it is there, a server
refuses the op, so a change stays pending and a restarted coordinator finds no
membership to recover.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from geeps.job import membership as ms
from geeps.wire import protocol as P
from tests.helpers import die_with_parent, free_ports, kill_group, wait_for

# The servers answer the `membership` op (the data path of issue 16 has landed).
DATA_PATH = "membership" in P.OPS
needs_data_path = pytest.mark.skipif(
    not DATA_PATH, reason="needs servers that answer the `membership` op (the data path)")


def call(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Coord:
    """One `geeps coordinator` process over the servers at `servers`."""

    def __init__(self, servers: list[str], replication: int, *args: str):
        self.port, self.metrics_port = free_ports(2)
        env = dict(os.environ, GEEPS_ROLE="coordinator", GEEPS_SERVERS=",".join(servers),
                   GEEPS_REPLICATION=str(replication), GEEPS_BIND_HOST="127.0.0.1",
                   GEEPS_METRICS_PORT=str(self.metrics_port), GEEPS_METRICS_ADDR="127.0.0.1",
                   GEEPS_NUM_WORKERS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geeps", "coordinator", "--port", str(self.port),
             "--recover-after", "2", *args],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self) -> dict:
        return call(self.url + "/membership")[1]

    def up(self, timeout: float = 20.0) -> dict:
        def ready():
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                state = self.get()
            except OSError:
                return None
            return state if not state["recovering"] else None
        return wait_for(ready, timeout, 0.05, "the coordinator to recover the membership")

    def metric(self, name: str) -> float | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and s.labels.get("role") == "coordinator":
                    return s.value
        return None

    def stop(self) -> None:
        kill_group(self.proc)
        self.proc.stderr.close()


class Servers:
    """Real `geeps server` processes of one job: the first `initial` listed in
    GEEPS_SERVERS with GEEPS_REPLICATION=`replication` (as the coordinator will be), the
    rest started as joiners (GEEPS_JOIN=1), as `geeps run` and the operator start them."""

    def __init__(self, total: int, initial: int, replication: int):
        self.addresses = [f"127.0.0.1:{p}" for p in free_ports(total)]
        self.initial = self.addresses[:initial]
        self.replication = replication
        self.procs: list[subprocess.Popen] = []
        for rank in range(total):
            listed = self.initial if rank < initial else self.addresses[:rank + 1]
            env = dict(os.environ, GEEPS_ROLE="server", GEEPS_RANK=str(rank),
                       GEEPS_NUM_WORKERS="1", GEEPS_SERVERS=",".join(listed),
                       GEEPS_REPLICATION=str(replication), GEEPS_BIND_HOST="127.0.0.1",
                       GEEPS_JOIN="1" if rank >= initial else "0")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "geeps", "server"], env=env, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=die_with_parent))

    def close(self) -> None:
        for p in self.procs:
            kill_group(p)


@pytest.fixture
def three():
    """Servers 0 and 1 of a job with replication 2, and a third started as a joiner."""
    servers = Servers(3, 2, 2)
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def all_three():
    """Three servers of a job with replication 2."""
    servers = Servers(3, 3, 2)
    try:
        yield servers
    finally:
        servers.close()


def test_the_api_lists_queues_a_join_and_refuses_bad_requests(three):
    co = Coord(three.initial, 2, "--silent-after", "60")   # the third joins later
    try:
        state = co.up()
        m = ms.Membership.from_json(state["membership"])
        assert (m.epoch, dict(m.servers), m.replication) == \
            (1, {0: three.addresses[0], 1: three.addresses[1]}, 2)
        assert state["failovers"] == 0 and state["error"] is None

        # refusals name what is at fault, and change nothing
        bad = [("POST", "/servers", b"{not json", 400, "body"),
               ("POST", "/servers", b'["x"]', 400, "body"),
               ("POST", "/servers", b'{"address": "nohost"}', 400, "'address'"),
               ("POST", "/servers", b'{"address": 7}', 400, "'address'"),
               ("POST", "/servers", b"x" * (70 * 1024), 413, "body"),
               ("POST", "/elsewhere", b"{}", 404, "/servers"),
               ("DELETE", "/servers/abc", None, 400, "server id"),
               ("DELETE", "/servers/" + "9" * 5000, None, 400, "server id"),
               ("DELETE", "/servers/%C2%B2", None, 400, "server id"),
               ("DELETE", "/servers/9", None, 404, "server 9"),
               ("DELETE", "/servers/0", None, 409, "replication 2"),
               ("GET", "/nothing", None, 404, "/membership")]
        for method, path, body, code, named in bad:
            got, reply = call(co.url + path, method, body,
                              {"Content-Type": "application/json"} if body else None)
            assert got == code and named in reply["error"], (method, path, got, reply)
        assert co.get()["membership"] == state["membership"]

        # a joiner: queued with the next id; asked again (the operator after a crash of
        # its own), the same id, not a second server
        body = json.dumps({"address": three.addresses[2]}).encode()
        code, reply = call(co.url + "/servers", "POST", body)
        assert code in (200, 202) and reply["server"] == 2
        assert call(co.url + "/servers", "POST", body)[1]["server"] == 2
        state = wait_for(lambda: (s := co.get())["membership"]["epoch"] >= 2 and s, 10,
                         what="the join's epoch")
        m = ms.Membership.from_json(state["membership"])
        assert m.servers[2] == three.addresses[2] and len(m.servers) == 3
        if not DATA_PATH:
            # the servers refuse the membership: server 2 stays catching up on its share
            assert m.epoch == 2 and {p.sid for p in m.pending} >= {2}
            assert not state["settled"]
            wait_for(lambda: co.metric("geeps_coordinator_epoch") == 2, 5,
                     what="the metrics to show epoch 2")
            assert co.metric("geeps_coordinator_catching_up_ratio") > 0
            # a drain while the join is in flight waits its turn, and is idempotent
            code, reply = call(co.url + "/servers/1", "DELETE")
            assert (code, reply) == (202, {"server": 1, "draining": True})
            assert call(co.url + "/servers/1", "DELETE")[0] == 202
            assert ["leave", 1] in co.get()["queued"]
        else:
            # the new server catches up and says ready: the join completes (epoch 3)
            state = wait_for(lambda: (s := co.get())["settled"] and s, 30,
                             what="the join to settle")
            m = ms.Membership.from_json(state["membership"])
            assert (m.epoch, len(m.servers), m.pending) == (3, 3, ())
            wait_for(lambda: co.metric("geeps_coordinator_epoch") == 3, 5,
                     what="the metrics to show epoch 3")
            assert co.metric("geeps_coordinator_catching_up_ratio") == 0
            code, reply = call(co.url + "/servers/1", "DELETE")
            assert (code, reply) == (202, {"server": 1, "draining": True})
            assert call(co.url + "/servers/1", "DELETE")[0] == 202      # idempotent
            wait_for(lambda: co.get()["settled"], 30, what="the drain to settle")
            m = ms.Membership.from_json(co.get()["membership"])
            assert sorted(m.servers) == [0, 2] and not m.pending
            assert call(co.url + "/servers/1", "DELETE")[0] == 404      # gone now
        assert co.metric("geeps_coordinator_changes_total") >= 1
    finally:
        co.stop()


def test_a_coordinator_waits_for_slow_servers_and_goes_on_without_a_dead_one(all_three):
    # Server 2's address is listed but its process is gone: the coordinator starts
    # after --recover-after from what the others said, not never.
    kill_group(all_three.procs[2])
    co = Coord(all_three.addresses, 2, "--silent-after", "60")
    try:
        state = co.up(timeout=20)
        assert state["membership"]["epoch"] == 1
        assert len(state["membership"]["servers"]) == 3
    finally:
        co.stop()


def test_a_silent_server_is_failed_over_once_it_has_answered(all_three):
    co = Coord(all_three.addresses, 2, "--silent-after", "1", "--heartbeat", "0.1")
    try:
        co.up()
        wait_for(lambda: co.metric("geeps_coordinator_epoch") == 1, 10,
                 what="the metrics to show epoch 1")
        kill_group(all_three.procs[1])
        state = wait_for(lambda: (s := co.get())["failovers"] == 1 and s, 15,
                         what="server 1 to be failed over")
        m = ms.Membership.from_json(state["membership"])
        assert 1 not in m.servers and m.epoch >= 2
        assert wait_for(lambda: co.metric("geeps_coordinator_failovers_total") == 1, 5,
                        what="the failover metric")
    finally:
        co.stop()


@needs_data_path
def test_a_restarted_coordinator_recovers_the_newest_membership(all_three):
    co = Coord(all_three.addresses, 2, "--silent-after", "60")
    try:
        co.up()
        call(co.url + "/servers/2", "DELETE")
        wait_for(lambda: co.get()["settled"], 30, what="the drain to settle")
        before = co.get()["membership"]
    finally:
        co.stop()
    again = Coord(all_three.addresses, 2, "--silent-after", "60")
    try:
        state = again.up()
        assert state["membership"] == before        # not epoch 1 over three servers
    finally:
        again.stop()
