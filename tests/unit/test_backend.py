"""The array backend seam: selection, batched row kernels, fused update rules.

CuPy cannot run here (no GPU): its kernels are compile-checked in test_kernels_nvcc.py
and their function is pinned down by the NumPy twins tested below.
"""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from geeps import backend
from geeps.job.env import ConfigError
from geeps.backend import make_index
from geeps.backend.numpy_backend import TORCH_MIN_ELEMS, NumpyBackend
from geeps.server.rules import RuleState

FAST = NumpyBackend(use_torch=True)
PLAIN = NumpyBackend(use_torch=False)


def test_importing_geeps_never_imports_cupy():
    code = ("import sys, geeps, geeps.backend, geeps.worker, geeps.worker.cache, geeps.worker.memory.planner, geeps.metrics; "
            "geeps.backend.select('auto'); print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_select_names_and_errors(monkeypatch):
    assert backend.select("numpy").name == "numpy"
    monkeypatch.setenv("GEEPS_BACKEND", "numpy")
    assert backend.select().name == "numpy"
    with pytest.raises(ValueError, match="'tpu' is not one of auto, numpy, cupy"):
        backend.select("tpu")
    monkeypatch.setenv("GEEPS_BACKEND", "tpu")
    with pytest.raises(ConfigError, match="GEEPS_BACKEND='tpu' is invalid: accepted auto"):
        backend.select()


def test_auto_without_gpu_is_numpy_and_cupy_is_refused_saying_why():
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here; this checks the machine without it")
    except ImportError:
        pass
    assert backend.select("auto").name == "numpy"
    with pytest.raises(backend.BackendUnavailable, match="needs CuPy"):
        backend.select("cupy")


def test_make_index_finds_runs():
    assert make_index([4, 5, 6]).run == (4, 7)
    assert make_index(range(2, 9)).run == (2, 9)
    assert make_index([]).run == (0, 0)
    ix = make_index([3, 1, 2])
    assert ix.run is None and list(ix.rows()) == [3, 1, 2] and len(ix) == 3
    assert not ix.array.flags.writeable


def _case(rng, n_src, width, n, run):
    src = rng.standard_normal((n_src, width)).astype(np.float32)
    rows = np.arange(3, 3 + n) if run else rng.permutation(n_src)[:n]
    return src, rows


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), width=st.sampled_from([1, 3, 64, 128]),
       run=st.booleans(), seed=st.integers(0, 2**31))
def test_row_kernels_match_per_row_reference_and_each_other(n, width, run, seed):
    rng = np.random.default_rng(seed)
    src, rows = _case(rng, n + 10, width, n, run)
    vals = rng.standard_normal((n, width)).astype(np.float32)
    for be in (FAST, PLAIN):
        ix = be.prepare(make_index(rows))
        out = np.empty((n, width), np.float32)
        be.take(src, ix, out)
        assert np.array_equal(out, np.stack([src[r] for r in rows]))
        dst = src.copy()
        be.put(dst, ix, vals)
        ref = src.copy()
        for i, r in enumerate(rows):
            ref[r] = vals[i]
        assert dst.tobytes() == ref.tobytes()
        dst = src.copy()
        be.put_add(dst, ix, vals)
        ref = src.copy()
        for i, r in enumerate(rows):
            ref[r] = ref[r] + vals[i]
        assert dst.tobytes() == ref.tobytes()


def test_torch_path_gives_the_same_bits_as_numpy_above_its_threshold():
    rng = np.random.default_rng(1)
    width = 128
    n = TORCH_MIN_ELEMS // width * 3
    src = rng.standard_normal((n * 2, width)).astype(np.float32)
    rows = rng.permutation(n * 2)[:n]
    vals = rng.standard_normal((n, width)).astype(np.float32)
    res = []
    for be in (FAST, PLAIN):
        ix = be.prepare(make_index(rows))
        out = np.empty((n, width), np.float32)
        be.take(src, ix, out)
        d1 = src.copy()
        be.put_add(d1, ix, vals)
        d2 = src.copy()
        be.put(d2, ix, vals)
        res.append((out.tobytes(), d1.tobytes(), d2.tobytes()))
    assert FAST.torch, "torch should be importable in this project"
    assert res[0] == res[1]


