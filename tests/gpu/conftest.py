"""The GPU tests: on a CUDA device through CuPy, or in a dry run on the CPU.

    python -m pytest tests/gpu                     # skipped, saying why, without a GPU
    GEEPS_GPU_DRYRUN=1 python -m pytest tests/gpu  # CuPy replaced by geeps.backend.hostcupy
    GEEPS_GPU_REPORT=out/tests.json ...            # measurements, for tools/gpu_check.sh

tools/gpu_check.sh runs them (docs/gpu.md). In a dry run `import cupy` gives the
CPU stand-in (the .cu kernels compiled with g++), torch models stay on the CPU, and
the numbers are not meaningful: the run checks that the GPU check itself still works.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

DRY = os.environ.get("GEEPS_GPU_DRYRUN", "") not in ("", "0")


def _why_not() -> str | None:
    """None when the tests can run here, else why not (one line)."""
    if DRY:
        from geeps.backend import hostcuda
        if hostcuda.compiler() is None:
            return "GEEPS_GPU_DRYRUN=1 needs g++ to compile the CUDA sources for the CPU"
        from geeps.backend import hostcupy
        hostcupy.install()          # before any test module imports cupy
        return None
    try:
        import cupy
    except ImportError as e:
        return f"CuPy is not installed ({e}); GEEPS_GPU_DRYRUN=1 runs these on the CPU"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:      # no driver, no device, a driver too old for this CuPy
        return f"CuPy sees no usable CUDA device: {type(e).__name__}: {e}"
    if n < 1:
        return "no CUDA device visible"
    return None


WHY_NOT = _why_not()


HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    if not WHY_NOT:
        return
    skip = pytest.mark.skip(reason=WHY_NOT)
    for item in items:
        if os.path.abspath(str(item.fspath)).startswith(HERE + os.sep):
            item.add_marker(skip)


def _needs_gpu() -> None:
    if WHY_NOT:
        pytest.skip(WHY_NOT)


class Report:
    """What the tests measured, written as one JSON object at the end of the session."""

    def __init__(self, path: str | None):
        self.path = path
        self.data: dict = {"dry_run": DRY}

    def __setitem__(self, key, value) -> None:
        self.data[key] = value

    def write(self) -> None:
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=1, default=str)
            shutil.move(tmp, self.path)


@pytest.fixture(scope="session")
def report():
    r = Report(os.environ.get("GEEPS_GPU_REPORT"))
    yield r
    r.write()


@pytest.fixture(scope="session")
def cp():
    _needs_gpu()
    import cupy
    return cupy


@pytest.fixture(scope="session")
def be():
    """The CuPy backend on the device (the CPU stand-in in a dry run)."""
    _needs_gpu()
    from geeps.backend import select
    return select("cupy")


@pytest.fixture(scope="session")
def torch_device():
    """cuda:0 on a GPU; the CPU in a dry run (torch has no CUDA there)."""
    _needs_gpu()
    import torch
    if DRY:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.fail("CuPy sees a GPU but torch.cuda.is_available() is False: this torch "
                    f"build ({torch.__version__}, CUDA {torch.version.cuda}) cannot use it")
    return torch.device("cuda", 0)
