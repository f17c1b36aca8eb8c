"""ShardState without sockets: the meaning of each request."""
import json
import time

import numpy as np
import pytest

from geeps.wire import protocol as P
from geeps.server.rules import RuleState
from geeps.server.shard import SeqWindow, ShardState


def msg(op, rid=1, payload=(), **fields):
    return P.request(op, rid, payload, **fields)


def reply(out):
    (peer, frames), = out
    return json.loads(frames[0]), frames[1:]


def make(workers=2, rule="sgd", per_clock=True, n=4, w=2, **hyper):
    st = ShardState(0, workers)
    init = np.arange(n * w, dtype=np.float32).reshape(n, w)
    h, _ = reply(st.handle(b"p", msg("create", table="t", n_rows=n, row_width=w, lo=0, hi=n,
                                     rule=rule, hyper=hyper or ({} if rule == "add" else {"lr": 1.0}), per_clock=per_clock,
                                     init=True, payload=[init])))
    assert h["ok"], h
    return st, init


def parked(out) -> bool:
    """The request was parked: its one reply says it waits."""
    return len(out) == 1 and json.loads(out[0][1][0]).get("waiting") is True


def push(st, worker, clock, seq, values, rows=None, session=7, **fields):
    rows = rows or {"range": [0, len(values)]}
    return reply(st.handle(b"p", msg("push", table="t", worker=worker, session=session,
                                     clock=clock, seq=seq, rows=rows, **fields,
                                     payload=[np.asarray(values, np.float32)])))[0]


def test_bsp_applies_the_mean_once_every_worker_clocked():
    st, init = make()
    g0 = np.ones((4, 2), np.float32)
    g1 = 3 * np.ones((4, 2), np.float32)
    assert push(st, 0, 0, 0, g0)["ok"] and push(st, 1, 0, 0, g1)["ok"]
    st.handle(b"p", msg("clock", worker=0, clock=0))
    assert (st.tables["t"].rows == init).all(), "applied before worker 1 finished the clock"
    st.handle(b"p", msg("clock", worker=1, clock=0))
    np.testing.assert_allclose(st.tables["t"].rows, init - 2.0)


def test_duplicate_push_is_acknowledged_and_dropped():
    st, init = make(workers=1)
    assert push(st, 0, 0, 0, np.ones((4, 2)))["ok"]
    again = push(st, 0, 0, 0, np.ones((4, 2)))
    assert again["ok"] and again["duplicate"]
    st.handle(b"p", msg("clock", worker=0, clock=0))
    np.testing.assert_allclose(st.tables["t"].rows, init - 1.0)
    assert st.stats["duplicates"] == 1


def test_pull_parks_until_the_bound_holds_and_is_released_by_clock():
    st, _ = make(workers=2)
    assert parked(st.handle(b"p", msg("pull", rid=5, table="t", rows={"range": [0, 4]}, need=1)))
    assert len(st.parked) == 1
    st.handle(b"q", msg("clock", worker=0, clock=0))
    assert len(st.parked) == 1
    out = st.handle(b"q", msg("clock", worker=1, clock=0))
    released = [json.loads(f[0]) for peer, f in out if peer == b"p"]
    assert released and released[0]["id"] == 5 and released[0]["clock"] == 1


def test_parked_reads_are_capped():
    st = ShardState(0, 2, max_parked=2)
    st.handle(b"p", msg("create", table="t", n_rows=1, row_width=1, lo=0, hi=1, rule="add",
                        hyper={}, per_clock=True, init=False))
    for i in range(2):
        assert parked(st.handle(b"p", msg("pull", rid=i, table="t", rows={"range": [0, 1]}, need=1)))
    h, _ = reply(st.handle(b"p", msg("pull", rid=9, table="t", rows={"range": [0, 1]}, need=1)))
    assert not h["ok"] and "GEEPS_MAX_PARKED" in h["error"]


def test_sparse_push_with_repeated_ids_sums_them():
    st, init = make(workers=1, rule="add")
    ids = np.array([1, 1, 3], "<i8")
    h, _ = reply(st.handle(b"p", msg("push", table="t", worker=0, session=1, clock=0, seq=0,
                                     rows={"ids": 3}, payload=[ids, np.ones((3, 2), np.float32)])))
    assert h["ok"], h
    st.handle(b"p", msg("clock", worker=0, clock=0))
    expect = init.copy()
    expect[1] += 2
    expect[3] += 1
    np.testing.assert_array_equal(st.tables["t"].rows, expect)


