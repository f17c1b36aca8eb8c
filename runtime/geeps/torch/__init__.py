"""PyTorch on geeps: a single-process training script becomes data-parallel.

    import geeps.torch as gt                                  # the added line
    model = gt.DataParallel(Net())                            # params: views of table rows
    opt = gt.ServerOptimizer(model, "sgd", lr=0.1, momentum=0.9)   # the update runs on servers
    for x, y in gt.shard(loader):                             # this worker's part, per epoch
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward()                      # hooks push grads as they are ready
        opt.step()                                            # clock; refresh the parameters

    geeps run --servers 2 --workers 2 -- python train.py      # or a GeePSJob manifest
    python train.py                                           # alone: one in-process shard

`init()` is implicit (DataParallel calls it). Under BSP the servers run the rule once
per clock on the mean of the workers' gradients, so W workers with batch B train
exactly like one process with batch W*B. `LocalOptimizer(model, torch_optimizer)`
instead runs any torch optimizer on every worker and sends the mean change of the
parameters (an `add` table): for SGD and momentum the same result, no gradients sent
during backward.

Why not geeps.worker.Worker for dense models: its operations push a clock's updates
in one batch at clock() and hand out buffers valid from read() to post_read(); a
torch model needs parameter storage that outlives every clock and gradients that
leave from inside backward. So the dense path keeps the whole model in device memory
(like any data-parallel trainer) and talks to the servers through the client, unless
given a budget: `DataParallel(net, device_budget="2Gi")` (or spec.cache.torchDeviceBudget)
pages parameters, gradients and saved activations through that much device memory
(geeps.torch.paging, GeePS's larger-than-device models), bit for bit the same steps.
The Worker's memory manager does the same for the operation API (examples/04-sparse-lr).
"""
from __future__ import annotations

import weakref

from geeps.torch import context as _context
from geeps.torch.context import Context, init, shutdown
from geeps.torch.optim import LocalOptimizer, ServerOptimizer
from geeps.torch.paging import DeviceBudget, DeviceBudgetExceeded
from geeps.torch.parallel import BUCKET_BYTES, DataParallel
from geeps.torch.partition import RoundRobin, ShardedDataset, ShardedLoader, ShardSampler
from geeps.torch.partition import shard as _shard

__all__ = ["init", "shutdown", "Context", "DataParallel", "ServerOptimizer", "LocalOptimizer",
           "shard", "ShardSampler", "ShardedLoader", "ShardedDataset", "RoundRobin",
           "BUCKET_BYTES", "DeviceBudget", "DeviceBudgetExceeded"]


def shard(data, *, rank: int | None = None, num_workers: int | None = None, seed: int = 0):
    """This worker's part of a DataLoader, Dataset or iterable of batches (see
    geeps.torch.partition): every worker gets as many batches; a shuffling DataLoader is
    reshuffled every epoch, the same permutation on every worker. Never blocks.

        for epoch in range(3):
            for x, y in gt.shard(loader):   # the same loader: its next epoch each time
    """
    ctx = _context.current()
    if rank is None or num_workers is None:
        if ctx is None:
            from geeps.job.env import load
            cfg = load()
            rank = cfg.rank if rank is None else rank
            num_workers = cfg.num_workers if num_workers is None else num_workers
        else:
            rank = ctx.rank if rank is None else rank
            num_workers = ctx.num_workers if num_workers is None else num_workers
    # The same loader sharded again (`for x, y in gt.shard(loader)` inside the epoch
    # loop) continues its epochs instead of replaying epoch 0.
    # Under a connected worker the loader follows the job's rollbacks: after a server
    # restart it continues from the batch of the checkpoint's clock.
    tracker = ctx if ctx is not None and (rank, num_workers) == (ctx.rank, ctx.num_workers) \
        else None
    key = (rank, num_workers, seed)
    try:
        known = _sharded.get(data)
    except TypeError:               # not weak-referenceable: nothing to remember
        return _shard(data, rank, num_workers, seed, tracker)
    if known is not None and known[0] == key:
        return known[1]
    out = _shard(data, rank, num_workers, seed, tracker)
    if isinstance(out, ShardedLoader):
        _sharded[data] = (key, out)
    return out


_sharded: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
