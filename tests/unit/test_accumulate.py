"""Contribution: range pieces kept zero-copy sum to the same bits as a dense accumulator."""
import numpy as np

from geeps.server.accumulate import MAX_PIECES, Contribution

N, W = 40, 3


def alloc():
    return np.zeros((N, W), np.float32), np.zeros(N, bool)


def dense_sum(pushes_by_rank):
    acc = np.zeros((N, W), np.float32)
    for pushes in pushes_by_rank:
        mine = np.zeros((N, W), np.float32)
        for a, b, v in pushes:
            mine[a:b] += v
        acc += mine
    return acc


def contributions(ranks) -> list[Contribution]:
    """One Contribution per rank from its (a, b, values) range pushes."""
    cs = []
    for pushes in ranks:
        c = Contribution(N)
        for a, b, v in pushes:
            c.add_range(a, b, v, alloc)
        cs.append(c)
    return cs


def test_disjoint_ranges_stay_pieces_and_sum_like_dense():
    rng = np.random.default_rng(1)
    ranks = [[(0, 10, rng.standard_normal((10, W), np.float32)),
              (10, 40, rng.standard_normal((30, W), np.float32))],
             [(5, 25, rng.standard_normal((20, W), np.float32))]]
    cs = contributions(ranks)
    assert cs[0].dense is None and cs[0].full and not cs[1].full
    acc = np.empty((N, W), np.float32)
    for i, c in enumerate(cs):
        c.sum_into(acc, first=i == 0)
    assert acc.tobytes() == dense_sum(ranks).tobytes()
    touched = np.zeros(N, bool)
    cs[1].mark(touched)
    assert touched.tolist() == [5 <= i < 25 for i in range(N)]


def test_overlap_turns_dense_and_first_partial_rank_counts_zeros():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((10, W), np.float32)
    b = rng.standard_normal((10, W), np.float32)
    c = Contribution(N)
    c.add_range(0, 10, a, alloc)
    c.add_range(5, 15, b, alloc)           # overlaps the first piece
    assert c.dense is not None and not c.full
    acc = np.full((N, W), 7, np.float32)    # garbage from an earlier clock
    c.sum_into(acc, first=True)
    assert acc.tobytes() == dense_sum([[(0, 10, a), (5, 15, b)]]).tobytes()
    spare = c.recycle()
    assert not spare[0].any() and not spare[1].any()


def test_ids_and_too_many_pieces_are_dense():
    c = Contribution(N)
    c.add_ids(np.array([3, 3, 7]), np.ones((3, W), np.float32), alloc)
    assert c.dense[3, 0] == 2 and c.dense[7, 0] == 1 and c.touched.sum() == 2
    many = Contribution(N * MAX_PIECES)
    for i in range(MAX_PIECES + 1):
        many.add_range(i, i + 1, np.ones((1, W), np.float32),
                       lambda: (np.zeros((N * MAX_PIECES, W), np.float32),
                                np.zeros(N * MAX_PIECES, bool)))
    assert many.dense is not None and many.touched.sum() == MAX_PIECES + 1


def test_sum_all_fuses_the_first_two_alike_cut_workers_with_the_same_bits():
    from geeps.server.accumulate import sum_all
    rng = np.random.default_rng(3)
    ranks = [[(0, 16, rng.standard_normal((16, W), np.float32)),
              (16, 40, rng.standard_normal((24, W), np.float32))] for _ in range(3)]
    cs = contributions(ranks)
    acc = np.full((N, W), 9, np.float32)
    sum_all(cs, acc)
    assert acc.tobytes() == dense_sum(ranks).tobytes()
    odd = Contribution(N)                      # cut differently: the general path
    odd.add_range(0, 40, np.concatenate([v for _, _, v in ranks[0]]), alloc)
    acc2 = np.full((N, W), 9, np.float32)
    sum_all([odd] + cs[1:], acc2)
    assert acc2.tobytes() == acc.tobytes()


def test_partial_pushes_sum_over_zeros_where_a_rank_pushed_nothing():
    # Ranks 0 and 1 miss rows 36..40 (cut alike: the fused path), rank 2 pushes some of
    # them: its values must land on zeros, not on the scratch's old contents.
    from geeps.server.accumulate import gaps, run_rows, sum_all, union_runs
    rng = np.random.default_rng(4)
    alike = [[(0, 20, rng.standard_normal((20, W), np.float32)),
              (20, 36, rng.standard_normal((16, W), np.float32))] for _ in range(2)]
    ranks = alike + [[(30, 38, rng.standard_normal((8, W), np.float32))]]
    for order in (ranks, ranks[1:] + ranks[:1]):       # the fused path, and not
        cs = contributions(order)
        acc = np.full((N, W), 9, np.float32)
        sum_all(cs, acc)
        assert acc[:38].tobytes() == dense_sum(order)[:38].tobytes()
        assert [x.tolist() for x in union_runs(cs, N)] == [[0], [38]]
    assert gaps([(2, 5), (7, 9)], 12) == [(0, 2), (5, 7), (9, 12)]
    dense = Contribution(N)
    dense.add_ids(np.array([1, 2, 9]), np.ones((3, W), np.float32), alloc)
    assert dense.runs() == [(1, 3), (9, 10)]
    assert [x.tolist() for x in union_runs([dense], N)] == [[1, 9], [3, 10]]
    assert run_rows(np.array([1, 9, 20]), np.array([3, 10, 23])).tolist() == \
        [1, 2, 9, 20, 21, 22]
