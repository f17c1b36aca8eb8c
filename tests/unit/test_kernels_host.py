"""The CUDA sources, executed on the CPU, against their NumPy twins.

kernels/host.h compiles rows.cu and rules.cu with g++ (geeps.backend.hostcuda); the
CuPy backend's own code runs on them through the CuPy stand-in geeps.backend.hostcupy,
with its launch configurations (THREADS, MAX_BLOCKS, grid-stride loops) and argument
types checked against the kernels' C signatures. Every comparison is bit for bit
(tests/gpu/twins.py says what that covers); tests/gpu runs the same ones on a device.

The library is built once per content hash of header + sources (GEEPS_HOSTCUDA_CACHE,
default a per-user folder in the temp directory); without g++ these tests skip.
"""
import re

import numpy as np
import pytest

from geeps.backend import Index, KERNELS, hostcuda, make_index, numpy_backend
from geeps.backend.kernels import source
from tests.gpu import twins

pytestmark = pytest.mark.skipif(hostcuda.compiler() is None,
                                reason="no C++ compiler (g++): the CUDA sources cannot be "
                                       "compiled for the CPU")


@pytest.fixture(scope="module")
def hostcupy():
    from geeps.backend import hostcupy
    return hostcupy


@pytest.fixture(scope="module")
def mod(hostcupy):
    """geeps.backend.cupy_backend, executed on the CPU stand-in."""
    return hostcupy.backend_module()


@pytest.fixture(scope="module")
def be(mod):
    return mod.CupyBackend()


def test_every_kernel_the_backend_loads_is_built_and_launched(be):
    assert set(be.k) == {k for names in KERNELS.values() for k in names}
    before = {n: k.launches for n, k in be.k.items()}
    assert twins.check_all(be) == []
    assert all(k.launches > before[n] for n, k in be.k.items()), \
        {n: k.launches - before[n] for n, k in be.k.items()}


@pytest.mark.parametrize("case", twins.ROW_CASES, ids=lambda c: "x".join(map(str, c)))
def test_row_kernels_agree_with_the_twins_bit_for_bit(be, case):
    assert twins.check_rows(be, *case, seed=sum(case)) == []


@pytest.mark.parametrize("n", [0, 1, 7, 255, 256, 257, 4099])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_update_rules_agree_with_the_twins_bit_for_bit(be, n, wd):
    assert twins.check_rules(be, n, seed=n, wd=wd, steps=4) == []


def test_subnormals_are_kept_as_numpy_keeps_them(be):
    """What -ftz=true would break on a GPU: Adam's v of tiny gradients is subnormal."""
    g = np.full(64, 1e-21, np.float32)
    p, m, v = np.ones(64, np.float32), np.zeros(64, np.float32), np.zeros(64, np.float32)
    dp, dm, dv = (be.xp.asarray(a) for a in (p, m, v))
    be.adam(dp, be.xp.asarray(g), dm, dv, 1, 0.01)
    numpy_backend.adam(p, g, m, v, 1, 0.01)
    assert 0 < v[0] < np.finfo(np.float32).tiny        # subnormal, not flushed
    assert be.to_numpy(dv).tobytes() == v.tobytes()
    assert be.to_numpy(dp).tobytes() == p.tobytes()


@pytest.mark.parametrize("threads,blocks", [(1, 1), (4, 3), (32, 2)])
def test_grid_stride_edges(mod, be, monkeypatch, threads, blocks):
    """A grid of threads*blocks threads over totals just below, at and above multiples of
    it (the real 256 x 65535 grid takes 64 MiB per array to reach; tests/gpu does)."""
    monkeypatch.setattr(mod, "THREADS", threads)
    monkeypatch.setattr(mod, "MAX_BLOCKS", blocks)
    grid = threads * blocks
    for total in sorted({1, grid - 1, grid, grid + 1, 2 * grid + 1, 3 * grid}):
        if total < 1:
            continue
        for width in sorted({1, total}):        # many narrow rows; one row wider than the grid
            n = total // width
            assert twins.check_rows(be, n + 3, width, n, seed=total) == [], (total, width)
        assert twins.check_rules(be, total, seed=total, wd=0.01, steps=2) == [], total


def test_a_row_wider_than_the_whole_grid(mod, be, monkeypatch):
    monkeypatch.setattr(mod, "MAX_BLOCKS", 2)
    assert twins.check_rows(be, 3, 256 * 2 * 3 + 5, 2, seed=1) == []


