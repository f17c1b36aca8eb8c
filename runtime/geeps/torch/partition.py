"""Each worker's part of the training data (`geeps.torch.shard`).

    for x, y in shard(loader, rank=1, num_workers=2):   # a new shuffle every epoch
        ...

Under BSP every worker must run the same number of clocks, or the last clocks of the
fastest worker wait forever for the others; so every worker gets exactly the same
number of samples (the remainder of N / W is left out of that epoch).

- A DataLoader over a map-style dataset is rebuilt around a sampler: one permutation
  per epoch (seed + epoch, the same on every worker; no permutation if the loader
  did not shuffle), worker r taking positions r, r+W, r+2W, ... So batch k of the
  W workers together is batch k of one process with W times the batch size.
- A map-style Dataset is partitioned once: worker r sees items r, r+W, ...; shuffle
  inside it with your own DataLoader.
- Anything else (an IterableDataset loader, a list, a generator) is dealt round
  robin by whole rounds: of each W consecutive batches worker r takes the r-th, and
  a last incomplete round is dropped.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, Sampler


def _check(rank: int, num_workers: int) -> None:
    if num_workers < 1 or not 0 <= rank < num_workers:
        raise ValueError(f"rank {rank} / num_workers {num_workers}: need 0 <= rank < "
                         "num_workers")


class ShardSampler(Sampler[int]):
    """Indices of one worker's share of one epoch (see the module docstring)."""

    def __init__(self, n: int, rank: int, num_workers: int, shuffle: bool, seed: int = 0):
        _check(rank, num_workers)
        self.n, self.rank, self.num_workers = n, rank, num_workers
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self.start = 0          # skip this many of the epoch's indices (resuming)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.num_workers

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        used = len(self) * self.num_workers
        return iter(order[self.rank:used:self.num_workers].tolist()[self.start:])


class ShardedLoader:
    """A DataLoader's batches for one worker, reshuffled each epoch (each `iter()`).
    With a `tracker` (the geeps.torch Context) it follows the job's clock: see
    _follow."""

    def __init__(self, loader: DataLoader, rank: int, num_workers: int, seed: int = 0,
                 tracker=None):
        self.source = loader
        self.tracker = tracker
        self._begun = False     # a replacement worker starts at its clock, once
        self.sampler = ShardSampler(len(loader.dataset), rank, num_workers,
                                    shuffle=isinstance(loader.sampler, RandomSampler),
                                    seed=seed)
        kw = dict(batch_size=loader.batch_size, sampler=self.sampler,
                  num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                  pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                  timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                  multiprocessing_context=loader.multiprocessing_context,
                  generator=loader.generator,
                  persistent_workers=loader.persistent_workers)
        if loader.num_workers > 0:
            kw["prefetch_factor"] = loader.prefetch_factor
        self.loader = DataLoader(loader.dataset, **kw)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration shuffles for (e.g. after resuming)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = 0
        self.epoch += 1
        if self.tracker is None:
            return iter(self.loader)
        return self._follow(self.epoch - 1)

    def _follow(self, my_epoch: int):
        """The epoch's batches, one per clock; after the job rolled back to a
        checkpoint (or a step was voided by it), or in a worker that replaced a dead
        one, continue from the batch of the clock the job is at now, through to the end
        of this epoch. Assumes one optimizer step per batch (the position is the clock):
        shard the training loader this way, not an evaluation loader."""
        t, steps = self.tracker, len(self.loader)
        seen = t.rollbacks()
        if not self._begun:
            self._begun = True
            # A worker that replaces a dead one joins at the clock its predecessor
            # reached: epochs before it yield nothing, its own starts mid-way.
            t.reposition = t.reposition or t.joined_at() > 0
        epoch, pos = my_epoch, my_epoch * steps
        it = iter(self.loader)
        while True:
            if t.rollbacks() != seen or t.reposition:
                seen, t.reposition = t.rollbacks(), False
                pos = t.clock()
                epoch, k = divmod(pos, steps)
                if epoch > my_epoch:
                    t.reposition = True     # a later epoch's iterator takes it from here
                    return
                self.sampler.set_epoch(epoch)
                self.sampler.start = k * self.loader.batch_size
                it = iter(self.loader)
            try:
                batch = next(it)
            except StopIteration:
                if epoch >= my_epoch:
                    return
                epoch += 1                  # replaying an earlier epoch: go on to ours
                self.sampler.set_epoch(epoch)
                self.sampler.start = 0
                it = iter(self.loader)
                continue
            t.batch_clock = pos
            pos += 1
            yield batch


class ShardedDataset(Dataset):
    """Items rank, rank+W, ... of a map-style dataset (fixed partition)."""

    def __init__(self, dataset, rank: int, num_workers: int):
        _check(rank, num_workers)
        self.dataset, self.rank, self.num_workers = dataset, rank, num_workers

    def __len__(self) -> int:
        return len(self.dataset) // self.num_workers

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} outside this worker's {len(self)} items")
        return self.dataset[self.rank + i * self.num_workers]


class RoundRobin:
    """Of each W consecutive items of `source` the rank-th; an incomplete last round
    is dropped so every worker gets as many. Re-iterable if `source` is."""

    def __init__(self, source: Iterable, rank: int, num_workers: int):
        _check(rank, num_workers)
        self.source, self.rank, self.num_workers = source, rank, num_workers

    def __len__(self) -> int:
        return len(self.source) // self.num_workers      # TypeError if source has none

    def __iter__(self):
        mine, seen = None, 0
        for item in self.source:
            if seen == self.rank:
                mine = item
            seen += 1
            if seen == self.num_workers:
                yield mine
                mine, seen = None, 0


def shard(data, rank: int, num_workers: int, seed: int = 0, tracker=None):
    """This worker's part of `data` (see the module docstring); never blocks. With a
    `tracker` (the geeps.torch context) a DataLoader follows the job's rollbacks."""
    _check(rank, num_workers)
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset) or data.batch_size is None:
            return RoundRobin(data, rank, num_workers)
        return ShardedLoader(data, rank, num_workers, seed, tracker)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) \
            and hasattr(data, "__len__"):
        return ShardedDataset(data, rank, num_workers)
    if hasattr(data, "__iter__"):
        return RoundRobin(data, rank, num_workers)
    raise TypeError(f"shard() takes a DataLoader, a Dataset or an iterable of batches "
                    f"(got {type(data).__name__})")
