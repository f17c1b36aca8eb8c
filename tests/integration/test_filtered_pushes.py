"""Issue 17 end to end, over real server processes on loopback: filtered pushes travel
as sparse frames to two shards, the servers' sum plus the workers' residuals is the
sum of the raw updates; server functions named at create run on both shards; the
filter metrics count bytes before and after."""
from __future__ import annotations

import numpy as np
import pytest

from geeps.job import env as config
from geeps.metrics import Metrics
from geeps.tables.filters import filter_spec
from tests.cluster import Cluster

pytestmark = pytest.mark.integration
ROWS, WIDTH, CLOCKS = 10, 6, 30


def test_filtered_pushes_plus_residuals_sum_to_the_raw_updates():
    rng = np.random.default_rng(5)
    with Cluster(servers=2, workers=2) as cl:
        m = Metrics("filters-test", "worker", 0)
        c0, c1 = cl.client(0, metrics=m), cl.client(1)
        t = c0.create_table("w", ROWS, WIDTH, rule="add",
                            filter=filter_spec("topk", fraction=0.1))
        c1.open_table("w")
        c1.set_filter(t, filter_spec("randomk", fraction=0.2), rows=range(2, 8))
        raw = np.zeros((ROWS, WIDTH), np.float64)
        for clock in range(CLOCKS):
            for c in (c0, c1):
                rows = range(0, ROWS) if clock % 2 else rng.choice(ROWS, 7)   # ids repeat
                g = rng.standard_normal((len(rows), WIDTH)).astype(np.float32)
                np.add.at(raw, np.asarray(rows), g)
                c.push(t, rows, g)
                c.clock()
        values, clock = c0.pull(t, need=CLOCKS)
        assert clock == CLOCKS
        held = sum(np.pad(f.residual, ((lo, ROWS - hi), (0, 0)))
                   for c in (c0, c1) for lo, hi, f in c.filters(t))
        # float32 sums on the servers: equal to rounding (300 values per coordinate)
        np.testing.assert_allclose(values + held, raw, rtol=0, atol=1e-4)
        assert np.abs(held).max() > 0.1, "nothing was held back"
        raw_b = m.value("geeps_filter_bytes_total", table="w", stage="raw")
        sent_b = m.value("geeps_filter_bytes_total", table="w", stage="sent")
        assert 0 < sent_b < 0.5 * raw_b, (sent_b, raw_b)
        assert m.value("geeps_filter_residual_norm", table="w") == pytest.approx(
            np.linalg.norm(c0.filters(t)[0][2].residual))
        assert c0.stats()[0]["pushes"] > 0 and c0.stats()[1]["pushes"] > 0


def test_functions_from_the_job_options_run_on_every_shard():
    """spec.tables reaches a client through GEEPS_TABLES: the table it creates gets the
    kkt filter and the L1 proximal step; the step matches NumPy."""
    opts = '[{"name":"w","filter":{"type":"kkt","l1":0.5},' \
           '"functions":[{"name":"prox-l1","args":{"l1":0.5}}]}]'
    with Cluster(servers=2, workers=1) as cl:
        cfg = config.load({"GEEPS_SERVERS": ",".join(cl.servers), "GEEPS_TABLES": opts})
        c = cl.client(0, config=cfg)
        init = np.linspace(-1, 1, ROWS * WIDTH, dtype=np.float32).reshape(ROWS, WIDTH)
        init[init == 0] = 0.5
        init[:2] = 0.0
        t = c.create_table("w", ROWS, WIDTH, rule="sgd", lr=0.4, init=init)
        assert [s[2].spec.kind for s in c.filters(t)] == ["kkt"]
        g = np.full((ROWS, WIDTH), 0.3, np.float32)
        g[0] = 2.0                  # row 0: zero weights, gradient beyond l1: sent
        c.push(t, None, g, weights=init)
        c.clock()
        values, _ = c.pull(t)
        sent = np.ones((ROWS, WIDTH), bool)
        sent[1] = False             # zero weights, |g| <= l1: skipped by kkt
        w = init.astype(np.float64) - 0.4 * np.where(sent, g, 0)
        w = np.sign(w) * np.maximum(np.abs(w) - 0.4 * 0.5, 0)
        w[1] = 0.0                  # untouched rows are not updated at all
        np.testing.assert_allclose(values, w, rtol=0, atol=1e-6)
        assert (values[1] == 0).all()


