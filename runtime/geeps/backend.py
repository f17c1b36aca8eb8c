"""The array backend seam: CuPy when a GPU is present, NumPy otherwise.

    from geeps import backend
    be = backend.select()               # GEEPS_BACKEND: auto | numpy | cupy
    idx = be.prepare(backend.make_index(np.array([4, 1, 7])))   # built once
    be.take(cache_rows, idx, out=buf)   # one batched gather: buf[i] = cache_rows[idx[i]]

Everything above this module is backend-agnostic. A backend owns every kernel the
worker runs on device memory: batched gather, scatter, scatter-add and row moves
with pre-built indices, transfers between host and device memory (on the GPU: on
its own stream, from pinned host memory), and the fused update rules sgd, momentum
and adam. The CuPy kernels live in geeps/kernels/*.cu; each has a NumPy twin in
backend_numpy.py computing the same function, bit for bit (the servers run the
twins, re-exported here: `backend.sgd`, `backend.momentum`, `backend.adam`).

Importing this module never imports CuPy; only `select("cupy")` or `select("auto")`
on a machine with a GPU does.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import config as _config
from .backend_numpy import NumpyBackend, adam, adam_scalars, momentum, sgd

__all__ = ["Index", "make_index", "select", "BackendUnavailable", "NumpyBackend",
           "sgd", "momentum", "adam", "adam_scalars", "CHOICES", "KERNELS"]

CHOICES = ("auto", "numpy", "cupy")
# Every CUDA source in geeps/kernels and the kernels the CuPy backend loads from it.
KERNELS = {
    "rows.cu": ("gather_rows", "scatter_rows", "scatter_add_rows", "move_rows"),
    "rules.cu": ("sgd_update", "momentum_update", "adam_update"),
}


class BackendUnavailable(RuntimeError):
    """The configured backend cannot run here (e.g. GEEPS_BACKEND=cupy without CuPy)."""


class Index:
    """A pre-built row index: a contiguous ascending run, or an int64 array.

    Runs are found once, when the index is built, so the hot path turns them into
    slices (plain memory copies, or views) instead of indexed kernels.

        ix = make_index(np.array([3, 4, 5]))   # ix.run == (3, 6)
        len(ix)                                # 3
    """
    __slots__ = ("run", "array", "device", "n")

    def __init__(self, run: tuple[int, int] | None, array: np.ndarray | None):
        self.run = run
        self.array = array          # host int64 copy (always present for arrays)
        self.device: Any = None     # the backend's own copy (device array, torch tensor)
        self.n = (run[1] - run[0]) if run is not None else len(array)

    def __len__(self) -> int:
        return self.n

    def rows(self) -> np.ndarray:
        """The indices as an int64 array (for planning and tests, not the hot path)."""
        if self.run is not None:
            return np.arange(self.run[0], self.run[1], dtype=np.int64)
        return self.array

    def __repr__(self) -> str:
        if self.run is not None:
            return f"Index(run={self.run[0]}..{self.run[1]})"
        return f"Index({self.n} rows)"


def make_index(rows) -> Index:
    """An Index over `rows` (an int sequence, range or array); runs become slices."""
    if isinstance(rows, range) and rows.step == 1:
        return Index((rows.start, rows.stop), None)
    a = np.ascontiguousarray(rows, dtype=np.int64).ravel()
    if a.size == 0:
        return Index((0, 0), None)
    if a.size == 1 or bool(np.all(np.diff(a) == 1)):
        return Index((int(a[0]), int(a[0]) + a.size), None)
    a.setflags(write=False)
    return Index(None, a)


def from_env(name: str):
    """One GEEPS_* variable, parsed and checked by the contract in geeps.config
    (ConfigError naming the variable when its value is bad)."""
    var = next(v for v in _config.VARS if v.name == name)
    raw = os.environ.get(name, var.default)
    try:
        return var.parse(raw)
    except (ValueError, TypeError):
        raise _config.ConfigError(name, raw, var.accepts) from None


def _gpu_present() -> bool:
    try:
        import cupy  # noqa: F401  (only probing)
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:   # no CuPy, no driver, no device: all mean "no GPU here"
        return False


def select(name: str | None = None):
    """The backend `name` (default: GEEPS_BACKEND, itself defaulting to auto).

    auto takes CuPy when it imports and sees a GPU, NumPy otherwise; asking for cupy
    where it cannot run raises BackendUnavailable saying why."""
    if name is None:
        name = from_env("GEEPS_BACKEND")
    name = name.lower()
    if name not in CHOICES:
        raise ValueError(f"backend {name!r} is not one of {', '.join(CHOICES)}")
    if name == "numpy" or (name == "auto" and not _gpu_present()):
        return NumpyBackend()
    try:
        from .backend_cupy import CupyBackend
        return CupyBackend()
    except ImportError as e:
        raise BackendUnavailable(
            f"GEEPS_BACKEND={name} needs CuPy (pip install 'geeps[gpu]'): {e}") from None
    except Exception as e:
        raise BackendUnavailable(f"GEEPS_BACKEND={name}: CuPy cannot use a GPU here: {e}") \
            from None
