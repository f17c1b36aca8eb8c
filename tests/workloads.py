"""Two training workloads written against the worker's operation API, for tests and bench.

    cycle = record(dense_step, dense_tables(), dense_batches(1))      # no servers needed
    loss = dense_step(worker, tables, batch)                          # one clock

- dense: a deep MLP on scikit-learn's digits; each layer's weights are a contiguous
  range of rows of one table; activations are local data (forward writes them,
  backward reads them again).
- sparse: a bag-of-features classifier; each sample has a few feature ids drawn from a
  power law, so each clock touches a different subset of embedding rows (hot rows in
  every clock, cold ones rarely), then a small dense head.

The step functions run unchanged in the virtual iteration (buffers are scratch zeros)
and in real ones; all arithmetic is float32 NumPy, so a run is bit-reproducible.
"""
from __future__ import annotations

import time

import numpy as np

from geeps.worker.ops import Recorder
from geeps.tables import Table

F32 = np.float32


# ---- an API over a bare Recorder, so sequences can be recorded without servers ---------
class RecordingAPI:
    recording = True

    def __init__(self):
        self.rec = Recorder()
        self._ids: dict[int, tuple[int, np.ndarray]] = {}

    def _buf(self, op_id, shape):
        b = np.zeros(shape, F32)
        self._ids[id(b)] = (op_id, b)
        return b

    def read(self, t, rows):
        return self._buf(self.rec.read(t, rows), (len(rows), t.row_width))

    def post_read(self, b):
        self.rec.post_read(self._ids.pop(id(b))[0])

    def pre_update(self, t, rows):
        return self._buf(self.rec.pre_update(t, rows), (len(rows), t.row_width))

    def update(self, b):
        self.rec.update(self._ids.pop(id(b))[0])

    def local_access(self, name, nbytes):
        return self._buf(self.rec.local_access(name, nbytes), (nbytes // 4,))

    def post_local_access(self, b):
        self.rec.post_local_access(self._ids.pop(id(b))[0])

    def clock(self):
        self.rec.clock()


def record(step, tables, batches):
    """The Cycle of running `step` once per batch (one clock each) in recording mode."""
    api = RecordingAPI()
    for b in batches:
        step(api, tables, b)
    return api.rec.finish()


# ---- dense: deep MLP on digits -------------------------------------------------------
DENSE_WIDTH = 32
DENSE_SIZES = (64, 32, 32, 32, 32, 32, 32, 32, 10)
DENSE_BATCH = 32


class DenseModel:
    """Layer l's (W, b) live flattened in rows [lo_l, hi_l) of table 'mlp'."""

    def __init__(self, name: str = "mlp", sizes=DENSE_SIZES, width: int = DENSE_WIDTH):
        self.sizes = sizes
        self.width = width
        self.layers = []
        lo = 0
        for a, b in zip(sizes[:-1], sizes[1:]):
            n = a * b + b
            rows = -(-n // width)
            self.layers.append((lo, lo + rows, a, b))
            lo += rows
        self.table = Table(name, lo, width, "sgd")

    def init(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        flat = np.zeros(self.table.n_rows * self.width, F32)
        for lo, _hi, a, b in self.layers:
            w = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(F32)
            flat[lo * self.width:lo * self.width + a * b] = w.ravel()
        return flat.reshape(self.table.n_rows, self.width)

    def unpack(self, buf, l):
        _lo, _hi, a, b = self.layers[l]
        flat = buf.reshape(-1)
        return flat[:a * b].reshape(a, b), flat[a * b:a * b + b]


def dense_batches(n: int, batch: int = DENSE_BATCH, offset: int = 0):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(F32)
    out = []
    for i in range(n):
        lo = ((offset + i) * batch) % (len(x) - batch)
        out.append((x[lo:lo + batch], y[lo:lo + batch]))
    return out


def dense_step(api, m: DenseModel, batch) -> float:
    """Forward and backward of one batch; one clock."""
    x, y = batch
    B = len(x)
    t = m.table
    L = len(m.layers)
    xin = api.local_access("x", B * m.sizes[0] * 4)
    xin[:] = x.ravel()
    api.post_local_access(xin)
    names = ["x"] + [f"a{l}" for l in range(L)]
    for l, (lo, hi, a, b) in enumerate(m.layers):
        p = api.read(t, range(lo, hi))
        w, bias = m.unpack(p, l)
        inp = api.local_access(names[l], B * a * 4)
        out = api.local_access(names[l + 1], B * b * 4)
        z = inp.reshape(B, a) @ w + bias
        out[:] = (np.maximum(z, 0) if l < L - 1 else z).ravel()
        api.post_local_access(out)
        api.post_local_access(inp)
        api.post_read(p)
    logits = api.local_access(names[L], B * m.sizes[-1] * 4)
    z = logits.reshape(B, -1).astype(F32)
    api.post_local_access(logits)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    loss = float(-np.log(prob[np.arange(B), y] + F32(1e-12)).mean())
    delta = prob
    delta[np.arange(B), y] -= 1
    delta /= F32(B)
    for l in reversed(range(L)):
        lo, hi, a, b = m.layers[l]
        p = api.read(t, range(lo, hi))
        w, _ = m.unpack(p, l)
        inp = api.local_access(names[l], B * a * 4)
        g = api.pre_update(t, range(lo, hi))
        gflat = g.reshape(-1)
        gflat[:a * b] = (inp.reshape(B, a).T @ delta).ravel()
        gflat[a * b:a * b + b] = delta.sum(axis=0)
        if l > 0:
            delta = (delta @ w.T) * (inp.reshape(B, a) > 0)
        api.update(g)
        api.post_local_access(inp)
        api.post_read(p)
    api.clock()
    return loss


# ---- sparse: bag of power-law features ------------------------------------------------
SPARSE_VOCAB = 600
SPARSE_DIM = 16
SPARSE_HIDDEN = 32
SPARSE_CLASSES = 4
SPARSE_FEATS = 6
SPARSE_BATCH = 24
SPARSE_L2 = F32(1e-3)


class SparseModel:
    def __init__(self, prefix: str = "sp"):
        self.emb = Table(prefix + "_emb", SPARSE_VOCAB, SPARSE_DIM, "sgd")
        d, h, c = SPARSE_DIM, SPARSE_HIDDEN, SPARSE_CLASSES
        self.l1 = (0, -(-(d * h + h) // SPARSE_DIM))
        n2 = h * c + c
        self.l2 = (self.l1[1], self.l1[1] + -(-n2 // SPARSE_DIM))
        self.head = Table(prefix + "_head", self.l2[1], SPARSE_DIM, "sgd")

    def init(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        emb = (rng.standard_normal((SPARSE_VOCAB, SPARSE_DIM)) * 0.1).astype(F32)
        head = np.zeros(self.head.n_rows * SPARSE_DIM, F32)
        d, h, c = SPARSE_DIM, SPARSE_HIDDEN, SPARSE_CLASSES
        head[:d * h] = (rng.standard_normal(d * h) * np.sqrt(2.0 / d)).astype(F32)
        o = self.l2[0] * SPARSE_DIM
        head[o:o + h * c] = (rng.standard_normal(h * c) * np.sqrt(1.0 / h)).astype(F32)
        return emb, head.reshape(-1, SPARSE_DIM)


def sparse_batches(n: int, seed: int = 1):
    """n batches; feature ids ~ Zipf over the vocabulary; labels from a fixed teacher."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((SPARSE_VOCAB, SPARSE_CLASSES))
    ranks = np.arange(1, SPARSE_VOCAB + 1, dtype=np.float64)
    pz = ranks ** -1.1
    pz /= pz.sum()
    perm = rng.permutation(SPARSE_VOCAB)    # hot ids scattered over the table
    out = []
    for _ in range(n):
        feats = perm[rng.choice(SPARSE_VOCAB, size=(SPARSE_BATCH, SPARSE_FEATS), p=pz)]
        y = teacher[feats].sum(axis=1).argmax(axis=1)
        rows, inv = np.unique(feats, return_inverse=True)
        out.append((rows.astype(np.int64), inv.reshape(feats.shape), y))
    return out


def sparse_step(api, m: SparseModel, batch) -> float:
    rows, inv, y = batch
    B, F = inv.shape
    d, h, c = SPARSE_DIM, SPARSE_HIDDEN, SPARSE_CLASSES
    e = api.read(m.emb, rows)
    pooled = api.local_access("pooled", B * d * 4)
    pooled[:] = (e[inv].sum(axis=1) / F32(F)).astype(F32).ravel()
    api.post_local_access(pooled)
    api.post_read(e)

    def layer(buf, lo, a, b):
        flat = buf.reshape(-1)
        return flat[:a * b].reshape(a, b), flat[a * b:a * b + b]
    p1 = api.read(m.head, range(*m.l1))
    w1, b1 = layer(p1, 0, d, h)
    x = api.local_access("pooled", B * d * 4)
    hid = api.local_access("hidden", B * h * 4)
    hid[:] = np.maximum(x.reshape(B, d) @ w1 + b1, 0).ravel()
    api.post_local_access(hid)
    api.post_local_access(x)
    api.post_read(p1)
    p2 = api.read(m.head, range(*m.l2))
    w2, b2 = layer(p2, 0, h, c)
    hid = api.local_access("hidden", B * h * 4)
    z = hid.reshape(B, h) @ w2 + b2
    z = z - z.max(axis=1, keepdims=True)
    ez = np.exp(z)
    prob = ez / ez.sum(axis=1, keepdims=True)
    loss = float(-np.log(prob[np.arange(B), y] + F32(1e-12)).mean())
    delta = prob
    delta[np.arange(B), y] -= 1
    delta /= F32(B)
    g2 = api.pre_update(m.head, range(*m.l2))
    gf = g2.reshape(-1)
    gf[:h * c] = (hid.reshape(B, h).T @ delta).ravel()
    gf[h * c:h * c + c] = delta.sum(axis=0)
    dh = (delta @ w2.T) * (hid.reshape(B, h) > 0)
    api.update(g2)
    api.post_local_access(hid)
    api.post_read(p2)
    p1 = api.read(m.head, range(*m.l1))
    w1, _ = layer(p1, 0, d, h)
    x = api.local_access("pooled", B * d * 4)
    g1 = api.pre_update(m.head, range(*m.l1))
    gf = g1.reshape(-1)
    gf[:d * h] = (x.reshape(B, d).T @ dh).ravel()
    gf[d * h:d * h + h] = dh.sum(axis=0)
    dx = (dh @ w1.T) / F32(F)
    api.update(g1)
    api.post_local_access(x)
    api.post_read(p1)
    # An L2 penalty on the rows this batch touched needs them again in backward (the
    # servers' weight decay would only see pushed rows, which are these anyway).
    e = api.read(m.emb, rows)
    ge = api.pre_update(m.emb, rows)
    np.add.at(ge, inv, np.repeat(dx[:, None, :], F, axis=1))
    ge += SPARSE_L2 * e
    api.update(ge)
    api.post_read(e)
    api.clock()
    return loss


# ---- driving a ParameterCache on any backend ----------------------------------------------
def drive_cache(be, cyc, plan, clocks: int) -> dict:
    """`clocks` clocks of `cyc` through a ParameterCache on `be`; every buffer the
    application sees is checked. Returns what moved and the cache's prefetch stats."""
    from geeps.worker.cache import ParameterCache
    xp = be.xp
    cache = ParameterCache(plan, be, plan.budget)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    try:
        for c in range(clocks):
            k = c % cyc.n_clocks
            cp_ = plan.clocks[k]
            for t, rows in cp_.pull.items():
                cache.pulled[k][t][:] = rows[:, None] + 1000.0 * c + \
                    np.arange(cyc.tables[t].width)[None, :] / 8
            cache.begin_clock(k, lambda: None)
            acc_ref = {t: np.zeros((len(r), cyc.tables[t].width), F32)
                       for t, r in cp_.push.items()}
            local_ref: dict = {}
            bufs = {}
            for ev in cyc.clocks[k]:
                p = plan.ops[ev.op]
                op = p.op
                if ev.kind == "call":
                    buf = cache.call(p)
                    bufs[op.id] = buf
                    got = be.to_numpy(buf)
                    if op.kind == "read":
                        want = op.rows[:, None] + 1000.0 * c + np.arange(buf.shape[1])[None, :] / 8
                        assert np.array_equal(got, want), (c, op.describe())
                    elif op.kind == "pre_update":
                        assert not got.any(), "update buffers start zeroed"
                        vals = rng.standard_normal(buf.shape).astype(F32)
                        buf[...] = xp.asarray(vals)
                    else:
                        want = local_ref.get(op.name, np.zeros(op.nbytes // 4, F32))
                        assert np.array_equal(got, want), (c, op.describe())
                        local_ref[op.name] = rng.standard_normal(buf.shape).astype(F32)
                        buf[...] = xp.asarray(local_ref[op.name])
                else:
                    buf = bufs.pop(op.id)
                    if op.kind == "pre_update":
                        pos = np.searchsorted(cp_.push[op.table], op.rows)
                        acc_ref[op.table][pos] += be.to_numpy(buf)
                    cache.post(p, buf)
            out = cache.end_clock(k)
            for t, ref in acc_ref.items():
                assert np.array_equal(out[t], ref), (c, t)
        cache.io.drain()
        assert cache.mem.used == plan.device_bytes <= (plan.budget or plan.device_bytes)
        calls = sum(s.calls for s in cache.stats)
        return {"moved": dict(cache.moved), "calls": calls,
                "ready_at_call": sum(s.ready_at_call for s in cache.stats),
                "waited": sum(s.waited for s in cache.stats),
                "wait_s": sum(s.wait_s for s in cache.stats),
                "s_per_clock": (time.perf_counter() - t0) / clocks}
    finally:
        cache.close()


def load_example(name: str):
    """examples/<name>/train.py as a module (its functions, without running it)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", name, "train.py")
    spec = importlib.util.spec_from_file_location(name.replace("-", "_") + "_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
