"""geeps.torch against real `geeps server` processes over loopback.

Workers are threads of this process, each with its own client and its own copy of the
model, as separate processes would be; the servers are real processes.
"""
import contextlib
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import geeps.torch as gt
from tests.cluster import Cluster
from tests.helpers import wait_for

pytestmark = pytest.mark.integration
torch.set_num_threads(1)
B = 16          # per-worker batch
STEPS = 10


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x.view(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def digits():
    x, y = load_digits(return_X_y=True)
    return TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))


_RNG = threading.Lock()       # torch's global generator is shared by the worker threads


def seeded(make, seed=0):
    """A model built from `seed`, as a fresh process would build it."""
    with _RNG:
        torch.manual_seed(seed)
        return make()


def run_threads(n, fn):
    """fn(rank) in n threads; their results in rank order; re-raises a thread's error."""
    results, errors = [None] * n, []

    def target(r):
        try:
            results[r] = fn(r)
        except BaseException as e:     # handed to the test thread
            errors.append(e)
    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


def train_geeps(cl, rank, n, rule, hyper, steps=STEPS, name="cnn"):
    net = seeded(SmallCNN)
    model = gt.DataParallel(net, client=cl.client(rank), name=name)
    opt = gt.ServerOptimizer(model, rule, **hyper)
    loader = gt.shard(DataLoader(digits(), batch_size=B, shuffle=True), rank=rank,
                      num_workers=n, seed=7)
    batches = iter(loader)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.sync()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, model.state_dict()


def train_reference(make_opt, batch, steps=STEPS, make_sched=None):
    """Plain PyTorch in one process, the same samples per step as all workers together
    (with make_sched: a torch LR scheduler stepped after every step)."""
    torch.manual_seed(0)
    net = SmallCNN()
    opt = make_opt(net.parameters())
    sched = make_sched(opt) if make_sched else None
    # One worker of the same sampler: its batch k is the union of the workers' batch k.
    loader = gt.shard(DataLoader(digits(), batch_size=batch, shuffle=True), rank=0,
                      num_workers=1, seed=7)
    batches = iter(loader)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return net.state_dict()


def assert_same(got, want):
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=k)


_LR = torch.optim.lr_scheduler


@pytest.mark.parametrize("rule,hyper,make_opt,make_sched", [
    ("sgd", {"lr": 0.1}, lambda p: torch.optim.SGD(p, lr=0.1), None),
    ("sgd", {"lr": 0.05, "momentum": 0.9},
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), None),
    # Learning-rate schedules the servers follow, against torch's own schedulers.
    ("sgd", {"lr": 0.05, "momentum": 0.9,
             "schedule": {"decay": "step", "milestones": [4, 7], "gamma": 0.5, "warmup": 3}},
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
     lambda o: _LR.ChainedScheduler([_LR.LinearLR(o, start_factor=1 / 3, total_iters=2),
                                     _LR.MultiStepLR(o, milestones=[4, 7], gamma=0.5)])),
    ("sgd", {"lr": 0.2, "schedule": {"decay": "cosine", "total": STEPS, "min_lr": 0.02}},
     lambda p: torch.optim.SGD(p, lr=0.2),
     lambda o: _LR.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.02)),
], ids=["sgd", "momentum", "momentum-warmup-step", "sgd-cosine"])
def test_two_bsp_workers_equal_one_process_with_twice_the_batch(rule, hyper, make_opt,
                                                                make_sched):
    with Cluster(servers=2, workers=2, consistency="bsp") as cl:
        results = run_threads(2, lambda r: train_geeps(cl, r, 2, rule, hyper))
    want = train_reference(make_opt, 2 * B, make_sched=make_sched)
    start = seeded(SmallCNN).state_dict()
    assert not torch.allclose(want["fc.weight"], start["fc.weight"]), "reference did not train"
    for local, from_servers in results:
        assert_same(local, want)            # every worker's parameter views
        assert_same(from_servers, want)     # state_dict() read back from the servers


