"""Every kernel of the CuPy backend against its NumPy twin, on any CuPy-like backend.

    failures = check_rows(be, n_src=40, width=33, n=17, seed=0)   # [] when all agree
    failures = check_rules(be, n=1000, seed=0, wd=0.01)

Shared by tests/unit/test_kernels_host.py (the CUDA sources executed on the CPU, through
geeps.backend.hostcupy) and tests/gpu/test_gpu_kernels.py (the same comparisons on the
device). Each returns a list of failures, one line per (operation, array) whose bytes
differ from the twin's, so a mutation test can assert which comparison catches it.

What "bitwise" covers: the row copies (gather, scatter, move) move any bit pattern,
NaN payloads and infinities included; arithmetic (scatter-add, the update rules) is
compared on finite inputs spread over every binade, subnormals and signed zeros
included. NaN payloads out of arithmetic are not promised: a GPU returns its canonical
NaN where x86 propagates an operand's.
"""
from __future__ import annotations

import numpy as np

from geeps.backend import Index, make_index, numpy_backend

F32 = np.float32

# (source rows, row width, rows moved): ragged sizes, one row, one float per row, an
# empty index, rows wider than the block, and 64 Ki floats per row.
ROW_CASES = [(1, 1, 1), (5, 1, 0), (9, 3, 7), (40, 33, 17), (300, 128, 257), (64, 257, 63),
             (6, 4099, 5), (3, 65536, 2)]


def bits(rng, shape) -> np.ndarray:
    """float32 of any bit pattern: NaNs with payloads, infinities, subnormals, -0."""
    return rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(F32)


def wide(rng, shape, lo: float = -44.0, hi: float = 6.0) -> np.ndarray:
    """Finite float32 across binades 10**lo .. 10**hi (subnormals below ~1e-38), with
    both signs and some exact zeros of both signs."""
    mag = 10.0 ** rng.uniform(lo, hi, size=shape)
    a = (rng.standard_normal(shape) * mag).astype(F32)
    z = rng.random(shape) < 0.02
    a[z] = np.where(rng.random(int(z.sum())) < 0.5, F32(0.0), F32(-0.0))
    return a


def _diff(what: str, got: np.ndarray, want: np.ndarray) -> list[str]:
    got = np.ascontiguousarray(got)
    want = np.ascontiguousarray(want)
    if got.shape != want.shape:
        return [f"{what}: shape {got.shape}, twin {want.shape}"]
    g = got.view(np.uint32)
    w = want.view(np.uint32)
    bad = np.flatnonzero(g.ravel() != w.ravel())
    if not bad.size:
        return []
    i = np.unravel_index(bad[0], got.shape)
    return [f"{what}: {bad.size} of {got.size} floats differ from the twin (first at "
            f"{tuple(int(x) for x in i)}: {got[i]!r} vs {want[i]!r})"]


def _scattered(rng, n_src: int, n: int) -> np.ndarray:
    rows = rng.permutation(n_src)[:n]
    if n > 1 and make_index(rows).run is not None:
        rows = rows[::-1].copy()            # descending: an index array, not a run
    return rows.astype(np.int64)


def _index(be, rows: np.ndarray, force_array: bool = False):
    ix = Index(None, rows) if force_array else make_index(rows)
    return be.prepare(ix)


