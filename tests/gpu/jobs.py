"""Training runs for the GPU tests: one geeps worker (in this process or a spawned one)
and the plain PyTorch reference, on a small MLP with BatchNorm over scikit-learn's digits.

    state = train_worker(servers, rank=0, world=1, device="cuda:0", steps=8)
    ref = train_reference(world=2, steps=8)       # one process, the union of the batches
"""
from __future__ import annotations

import threading

import numpy as np

STEPS = 8
BATCH = 16          # per worker
LR = 0.1
ADAM_LR = 0.01
_INIT = threading.Lock()


def _torch_exact(torch) -> None:
    # Full float32 on the GPU (no TF32), deterministic kernels where torch has them.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.set_num_threads(1)


def make_model(bn: bool = True):
    """BatchNorm (its running statistics travel in a table of their own) only where one
    worker is compared: across workers each normalizes over its own part of the batch,
    so a job differs from one process on the union of the batches."""
    import torch.nn as nn
    mid = [nn.BatchNorm1d(48)] if bn else []
    return nn.Sequential(nn.Linear(64, 48), *mid, nn.ReLU(), nn.Linear(48, 10))


def digits():
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset
    x, y = load_digits(return_X_y=True)
    return TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))


def _state(net) -> dict:
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


def train_worker(servers, rank: int, world: int, device: str, steps: int = STEPS,
                 name: str = "mlp", queue=None, bn: bool = True, rule: str = "sgd",
                 colocate: str | None = None) -> dict:
    """One worker of a BSP job on `device`; its model's state after `steps` steps.
    `colocate`: this worker hosts shard `rank` of `servers` itself, applying its
    updates on that GEEPS_SERVER_BACKEND (numpy, cupy, host-cuda); the result then
    holds every shard's `stats` too."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    import geeps
    import geeps.torch as gt
    _torch_exact(torch)
    try:
        with _INIT:     # workers may be threads of one process: torch's RNG is global
            torch.manual_seed(0)
            net = make_model(bn).to(device)
        if colocate:
            import geeps.client
            client = geeps.client.colocated(list(servers), rank, world, "bsp", timeout=60.0,
                                            server_backend=colocate)
        else:
            client = geeps.Client(list(servers), rank, world, "bsp", timeout=60.0)
        model = gt.DataParallel(net, client=client, name=name)
        opt = gt.ServerOptimizer(model, rule, lr=LR if rule != "adam" else ADAM_LR)
        batches = iter(gt.shard(DataLoader(digits(), batch_size=BATCH, shuffle=True),
                                rank=rank, num_workers=world, seed=7))
        for _ in range(steps):
            x, y = next(batches)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.sync()
        out = {"state": _state(net), "device": str(next(net.parameters()).device)}
        if colocate:
            out["shards"] = client.stats()
        model.close()
        client.close()
    except BaseException as e:      # handed to the parent, which reports it
        out = {"error": f"{type(e).__name__}: {e}"}
        if queue is None:
            raise
    if queue is not None:
        queue.put((rank, out))
    return out


def train_reference(world: int, steps: int = STEPS, bn: bool = False) -> dict:
    """Plain PyTorch, one process on the CPU: batch k is the union of the workers' k-th."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    import geeps.torch as gt
    _torch_exact(torch)
    torch.manual_seed(0)
    net = make_model(bn)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    batches = iter(gt.shard(DataLoader(digits(), batch_size=BATCH * world, shuffle=True),
                            rank=0, num_workers=1, seed=7))
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _state(net)


def compare(got: dict, want: dict, rtol: float, atol: float) -> dict:
    """The largest difference per tensor; raises AssertionError past the tolerance."""
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    worst = {}
    for k in want:
        g, w = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        worst[k] = float(np.max(np.abs(g - w))) if g.size else 0.0
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=k)
    return worst