def test_unknown_function_is_refused_by_name_at_create():
    with Cluster(servers=1, workers=1) as cl:
        c = cl.client(0)
        with pytest.raises(ValueError, match="'no-such-fn' is not installed"):
            c.create_table("w", 4, 2, functions=[{"name": "no-such-fn"}])


@pytest.mark.parametrize("kind", ["topk", "kkt"])
def test_operation_api_filters_per_table(kind):
    """The worker's operation API pushes through the client's per-table filter: table
    "f" filtered, table "d" whole; the kkt filter gets the weights each clock read."""
    rng = np.random.default_rng(9)
    from geeps.worker import Worker
    with Cluster(servers=2, workers=1) as cl:
        c = cl.client(0)
        f = c.create_table("f", ROWS, WIDTH, rule="add")
        d = c.create_table("d", ROWS, WIDTH, rule="add")
        spec = filter_spec("topk", fraction=0.1) if kind == "topk" else \
            filter_spec("kkt", l1=0.5, feedback=True)
        w = Worker(c, device_memory=None, backend="numpy")
        w.set_filter(f, spec)
        grads = [rng.standard_normal((ROWS, WIDTH)).astype(np.float32) for _ in range(12)]

        def step(g):
            for t in (f, d):
                p = w.read(t, range(ROWS))
                u = w.pre_update(t, range(ROWS))
                u[...] = g
                w.update(u)
                w.post_read(p)
            w.clock()
        with w.virtual_iteration():
            step(np.zeros((ROWS, WIDTH), np.float32))
        for g in grads:
            step(g)
        w.close()
        raw = np.sum(grads, axis=0, dtype=np.float64)
        fv, _ = c.pull(f, need=c.clock_value)
        dv, _ = c.pull(d)
        np.testing.assert_allclose(dv, raw, rtol=0, atol=1e-5)
        pf = c.filters(f)[0][2]
        np.testing.assert_allclose(fv + pf.residual, raw, rtol=0, atol=1e-5)
        assert pf.sent_bytes // 8 < len(grads) * ROWS * WIDTH, "the filter skipped nothing"
        if kind == "topk":
            assert np.abs(pf.residual).max() > 0.1


@pytest.mark.parametrize("chosen", ["code", "manifest"])
def test_torch_parameter_group_filter_keeps_the_rest_in_the_residual(chosen):
    """geeps.torch: the linear layer's group ("3.*") pushes its top 5% per bucket, the
    convolution goes whole; after the steps, what the servers applied plus the
    residual is every gradient computed. The group is chosen in code (filters=) or in
    the manifest (a spec.tables entry "model:3.*", through GEEPS_TABLES)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as Fn
    import geeps.torch as gt
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10))
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    with Cluster(servers=1, workers=1) as cl:
        if chosen == "code":
            c = cl.client(0)
            groups = {"3.*": filter_spec("topk", fraction=0.05)}
        else:
            c = cl.client(0, config=config.load({
                "GEEPS_SERVERS": cl.servers[0],
                "GEEPS_TABLES": '[{"name":"model:3.*","filter":{"type":"topk",'
                                '"fraction":0.05}}]'}))
            groups = None
        dp = gt.DataParallel(model, client=c, filters=groups)
        opt = gt.ServerOptimizer(dp, "sgd", lr=1.0)
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for step in range(8):
            loss = Fn.cross_entropy(dp(x[step * 8:(step + 1) * 8]), y[step * 8:(step + 1) * 8])
            opt.zero_grad()
            loss.backward()
            for n, p in model.named_parameters():
                sums[n] += p.grad
            opt.step()
        dp.sync()
        (lo, hi, f), = c.filters(dp._table)
        for n, p in model.named_parameters():
            slot = dp._playout.by_name[n]
            applied = (w0[n] - p.detach()).numpy().astype(np.float64)     # lr 1, 1 worker
            if n.startswith("3."):
                assert lo <= slot.lo and slot.hi <= hi
                held = f.residual[slot.lo - lo:slot.hi - lo].reshape(-1)[:slot.numel]
                held = held.reshape(slot.shape)
                assert np.abs(held).max() > 0, n
                applied = applied + held
            else:
                assert not (lo <= slot.lo < hi), f"{n} was filtered"
            np.testing.assert_allclose(applied, sums[n].numpy(), rtol=0, atol=1e-4, err_msg=n)
        dp.close()
