"""The array backend seam: CuPy when a GPU is present, NumPy otherwise.

    from geeps import backend
    be = backend.select()               # GEEPS_BACKEND: auto | numpy | cupy
    idx = be.prepare(backend.make_index(np.array([4, 1, 7])))   # built once
    be.take(cache_rows, idx, out=buf)   # one batched gather: buf[i] = cache_rows[idx[i]]

Everything above this module is backend-agnostic. A backend owns every kernel the
worker runs on device memory: batched gather, scatter, scatter-add and row moves
with pre-built indices, transfers between host and device memory (on the GPU: on
its own stream, from pinned host memory), and the fused update rules sgd, momentum
and adam. The CuPy kernels live in geeps/backend/kernels/*.cu; each has a NumPy twin in
numpy_backend.py computing the same function, bit for bit (re-exported here:
`backend.sgd`, `backend.momentum`, `backend.adam`).

A parameter-server shard applies its update rules through a backend too, chosen by
GEEPS_SERVER_BACKEND (`select_rules`): the NumPy twins on its host rows by default,
or the rules.cu kernels on rows kept in device memory (geeps.server.rules).

    be = backend.select_rules()         # GEEPS_SERVER_BACKEND: numpy | cupy | host-cuda | auto

Importing this module never imports CuPy; only `select("cupy")` or `select("auto")`
on a machine with a GPU does.
"""
from __future__ import annotations

import os

from geeps.job import env as _config
from geeps.backend.index import Index, make_index
from geeps.backend.kernels import KERNELS
from geeps.backend.numpy_backend import NumpyBackend, adam, adam_scalars, momentum, sgd

__all__ = ["Index", "make_index", "select", "BackendUnavailable", "NumpyBackend",
           "sgd", "momentum", "adam", "adam_scalars", "CHOICES", "KERNELS",
           "RULE_CHOICES", "select_rules"]

CHOICES = ("auto", "numpy", "cupy")
# Where a shard's update rules run. host-cuda: the CuPy backend's own code on the CUDA
# sources compiled for the CPU (geeps.backend.hostcupy), so a CPU-only machine runs the
# rules.cu kernels on the real server path; slower than numpy, meant for tests and
# dry runs.
RULE_CHOICES = ("numpy", "cupy", "host-cuda", "auto")


class BackendUnavailable(RuntimeError):
    """The configured backend cannot run here (e.g. GEEPS_BACKEND=cupy without CuPy)."""


def from_env(name: str):
    """One GEEPS_* variable, parsed and checked by the contract in geeps.job.env
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
        from geeps.backend.cupy_backend import CupyBackend
        return CupyBackend()
    except ImportError as e:
        raise BackendUnavailable(
            f"GEEPS_BACKEND={name} needs CuPy (pip install 'geeps[gpu]'): {e}") from None
    except Exception as e:
        raise BackendUnavailable(f"GEEPS_BACKEND={name}: CuPy cannot use a GPU here: {e}") \
            from None


def select_rules(name: str | None = None):
    """The backend a shard applies its update rules with: `name`, default
    GEEPS_SERVER_BACKEND (itself defaulting to numpy).

    numpy: the NumPy twins on the host rows. cupy: rows and optimizer state in device
    memory, the rules.cu kernels. host-cuda: the same CuPy backend code on the kernels
    compiled for the CPU (needs a C++ compiler). auto: cupy when CuPy sees a GPU, else
    numpy. One that cannot run here raises BackendUnavailable saying why."""
    if name is None:
        name = from_env("GEEPS_SERVER_BACKEND")
    name = name.lower()
    if name not in RULE_CHOICES:
        raise ValueError(f"server backend {name!r} is not one of {', '.join(RULE_CHOICES)}")
    if name == "numpy" or (name == "auto" and not _gpu_present()):
        return NumpyBackend(use_torch=False)
    if name == "host-cuda":
        from geeps.backend import hostcuda, hostcupy
        if hostcuda.compiler() is None:
            raise BackendUnavailable(
                "GEEPS_SERVER_BACKEND=host-cuda compiles the CUDA sources for the CPU and "
                "needs a C++ compiler (g++, or $CXX): none found")
        be = hostcupy.backend()
        be.name = "host-cuda"
        return be
    try:
        from geeps.backend.cupy_backend import CupyBackend
        return CupyBackend()
    except ImportError as e:
        raise BackendUnavailable(
            f"GEEPS_SERVER_BACKEND={name} needs CuPy (pip install 'geeps[gpu]'): {e}") \
            from None
    except Exception as e:
        raise BackendUnavailable(
            f"GEEPS_SERVER_BACKEND={name}: CuPy cannot use a GPU here: {e}") from None