def test_empty_index_arrays_launch_nothing(be):
    """CUDA refuses a grid of zero blocks; the backend must not launch one."""
    before = {n: k.launches for n, k in be.k.items()}
    empty = be.prepare(Index(None, np.zeros(0, np.int64)))
    a = be.xp.zeros((4, 8), np.float32)
    out = be.xp.zeros((0, 8), np.float32)
    be.take(a, empty, out)
    be.put(a, empty, out)
    be.put_add(a, empty, out)
    be.move(a, empty, a, empty)
    be.sgd(be.xp.zeros((0,), np.float32), be.xp.zeros((0,), np.float32), 0.1)
    assert {n: k.launches for n, k in be.k.items()} == before
    with pytest.raises(ValueError, match="invalid launch configuration"):
        be.k["gather_rows"]((0,), (256,), (a, empty.device, out, np.int64(0), np.int64(8)))


def test_arguments_are_checked_against_the_kernel_signature(be):
    a = be.xp.zeros((4, 8), np.float32)
    idx = be.xp.asarray(np.array([1, 0], np.int64))
    out = be.xp.zeros((2, 8), np.float32)
    k = be.k["gather_rows"]
    assert k._k.signature == (("p", 8),) * 3 + (("i", 8),) * 2
    with pytest.raises(TypeError, match="argument 3: passed int32 .* 8-byte signed integer"):
        k((1,), (32,), (a, idx, out, np.int32(2), np.int64(8)))
    with pytest.raises(TypeError, match="host numpy.ndarray passed to a kernel"):
        k((1,), (32,), (np.zeros((4, 8), np.float32), idx, out, np.int64(2), np.int64(8)))
    with pytest.raises(TypeError, match="takes 5 arguments, 4 given"):
        k((1,), (32,), (a, idx, out, np.int64(2)))
    sgd = be.k["sgd_update"]
    with pytest.raises(TypeError, match="passed float64 .* 4-byte floating-point"):
        sgd((1,), (32,), (a, a, np.int64(32), 0.1, np.float32(0)))   # a Python float
    with pytest.raises(ValueError, match="C-contiguous"):
        be.take(a, be.prepare(make_index([2, 0])), be.xp.zeros((2, 16), np.float32)[:, ::2])


def test_staging_is_not_rewritten_while_a_copy_reads_it(mod, be, hostcupy, monkeypatch):
    """Two scattered host->device moves in one transfer job share the pinned staging;
    the host must wait for the first copy before writing the second's rows. The
    stand-in fails a copy whose host rows change before the stream passes it."""
    rng = np.random.default_rng(0)
    host = be.host_empty((50, 8))
    host[...] = rng.standard_normal((50, 8)).astype(np.float32)
    a, b = (be.prepare(make_index(rng.permutation(50)[:20])) for _ in range(2))

    def job():
        dev = be.xp.zeros((50, 8), np.float32)
        with be.transfer_stream():
            be.h2d(host, a, dev, b)
            be.h2d(host, b, dev, a)
            be.sync_transfers()
    job()
    monkeypatch.setattr(mod._Staging, "ready", lambda self: None)   # the bug, put back
    fresh = mod.CupyBackend()
    be_h2d = fresh.h2d

    def job_unfixed():
        dev = be.xp.zeros((50, 8), np.float32)
        with fresh.transfer_stream():
            be_h2d(host, a, dev, b)
            be_h2d(host, b, dev, a)
            fresh.sync_transfers()
    with pytest.raises(hostcupy.HostRace):
        job_unfixed()


def test_device_to_host_is_read_only_after_the_stream_passed_it(hostcupy):
    """The stand-in delivers a non-blocking copy into pinned memory only at the stream's
    synchronization (NaN until then), as the GPU may."""
    s = hostcupy.Stream(non_blocking=True)
    out = hostcupy.empty_pinned((3,), np.float32)
    hostcupy.asarray(np.arange(3, dtype=np.float32)).get(out=out, stream=s, blocking=False)
    assert np.isnan(out).all()
    s.synchronize()
    assert out.tolist() == [0.0, 1.0, 2.0]


