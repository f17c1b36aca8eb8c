"""ClockSum: pushes summed in rank order as they become final give the same bits
whatever order they arrive in, and what is held ahead of its turn is only what has to be."""
import itertools

import numpy as np
import pytest

from geeps.server.accumulate import ClockSum, Push

N, WIDTH = 40, 3


def reference(pushes_by_rank) -> tuple[np.ndarray, np.ndarray]:
    """The documented additions, done plainly: per row, the first push copied in, then
    every later one added, in rank order and each worker's sending order."""
    acc = np.zeros((N, WIDTH), np.float32)
    seen = np.zeros(N, bool)
    for pushes in pushes_by_rank:
        for p in pushes:
            rows = np.arange(p.lo, p.hi) if p.ids is None else p.ids
            for i, r in enumerate(rows):
                acc[r] = p.values[i] if not seen[r] else acc[r] + p.values[i]
                seen[r] = True
    return acc, seen


def random_pushes(rng, workers):
    out = []
    for _ in range(workers):
        mine = []
        for _ in range(rng.integers(0, 4)):
            if rng.random() < 0.3:
                ids = rng.integers(0, N, rng.integers(1, 12))
                mine.append(Push(int(ids.min()), int(ids.max()) + 1, ids,
                                 rng.standard_normal((len(ids), WIDTH), dtype=np.float32)))
            else:
                a = int(rng.integers(0, N - 1))
                b = int(rng.integers(a + 1, N + 1))
                mine.append(Push(a, b, None, rng.standard_normal((b - a, WIDTH),
                                                                  dtype=np.float32)))
        out.append(mine)
    return out


def run(pushes_by_rank, events) -> ClockSum:
    """Feed `events`: ("push", rank, k) keeps rank's k-th push, ("clock", rank) finishes it."""
    s = ClockSum(N, len(pushes_by_rank), lambda: np.full((N, WIDTH), np.nan, np.float32))
    for e in events:
        if e[0] == "push":
            s.keep(e[1], pushes_by_rank[e[1]][e[2]])
        else:
            s.finished.add(e[1])
            s.settle(e[1], [(0, N)])
    return s


@pytest.mark.parametrize("seed", range(12))
def test_any_arrival_order_gives_the_reference_bits(seed):
    rng = np.random.default_rng(seed)
    workers = int(rng.integers(1, 5))
    pushes = random_pushes(rng, workers)
    want, seen = reference(pushes)
    # Each worker's events stay in its own order (one connection); across workers any
    # interleaving.
    per = [[("push", r, k) for k in range(len(p))] + [("clock", r)] for r, p in enumerate(pushes)]
    got = []
    for _ in range(6):
        queues = [list(q) for q in per]
        order = []
        while any(queues):
            r = int(rng.choice([i for i, q in enumerate(queues) if q]))
            order.append(queues[r].pop(0))
        s = run(pushes, order)
        assert s.complete and not s.kept
        starts, ends = s.pending()
        mask = np.zeros(N, bool)
        for a, b in zip(starts, ends):
            mask[a:b] = True
        assert mask.tolist() == seen.tolist()
        acc = s.acc if s.acc is not None else np.zeros((N, WIDTH), np.float32)
        got.append(np.where(seen[:, None], acc, 0).tobytes())
    assert all(g == np.where(seen[:, None], want, 0).tobytes() for g in got)


def test_last_pushes_in_rank_order_are_summed_on_arrival_and_nothing_is_kept():
    rng = np.random.default_rng(3)
    v = [rng.standard_normal((N, WIDTH), dtype=np.float32) for _ in range(3)]
    s = ClockSum(N, 3, lambda: np.empty((N, WIDTH), np.float32))
    for r in range(3):
        for a in range(0, N, 10):           # four chunks each, sent `last`
            assert s.in_turn(r, a, a + 10)
            s.keep(r, Push(a, a + 10, None, v[r][a:a + 10]))
            s.final.setdefault(r, []).append((a, a + 10))
            full = s.settle(r, [(a, a + 10)])
            assert not s.kept_bytes, "a push in its turn is summed, not kept"
            assert full == ([(a, a + 10)] if r == 2 else [])
    assert s.acc.tobytes() == ((v[0] + v[1]) + v[2]).tobytes()


def test_a_push_ahead_of_its_turn_is_kept_until_the_lower_ranks_finish():
    v = [np.full((N, WIDTH), r + 1, np.float32) for r in range(3)]
    s = ClockSum(N, 3, lambda: np.empty((N, WIDTH), np.float32))
    s.keep(2, Push(0, N, None, v[2]))
    s.finished.add(2)
    assert s.settle(2, [(0, N)]) == [] and s.kept_bytes == {2: v[2].nbytes}
    s.keep(0, Push(0, N, None, v[0]))
    s.finished.add(0)
    assert s.settle(0, [(0, N)]) == [] and 0 not in s.kept
    s.finished.add(1)                      # worker 1 pushed nothing
    assert s.settle(1, [(0, N)]) == [(0, N)]
    assert not s.kept and s.complete and (s.acc == 4).all()


def test_a_partly_summed_push_keeps_a_copy_of_the_rest_only():
    big = np.arange(N * WIDTH, dtype=np.float32).reshape(N, WIDTH)
    inner, outer = Push(0, N, None, big).split(10, 20)
    assert np.shares_memory(inner.values, big)
    assert [(p.lo, p.hi) for p in outer] == [(0, 10), (20, N)]
    assert not any(np.shares_memory(p.values, big) for p in outer)
    ids = np.array([3, 15, 3, 30])
    inner, outer = Push(3, 31, ids, big[:4]).split(10, 20)
    assert inner.ids.tolist() == [15] and outer[0].ids.tolist() == [3, 3, 30]


def test_drop_forgets_a_rank_and_summed_names_its_final_rows():
    s = ClockSum(N, 2, lambda: np.empty((N, WIDTH), np.float32))
    s.keep(0, Push(0, 10, None, np.ones((10, WIDTH), np.float32)))
    s.final[0] = [(0, 10)]
    s.settle(0, [(0, 10)])
    s.keep(0, Push(10, 20, None, np.ones((10, WIDTH), np.float32)))
    assert s.summed(0) == [(0, 10)]
    s.drop(0)
    assert not s.kept and 0 not in s.final and 0 not in s.pushed


def test_all_orders_of_three_whole_pushes_agree():
    rng = np.random.default_rng(5)
    pushes = [[Push(0, N, None, rng.standard_normal((N, WIDTH), dtype=np.float32))]
              for _ in range(3)]
    outs = set()
    for perm in itertools.permutations(range(3)):
        events = [("push", r, 0) for r in perm] + [("clock", r) for r in perm]
        outs.add(run(pushes, events).acc.tobytes())
    assert len(outs) == 1
