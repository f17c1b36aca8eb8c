"""geeps.torch.paging without servers: parameters, gradients and saved activations of
a plain torch model through one device budget. On the CPU the device is RAM, held to
the budget and counted as on a GPU. (DataParallel under a budget, against real
servers: tests/integration/test_torch_budget.py.)"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from geeps.torch.paging import DeviceBudget, DeviceBudgetExceeded, belady, working_set


def cnn():
    torch.manual_seed(0)
    # BatchNorm then ReLU(inplace=True): the output of a module with parameters is
    # modified in place, which the pager's backward hook must allow.
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                         nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def data(steps):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g))
            for _ in range(steps)]


def sgd(params, grads, lr=0.05):
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g


def test_a_cnn_at_40_percent_computes_the_gradients_of_plain_autograd_bitwise():
    steps = 4
    plain = cnn()
    paged = copy.deepcopy(plain)
    probe = DeviceBudget(copy.deepcopy(plain), None)
    x, y = data(1)[0]
    with probe.step():
        out = probe.module(x)
    F.cross_entropy(out, y).backward()
    probe.close()
    budget = int(0.40 * working_set(probe.traces[0]))
    pager = DeviceBudget(paged, budget)
    for x, y in data(steps):
        for p in plain.parameters():
            p.grad = None
        F.cross_entropy(plain(x), y).backward()
        want = [p.grad for p in plain.parameters()]
        pager.grads = [None] * len(pager.params)
        with pager.step():
            out = paged(x)
        F.cross_entropy(out, y).backward()
        assert all(torch.equal(a, b) for a, b in zip(want, pager.grads))
        assert all(p.grad is None for p in paged.parameters())     # gradients left
        sgd(plain.parameters(), want)
        sgd(pager.host, pager.grads)            # the host copies are the parameters
    # Between steps, and after a forward without autograd, a parameter reads as its
    # value (its host copy), not as storage that left device memory.
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), paged.parameters()))
    with torch.no_grad():
        assert torch.equal(paged(x), plain(x))
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), paged.parameters()))
    pager.close()
    assert 0 < pager.peak <= budget and len(pager.traces) == steps + 1
    # the steps after the first repeat its record: backward's next activation came
    # back ahead of its unpack, into free room
    assert pager.prefetched > 0
    assert pager.copied == pager.moved         # the accounting counts the real copies
    moved = sum(pager.moved.values())
    assert moved > sum(sum(belady(t, None).values()) for t in pager.traces)
    assert moved <= 1.10 * sum(sum(belady(t, budget).values()) for t in pager.traces)


def test_belady_on_a_hand_made_trace():
    """A parameter of 4 bytes used in forward and backward, an activation of 6 saved
    between, a gradient of 4: with the whole 14 bytes only the parameter's load and the
    gradient's leaving move; with 8 the activation cannot sit beside the pinned
    parameter, which is refused naming what did not fit."""
    p, a, g = ("p", 0), ("a", 0), ("g", 0)
    trace = [("need", p, 4), ("born", a, 6), ("unpin", p, 0),
             ("need", p, 4), ("born", g, 4), ("need", a, 6),
             ("out", g, 0), ("free", a, 0), ("unpin", p, 0)]
    assert belady(trace, 14) == {"h2d": 4, "d2h": 4}
    assert belady(trace, None) == {"h2d": 4, "d2h": 4}
    assert working_set(trace) == 14
    with pytest.raises(DeviceBudgetExceeded, match="needs 6 bytes"):
        belady(trace, 8)


def test_a_module_larger_than_the_budget_is_refused_naming_the_sizes():
    net = cnn()
    pager = DeviceBudget(net, 1000)          # the input batch, saved by the first conv: 4608
    x, _ = data(1)[0]
    with pytest.raises(DeviceBudgetExceeded,
                       match=r"\('a', 0\) needs 4608 bytes .* budget of 1000 bytes"):
        with pager.step():
            net(x)
    with pytest.raises(ValueError, match="device_budget must be a byte count"):
        DeviceBudget(cnn(), -1)