# ---- a wrong kernel or a wrong twin makes the comparison fail ---------------------------
MUTATIONS = [
    ("rows.cu", "out[i] = src[idx[r] * width + c];",
     "out[i] = src[idx[n - 1 - r] * width + c];", "gather"),
    ("rows.cu", "dst[idx[r] * width + c] = src[i];",
     "dst[idx[r] * width + (width - 1 - c)] = src[i];", "scatter"),
    ("rows.cu", "dst[j] = f32_add(dst[j], src[i]);", "dst[j] = f32_add(src[i], src[i]);",
     "scatter-add"),
    ("rows.cu", "dst[didx[r] * width + c] = src[sidx[r] * width + c];",
     "dst[didx[r] * width + c] = src[sidx[0] * width + c];", "move"),
    # Differs only with weight decay: the undecayed gradient in the step.
    ("rules.cu", "p[i] = f32_sub(p[i], f32_mul(lr, gi));",
     "p[i] = f32_sub(p[i], f32_mul(lr, g[i]));", "sgd"),
    ("rules.cu", "const float vi = f32_add(f32_mul(mu, v[i]), gi);",
     "const float vi = f32_add(f32_mul(mu, v[i]), g[i]);", "momentum"),
    # Differs only in rounding: ((1-b2) g) g against (1-b2) (g g).
    ("rules.cu", "f32_mul(f32_mul(one_minus_b2, gi), gi)",
     "f32_mul(one_minus_b2, f32_mul(gi, gi))", "adam"),
    # A multiply-add fused, as -ffp-contract or an FMA would: one rounding instead of two.
    ("rules.cu", "const float mi = f32_add(f32_mul(b1, m[i]), f32_mul(one_minus_b1, gi));",
     "const float mi = __fmaf_rn(b1, m[i], f32_mul(one_minus_b1, gi));", "adam"),
]


@pytest.mark.parametrize("filename,old,new,caught_by", MUTATIONS,
                         ids=[f"{m[0]}:{m[3]}:{i}" for i, m in enumerate(MUTATIONS)])
def test_a_mutated_kernel_fails_the_comparison(mod, monkeypatch, filename, old, new, caught_by):
    text = source(filename)
    assert text.count(old) == 1, f"mutation site gone from {filename}: {old}"
    mutated = text.replace(old, new)
    monkeypatch.setattr(mod, "kernel_source", lambda f: mutated if f == filename else source(f))
    wrong = mod.CupyBackend()
    failures = twins.check_all(wrong, cases=twins.ROW_CASES[2:5], rule_sizes=(1000,))
    assert failures, "the mutated kernel still agrees with its twin"
    ops = {re.match(r"[\w-]+", f).group(0) for f in failures}
    assert caught_by in ops, failures


def test_a_wrong_twin_fails_the_comparison(be, monkeypatch):
    right = numpy_backend.adam

    def adam_other_rounding(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                            weight_decay=0.0):
        s = numpy_backend.adam_scalars(step, lr, beta1, beta2, eps, weight_decay)
        vv = v.copy()
        right(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)
        v[...] = vv * s["b2"] + s["omb2"] * (grad * grad)     # (1-b2)(g g): other rounding
    monkeypatch.setattr(numpy_backend, "adam", adam_other_rounding)
    failures = twins.check_rules(be, 1000, seed=3)
    assert any(f.startswith("adam") for f in failures), failures
    assert not any(f.startswith(("sgd", "momentum")) for f in failures)

    monkeypatch.setattr(numpy_backend.NumpyBackend, "take",
                        lambda self, src, ix, out: np.copyto(out, src[ix.rows()[::-1]]))
    assert any(f.startswith("gather") for f in twins.check_rows(be, 40, 33, 17))


def test_a_pinned_block_freed_by_the_gc_under_the_registry_lock_does_not_deadlock(hostcupy):
    """A garbage-collection pass can free a pinned block while this very thread holds
    the registry's lock (is_pinned allocates under it); forgetting the block must not
    take that lock again (it did, and the shard tests hung)."""
    import gc
    import threading
    done = threading.Event()

    def run():
        a = hostcupy.empty_pinned((4,))
        cycle = [a]
        cycle.append(cycle)             # freed by the collector only
        del a, cycle
        with hostcupy._pinned_lock:
            gc.collect()
        done.set()
    threading.Thread(target=run, daemon=True).start()
    assert done.wait(20), "the pinned registry deadlocked on a block freed by the GC"
    assert hostcupy.is_pinned(hostcupy.empty_pinned((4,)))
