"""The memory manager on the device: a budget, real host<->device transfers on the
transfer thread's own stream, and how much of a prefetch hides behind compute.

The cache is driven as tests/unit/test_cache.py drives it on the NumPy backend (every
buffer checked against a reference computed without device memory), here with device
buffers, pinned host memory and the CuPy backend's kernels (tests.workloads.drive_cache).
"""

import numpy as np
import pytest

from geeps.backend import make_index
from geeps.worker.memory.planner import make_plan, minimum_budget, working_set
from tests.gpu.conftest import DRY
from tests.workloads import drive_cache as drive

F32 = np.float32


def _cycles():
    from tests.workloads import (DenseModel, SparseModel, dense_batches, dense_step, record,
                                 sparse_batches, sparse_step)
    return {"dense": record(dense_step, DenseModel(), dense_batches(1)),
            "sparse": record(sparse_step, SparseModel(), sparse_batches(3))}


@pytest.mark.parametrize("frac", [0.25, 0.5, 1.0])
def test_cache_under_a_budget_with_real_transfers(report, be, frac):
    rows = report.data.setdefault("memory_manager", [])
    for name, cyc in _cycles().items():
        budget = max(int(working_set(cyc) * frac), minimum_budget(cyc))
        plan = make_plan(cyc, budget, "benefit")
        r = drive(be, cyc, plan, clocks=2 * cyc.n_clocks)
        # The initial refresh plus two cycles, as the plan predicted.
        assert r["moved"]["h2d"] == 2 * plan.h2d_bytes, (r, plan.summary())
        assert r["moved"]["d2h"] == 2 * plan.d2h_bytes
        rows.append(dict(r, workload=name, budget_frac=frac, budget=budget,
                         device_bytes=plan.device_bytes))


def _event(cp):
    return cp.cuda.Event()


def test_prefetch_overlaps_compute(report, be, cp):
    """A host->device copy on the transfer stream while a matmul runs on the compute
    stream, timed with CUDA events: overlap 1.0 hides the copy entirely behind compute."""
    mib = 1 if DRY else 256
    width = 256
    rows = mib * 2**20 // (width * 4)
    host = be.host_empty((rows, width))
    host[...] = np.random.default_rng(0).standard_normal((rows, width)).astype(F32)
    dev = cp.empty((rows, width), dtype=F32)
    whole = be.prepare(make_index(range(rows)))
    k = 64 if DRY else 4096
    a = cp.asarray(np.random.default_rng(1).standard_normal((k, k)).astype(F32))
    compute = cp.cuda.get_current_stream()

    def copy():
        s = be.transfer_stream()
        with s:
            e0, e1 = _event(cp), _event(cp)
            e0.record(s)
            be.h2d(host, whole, dev, whole)
            e1.record(s)
        return e0, e1

    def matmul(reps):
        e0, e1 = _event(cp), _event(cp)
        e0.record(compute)
        for _ in range(reps):
            a @ a
        e1.record(compute)
        return e0, e1

    def ms(pair):
        pair[1].synchronize()
        return cp.cuda.get_elapsed_time(pair[0], pair[1])

    copy(), matmul(1)                           # warm up (cuBLAS handle, pools)
    cp.cuda.Device().synchronize()
    t_copy = min(ms(copy()) for _ in range(3))
    t_mm = min(ms(matmul(1)) for _ in range(3))
    reps = max(1, round(t_copy / max(t_mm, 1e-3)))
    t_comp = min(ms(matmul(reps)) for _ in range(3))
    # Both at once: every event timed from one origin recorded before either starts.
    cp.cuda.Device().synchronize()
    origin = _event(cp)
    origin.record(compute)
    c = copy()
    m = matmul(reps)
    cp.cuda.Device().synchronize()
    at = [cp.cuda.get_elapsed_time(origin, e) for e in (*c, *m)]
    t_both = max(at[1], at[3]) - min(at[0], at[2])
    overlap = (t_copy + t_comp - t_both) / max(min(t_copy, t_comp), 1e-9)
    assert np.array_equal(be.to_numpy(dev[:4]), host[:4])
    r = {"copy_mib": mib, "copy_ms": t_copy, "h2d_gbps": mib * 2**20 / (t_copy / 1e3) / 1e9,
         "compute_ms": t_comp, "together_ms": t_both, "overlap": overlap, "matmul_reps": reps}
    report["prefetch_overlap"] = r
    if not DRY:
        assert overlap >= 0.5, r
