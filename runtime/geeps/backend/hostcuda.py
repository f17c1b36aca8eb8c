"""The CUDA sources of the CuPy backend, compiled for the CPU with g++ and run there.

    mod = HostModule(code=kernel_source("rows.cu"))       # like cupy.RawModule(code=...)
    k = mod.get_function("gather_rows")
    k((blocks,), (256,), (src, idx, out, np.int64(n), np.int64(width)))

kernels/host.h turns a .cu file into host C++: `__global__` functions become plain
functions, a launch runs every (block, thread) of its grid in turn with blockIdx and
threadIdx set, and the intrinsics the kernels use are IEEE float32 operations. The
module is built into a shared library once per content (header, source, compiler,
flags), cached under GEEPS_HOSTCUDA_CACHE (default: a per-user folder in the temp
directory), and loaded with ctypes.

A call takes CuPy's RawKernel arguments: (grid, block, args) with NumPy arrays for
device arrays (their data pointer is passed, as CuPy passes a cupy.ndarray's) and NumPy
scalars for values. Every argument is checked against the kernel's C signature (kind
and size) the way a GPU never checks it: an np.int32 passed for a `long long`, or a
Python float (CuPy sends it as a double) for a `float`, raises TypeError here instead
of reading garbage there. The tests run the CuPy backend's own glue on these kernels
(geeps.backend.hostcupy) and compare with the NumPy twins.

Needs a C++17 compiler (CXX, default g++); without one, HostCudaUnavailable says so.
Importing this module needs neither.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from geeps.backend.kernels import source as kernel_source  # noqa: F401  (re-exported)

HEADER = "host.h"
FLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math",
         "-Wall", "-Wno-unused-function")
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
_MAX_PARAMS = 64
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}


class HostCudaUnavailable(RuntimeError):
    """No C++ compiler here to build the host kernels (the message says which)."""


def compiler() -> str | None:
    """The C++ compiler to use: $CXX, else g++ on PATH (None: none found)."""
    cxx = os.environ.get("CXX") or "g++"
    return shutil.which(cxx)


def cache_dir() -> Path:
    d = os.environ.get("GEEPS_HOSTCUDA_CACHE")
    if d:
        return Path(d)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"geeps-hostcuda-{uid}"


def kernel_names(code: str) -> tuple[str, ...]:
    """The `extern "C" __global__` functions defined in a CUDA source, in order."""
    return tuple(_KERNEL.findall(code))


def _translation_unit(header: Path, code: str, name: str, kernels) -> str:
    exports = "\n".join(f"GEEPS_HOST_EXPORT({k})" for k in kernels)
    return (f'#include "{header}"\n#line 1 "{name}"\n{code}\n'
            f'#line 1 "<geeps host exports>"\n{exports}\n')


def build(code: str, name: str = "module.cu", options=()) -> Path:
    """The shared library of `code` (built now unless the cache has it)."""
    cxx = compiler()
    if cxx is None:
        raise HostCudaUnavailable(
            f"no C++ compiler ({os.environ.get('CXX') or 'g++'} is not on PATH): the CUDA "
            "sources cannot be compiled for the CPU")
    header = Path(str(resources.files("geeps.backend.kernels").joinpath(HEADER)))
    kernels = kernel_names(code)
    if not kernels:
        raise ValueError(f"{name}: no extern \"C\" __global__ kernel in it")
    tu = _translation_unit(header, code, name, kernels)
    flags = FLAGS + tuple(options)
    key = hashlib.sha256("\0".join((cxx, " ".join(flags), header.read_text(), tu))
                         .encode()).hexdigest()[:24]
    out_dir = cache_dir()
    lib = out_dir / f"{Path(name).stem}-{key}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    # Built under a unique name and renamed: processes building at once each get a
    # whole library, and the last rename wins with identical contents.
    fd, tmp_src = tempfile.mkstemp(suffix=".cpp", dir=out_dir)
    tmp_lib = tmp_src[:-4] + ".so"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(tu)
        proc = subprocess.run([cxx, *flags, tmp_src, "-o", tmp_lib], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} could not compile {name} for the host:\n"
                               f"{proc.stderr.strip()}")
        os.replace(tmp_lib, lib)
    finally:
        for p in (tmp_src, tmp_lib):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    return lib


def _load(path: Path) -> ctypes.CDLL:
    with _lock:
        lib = _loaded.get(str(path))
        if lib is None:
            lib = _loaded[str(path)] = ctypes.CDLL(str(path))
        return lib


class HostKernel:
    """One kernel of a HostModule, called like a cupy.RawKernel."""

    def __init__(self, lib: ctypes.CDLL, name: str):
        self.name = name
        self._launch = getattr(lib, f"geeps_launch_{name}")
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                 ctypes.POINTER(ctypes.c_void_p)]
        self._launch.restype = ctypes.c_int
        sig = getattr(lib, f"geeps_signature_{name}")
        kinds = ctypes.create_string_buffer(_MAX_PARAMS)
        sizes = (ctypes.c_int * _MAX_PARAMS)()
        n = sig(kinds, sizes, _MAX_PARAMS)
        self.signature = tuple((kinds.raw[i:i + 1].decode(), sizes[i]) for i in range(n))
        self.launches = 0

    def _arg(self, i: int, a, want: tuple[str, int]):
        kind, size = want
        if isinstance(a, np.ndarray):
            if kind != "p":
                raise TypeError(f"{self.name} argument {i}: an array passed for a "
                                f"{size}-byte {_KINDS[kind]}")
            return np.array(a.ctypes.data, np.uintp)     # args[i] points at the pointer
        if isinstance(a, (bool, np.bool_)):
            got = ("u", 1)
            value = np.array(a, np.uint8)
        elif isinstance(a, np.generic):
            got = (a.dtype.kind if a.dtype.kind in "fiu" else "?", a.dtype.itemsize)
            value = np.array(a)
        elif isinstance(a, int):        # CuPy passes a Python int as a 64-bit integer
            got, value = ("i", 8), np.array(a, np.int64)
        elif isinstance(a, float):      # and a Python float as a double
            got, value = ("f", 8), np.array(a, np.float64)
        else:
            raise TypeError(f"{self.name} argument {i}: {type(a).__name__} is neither an "
                            "array nor a scalar")
        if got != want:
            raise TypeError(f"{self.name} argument {i}: passed {value.dtype} "
                            f"({got[1]} bytes), the kernel takes a {size}-byte "
                            f"{_KINDS.get(kind, kind)}")
        return value

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None) -> None:
        if shared_mem:
            raise ValueError("host kernels have no shared memory")
        args = tuple(args)
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments, "
                            f"{len(args)} given")
        held = [self._arg(i, a, w) for i, (a, w) in enumerate(zip(args, self.signature))]
        ptrs = (ctypes.c_void_p * max(1, len(held)))()
        for i, h in enumerate(held):
            ptrs[i] = h.ctypes.data
        g = _dims(grid, "grid")
        b = _dims(block, "block")
        rc = self._launch(g, b, ptrs)
        if rc != 0:
            raise ValueError(f"{self.name}: invalid launch configuration grid={tuple(g)} "
                             f"block={tuple(b)}")
        self.launches += 1


_KINDS = {"p": "pointer", "f": "floating-point value", "i": "signed integer",
          "u": "unsigned integer"}


def _dims(d, what: str):
    d = tuple(int(x) for x in (d if isinstance(d, (tuple, list)) else (d,)))
    if not 1 <= len(d) <= 3 or any(x < 0 or x >= 2**32 for x in d):
        raise ValueError(f"{what} {d}: 1 to 3 dimensions in [0, 2**32)")
    d = d + (1,) * (3 - len(d))
    return (ctypes.c_uint * 3)(*d)


class HostModule:
    """A CUDA source built for the host; the stand-in for cupy.RawModule(code=...)."""

    def __init__(self, code: str, options=(), name: str = "module.cu"):
        # `options` are NVRTC's (the CuPy backend's); the host build takes none of them.
        self.code = code
        self.path = build(code, name)
        self._lib = _load(self.path)
        self.names = kernel_names(code)
        self._kernels: dict[str, HostKernel] = {}

    def get_function(self, name: str) -> HostKernel:
        if name not in self.names:
            raise AttributeError(f"no kernel {name!r} in this module (it has "
                                 f"{', '.join(self.names)})")
        k = self._kernels.get(name)
        if k is None:
            k = self._kernels[name] = HostKernel(self._lib, name)
        return k