@pytest.mark.parametrize("srun,drun,add", [(a, b, c) for a in (0, 1) for b in (0, 1)
                                            for c in (0, 1)])
def test_move_scattered_to_scattered(srun, drun, add):
    rng = np.random.default_rng(7)
    src = rng.standard_normal((50, 8)).astype(np.float32)
    dst = rng.standard_normal((40, 8)).astype(np.float32)
    sr = np.arange(5, 25) if srun else rng.permutation(50)[:20]
    dr = np.arange(10, 30) if drun else rng.permutation(40)[:20]
    ref = dst.copy()
    for s, d in zip(sr, dr):
        ref[d] = ref[d] + src[s] if add else src[s]
    for be in (FAST, PLAIN):
        out = dst.copy()
        be.move(src, be.prepare(make_index(sr)), out, be.prepare(make_index(dr)), add=bool(add))
        assert out.tobytes() == ref.tobytes()


def _state(rule, hyper, shape, rng):
    p = rng.standard_normal(shape).astype(np.float32)
    return p, RuleState(rule, hyper, shape)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_rules_match_the_server_rules_bit_for_bit(wd):
    """The twins must be the function the servers apply, or a worker-side update and
    a server-side one would drift apart."""
    rng = np.random.default_rng(3)
    shape = (17, 33)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    for rule, hyper in [("sgd", {"lr": 0.1}), ("momentum", {"lr": 0.05, "momentum": 0.9}),
                        ("adam", {"lr": 0.01})]:
        hyper = dict(hyper, weight_decay=wd)
        p_server, st_ = _state(rule, hyper, shape, np.random.default_rng(5))
        p_twin = p_server.copy()
        vel, m, v = (np.zeros(shape, np.float32) for _ in range(3))
        h = st_.hyper
        for step, g in enumerate(grads, 1):
            g_before = g.copy()
            st_.apply(p_server, g)
            if rule == "sgd":
                backend.sgd(p_twin, g, h["lr"], wd)
            elif rule == "momentum":
                backend.momentum(p_twin, g, vel, h["lr"], h["momentum"], wd)
            else:
                backend.adam(p_twin, g, m, v, step, h["lr"], h["beta1"], h["beta2"],
                             h["eps"], wd)
            assert np.array_equal(g, g_before), "a rule must not modify the gradient"
        assert p_twin.tobytes() == p_server.tobytes(), rule


def test_rules_agree_with_torch_optimizers():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal((6, 10)).astype(np.float32)
    grads = [rng.standard_normal((6, 10)).astype(np.float32) for _ in range(5)]
    cases = [
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.01)),
        ("momentum", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)),
        ("adam", lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01)),
    ]
    for rule, make in cases:
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        opt = make([tp])
        p = p0.copy()
        s1, s2 = np.zeros_like(p), np.zeros_like(p)
        for step, g in enumerate(grads, 1):
            tp.grad = torch.from_numpy(g.copy())
            opt.step()
            if rule == "sgd":
                backend.sgd(p, g, 0.1, 0.01)
            elif rule == "momentum":
                backend.momentum(p, g, s1, 0.1, 0.9, 0.01)
            else:
                backend.adam(p, g, s1, s2, step, 0.01, 0.9, 0.999, 1e-8, 0.01)
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=rule)


def test_rules_name_bad_input():
    p = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="grad must be float32"):
        backend.sgd(p, np.zeros((2, 3)), 0.1)
    with pytest.raises(ValueError, match=r"velocity has shape \(3, 2\)"):
        backend.momentum(p, p.copy(), np.zeros((3, 2), np.float32), 0.1, 0.9)
    with pytest.raises(ValueError, match="adam step must be >= 1"):
        backend.adam(p, p.copy(), p.copy(), p.copy(), 0, 0.1)


def test_backend_methods_are_the_twins():
    be = backend.select("numpy")
    p = np.ones((4, 4), np.float32)
    g = np.full((4, 4), 2, np.float32)
    q = p.copy()
    be.sgd(p, g, 0.5)
    backend.sgd(q, g, 0.5)
    assert p.tobytes() == q.tobytes() and float(p[0, 0]) == 0.0
