"""Every CuPy kernel against its NumPy twin on the device, bit for bit.

The comparisons of tests/gpu/twins.py (which tests/unit/test_kernels_host.py runs on the
CPU-executed kernels), here on the GPU with CuPy's own compilation (NVRTC, -ftz=true),
plus the sizes only a device makes cheap: launches that need the whole 256 x 65535 grid
and more (grid-stride loops taking a second lap), a row wider than the grid.
"""
import platform

import numpy as np

from tests.gpu import twins
from tests.gpu.conftest import DRY


def test_environment(report, cp, be):
    import torch
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    env = {"device": name.decode() if isinstance(name, bytes) else str(name),
           "memory_gib": props.get("totalGlobalMem", 0) / 2**30,
           "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
           "cuda_driver": cp.cuda.runtime.driverGetVersion(),
           "cupy": cp.__version__, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "python": platform.python_version(), "kernel_cache": be.cache_dir}
    report["environment"] = env
    assert be.name == "cupy"


def test_every_kernel_agrees_with_its_twin(report, be):
    failures = twins.check_all(be)
    report["kernels"] = {"comparisons": "twins.check_all", "failures": failures}
    assert failures == []


def test_launches_past_the_full_grid(report, be):
    """Totals just past 256 x 65535 threads, so every thread loops a second time, and one
    row wider than the whole grid. (Too slow for the CPU stand-in: skipped in dry runs.)"""
    import pytest
    if DRY:
        pytest.skip("64 MiB arrays through serially emulated threads: the device only")
    grid = 256 * 65535
    failures = []
    failures += twins.check_rows(be, grid + 7, 1, grid + 1, seed=1)       # narrow rows
    failures += twins.check_rows(be, 3, grid + 5, 2, seed=2)              # one wide row
    failures += twins.check_rules(be, grid + 3, seed=3, wd=0.01, steps=2)
    report["kernels_full_grid"] = {"threads": grid, "failures": failures}
    assert failures == []


def test_subnormal_arithmetic_is_not_flushed(report, be, cp):
    """CuPy appends -ftz=true; the kernels' explicit PTX must keep subnormals anyway."""
    g = np.full(1024, 3e-21, np.float32)
    m, v, p = (cp.zeros(1024, dtype=np.float32) for _ in range(3))
    p += 1
    be.adam(p, cp.asarray(g), m, v, 1, 0.01)
    got = be.to_numpy(v)
    from geeps.backend import numpy_backend
    tv = np.zeros(1024, np.float32)
    numpy_backend.adam(np.ones(1024, np.float32), g, np.zeros(1024, np.float32), tv, 1, 0.01)
    report["subnormals"] = {"v": float(got[0]), "twin": float(tv[0])}
    assert 0 < tv[0] < np.finfo(np.float32).tiny
    assert got.tobytes() == tv.tobytes()
