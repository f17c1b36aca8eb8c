"""A request in flight when the membership cuts its rows in two (issue 16): range,
by-id and sparse pushes and by-id pulls sent by the old epoch are refused as stale,
split by the client along the new segments and applied once, with a pull's rows back
in the caller's order. Real `geeps server` processes over loopback; the membership
changes are sent by hand (the coordinator's two steps: pending, then promote)."""
import numpy as np
import pytest

from geeps.client.iothread import Request, _joined, _parts
from geeps.job import membership as ms
from tests.cluster import Cluster
from tests.helpers import wait_for
from tests.integration.test_replication import ask, send_membership

pytestmark = pytest.mark.integration
ROWS, WIDTH = 300, 4


def _cut_server_0_in_two(cl, c):
    """Server 1 takes the second half of server 0's rows: pending, caught up, promoted."""
    m = ms.initial(cl.servers, 1)
    half = ms.TOKENS // 4
    m2 = ms.Membership(2, m.servers, m.runs, 1, (ms.Pending(half, ms.TOKENS // 2, 1,
                                                            ms.PRIMARY),))
    for a in cl.servers:
        send_membership(a, m2)
    wait_for(lambda: ask(c, 1, "ping").get("ready") is True, 20, what="server 1 caught up")
    m3 = ms.promote(m2)
    for a in cl.servers:
        assert send_membership(a, m3)["epoch"] == 3
    return m3


def test_requests_of_the_old_epoch_are_split_along_the_new_segments():
    with Cluster(servers=2, workers=1) as cl:
        c = cl.client(0)
        t = c.create_table("w", ROWS, WIDTH, "add")
        assert c._io.membership.epoch == 1
        m3 = _cut_server_0_in_two(cl, c)
        assert [(g.lo, g.hi, g.primary) for g in m3.segments(ROWS)] == \
            [(0, 75, 0), (75, 300, 1)]
        ids = np.array([140, 3, 77, 299, 74, 75, 10], np.int64)    # across both cuts
        c.push(t, ids, np.arange(len(ids) * WIDTH, dtype=np.float32).reshape(-1, WIDTH))
        c.push(t, range(60, 90), np.ones((30, WIDTH), np.float32))
        c.clock()
        assert c._io.membership.epoch == 3
        want = np.zeros((ROWS, WIDTH), np.float32)
        want[ids] += np.arange(len(ids) * WIDTH, dtype=np.float32).reshape(-1, WIDTH)
        want[60:90] += 1
        got, _ = c.pull(t, ids)                     # rows in the order asked
        np.testing.assert_array_equal(got, want[ids])
        whole, _ = c.pull(t)
        np.testing.assert_array_equal(whole, want)


def test_pieces_of_a_by_id_and_a_sparse_push_and_their_reassembly():
    ids = np.array([9, 1, 5, 2], np.int64)
    r = Request(0, "push", {"table": "w", "rows": {"ids": 4}},
                [ids, np.arange(8, dtype=np.float32).reshape(4, 2)])
    pieces = _parts(r, np.array([0, 4, 8]), 2)
    assert [(p[0][0], list(p[0][1][0])) for p in pieces] == \
        [({"ids": 2}, [1, 2]), ({"ids": 1}, [5]), ({"ids": 1}, [9])]
    np.testing.assert_array_equal(pieces[0][0][1][1], [[2, 3], [6, 7]])
    # a pull's parts come back per segment and are put back in the caller's order
    vals = {i: np.asarray(p[0][1][0], np.float32).tobytes() for i, p in enumerate(pieces)}
    back = np.frombuffer(_joined(pieces, vals, 4), np.float32)
    np.testing.assert_array_equal(back, ids)
    # sparse: offsets (row - lo) * width + column, rows [2, 10)
    offs = np.array([0, 3, 5, 12, 15], np.uint32)      # rows 2, 3, 4, 8, 9
    r = Request(0, "push", {"table": "w", "rows": {"sparse": [5, 2, 10]}},
                [offs, np.arange(5, dtype=np.float32)])
    parts = _parts(r, np.array([0, 4, 8]), 2)
    assert [p[0][0] for p in parts] == [{"sparse": [2, 2, 4]}, {"sparse": [1, 4, 8]},
                                        {"sparse": [2, 8, 10]}]
    assert [list(p[0][1][0]) for p in parts] == [[0, 3], [1], [0, 3]]
    assert [list(p[0][1][1]) for p in parts] == [[0, 1], [2], [3, 4]]


def test_a_table_smaller_than_the_ring_follows_its_rows_to_a_server_that_never_saw_it():
    # 1 row on 3 servers: only server 0 holds it, and only it got the create. Server 0
    # leaves; the row goes to a neighbour, which must learn the table from the others.
    with Cluster(servers=3, workers=1) as cl:
        c = cl.client(0)
        tiny = c.create_table("tiny", 1, WIDTH, "add")
        big = c.create_table("big", ROWS, WIDTH, "add")
        c.push(tiny, range(1), np.full((1, WIDTH), 2, np.float32))
        c.clock()
        m = ms.initial(cl.servers, 1)
        m2 = ms.leave(m, 0)
        (heir,) = {g.catching[0] for g in m2.segments(1)}
        assert heir != 0
        for a in cl.servers:
            send_membership(a, m2)
        for k in (1, 2):
            wait_for(lambda k=k: ask(c, k, "ping").get("ready") is True, 20,
                     what=f"server {k} caught up")
        m3 = ms.promote(m2)
        for a in cl.servers:
            send_membership(a, m3)
        assert [g.primary for g in m3.segments(1)] == [heir]
        c.push(tiny, range(1), np.ones((1, WIDTH), np.float32))
        c.push(big, range(ROWS), np.ones((ROWS, WIDTH), np.float32))
        c.clock()
        got, _ = c.pull(tiny)
        np.testing.assert_array_equal(got, np.full((1, WIDTH), 3, np.float32))
        got, _ = c.pull(big)
        np.testing.assert_array_equal(got, np.ones((ROWS, WIDTH), np.float32))
