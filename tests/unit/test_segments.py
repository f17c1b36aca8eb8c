"""A shard's segments under a membership (issue 16), without sockets: stale and future
epochs refused without changing state, a segment cut in two by a new membership
updates to the bits of the uncut one, a sum in flight cut with it."""
import json

import numpy as np
import pytest

from geeps.job import membership as ms
from geeps.server.accumulate import ClockSum, Push
from geeps.server.shard import ShardState
from geeps.wire import protocol as P

N, W = 12, 3


def reply(out):
    (peer, frames), = out
    return json.loads(frames[0])


def shard(m, rank=0, rule="adam"):
    st = ShardState(rank, 2, membership=m)
    init = np.linspace(-1, 1, N * W, dtype=np.float32).reshape(N, W)
    for g in m.held_by(rank, N):
        h = reply(st.handle(b"p", P.request("create", 1, [init[g.lo:g.hi]], table="t",
                                            n_rows=N, row_width=W, lo=g.lo, hi=g.hi,
                                            rule=rule, hyper={"lr": 0.1}, per_clock=True,
                                            init=True, epoch=m.epoch)))
        assert h["ok"], h
    return st


def step(st, m, clock, rows=(0, N)):
    """Both workers push rows and finish `clock`."""
    for w in (0, 1):
        g = np.full((rows[1] - rows[0], W), 0.25 * (w + 1) + clock, np.float32)
        h = reply(st.handle(b"p", P.request("push", 2, [g], table="t", worker=w, session=1,
                                            clock=clock, seq=clock, epoch=m.epoch,
                                            rows={"range": list(rows)})))
        assert h["ok"], h
    for w in (0, 1):
        st.handle(b"p", P.request("clock", 3, worker=w, clock=clock, epoch=m.epoch))


def test_requests_of_another_epoch_are_refused_and_change_nothing():
    m = ms.initial(["a:1"])
    st = shard(m)
    before = st.digest()
    g = np.ones((N, W), np.float32)
    old = reply(st.handle(b"p", P.request("push", 2, [g], table="t", worker=0, session=1,
                                          clock=0, seq=0, epoch=0, rows={"range": [0, N]})))
    assert not old["ok"] and old["stale"] and old["membership"]["epoch"] == 1, old
    new = reply(st.handle(b"p", P.request("push", 2, [g], table="t", worker=0, session=1,
                                          clock=0, seq=0, epoch=5, rows={"range": [0, N]})))
    assert not new["ok"] and new["behind"], new
    back = reply(st.handle(b"p", P.request("membership", 3,
                                           membership=dict(m.to_json(), epoch=1,
                                                           replication=1, next_id=7))))
    assert not back["ok"] and "another membership" in back["error"], back
    assert st.digest() == before


def test_a_segment_cut_by_a_new_membership_updates_as_the_whole_did():
    m = ms.initial(["a:1"])
    whole, cut = shard(m), shard(m)
    step(whole, m, 0)
    step(cut, m, 0)
    # mid-clock 1: worker 0's push is in, then a membership cuts the rows at 5
    g0 = np.full((N, W), 0.5, np.float32)
    for st in (whole, cut):
        st.handle(b"p", P.request("push", 2, [g0], table="t", worker=0, session=1, clock=1,
                                  seq=9, epoch=1, rows={"range": [0, N]}))
    m2 = ms.join(m, "b:1")          # server 1 catches up on a share: rows cut there
    bounds = sorted({b for g in m2.segments(N) for b in (g.lo, g.hi)} - {0, N})
    assert bounds
    assert reply(cut.handle(b"p", P.request("membership", 4, membership=m2.to_json())))["ok"]
    assert len(cut.tables) == len(bounds) + 1
    for st, mm in ((whole, m), (cut, m2)):
        g1 = np.full((N, W), 1.5, np.float32)
        for lo, hi in zip([0, *bounds], [*bounds, N]) if st is cut else [(0, N)]:
            h = reply(st.handle(b"p", P.request("push", 2, [g1[lo:hi]], table="t", worker=1,
                                                session=1, clock=1, seq=9 + lo,
                                                epoch=mm.epoch, rows={"range": [lo, hi]})))
            assert h["ok"], h
        for w in (0, 1):
            st.handle(b"p", P.request("clock", 3, worker=w, clock=1, epoch=mm.epoch))
    rows = np.concatenate([t.rows for t in sorted(cut.tables.values(), key=lambda t: t.lo)])
    assert rows.tobytes() == whole.tables["t"].rows.tobytes()
    for k in whole.tables["t"].state.slots:
        slots = np.concatenate([t.state.slots[k] for t in
                                sorted(cut.tables.values(), key=lambda t: t.lo)])
        assert slots.tobytes() == whole.tables["t"].state.slots[k].tobytes()