def test_local_optimizer_with_delta_pushes_equals_one_process():
    def worker(cl, r):
        net = seeded(SmallCNN)
        model = gt.DataParallel(net, client=cl.client(r), name="local")
        opt = gt.LocalOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.05,
                                                       momentum=0.9))
        batches = iter(gt.shard(DataLoader(digits(), batch_size=B, shuffle=True), rank=r,
                                num_workers=2, seed=7))
        for _ in range(STEPS):
            x, y = next(batches)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.state_dict()

    with Cluster(servers=1, workers=2) as cl:
        results = run_threads(2, lambda r: worker(cl, r))
    want = train_reference(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), 2 * B)
    for got in results:
        assert_same(got, want)


class Probe(torch.autograd.Function):
    """Identity whose backward runs `wait` first: it sits between two layers, so its
    backward runs after the later layer's gradients and before the earlier ones'."""

    @staticmethod
    def forward(ctx, x, wait):
        ctx.wait = wait
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        ctx.wait()
        return g, None


def test_gradients_leave_during_backward_in_backward_order():
    events = []
    with Cluster(servers=1, workers=1) as cl:
        client = cl.client(0)
        probe_client = cl.client(0)

        def pushes_arrived():
            return sum(s["pushes"] for s in probe_client.stats())

        def probe_wait():
            events.append("probe")
            # Event order, not timing: the first layers' gradients do not exist yet, and
            # this backward cannot finish until a server has received a push.
            wait_for(pushes_arrived, timeout=10, what="a push to reach the server while "
                                                       "backward is still running")

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.first = nn.Linear(8, 16)
                self.second = nn.Linear(16, 16)
                self.last = nn.Linear(16, 4)

            def forward(self, x):
                h = torch.relu(self.first(x))
                h = Probe.apply(torch.relu(self.second(h)), probe_wait)
                return self.last(h)

        model = gt.DataParallel(Net(), client=client, name="order", bucket_bytes=0,
                                on_push=lambda names, rows: events.append(names))
        opt = gt.ServerOptimizer(model, "sgd", lr=0.1)
        loss = model(torch.randn(4, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        events.append("backward returned")
        opt.step()
        model.sync()

    pushes = [e for e in events if isinstance(e, tuple)]
    assert len(pushes) == 6 and events[-1] == "backward returned"
    # The last layer's gradients left before the probe (which waited for them to reach
    # the server), the earlier layers' after it; all before backward returned.
    layer = {"last": 2, "second": 1, "first": 0}
    assert events.index("probe") == 2
    assert {n.split(".")[0] for (n,) in pushes[:2]} == {"last"}
    order = [layer[n.split(".")[0]] for (n,) in pushes]
    assert order == sorted(order, reverse=True)


def test_batchnorm_statistics_are_averaged_over_workers():
    means = (1.0, -3.0)         # each worker's data has its own mean

    def worker(cl, r):
        net = seeded(lambda: nn.Sequential(nn.Linear(3, 3, bias=False), nn.BatchNorm1d(3)))
        with torch.no_grad():
            net[0].weight.copy_(torch.eye(3))
        model = gt.DataParallel(net, client=cl.client(r), name="bn")
        opt = gt.ServerOptimizer(model, "sgd", lr=0.0)
        g = torch.Generator().manual_seed(r)
        x = torch.randn(32, 3, generator=g) + means[r]
        model(x).sum().backward()
        opt.step()
        model.sync()
        return x.mean(0), net[1].running_mean.clone(), net[1].num_batches_tracked.item(), \
            model.state_dict()

    with Cluster(servers=2, workers=2) as cl:
        results = run_threads(2, lambda r: worker(cl, r))
    batch_means = [m for m, *_ in results]
    # One step of BatchNorm's running mean (momentum 0.1 from 0) from each worker's
    # batch, averaged: what one process computes from the union of the two batches.
    want = 0.1 * (batch_means[0] + batch_means[1]) / 2
    for _, running, tracked, sd in results:
        torch.testing.assert_close(running, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sd["1.running_mean"], want, rtol=1e-5, atol=1e-6)
        assert tracked == 1 and sd["1.num_batches_tracked"].item() == 1


def test_gradients_clipped_after_a_no_sync_backward_are_the_ones_pushed():
    def train(cl, name, no_sync):
        net = seeded(SmallCNN)
        model = gt.DataParallel(net, client=cl.client(0), name=name)
        opt = gt.ServerOptimizer(model, "sgd", lr=0.5)
        for x, y in list(DataLoader(digits(), batch_size=B))[:3]:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            with model.no_sync() if no_sync else contextlib.nullcontext():
                loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
        model.sync()
        return net.state_dict()

    with Cluster(servers=1, workers=1) as cl:
        clipped, unclipped = train(cl, "clip", True), train(cl, "late", False)
    net = seeded(SmallCNN)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for x, y in list(DataLoader(digits(), batch_size=B))[:3]:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        nn.utils.clip_grad_norm_(net.parameters(), 0.05)
        opt.step()
    assert_same(clipped, net.state_dict())
    # Outside no_sync the buckets left during backward: the clip came too late.
    assert not torch.allclose(unclipped["fc.weight"], net.state_dict()["fc.weight"],
                              rtol=1e-3)


def test_no_sync_accumulates_and_a_second_backward_is_refused():
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    with Cluster(servers=1, workers=1) as cl:
        # Two half batches accumulated locally, pushed once: one step on the whole batch.
        torch.manual_seed(1)
        a = gt.DataParallel(nn.Linear(5, 3), client=cl.client(0), name="acc")
        opt_a = gt.ServerOptimizer(a, "sgd", lr=0.5)
        with a.no_sync():
            (F.cross_entropy(a(x[:4]), y[:4]) / 2).backward()
        (F.cross_entropy(a(x[4:]), y[4:]) / 2).backward()
        opt_a.step()
        torch.manual_seed(1)
        ref = nn.Linear(5, 3)
        torch.optim.SGD(ref.parameters(), lr=0.5)
        F.cross_entropy(ref(x), y).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.5 * p.grad
        got = a.state_dict()
        torch.testing.assert_close(got["weight"], ref.weight.detach(), rtol=1e-5, atol=1e-6)

        b = gt.DataParallel(nn.Linear(5, 3), client=cl.client(0), name="twice")
        gt.ServerOptimizer(b, "sgd", lr=0.5)
        F.cross_entropy(b(x), y).backward()
        with pytest.raises(RuntimeError, match="no_sync"):
            F.cross_entropy(b(x), y).backward()


def test_ssp_reads_within_the_slack_without_waiting_for_the_slow_worker():
    paused, resume = threading.Event(), threading.Event()
    clocks = {}

    def worker(cl, r):
        model = gt.DataParallel(seeded(lambda: nn.Linear(4, 2)), client=cl.client(r),
                                name="ssp")
        opt = gt.ServerOptimizer(model, "sgd", lr=0.1)
        x = seeded(lambda: torch.randn(8, 4), seed=r)
        for step in range(3):
            if r == 1 and step == 1:
                paused.set()
                assert resume.wait(60)
            model(x).square().mean().backward()
            opt.step()
            if r == 0 and step == 1:
                # Worker 1 finished clock 1 only: under ssp:1, worker 0 at clock 2 reads
                # data of clock 1 without waiting for it.
                assert paused.wait(60)
                model.sync()
                clocks["fast"] = (model.clock, model.data_clock)
                resume.set()
        model.sync()
        return model.clock, model.data_clock

    with Cluster(servers=1, workers=2, consistency="ssp:1") as cl:
        results = run_threads(2, lambda r: worker(cl, r))
    assert clocks["fast"] == (2, 1)
    assert all(c == 3 and d >= 2 for c, d in results)


def test_bad_input_is_named():
    with Cluster(servers=1, workers=2) as cl:
        with pytest.raises(TypeError, match="DataParallel"):
            gt.ServerOptimizer(nn.Linear(2, 2), "sgd")
        m = gt.DataParallel(nn.Linear(2, 2), client=cl.client(0), name="bad")
        with pytest.raises(ValueError, match="LocalOptimizer"):
            gt.ServerOptimizer(m, "rmsprop", lr=0.1)
        with pytest.raises(ValueError, match="nesterov"):
            gt.ServerOptimizer(m, "sgd", lr=0.1, nesterov=1)
        with pytest.raises(TypeError, match="float32"):
            gt.DataParallel(nn.Linear(2, 2).double(), client=cl.client(0))
        gt.ServerOptimizer(m, "sgd", lr=0.1)
        # Worker 1 builds another model under the same table name.
        other = gt.DataParallel(nn.Linear(2, 5), client=cl.client(1), name="bad")
        with pytest.raises(ValueError, match="same model"):
            gt.ServerOptimizer(other, "sgd", lr=0.1)


def test_state_dict_loads_into_the_plain_model_and_nests_in_a_parent():
    with Cluster(servers=2, workers=1) as cl:
        net = seeded(lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
        model = gt.DataParallel(net, client=cl.client(0), name="nest")
        opt = gt.ServerOptimizer(model, "adam", lr=0.01)
        for _ in range(3):
            model(torch.randn(8, 4)).square().mean().backward()
            opt.step()
        sd = model.state_dict()
        plain = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        plain.load_state_dict(sd)                       # the unwrapped model's keys
        model.sync()
        for k, v in net.state_dict().items():
            torch.testing.assert_close(plain.state_dict()[k], v)
        parent = nn.Sequential(model)
        nested = parent.state_dict()
        assert set(nested) == {f"0.module.{k}" for k in sd}
        parent2 = nn.Sequential(gt.DataParallel(
            nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), client=cl.client(0), name="n2"))
        parent2.load_state_dict(nested)                 # before its optimizer: allowed
        torch.testing.assert_close(parent2[0].module[0].weight, net[0].weight)


def test_reading_each_bucket_during_backward_trains_bitwise_like_one_refresh_per_step():
    """bucket_refresh: each bucket's rows of the next clock are asked for right after its
    push, while backward goes on, and copied into the parameters when the step's
    refresh completes. The model is bit for bit the one a whole-table refresh after
    step() gives; the per-bucket reads did happen (more reads reached the servers)."""
    def worker(cl, r, per_bucket):
        net = seeded(SmallCNN)
        model = gt.DataParallel(net, client=cl.client(r), name="pipe", bucket_bytes=0,
                                bucket_refresh=per_bucket)
        opt = gt.ServerOptimizer(model, "sgd", lr=0.05, momentum=0.9)
        batches = iter(gt.shard(DataLoader(digits(), batch_size=B, shuffle=True), rank=r,
                                num_workers=2, seed=7))
        for _ in range(4):
            x, y = next(batches)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.sync()
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    runs = {}
    for per_bucket in (False, True):
        with Cluster(servers=2, workers=2, consistency="bsp") as cl:
            params = run_threads(2, lambda r: worker(cl, r, per_bucket))
            reads = sum(s["pulls"] for s in cl.client(0).stats())
        runs[per_bucket] = params, reads
    (whole, whole_reads), (bucketed, bucket_reads) = runs[False], runs[True]
    assert bucket_reads > whole_reads
    start = seeded(SmallCNN).state_dict()
    assert not torch.equal(whole[0]["fc.weight"], start["fc.weight"]), "did not train"
    for a, b in zip(whole, bucketed):
        for k in a:
            assert torch.equal(a[k], b[k]), k