def test_async_applies_each_push_at_once():
    st, init = make(workers=2, per_clock=False)
    push(st, 0, 0, 0, 2 * np.ones((4, 2)))
    np.testing.assert_allclose(st.tables["t"].rows, init - 1.0)  # mean over 2 workers


@pytest.mark.parametrize("bad,needle", [
    (dict(clock=3), "push for clock 3 but worker 0 is at clock 0"),
    (dict(worker=5), "'worker' 5 outside"),
    (dict(rows={"range": [0, 9]}), "outside table rows"),
])
def test_bad_pushes_change_nothing(bad, needle):
    st, _ = make()
    before = st.digest()
    fields = dict(table="t", worker=0, session=1, clock=0, seq=0, rows={"range": [0, 4]})
    fields.update(bad)
    h, _ = reply(st.handle(b"p", msg("push", payload=[np.ones((4, 2), np.float32)], **fields)))
    assert not h["ok"] and needle in h["error"]
    assert st.digest() == before


def test_seq_window_is_exact_and_compacts():
    w = SeqWindow()
    for s in [0, 2, 1, 5, 3, 4]:
        assert not w.seen(s)
        w.add(s)
        assert w.seen(s)
    assert w.floor == 5 and not w.above and not w.seen(6)


def _reference(rule, hyper, p, grads):
    """Straight-line float64 versions of the rules, for comparison."""
    p = p.astype(np.float64)
    v = np.zeros_like(p)
    m = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = g + hyper.get("weight_decay", 0) * p
        if rule == "sgd":
            p = p - hyper["lr"] * g
        elif rule == "momentum":
            v = hyper["momentum"] * v + g
            p = p - hyper["lr"] * v
        elif rule == "adam":
            b1, b2 = hyper["beta1"], hyper["beta2"]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p - hyper["lr"] * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + hyper["eps"])
    return p