def test_a_sum_in_flight_cut_in_two_sums_as_the_whole():
    rng = np.random.default_rng(0)
    g0, g1 = (rng.standard_normal((N, W)).astype(np.float32) for _ in range(2))
    alloc = lambda n=N: (lambda: np.empty((n, W), np.float32))
    ref = ClockSum(N, 2, alloc())
    ref.keep(1, Push(0, N, None, g1.copy()))
    ref.keep(0, Push(0, N, None, g0.copy()))
    for r in (0, 1):
        ref.finished.add(r)
        ref.settle(r, [(0, N)])
    s = ClockSum(N, 2, alloc())
    s.keep(1, Push(0, N, None, g1.copy()))          # worker 1 ahead of its turn: kept
    x = 5
    right = s.split(x, alloc(N - x))
    for part, lo in ((s, 0), (right, x)):
        part.keep(0, Push(0, part.n_rows, None, g0[lo:lo + part.n_rows].copy()))
        for r in (0, 1):
            part.finished.add(r)
            part.settle(r, [(0, part.n_rows)])
        assert part.complete
        assert part.acc[:part.n_rows].tobytes() == ref.acc[lo:lo + part.n_rows].tobytes()


def test_a_shard_exports_its_epoch_bytes_and_failovers():
    """geeps_membership_epoch, geeps_shard_bytes{holding}, geeps_failovers_total of a
    real Server (its socket bound, no client needed: requests go to its state)."""
    from geeps.job import env as config
    from geeps.metrics import Metrics
    from geeps.server.server import Server
    from tests.helpers import free_ports
    servers = tuple(f"127.0.0.1:{p}" for p in free_ports(2))
    cfg = config.check(config.Config(role="server", rank=1, num_workers=2, servers=servers,
                                     replication=2, bind_host="127.0.0.1"))
    metrics = Metrics("segments-test", "server", 1)
    server = Server(cfg, metrics=metrics)
    try:
        m = ms.initial(servers, 2)
        init = np.zeros((N, W), np.float32)
        for g in m.held_by(1, N):
            server.state.handle(b"p", P.request(
                "create", 1, [init[g.lo:g.hi]], table="t", n_rows=N, row_width=W, lo=g.lo,
                hi=g.hi, rule="sgd", hyper={"lr": 0.1}, per_clock=True, init=True))
        server._export()
        mine = {g.primary == 1: (g.hi - g.lo) * W * 4 for g in m.held_by(1, N)}
        assert metrics.value("geeps_membership_epoch") == 1
        assert metrics.value("geeps_shard_bytes", holding="primary") == mine[True]
        assert metrics.value("geeps_shard_bytes", holding="replica") == mine[False]
        server.state.handle(b"p", P.request("membership", 2,
                                            membership=ms.fail(m, 0).to_json()))
        server._export()
        assert metrics.value("geeps_membership_epoch") == 2
        assert metrics.value("geeps_failovers_total") == 1
        assert metrics.value("geeps_shard_bytes", holding="primary") == N * W * 4
    finally:
        server.close()


def test_stream_messages_kept_for_rows_being_fetched_are_capped_by_bytes(monkeypatch):
    """A replica still fetching keeps the stream's messages for those rows; what it
    keeps is bounded in bytes as well as in count, and a message over the bound is
    refused by name without keeping anything."""
    from geeps.server import shard as shard_mod
    monkeypatch.setattr(shard_mod, "MAX_EARLY_STREAM_BYTES", 1000)
    st = shard(ms.initial(["a:1", "b:2"], 2))
    frames = [b"h", b"\0" * 400]
    assert st._buffer_stream(b"p", 1, {}, frames) == []
    assert st._buffer_stream(b"p", 2, {}, frames) == []
    assert st.early_stream_bytes == 802
    with pytest.raises(P.ProtocolError, match="would hold 1203 bytes, over 1000"):
        st._buffer_stream(b"p", 3, {}, frames)
    assert len(st.early_stream) == 2 and st.early_stream_bytes == 802
