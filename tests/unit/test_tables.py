import numpy as np
import pytest

from geeps.tables import Table, as_rows, partition, resolve_hyper


@pytest.mark.parametrize("n,s", [(0, 1), (1, 2), (10, 3), (1000, 7), (5, 5)])
def test_partition_is_contiguous_and_balanced(n, s):
    parts = partition(n, s)
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1


def test_split_index_returns_every_row_once_in_its_shard():
    t = Table("t", 100, 4, "add", {}, tuple(partition(100, 3)))
    rows = np.array([99, 0, 34, 33, 67, 66, 0, 50], dtype=np.int64)
    seen = np.zeros(len(rows), int)
    for k, pos, ids in t.split_index(rows):
        lo, hi = t.bounds[k]
        assert ((ids >= lo) & (ids < hi)).all()
        assert (rows[pos] == ids).all()
        seen[pos] += 1
    assert (seen == 1).all()


def test_as_rows_rejects_out_of_range_and_non_integers():
    with pytest.raises(IndexError, match="0..9"):
        as_rows(np.array([10]), 10)
    with pytest.raises(TypeError, match="integers"):
        as_rows(np.array([0.5]), 10)
    assert as_rows(None, 5) == range(0, 5)
    assert as_rows(slice(2, 4), 5) == range(2, 4)


def test_resolve_hyper_names_the_unknown_one():
    assert resolve_hyper("sgd", {"lr": 0.5})["lr"] == 0.5
    with pytest.raises(ValueError, match="'momentum'.*accepted: lr, weight_decay, schedule"):
        resolve_hyper("sgd", {"momentum": 0.9})
    with pytest.raises(ValueError, match="rule 'rmsprop'"):
        resolve_hyper("rmsprop", {})
