"""geeps.torch.shard: every worker its part, equal counts, a new shuffle each epoch."""
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import geeps.torch as gt
from geeps.torch.partition import RoundRobin, ShardedDataset, ShardedLoader, ShardSampler


def indices(n):
    return TensorDataset(torch.arange(n))


def epoch(loader):
    return [b[0].tolist() for b in loader]


@pytest.mark.parametrize("shuffle", [False, True])
def test_workers_together_see_the_batches_of_one_process_with_w_times_the_batch(shuffle):
    n, W, B = 103, 3, 4
    parts = [gt.shard(DataLoader(indices(n), batch_size=B, shuffle=shuffle), rank=r,
                      num_workers=W, seed=5) for r in range(W)]
    one = gt.shard(DataLoader(indices(n), batch_size=W * B, shuffle=shuffle), rank=0,
                   num_workers=1, seed=5)
    for _ in range(2):                                  # two epochs
        per_worker = [epoch(p) for p in parts]
        whole = epoch(one)
        assert len({len(e) for e in per_worker}) == 1   # equal batch counts: BSP-safe
        for k, big in enumerate(whole[:len(per_worker[0])]):
            if len(big) == W * B:
                assert sorted(sum((e[k] for e in per_worker), [])) == sorted(big)
        seen = sum((sum(e, []) for e in per_worker), [])
        assert len(seen) == len(set(seen)) == (n // W) * W


def test_each_epoch_has_a_new_permutation_shared_by_the_workers():
    s0 = ShardSampler(50, 0, 2, shuffle=True, seed=1)
    s1 = ShardSampler(50, 1, 2, shuffle=True, seed=1)
    e0 = list(s0), list(s1)
    s0.set_epoch(1), s1.set_epoch(1)
    e1 = list(s0), list(s1)
    assert e0 != e1
    assert set(e0[0]).isdisjoint(e0[1]) and set(e1[0]).isdisjoint(e1[1])
    assert list(ShardSampler(10, 1, 3, shuffle=False)) == [1, 4, 7]


def test_sharding_the_same_loader_again_continues_its_epochs():
    loader = DataLoader(indices(40), batch_size=5, shuffle=True)
    first = gt.shard(loader, rank=0, num_workers=2)
    assert isinstance(first, ShardedLoader)
    a = epoch(first)
    again = gt.shard(loader, rank=0, num_workers=2)
    assert again is first and first.epoch == 1
    assert epoch(again) != a
    first.set_epoch(0)
    assert epoch(first) == a


def test_dataset_is_partitioned_once():
    part = gt.shard(indices(10), rank=1, num_workers=3)
    assert isinstance(part, ShardedDataset) and len(part) == 3
    assert [part[i][0].item() for i in range(3)] == [1, 4, 7]
    with pytest.raises(IndexError, match="3 items"):
        part[3]


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(9))


def test_iterables_are_dealt_round_robin_by_whole_rounds():
    parts = [list(gt.shard(list(range(11)), rank=r, num_workers=3)) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]        # 9, 10: incomplete round
    loader = DataLoader(Stream(), batch_size=2)
    p = gt.shard(loader, rank=1, num_workers=2)
    assert isinstance(p, RoundRobin)
    assert [b.tolist() for b in p] == [[2, 3], [6, 7]]       # [8]: a round of one, dropped
    gen = (i for i in range(5))
    assert list(gt.shard(gen, rank=0, num_workers=2)) == [0, 2]


def test_rank_and_size_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("GEEPS_RANK", "1")
    monkeypatch.setenv("GEEPS_NUM_WORKERS", "2")
    assert list(gt.shard(list(range(6)))) == [1, 3, 5]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank 2 / num_workers 2"):
        gt.shard([1, 2], rank=2, num_workers=2)
    with pytest.raises(TypeError, match="got int"):
        gt.shard(5, rank=0, num_workers=1)
