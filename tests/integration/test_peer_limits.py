"""Issue 23: no peer can exhaust a server. A live `geeps server` against a raw peer that
never reads its replies, parks reads no clock will answer, or leaves with reads parked;
with CurveZMQ on (the peer holds the job's key) and off."""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import zmq

import geeps
from geeps.job import env as config
from geeps.wire import curve
from geeps.wire import protocol as P
from tests.cluster import Cluster
from tests.helpers import wait_for

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.fixture(params=["plain", "curve"])
def keys(request, tmp_path):
    return curve.generate(str(tmp_path / "keys")) if request.param == "curve" else ""


def cluster(keys: str, **env) -> Cluster:
    if keys:
        env["GEEPS_CURVE_DIR"] = keys
    return Cluster(servers=1, **env)


def client(cl: Cluster, keys: str, worker: int = 0) -> geeps.Client:
    cfg = config.load({"GEEPS_SERVERS": ",".join(cl.servers), "GEEPS_CURVE_DIR": keys})
    c = geeps.Client(cfg.servers, worker, cl.num_workers, cl.consistency, timeout=20,
                     config=dataclasses.replace(cfg, num_workers=cl.num_workers))
    cl.clients.append(c)
    return c


def raw_peer(cl: Cluster, keys: str, reads: bool = True) -> zmq.Socket:
    """A DEALER holding the job's key (if any). reads=False: it never reads, and once
    one reply is waiting its I/O thread stops taking more off the connection."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if not reads:
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 4096)
    if keys:
        curve.secure_client(sock, curve.load(keys))
    sock.connect(f"tcp://{cl.servers[0]}")
    return sock


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def stats(c: geeps.Client) -> dict:
    return c.stats()[0]


def flood(cl: Cluster, c: geeps.Client, keys: str, table: str, rows: int, n: int):
    """A peer that never reads sends `n` pulls of rows [0, rows) of `table`; once the
    server took them all, (the server's pid, its RSS before, the peer)."""
    pid = cl.procs[0].pid
    base = rss(pid)
    first = stats(c)["pulls"] + stats(c)["errors"]
    hostile = raw_peer(cl, keys, reads=False)
    pull = {"v": 1, "op": "pull", "table": table, "rows": {"range": [0, rows]}, "need": 0}
    for i in range(n):
        hostile.send_multipart([P.encode_header(dict(pull, id=i))])
    wait_for(lambda: stats(c)["pulls"] + stats(c)["errors"] >= first + n, timeout=60,
             what=f"the server to take all {n} pulls")
    return pid, base, hostile


def test_a_peer_that_never_reads_its_replies_cannot_grow_the_server(keys):
    """F1: 3,000 unread 256 KiB pulls took a server from 40 to 789 MiB. Now its queue
    holds GEEPS_PEER_QUEUE replies (64 here: 16 MiB); bound +64 MiB for the rest."""
    with cluster(keys, workers=1, GEEPS_PEER_QUEUE="64") as cl:
        c = client(cl, keys)
        t = c.create_table("w", 64, 1024, rule="add")        # a pull of it: 256 KiB
        c.pull(t)
        pid, base, hostile = flood(cl, c, keys, "w", 64, 3000)
        grown = rss(pid) - base
        assert grown < 64 * MiB, f"server RSS grew {grown / MiB:.0f} MiB"
        assert stats(c)["errors"] > 2000, "the peer's requests past its queue are refused"
        np.testing.assert_array_equal(c.pull(t)[0], np.zeros((64, 1024)))  # still serves
        hostile.close(0)
        c.push(t, None, np.ones((64, 1024), np.float32))
        c.clock()
        np.testing.assert_array_equal(c.pull(t)[0], np.ones((64, 1024)))
        assert rss(pid) - base < 64 * MiB


def test_a_peer_that_reads_again_is_told_what_it_missed_then_served(keys):
    with cluster(keys, workers=1, GEEPS_PEER_QUEUE="4") as cl:
        c = client(cl, keys)
        c.create_table("w", 64, 1024, rule="add")
        peer = raw_peer(cl, keys, reads=False)
        pull = {"v": 1, "op": "pull", "table": "w", "rows": {"range": [0, 64]}, "need": 0}
        for i in range(200):
            peer.send_multipart([P.encode_header(dict(pull, id=i))])
        wait_for(lambda: stats(c)["pulls"] + stats(c)["errors"] >= 200, timeout=30,
                 what="the server to take the pulls")
        got, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:      # read until a refusal names the limit
            if not peer.poll(1000):
                peer.send_multipart([P.encode_header({"v": 1, "op": "ping", "id": "p"})])
                continue
            h = json.loads(peer.recv_multipart()[0])
            got.append(h)
            if not h.get("ok") and "GEEPS_PEER_QUEUE" in h.get("error", ""):
                break
        assert got and "did not read them" in got[-1]["error"], got[-5:]
        peer.send_multipart([P.encode_header({"v": 1, "op": "ping", "id": "again"})])
        assert peer.poll(10000)
        assert json.loads(peer.recv_multipart()[0])["ok"]
        peer.close(0)


def test_reads_parked_by_a_peer_that_left_are_freed_and_others_can_wait_again(keys):
    """F2: a peer filled the parked-read cap and left; every later read that had to
    wait failed with the cap error for good."""
    with cluster(keys, workers=2, GEEPS_MAX_PARKED="8") as cl:
        c0, c1 = client(cl, keys, 0), client(cl, keys, 1)
        t = c0.create_table("w", 4, 2, rule="add")
        c1.open_table("w")
        hostile = raw_peer(cl, keys)
        for i in range(8):
            hostile.send_multipart([P.encode_header(
                {"v": 1, "op": "pull", "id": i, "table": "w", "rows": {"range": [0, 4]},
                 "need": 50})])
        wait_for(lambda: stats(c0)["parked"] == 8, what="8 parked reads")
        with pytest.raises(geeps.ServerError, match="GEEPS_MAX_PARKED"):
            c0.pull(t, need=1)
        hostile.close(0)
        wait_for(lambda: stats(c0)["parked"] == 0, timeout=5,
                 what="the gone peer's parked reads to be freed")
        h = c0.pull_async(t, need=1)
        c0.push(t, None, np.ones((4, 2), np.float32))
        c0.clock()
        c1.clock()
        np.testing.assert_array_equal(h.wait(20)[0], np.ones((4, 2)))


def test_a_parked_read_past_its_deadline_is_answered_with_an_error_naming_it(keys):
    with cluster(keys, workers=2, GEEPS_WAIT_TIMEOUT="1") as cl:
        c = client(cl, keys)
        c.create_table("w", 4, 2, rule="add")
        peer = raw_peer(cl, keys)
        peer.send_multipart([P.encode_header(
            {"v": 1, "op": "pull", "id": 5, "table": "w", "rows": {"range": [0, 4]},
             "need": 3})])
        assert peer.poll(10000), "no answer to a read"
        h = json.loads(peer.recv_multipart()[0])
        assert h["id"] == 5 and h["waiting"], "a parked read is said to wait at once"
        assert peer.poll(10000), "a parked read never expired"
        h = json.loads(peer.recv_multipart()[0])
        assert h["id"] == 5 and not h["ok"] and "GEEPS_WAIT_TIMEOUT" in h["error"], h
        assert stats(c)["parked"] == 0
        peer.close(0)


def test_a_frame_above_the_message_limit_disconnects_its_sender(keys):
    """A single 256 MiB frame was accepted; here the limit is 1 MiB and the frame 8."""
    with cluster(keys, workers=1, GEEPS_MAX_MESSAGE="1Mi") as cl:
        c = client(cl, keys)
        t = c.create_table("w", 4, 2, rule="add")
        pid = cl.procs[0].pid
        base = rss(pid)
        peer = raw_peer(cl, keys)
        header = {"v": 1, "op": "push", "id": 1, "table": "w", "worker": 0, "session": 1,
                  "clock": 0, "seq": 0, "rows": {"range": [0, 4]}}
        peer.send_multipart([P.encode_header(header), b"\0" * (8 * MiB)])
        assert not peer.poll(2000), "the server answered a frame above GEEPS_MAX_MESSAGE"
        assert rss(pid) - base < 8 * MiB
        assert stats(c)["pushes"] == 0
        np.testing.assert_array_equal(c.pull(t)[0], np.zeros((4, 2)))
        peer.close(0)


def test_large_unread_replies_are_bounded_in_bytes_and_never_stall_an_update(keys):
    """Replies of 1 MiB and more go out zero-copy, aliasing the rows; an update waits
    for them to be sent. A peer that never reads them must neither stall that update
    (it did, for good) nor hold more than GEEPS_PEER_REPLY_BYTES (8 MiB here)."""
    with cluster(keys, workers=1, GEEPS_PEER_REPLY_BYTES="8Mi") as cl:
        c = client(cl, keys)
        t = c.create_table("w", 512, 1024, rule="add")       # a pull of it: 2 MiB
        c.pull(t)
        pid, base, hostile = flood(cl, c, keys, "w", 512, 200)
        c.push(t, None, np.ones((512, 1024), np.float32))
        assert c.clock() == 1                   # the update did not wait on the peer
        np.testing.assert_array_equal(c.pull(t)[0], np.ones((512, 1024)))
        grown = rss(pid) - base
        assert grown < 64 * MiB, f"server RSS grew {grown / MiB:.0f} MiB"
        hostile.close(0)


def sum_with_arrival(order: list[int], grads: list[np.ndarray], init: np.ndarray) -> tuple[bytes, int]:
    """Workers push whole-table gradients and clock, in `order` (each one's push on
    the server before the next starts); returns the table's bits after the clock and how
    many pushes the server told to wait."""
    import threading
    n, width = init.shape
    with Cluster(servers=1, workers=len(grads), GEEPS_PUSH_BUFFER=str(init.nbytes)) as cl:
        clients = [cl.client(w) for w in range(len(grads))]
        t = clients[0].create_table("g", n, width, rule="add", init=init)
        tables = [t] + [c.open_table("g") for c in clients[1:]]
        threads, errors = [], []

        def step(w):
            try:
                clients[w].push(tables[w], None, grads[w])
                clients[w].clock()
            except Exception as e:      # noqa: BLE001 - reported by the assertion below
                errors.append(e)
        for k, w in enumerate(order):
            th = threading.Thread(target=step, args=(w,), daemon=True)
            th.start()
            threads.append(th)
            # The next worker starts once this one's push reached the server (kept, or
            # told to wait), so the arrival order is the one asked for.
            wait_for(lambda: stats(clients[0])["pushes"] + stats(clients[0])["busy"] > k,
                     what=f"worker {w}'s push at the server")
        for th in threads:
            th.join(60)
        assert not errors and not any(th.is_alive() for th in threads), errors
        values, clock = clients[0].pull(t)
        assert clock == 1
        return values.tobytes(), stats(clients[0])["busy"]


def test_workers_ahead_of_their_turn_wait_and_the_sum_does_not_depend_on_arrival():
    rng = np.random.default_rng(4)
    init = rng.standard_normal((64, 16), dtype=np.float32)
    grads = [rng.standard_normal((64, 16), dtype=np.float32) for _ in range(4)]
    late, busy = sum_with_arrival([3, 2, 1, 0], grads, init)
    assert busy > 0, "with room for one table ahead of its turn, workers 2 and 1 wait"
    in_order, _ = sum_with_arrival([0, 1, 2, 3], grads, init)
    assert late == in_order
    want = init + (((grads[0] + grads[1]) + grads[2]) + grads[3])
    assert late == want.tobytes()


def test_reads_parked_on_a_shard_do_not_hold_back_a_workers_push_clock_or_stats():
    import threading
    with Cluster(servers=1, workers=2) as cl:
        c0, c1 = cl.client(0), cl.client(1)
        t = c0.create_table("r", 4, 2, rule="add")
        c1.open_table("r")
        reads = [c0.pull_async(t, need=2) for _ in range(150)]     # > the window of 64
        wait_for(lambda: stats(c1)["parked"] >= 150, what="150 reads parked")
        got = []
        th = threading.Thread(target=lambda: got.append(c0.stats()), daemon=True)
        th.start()
        th.join(30)
        assert got, "stats() waited behind the parked reads"
        for _ in range(2):
            c0.push_async(t, None, np.ones((4, 2), np.float32)).wait(30)
            c0.clock_async().wait(30)
            c1.clock()
        for r in reads:
            values, clock = r.wait(30)
            assert clock == 2 and (values == 2).all()