@pytest.mark.parametrize("rule,hyper", [
    ("sgd", {"lr": 0.1, "weight_decay": 0.01}),
    ("momentum", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}),
    ("adam", {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}),
])
def test_rules_match_reference(rule, hyper):
    rng = np.random.default_rng(0)
    p = rng.standard_normal((5, 3)).astype(np.float32)
    grads = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(10)]
    st = RuleState(rule, hyper, p.shape)
    q = p.copy()
    for g in grads:
        st.apply(q, g.copy())   # apply may use the gradient as scratch
    np.testing.assert_allclose(q, _reference(rule, st.hyper, p, grads), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rule", ["sgd", "adam"])
@pytest.mark.parametrize("unpushed", [0, 1])
def test_a_dense_clock_applied_in_blocks_answers_each_pull_early_with_the_same_bits(
        rule, unpushed):
    # unpushed=1: the last row gets no gradient (DataParallel's fingerprint row): the
    # clock is still applied as slices, block by block, never gathered and scattered.
    w = 4096                                    # P.chunk_rows(w) = 256 rows per block
    n = 2 * P.chunk_rows(w) + 100               # three blocks, the last one short
    pushed = n - unpushed
    rng = np.random.default_rng(0)
    init = rng.standard_normal((n, w)).astype(np.float32)
    grads = [rng.standard_normal((n, w)).astype(np.float32) for _ in range(2)]

    def run(early):
        st = ShardState(0, 2)
        sent = []
        if early:
            st.send_early = sent.append
        st.handle(b"p", msg("create", table="t", n_rows=n, row_width=w, lo=0, hi=n,
                            rule=rule, hyper={"lr": 0.1}, per_clock=True, init=True,
                            payload=[init]))
        for k in range(2):
            step = P.chunk_rows(w)
            for a in range(0, pushed, step):      # chunked as a client sends them
                b = min(pushed, a + step)
                st.handle(b"p", msg("push", table="t", worker=k, session=1, clock=0,
                                    seq=a, rows={"range": [a, b]}, payload=[grads[k][a:b]]))
        for a in range(0, n, P.chunk_rows(w)):
            b = min(n, a + P.chunk_rows(w))
            assert parked(st.handle(b"r", msg("pull", rid=a, table="t", need=1,
                                       rows={"range": [a, b]})))      # parked
        st.handle(b"p", msg("clock", worker=0, clock=0))
        out = st.handle(b"p", msg("clock", worker=1, clock=0))
        return st, sent, out

    whole, _, out_whole = run(False)
    blocks, sent, out_blocks = run(True)
    assert whole.digest() == blocks.digest()
    # The reference: one update of the pushed rows through gather and scatter.
    ref = RuleState(rule, {"lr": 0.1}, (n, w))
    rows = init.copy()
    ref.apply(rows, (grads[0] + grads[1])[:pushed], rows=np.arange(pushed), scale=0.5)
    assert blocks.tables["t"].rows.tobytes() == rows.tobytes()
    assert len(out_whole) == 4 and len(out_blocks) == 1     # clock reply only
    assert [len(batch) for batch in sent] == [1, 1, 1]      # one pull per block, in order
    ids = [json.loads(batch[0][1][0])["id"] for batch in sent]
    assert ids == [0, P.chunk_rows(w), 2 * P.chunk_rows(w)]
    assert not blocks.parked


def batch_reply(out, peer=b"p"):
    """The parts of the one batch reply to `peer`: [(header, payload frames)]."""
    (frames,) = [f for to, f in out if to == peer]
    return P.batch_parts(json.loads(frames[0]), frames)


def test_a_batch_is_handled_as_its_parts_one_by_one():
    st, init = make(workers=1)
    g = np.ones((4, 2), np.float32)
    parts = [msg("push", rid=1, table="t", worker=0, session=7, clock=0, seq=0,
                 rows={"range": [0, 4]}, payload=[g]),
             msg("clock", rid=2, worker=0, clock=0),
             msg("pull", rid=3, table="t", rows={"range": [1, 3]}, need=1)]
    replies = batch_reply(st.handle(b"p", P.batch(1, parts)))
    assert [h["id"] for h, _ in replies] == [1, 2, 3] and all(h["ok"] for h, _ in replies)
    (values,) = replies[2][1]
    np.testing.assert_array_equal(np.frombuffer(values, "<f4").reshape(2, 2), init[1:3] - 1.0)
    alone, _ = make(workers=1)
    for m in parts:
        alone.handle(b"p", m)
    assert alone.digest() == st.digest()


def test_a_malformed_part_gets_its_own_error_and_the_others_apply():
    st, init = make(workers=1)
    parts = [msg("push", rid=1, table="nope", worker=0, session=7, clock=0, seq=0,
                 rows={"range": [0, 4]}, payload=[np.ones((4, 2), np.float32)]),
             msg("batch", rid=2, parts=[], nf=[]),
             msg("clock", rid=3, worker=0, clock=0)]
    (bad, _), (nested, _), (ok, _) = batch_reply(st.handle(b"p", P.batch(1, parts)))
    assert not bad["ok"] and "batch part 0" in bad["error"] and "'nope'" in bad["error"]
    assert not nested["ok"] and "not a batch" in nested["error"]
    assert ok["ok"] and st.done == [1]
    np.testing.assert_array_equal(st.tables["t"].rows, init)     # the bad push changed nothing


@pytest.mark.parametrize("fields, frames, fault", [
    ({"parts": "x", "nf": [0]}, 0, "'parts'"),
    ({"parts": [], "nf": []}, 0, "1..256"),
    ({"parts": [{"op": "ping", "id": 1}], "nf": [2]}, 1, "'nf' counts 2"),
    ({"parts": [{"op": "ping", "id": 1}], "nf": [True]}, 0, "'nf'"),
])
def test_a_malformed_batch_is_refused_whole(fields, frames, fault):
    st, _ = make(workers=1)
    before = st.digest()
    h, _ = reply(st.handle(b"p", msg("batch", payload=[b"x"] * frames, **fields)))
    assert not h["ok"] and fault in h["error"]
    assert st.digest() == before


def test_reads_released_by_a_batch_go_to_their_own_workers():
    st, init = make(workers=2)
    assert parked(st.handle(b"q", msg("pull", rid=9, table="t", rows={"range": [0, 4]}, need=1)))
    st.handle(b"q", msg("clock", worker=1, clock=0))
    out = st.handle(b"p", P.batch(1, [msg("clock", rid=2, worker=0, clock=0),
                                      msg("pull", rid=3, table="t", rows={"range": [0, 4]},
                                          need=1)]))
    assert [h["id"] for h, _ in batch_reply(out)] == [2, 3]
    (released,) = [json.loads(f[0]) for to, f in out if to == b"q"]
    assert released["id"] == 9 and released["clock"] == 1


def test_a_sparse_clock_of_scattered_rows_is_gathered_and_scattered_with_the_same_bits():
    # Every third row of 300, pushed by id by both workers: 100 runs, more than
    # MAX_RUNS, so the update goes through the gather/scatter path.
    from geeps.server.shard import MAX_RUNS
    n, w = 300, 4
    st, init = make(rule="momentum", n=n, w=w, lr=0.1, momentum=0.9)
    rng = np.random.default_rng(5)
    ids = np.arange(0, n, 3, dtype=np.int64)
    assert len(ids) > MAX_RUNS
    grads = [rng.standard_normal((len(ids), w)).astype(np.float32) for _ in range(2)]
    for k in range(2):
        h, _ = reply(st.handle(b"p", msg("push", table="t", worker=k, session=7, clock=0,
                                         seq=0, rows={"ids": len(ids)},
                                         payload=[ids, grads[k]])))
        assert h["ok"], h
        st.handle(b"p", msg("clock", worker=k, clock=0))
    ref = RuleState("momentum", {"lr": 0.1, "momentum": 0.9}, (n, w))
    want = init.copy()
    ref.apply(want, grads[0] + grads[1], rows=ids, scale=0.5)
    assert st.tables["t"].rows.tobytes() == want.tobytes()
    assert st.tables["t"].state.slots["velocity"].tobytes() == ref.slots["velocity"].tobytes()


# ---- early apply: rows updated once every worker's last push of them is in ----------

def _early_run(rule, last, n=8, w=3, replace_at=None):
    """Two workers push rows [0, 4) and [4, 8) of clock 0 (optionally as last pushes),
    a read of [0, 4) for clock 1 is parked first; then both clock. replace_at: worker
    1 is replaced (new session) after that many of its pushes, and the replacement
    pushes everything again. Returns (state, replies to the reader in order)."""
    st, _ = make(rule=rule, n=n, w=w, lr=0.1)
    rng = np.random.default_rng(9)
    grads = [rng.standard_normal((n, w)).astype(np.float32) for _ in range(2)]
    seen = []

    def send(frames):
        for to, r in st.handle(b"p", frames):
            if to == b"r":
                seen.append(json.loads(r[0]))

    for k in (0, 1):
        send(msg("hello", worker=k, session=7))
    assert parked(st.handle(b"r", msg("pull", rid=99, table="t", need=1,
                               rows={"range": [0, 4]})))
    pushes = [(k, a, b) for a, b in ((0, 4), (4, 8)) for k in (0, 1)]
    done, replaced = 0, False
    for k, a, b in pushes:
        if k == 1 and replaced:
            continue            # the dead worker's remaining pushes never came
        fields = dict(table="t", worker=k, session=7, clock=0, seq=a, rows={"range": [a, b]},
                      payload=[grads[k][a:b]])
        if last:
            fields["last"] = True
        send(msg("push", **fields))
        done += k == 1
        if k == 1 and done == replace_at:
            send(msg("hello", worker=1, session=8))
            for a2, b2 in ((0, 4), (4, 8)):
                h, _ = reply(st.handle(b"p", msg(
                    "push", table="t", worker=1, session=8, clock=0, seq=a2,
                    rows={"range": [a2, b2]}, payload=[grads[1][a2:b2]],
                    **({"last": True} if last else {}))))
                assert h["ok"], h
                seen.append(("replacement", a2, h.get("absorbed", False)))
            replaced = True
    seen.append("clocks")
    send(msg("clock", worker=0, clock=0))
    send(msg("clock", worker=1, clock=0))
    return st, seen


@pytest.mark.parametrize("rule", ["sgd", "momentum", "adam"])
def test_last_pushes_update_rows_early_with_the_same_bits(rule):
    late, late_seen = _early_run(rule, last=False)
    early, early_seen = _early_run(rule, last=True)
    assert early.digest() == late.digest()           # rows, rule state (Adam's step)
    assert early.stats["early"] == 2 and late.stats["early"] == 0
    # The read of [0, 4) for clock 1 went when both workers' last pushes of those rows
    # were in: before the clock ended, which answers nothing more.
    assert early_seen[0]["id"] == 99 and early_seen[0]["clock"] == 1
    assert early_seen[1:] == ["clocks"]
    assert late_seen[0] == "clocks" and [h["id"] for h in late_seen[1:]] == [99]


def test_a_read_of_rows_already_updated_early_is_answered_at_once():
    st, _ = make(n=8, w=3)
    for k in (0, 1):
        assert push(st, k, 0, 0, np.ones((4, 3), np.float32), last=True)["ok"]
    (to, frames), = st.handle(b"r", msg("pull", rid=5, table="t", need=1,
                                        rows={"range": [1, 3]}))
    h = json.loads(frames[0])
    assert h["ok"] and h["clock"] == 1 and st.min_clock == 0
    np.testing.assert_allclose(np.frombuffer(frames[1], np.float32).reshape(2, 3),
                               np.arange(24, dtype=np.float32).reshape(8, 3)[1:3] - 1.0)
    # Rows not all updated yet wait for the clock.
    assert parked(st.handle(b"r", msg("pull", rid=6, table="t", need=1,
                               rows={"range": [2, 6]})))


def test_a_push_to_rows_already_pushed_last_is_refused_and_changes_nothing():
    st, _ = make(n=8, w=3)
    v = np.ones((4, 3), np.float32)
    assert push(st, 0, 0, 0, v, last=True)["ok"]
    before = st.digest()
    for rows in ({"range": [2, 6]}, {"range": [0, 4]}):
        h = push(st, 0, 0, 1, np.ones((4, 3), np.float32), rows=rows, last=True)
        assert not h["ok"] and "already sent its last push of rows [0, 4)" in h["error"]
    h, _ = reply(st.handle(b"p", msg("push", table="t", worker=0, session=7, clock=0, seq=2,
                                     rows={"ids": 1}, last=True,
                                     payload=[np.array([6]), np.ones((1, 3), np.float32)])))
    assert not h["ok"] and "header field 'last'" in h["error"]
    assert st.digest() == before


def test_a_last_push_to_an_async_table_is_refused():
    st, _ = make(per_clock=False)
    h = push(st, 0, 0, 0, np.ones((4, 2), np.float32), last=True)
    assert not h["ok"] and "header field 'last'" in h["error"]


def test_a_replacement_redoing_rows_updated_early_does_not_count_them_twice():
    # Worker 1 dies after its last push of [0, 4) (updated early with worker 0's) and
    # its replacement pushes both ranges again: [0, 4) is dropped, [4, 8) counts. With
    # the same gradients the result is the fault-free one, bit for bit.
    clean, _ = _early_run("momentum", last=True)
    st, seen = _early_run("momentum", last=True, replace_at=1)
    assert ("replacement", 0, True) in seen and ("replacement", 4, False) in seen
    assert st.tables["t"].rows.tobytes() == clean.tables["t"].rows.tobytes()
    assert st.tables["t"].state.slots["velocity"].tobytes() == \
        clean.tables["t"].state.slots["velocity"].tobytes()
    assert st.stats["absorbed"] == 1


# ---- issue 23: bounded state, values checked where they enter ------------------------
def test_digest_streams_the_rows_without_a_table_sized_copy():
    import tracemalloc
    n, w = 4096, 1024                       # 16 MiB of rows, 32 MiB with momentum's slot
    st = ShardState(0, 2)
    reply(st.handle(b"p", msg("create", table="t", n_rows=n, row_width=w, lo=0, hi=n,
                              rule="momentum", hyper={"lr": 0.1}, per_clock=True,
                              init=False)))
    push(st, 0, 0, 0, np.ones((n, w), np.float32))      # a dense pending contribution too
    before = st.digest()
    tracemalloc.start()
    try:
        assert st.handle(b"q", msg("digest")) == [], "answered when done, not at once"
        out = finish_background(st)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    h, _ = reply(out)
    assert h["digest"] == before
    # Bound: 1/16 of the table (a tobytes() copy would be the whole 16 MiB at once).
    assert peak < n * w * 4 // 16, f"digest allocated {peak} bytes at its peak"


def finish_background(st, limit=10_000):
    for _ in range(limit):
        out = st.step_background()
        if out:
            return out
    raise AssertionError("background work did not end")


def test_digest_goes_a_block_at_a_time_and_others_are_answered_meanwhile(monkeypatch):
    from geeps.server import shard
    monkeypatch.setattr(shard, "DIGEST_BLOCK", 64 << 10)
    n, w = 1024, 256                                    # 1 MiB: 16 blocks
    st = ShardState(0, 1)
    reply(st.handle(b"p", msg("create", table="t", n_rows=n, row_width=w, lo=0, hi=n,
                              rule="add", hyper={}, per_clock=True, init=False)))
    assert st.handle(b"q", msg("digest", 5)) == []
    st.step_background()
    h, _ = reply(st.handle(b"q", msg("digest", 5)))     # its retry: still running
    assert h["waiting"]
    h, vals = reply(st.handle(b"other", msg("pull", table="t", rows={"range": [0, 4]},
                                            need=0)))
    assert h["ok"] and vals, "another peer's read waited for the digest"
    st.step_background()
    push(st, 0, 0, 0, np.ones((n, w), np.float32))      # the state changes midway
    st.handle(b"p", msg("clock", worker=0, clock=0))
    (peer, frames), = finish_background(st)
    assert peer == b"q" and json.loads(frames[0])["digest"] == st.digest(), \
        "a digest of a state that changed while hashing must start over"


@pytest.mark.parametrize("schedule", [
    {"decay": "cosine", "total": float("inf")},
    {"decay": "step", "milestones": [float("inf")]},
    {"warmup": float("inf")},
    {"decay": "cosine", "total": 10, "min_lr": float("nan")},
])
def test_a_non_finite_schedule_is_refused_at_create_and_changes_nothing(schedule):
    st, _ = make()
    before = st.digest()
    # JSON with Infinity/NaN, as a hostile or buggy client would send it
    header = json.dumps({"v": 1, "op": "create", "id": 2, "table": "u", "n_rows": 2,
                         "row_width": 1, "lo": 0, "hi": 2, "rule": "sgd",
                         "hyper": {"lr": 0.1, "schedule": schedule}, "per_clock": True,
                         "init": False}).encode()
    h, _ = reply(st.handle(b"p", [header]))
    assert not h["ok"] and "hyper" in h["error"], h
    assert st.digest() == before and "u" not in st.tables


def test_a_part_that_fails_inside_a_batch_fails_alone(monkeypatch):
    st, _ = make()
    monkeypatch.setattr(ShardState, "_op_ping", lambda *a: 1 // 0)
    raw = P.batch(9, [msg("ping", rid=1), msg("stats", rid=2)])
    out = st.handle(b"p", raw)
    (peer, frames), = out
    parts = P.replies(json.loads(frames[0]), frames)
    assert [p[0]["ok"] for p in parts] == [False, True]
    assert "internal server error" in parts[0][0]["error"]


def test_parked_reads_are_capped_per_peer_expire_and_go_with_their_peer():
    st = ShardState(0, 2, max_parked=10, wait_timeout=5.0, peer_parked=3)
    st.handle(b"p", msg("create", table="t", n_rows=1, row_width=1, lo=0, hi=1, rule="add",
                        hyper={}, per_clock=True, init=False))
    pull = lambda peer, rid: st.handle(peer, msg("pull", rid=rid, table="t",
                                                 rows={"range": [0, 1]}, need=1))
    for i in range(3):
        assert parked(pull(b"hostile", i))
    h, _ = reply(pull(b"hostile", 9))
    assert not h["ok"] and "GEEPS_PEER_PARKED" in h["error"]
    assert parked(pull(b"good", 1)) and len(st.parked) == 4    # others may still park
    assert st.forget_peer(b"hostile") == 3 and len(st.parked) == 1
    assert st.expire(time.monotonic()) == []
    (peer, frames), = st.expire(time.monotonic() + 6.0)
    h = json.loads(frames[0])
    assert peer == b"good" and not h["ok"] and h["id"] == 1
    assert "GEEPS_WAIT_TIMEOUT" in h["error"] and "clock 1" in h["error"], h
    assert st.parked == []


def test_pushes_under_ever_new_session_names_keep_a_bounded_state():
    from geeps.server.shard import SESSIONS_PER_WORKER
    st, _ = make(workers=2, rule="add", per_clock=False)
    for s in range(2000):
        assert push(st, 1, 0, 0, np.ones((4, 2)), session=f"s{s}")["ok"]
    assert len(st.windows) <= SESSIONS_PER_WORKER


def test_a_hello_for_a_rank_held_by_a_live_session_needs_its_token():
    st, _ = make()
    hello = lambda peer, session, **kw: reply(st.handle(peer, msg(
        "hello", worker=0, session=session, num_workers=2, **kw)))[0]
    first = hello(b"a", "s1")
    assert first["ok"] and first["token"]
    push(st, 0, 0, 0, np.ones((4, 2)))                # pending, session 7
    before = st.digest()
    forged = hello(b"evil", "s2")
    assert not forged["ok"] and "token" in forged["error"]
    assert not hello(b"evil", "s1")["ok"], "nor the same session name from elsewhere"
    assert st.digest() == before and st.sessions[0] == "s1"
    assert hello(b"a", "s1")["ok"], "its own connection may say hello again"
    assert hello(b"b", "s3", token=first["token"])["ok"], "the token holder may take over"
    push(st, 0, 0, 1, np.ones((4, 2)), session="s3")
    assert not hello(b"evil", "s5")["ok"]
    st.forget_peer(b"b")                             # it crashed: a replacement gets in
    assert hello(b"c", "s4")["ok"]


def test_a_new_client_may_take_a_rank_whose_live_session_holds_no_pushes():
    st, _ = make()
    assert reply(st.handle(b"a", msg("hello", worker=0, session="s1", num_workers=2)))[0]["ok"]
    h, _ = reply(st.handle(b"b", msg("hello", worker=0, session="s2", num_workers=2)))
    assert h["ok"] and st.sessions[0] == "s2"


def drive(st, workers, order, make_msg):
    """Deliver each worker's messages (push seq 0, push seq 1, clock), the workers' in
    `order`, answering `busy` and `resend` as a client does. Returns the most bytes the
    shard kept ahead of their turn at once, and the busy answers per worker."""
    wire = [(w, k) for w in order for k in range(3)]
    waiting = {w: [] for w in range(workers)}
    busy = {w: 0 for w in range(workers)}
    most = 0
    while wire:
        w, k = wire.pop(0)
        for peer, frames in st.handle(b"w%d" % w, make_msg(w, k)):
            to = int(peer[1:])
            h = json.loads(frames[0])
            assert h["ok"], h
            if h.get("resend"):
                wire[:0] = [(to, x) for x in waiting[to]]
                waiting[to] = []
            elif h.get("busy"):
                waiting[to].append(h["id"] % 10)
                busy[to] += 1
        s = st.tables["t"].pending.get(0)
        if s is not None:
            most = max(most, sum(n for r, n in s.kept_bytes.items() if r != st._frontier(0)))
    return most, busy


@pytest.mark.parametrize("order", [[3, 2, 1, 0], [1, 3, 0, 2], [0, 1, 2, 3]])
def test_pushes_ahead_of_their_turn_wait_past_the_buffer_and_the_bits_do_not_depend_on_order(order):
    n, width, workers = 64, 4, 4
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal((n // 2, width), dtype=np.float32) for _ in range(2)]
             for _ in range(workers)]
    half = grads[0][0].nbytes

    def make_msg(w, k):
        rid = 10 * w + k
        if k == 2:
            return msg("clock", rid, worker=w, clock=0)
        return msg("push", rid, [grads[w][k].copy()], table="t", worker=w, session=w,
                   clock=0, seq=k, rows={"range": [k * n // 2, (k + 1) * n // 2]})

    results = []
    for budget in (2 * half, None):
        st = ShardState(0, workers, push_buffer=budget)
        st.handle(b"c", msg("create", table="t", n_rows=n, row_width=width, lo=0, hi=n,
                            rule="add", hyper={}, per_clock=True, init=False))
        most, busy = drive(st, workers, order, make_msg)
        assert st.min_clock == 1 and not st.blocked
        if budget:
            assert most <= budget, "kept more than GEEPS_PUSH_BUFFER ahead of turn"
            if order[0] == 3:
                assert busy[1] > 0 and busy[0] == 0, "the frontier never waits"
        results.append(st.tables["t"].rows.tobytes())
    want = np.zeros((n, width), np.float32)
    for w in range(workers):            # rank order, as the shard documents it
        want += np.concatenate(grads[w]) if w else np.concatenate(grads[0])
    assert results[0] == results[1] == want.tobytes()


def test_a_waiting_workers_clock_waits_too_until_told_to_resend_or_a_new_session():
    st = ShardState(0, 3, push_buffer=40)
    st.handle(b"c", msg("create", table="t", n_rows=4, row_width=2, lo=0, hi=4, rule="add",
                        hyper={}, per_clock=True, init=False))
    g = np.ones((4, 2), np.float32)                        # 32 bytes a push
    h = push(st, 1, 0, 0, g, session=1)
    assert h["ok"] and not h.get("busy"), "kept: within the buffer"
    h = push(st, 2, 0, 0, g, session=2)
    assert h["waiting"] and h["busy"] and 2 in st.blocked, "over the buffer: must wait"
    h, _ = reply(st.handle(b"w2", msg("clock", worker=2, clock=0)))
    assert h["busy"] and st.done[2] == 0, "a clock behind a waiting push went through"
    assert not push(st, 0, 0, 0, g, session=0).get("busy"), "the frontier never waits"
    out = st.handle(b"w0", msg("clock", 9, worker=0, clock=0))
    told = [(peer, json.loads(f[0])) for peer, f in out if json.loads(f[0]).get("resend")]
    assert [peer for peer, _ in told] == [b"p"], "worker 2 is told to send again"
    assert not push(st, 2, 0, 0, g, session=2).get("busy") and 2 not in st.blocked
    st.blocked[1] = {"seq": 5, "peer": b"p", "rid": 1, "clock": 0, "nbytes": 8, "told": True}
    st.handle(b"p", msg("hello", worker=1, session="new"))
    assert 1 not in st.blocked, "a replacement starts unblocked"


def test_an_early_update_names_only_its_rows_to_before_write():
    """The socket layer waits for unfinished zero-copy replies of the rows about to
    change: an early update names its rows, so the replies of the chunks updated before
    it (still on a slow wire) do not stall the shard."""
    writes = []
    st = ShardState(0, 2, before_write=lambda t, runs=None: writes.append(runs))
    h, _ = reply(st.handle(b"p", msg("create", table="t", n_rows=8, row_width=2, lo=0,
                                     hi=8, rule="add", hyper={}, per_clock=True, init=False)))
    assert h["ok"], h
    for k in (0, 1):
        st.handle(b"p", msg("hello", worker=k, session=7))
    for a, b in ((0, 4), (4, 8)):
        for k in (0, 1):
            assert push(st, k, 0, a, np.ones((4, 2)), rows={"range": [a, b]}, last=True)["ok"]
    assert writes == [[(0, 4)], [(4, 8)]]
    assert st.stats["early"] == 2


def test_a_replacement_redoing_a_clock_its_predecessor_finished_here_is_not_counted_twice():
    """Worker 1 died after its clock message for clock 0 reached this server but not
    another one: its replacement rejoins at clock 0 (the lowest any server reports) and
    pushes clock 0 again. Here that is a duplicate, acknowledged and not summed; the
    next clock counts as usual. An old clock from a session that did not rejoin is
    still an error."""
    st, init = make(workers=2, rule="add")
    st.handle(b"p", msg("hello", worker=1, session=7, num_workers=2))
    g = np.ones((4, 2), np.float32)
    assert push(st, 1, 0, 0, g)["ok"]
    st.handle(b"p", msg("clock", worker=1, clock=0))         # then worker 1 is killed
    h, _ = reply(st.handle(b"q", msg("hello", worker=1, session=8, num_workers=2)))
    assert h["worker_clock"] == 1
    h = push(st, 1, 0, 0, g, session=8)
    assert h["ok"] and h.get("duplicate"), h
    assert reply(st.handle(b"q", msg("clock", worker=1, clock=0)))[0]["ok"]
    assert push(st, 0, 0, 0, g)["ok"]
    st.handle(b"p", msg("clock", worker=0, clock=0))
    np.testing.assert_array_equal(st.tables["t"].rows, init + 2)     # once per worker
    assert push(st, 1, 1, 1, g, session=8)["ok"]
    h = push(st, 0, 0, 1, g)
    assert not h["ok"] and "push for clock 0 but worker 0 is at clock 1" in h["error"], h