def check_rows(be, n_src: int, width: int, n: int, seed: int = 0) -> list[str]:
    """gather_rows, scatter_rows, scatter_add_rows and move_rows (and the slice paths
    around them) on `be`, each against NumpyBackend's twin, bit for bit."""
    xp = be.xp
    twin = numpy_backend.NumpyBackend(use_torch=False)
    rng = np.random.default_rng(seed)
    tag = f"{n_src}x{width} n={n}"
    out: list[str] = []
    src = bits(rng, (n_src, width))
    rows = _scattered(rng, n_src, n)
    dst_rows = _scattered(rng, n_src, n)
    vals = bits(rng, (n, width))
    finite_src = wide(rng, (n_src, width))
    finite_vals = wide(rng, (n, width))
    for force in (False, True):     # make_index's choice (a run for n <= 1), an index array
        t = f"{tag}{' array-index' if force else ''}"
        ix, tix = _index(be, rows, force), _index(twin, rows, force)
        dix, tdix = _index(be, dst_rows, force), _index(twin, dst_rows, force)

        got = xp.zeros((n, width), F32)
        be.take(xp.asarray(src), ix, got)
        want = np.zeros((n, width), F32)
        twin.take(src, tix, want)
        out += _diff(f"gather {t}", be.to_numpy(got), want)

        d = xp.asarray(src)
        be.put(d, ix, xp.asarray(vals))
        w = src.copy()
        twin.put(w, tix, vals)
        out += _diff(f"scatter {t}", be.to_numpy(d), w)

        d = xp.asarray(finite_src)
        be.put_add(d, ix, xp.asarray(finite_vals))
        w = finite_src.copy()
        twin.put_add(w, tix, finite_vals)
        out += _diff(f"scatter-add {t}", be.to_numpy(d), w)

        for add in (False, True):
            s = finite_src if add else src
            d = xp.asarray(finite_src if add else bits(rng, (n_src, width)))
            w = be.to_numpy(d).copy()
            be.move(xp.asarray(s), ix, d, dix, add=add)
            twin.move(s, tix, w, tdix, add=add)
            out += _diff(f"move{'-add' if add else ''} {t}", be.to_numpy(d), w)
    # Host <-> device transfers (the transfer thread's path): scattered both ways.
    if n:
        host = be.host_empty((n_src, width))
        host[...] = src
        d = xp.asarray(bits(rng, (n_src, width)))
        w = be.to_numpy(d).copy()
        with be.transfer_stream():
            be.h2d(host, _index(be, rows), d, _index(be, dst_rows))
            be.sync_transfers()
        twin.h2d(src, _index(twin, rows), w, _index(twin, dst_rows))
        out += _diff(f"h2d {tag}", be.to_numpy(d), w)
        for add in (False, True):
            base = wide(rng, (n_src, width))
            host = be.host_empty((n_src, width))
            host[...] = base
            w = base.copy()
            with be.transfer_stream():
                be.d2h(xp.asarray(finite_src), _index(be, rows), host, _index(be, dst_rows),
                       add=add)
                be.sync_transfers()
            twin.d2h(finite_src, _index(twin, rows), w, _index(twin, dst_rows), add=add)
            out += _diff(f"d2h{'-add' if add else ''} {tag}", host, w)
    return out


RULES = {"sgd": {"lr": 0.1}, "momentum": {"lr": 0.05, "mu": 0.9},
         "adam": {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}}


def check_rules(be, n: int, seed: int = 0, wd: float = 0.0, steps: int = 3) -> list[str]:
    """sgd_update, momentum_update and adam_update on `be` for `steps` steps against the
    twins numpy_backend.sgd/momentum/adam, bit for bit on parameters and slots.
    Gradients span 1e-30..1e1, so g*g and Adam's v are often subnormal."""
    xp = be.xp
    rng = np.random.default_rng(seed)
    out: list[str] = []
    p0 = wide(rng, (n,), -3, 1)
    grads = [wide(rng, (n,), -30, 1) for _ in range(steps)]
    for rule, h in RULES.items():
        tag = f"{rule} n={n} wd={wd}"
        p, tp = xp.asarray(p0), p0.copy()
        slots = {"sgd": 0, "momentum": 1, "adam": 2}[rule]
        ds = [xp.zeros((n,), F32) for _ in range(slots)]
        ts = [np.zeros((n,), F32) for _ in range(slots)]
        for step, g in enumerate(grads, 1):
            dg = xp.asarray(g)
            if rule == "sgd":
                be.sgd(p, dg, h["lr"], wd)
                numpy_backend.sgd(tp, g.copy(), h["lr"], wd)
            elif rule == "momentum":
                be.momentum(p, dg, ds[0], h["lr"], h["mu"], wd)
                numpy_backend.momentum(tp, g.copy(), ts[0], h["lr"], h["mu"], wd)
            else:
                be.adam(p, dg, ds[0], ds[1], step, h["lr"], h["beta1"], h["beta2"], h["eps"],
                        wd)
                numpy_backend.adam(tp, g.copy(), ts[0], ts[1], step, h["lr"], h["beta1"],
                                   h["beta2"], h["eps"], wd)
        out += _diff(f"{tag} param", be.to_numpy(p), tp)
        for i, (d, t) in enumerate(zip(ds, ts)):
            out += _diff(f"{tag} slot {i}", be.to_numpy(d), t)
    return out


def check_all(be, cases=ROW_CASES, rule_sizes=(0, 1, 255, 256, 257, 1000)) -> list[str]:
    """Every comparison above, over the given cases (what a test or the GPU check runs)."""
    out: list[str] = []
    for i, (n_src, width, n) in enumerate(cases):
        out += check_rows(be, n_src, width, n, seed=i)
    for i, n in enumerate(rule_sizes):
        for wd in (0.0, 0.01):
            out += check_rules(be, n, seed=100 + i, wd=wd)
    return out
