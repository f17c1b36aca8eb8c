"""The ring and its plans (geeps.job.membership): pure, so every property is checked
on the object itself, over many shapes."""
import itertools

import pytest

from geeps.job import membership as ms
from geeps.job.membership import (TOKENS, Lost, Membership, copies, fail, initial, join,
                                  leave, promote)
from geeps.tables.table import partition

ADDRS = [f"s{i}:7000" for i in range(16)]


def rows_of(m, sid, n):
    return {r for s in m.segments(n) if s.primary == sid for r in range(s.lo, s.hi)}


def covers(m, n):
    segs = m.segments(n)
    assert segs[0].lo == 0 and segs[-1].hi == n
    assert all(a.hi == b.lo for a, b in zip(segs, segs[1:]))
    assert all(len(set(s.holders)) == len(s.holders) <= m.replication for s in segs)


@pytest.mark.parametrize("s", range(1, 17))
def test_initial_is_todays_partition(s):
    for n in (0, 1, 7, 10, 1000, 12345):
        segs = [(g.lo, g.hi) for g in initial(ADDRS[:s]).segments(n)]
        assert segs == [b for b in partition(n, s) if b[0] < b[1]]


@pytest.mark.parametrize("s,k", [(1, 1), (3, 2), (5, 3), (8, 2)])
def test_replicas_are_the_next_servers(s, k):
    m = initial(ADDRS[:s], k)
    for seg in m.segments(1000):
        assert seg.holders == tuple((seg.primary + j) % s for j in range(k))
    covers(m, 1000)


@pytest.mark.parametrize("s", [2, 3, 5, 8])
def test_join_moves_only_the_newcomers_share_and_balances(s):
    m = initial(ADDRS[:s], min(2, s))
    m2 = join(m, "new:7000")
    assert m2.epoch == m.epoch + 1 and max(m2.servers) == s
    new = s
    n = 10 ** 6
    moved = sum(c.hi - c.lo for c in copies(m, m2, n) if c.dst == new)
    assert moved <= n / (s + 1) * (m.replication) + s + 1       # primary share (+ replicas)
    m3 = promote(m2)
    counts = [m3.tokens_of(i) for i in m3.servers]
    assert max(counts) - min(counts) <= 1
    # everything not given to the newcomer stayed with its primary
    for sid in range(s):
        assert rows_of(m3, sid, n) <= rows_of(m, sid, n)
    covers(m3, n)
    # few runs: each old server gave one tail, so at most one extra run per server
    assert len(m3.runs) <= 2 * s + 1


@pytest.mark.parametrize("s", [2, 3, 5])
def test_join_then_leave_returns_the_layout(s):
    m = initial(ADDRS[:s], 1)
    m3 = promote(join(m, "new:7000"))
    m5 = promote(leave(m3, s))
    assert s not in m5.servers and m5.epoch == m.epoch + 4
    assert [m5.tokens_of(i) for i in range(s)] == [m.tokens_of(i) for i in range(s)]
    covers(m5, 1000)


def test_leave_keeps_k_holders_that_have_the_rows():
    m = promote(join(initial(ADDRS[:3], 2), "new:7000"))
    m2 = leave(m, 1)
    # every future holder either holds the rows now or is pending on them
    for a, b in ms._cuts(m2):
        future = promote(m2).holders(a)
        now = set(m2.holders(a)) | {p.sid for p in m2.pending if p.start <= a < p.end}
        assert set(future) <= now and len(future) == 2 and 1 not in future
    for c in copies(m, m2, 1000):
        assert c.dst != 1 and c.src in m.servers


@pytest.mark.parametrize("s,k", [(2, 2), (3, 2), (5, 3)])
def test_fail_promotes_the_first_replica_and_rereplicates(s, k):
    m = initial(ADDRS[:s], k)
    f = fail(m, 1)
    assert 1 not in f.servers and f.epoch == 2
    for a, b in ms._cuts(f):
        old, new = m.holders(a), f.holders(a)
        assert new == tuple(h for h in old if h != 1)       # first replica now primary
    p = promote(f)
    live = s - 1
    for seg in p.segments(1000):
        assert len(seg.holders) == min(k, live)
    # what the catchers fetch comes from live holders only
    for c in copies(f, p, 1000) + copies(m, f, 1000):
        assert c.src != 1


def test_fail_of_the_only_holder_is_lost():
    with pytest.raises(Lost, match="alone"):
        fail(initial(ADDRS[:3], 1), 2)


def test_one_change_at_a_time():
    m = join(initial(ADDRS[:2]), "x:1")
    with pytest.raises(ValueError, match="in progress"):
        join(m, "y:1")
    with pytest.raises(ValueError, match="in progress"):
        leave(m, 0)


def test_json_round_trip_and_errors_name_the_field():
    m = promote(join(initial(ADDRS[:3], 2), "n:1"))
    for x in (m, join(m, "m:1"), leave(m, 0), fail(m, 2)):
        assert Membership.from_json(x.to_json()) == x
    good = m.to_json()
    bad = [({**good, "epoch": 0}, "membership.epoch"),
           ({**good, "epoch": True}, "membership.epoch"),
           ({**good, "servers": {}}, "membership.servers"),
           ({**good, "servers": {"x": "a:1"}}, "membership.servers"),
           ({**good, "runs": good["runs"][1:]}, r"membership.runs\[0\]"),
           ({**good, "runs": good["runs"][:-1]}, "membership.runs"),
           ({**good, "runs": [[0, TOKENS, [99]]]}, r"membership.runs\[0\].holders"),
           ({**good, "runs": [[0, TOKENS, [0, 0]]]}, r"membership.runs\[0\].holders"),
           ({**good, "pending": [[0, 5, 0, "boss"]]}, r"membership.pending\[0\]"),
           ({**good, "leaving": [42]}, "membership.leaving"),
           ("nope", "membership")]
    for d, field in bad:
        with pytest.raises(ValueError, match=field):
            Membership.from_json(d)


def test_balance_within_ten_percent_on_the_examples_shapes():
    tables = [(64 * 10, 1), (10, 64), (1, 10), (5_000_000, 1), (784 * 256, 1), (256, 1)]
    for s in (3, 5, 8):
        per = ms.bytes_per_server(initial(ADDRS[:s]), tables)
        sizes = [v["primary"] for v in per.values()]
        assert max(sizes) <= 1.10 * sum(sizes) / s


def test_segments_are_stable_under_many_changes():
    m = initial(ADDRS[:2], 2)
    for step in itertools.islice(itertools.cycle(["join", "join", "leave", "fail"]), 12):
        if step == "join":
            m = promote(join(m, f"j{m.epoch}:1"))
        elif step == "leave" and len(m.servers) > 2:
            m = promote(leave(m, max(m.servers)))
        elif step == "fail" and len(m.servers) > 2:
            m = promote(fail(m, min(m.servers)))
        covers(m, 777)
        counts = [m.tokens_of(i) for i in m.servers]
        assert sum(counts) == TOKENS


def test_ids_are_never_reused():
    m = promote(fail(initial(ADDRS[:3], 2), 2))
    assert set(m.servers) == {0, 1}
    m2 = join(m, "again:7000")
    assert max(m2.servers) == 3 and m2.next_id == 4
    assert Membership.from_json(m2.to_json()).next_id == 4
