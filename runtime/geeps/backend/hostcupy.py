"""A CuPy stand-in on the CPU: the part of CuPy that geeps.backend.cupy_backend, the GPU
tests (tests/gpu) and bench/bench_gpu.py use, over NumPy and the CUDA sources compiled
for the host (geeps.backend.hostcuda).

    be = hostcupy.backend()         # a CupyBackend: cupy_backend's own code, run here
    with hostcupy.installed():      # dry runs: `import cupy` / `import cupyx` get these
        ...

This is how the CPU-only test suite executes the CuPy backend's glue (launch
configurations, argument types, staging, streams) and its kernels, against the NumPy
twins. What it models:
- Device arrays are a NumPy subclass (`ndarray`, with CuPy's `set`/`get`); kernels and
  ufuncs refuse plain NumPy arrays, as CuPy does, so host memory cannot pass for device
  memory. RawModule compiles with g++ (kernels/host.h) and checks every argument's type.
- Kernels and device operations run when issued, in the calling thread.
- Copies between host and device behave like CUDA's at their worst: an async
  host->device copy from pinned memory reads the host rows "some time before the stream
  is synchronized" (the stand-in copies at once and checks at the synchronization that
  the rows did not change in between: HostRace if they did); a non-blocking
  device->host copy into pinned memory writes NaN at once and the data only when the
  stream is synchronized. A copy from or to pageable memory is synchronous, as in CUDA.
What it does not model: streams never run concurrently here, so a missing
`wait_event` between streams goes unnoticed; timings are the CPU's. Only a GPU run
(tests/gpu on a device) settles those.

Importing this module imports neither CuPy nor a compiler; RawModule needs g++.
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import sys
import threading
import time
import types
import weakref

import numpy as np

from geeps.backend import hostcuda

__version__ = "0+hostcupy"
float32 = np.float32
int64 = np.int64


class HostRace(RuntimeError):
    """Host memory changed while an async copy from it may still have been running."""


# ---- pinned host memory ------------------------------------------------------------------
_pinned: dict[int, tuple[int, int]] = {}   # base address -> (size, tag) of live allocations
_pinned_lock = threading.Lock()
_tags = itertools.count()
# Allocations freed, still to drop from _pinned. A finalizer only appends here: it can
# run in a garbage-collection pass triggered while _pinned_lock is held (by this very
# thread), where taking the lock would deadlock.
_freed: list[tuple[int, int]] = []


def _forget(addr: int, tag: int) -> None:
    _freed.append((addr, tag))


def _drop_freed() -> None:
    """Under _pinned_lock: forget the allocations freed since (a tag tells a freed block
    from a new one at the same address)."""
    while _freed:
        addr, tag = _freed.pop()
        if _pinned.get(addr, (0, None))[1] == tag:
            del _pinned[addr]


def empty_pinned(shape, dtype=np.float32, order="C") -> np.ndarray:
    a = np.empty(shape, dtype, order=order)
    addr, tag = a.ctypes.data, next(_tags)
    with _pinned_lock:
        _drop_freed()
        _pinned[addr] = (a.nbytes, tag)
    weakref.finalize(a, _forget, addr, tag)
    return a


def zeros_pinned(shape, dtype=np.float32, order="C") -> np.ndarray:
    a = empty_pinned(shape, dtype, order)
    a.fill(0)
    return a


def is_pinned(a: np.ndarray) -> bool:
    p = a.ctypes.data
    with _pinned_lock:
        _drop_freed()
        return any(base <= p < base + size for base, (size, _tag) in _pinned.items()) \
            if a.nbytes else False


# ---- streams and events ------------------------------------------------------------------
_ids = itertools.count(16)
_streams: "weakref.WeakValueDictionary[int, Stream]" = weakref.WeakValueDictionary()
_local = threading.local()


class Stream:
    """A CUDA stream: here, the copies it has not yet been seen to finish."""

    def __init__(self, null: bool = False, non_blocking: bool = False, ptr: int | None = None):
        self.ptr = 0 if null else (ptr if ptr is not None else next(_ids))
        self.non_blocking = non_blocking
        self._seq = 0
        self._pending: list = []        # (seq, completion callback)
        self._lock = threading.Lock()
        self.waits = 0                  # wait_event calls (for tests)
        _streams[self.ptr] = self

    def __enter__(self):
        _stack().append(self)
        return self

    def __exit__(self, *exc):
        _stack().pop()

    def use(self):
        _stack()[:] = [self]
        return self

    def _enqueue(self, fn) -> None:
        with self._lock:
            self._seq += 1
            self._pending.append((self._seq, fn))

    def _mark(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _complete(self, upto: int) -> None:
        with self._lock:
            done = [fn for s, fn in self._pending if s <= upto]
            self._pending = [(s, fn) for s, fn in self._pending if s > upto]
        for fn in done:
            fn()

    def synchronize(self) -> None:
        self._complete(self._seq)

    def record(self, event=None):
        ev = event if event is not None else Event()
        ev.record(self)
        return ev

    def wait_event(self, event) -> None:
        self.waits += 1

    @property
    def done(self) -> bool:
        return not self._pending

    def __repr__(self) -> str:
        return f"<hostcupy Stream {self.ptr}>"


def ExternalStream(ptr: int, device_id: int = -1) -> Stream:
    """The stream with that handle (streams are shared by handle, as in CUDA)."""
    s = _streams.get(ptr)
    return s if s is not None else Stream(ptr=ptr)


_null = Stream(null=True)
Stream.null = _null


def _stack() -> list:
    st = getattr(_local, "stack", None)
    if st is None:
        st = _local.stack = []
    return st


def get_current_stream(device_id: int = -1) -> Stream:
    st = _stack()
    return st[-1] if st else _null


def _stream(s) -> Stream:
    return get_current_stream() if s is None else s


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False,
                 interprocess: bool = False):
        self.disable_timing = disable_timing
        self._stream: Stream | None = None
        self._seq = 0
        self._t: float | None = None

    def record(self, stream=None) -> None:
        s = _stream(stream)
        self._stream = s
        self._seq = s._mark()
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream._complete(self._seq)

    @property
    def done(self) -> bool:
        return True


def get_elapsed_time(start: Event, end: Event) -> float:
    if start.disable_timing or end.disable_timing:
        raise RuntimeError("an event created with disable_timing=True has no time")
    if start._t is None or end._t is None:
        raise RuntimeError("event not recorded")
    return (end._t - start._t) * 1000.0


def _synchronize_all() -> None:
    for s in list(_streams.values()):
        s.synchronize()


class Device:
    def __init__(self, device: int = 0):
        self.id = int(device)
        self.compute_capability = "host"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def use(self) -> None:
        return None

    def synchronize(self) -> None:
        _synchronize_all()

    @property
    def mem_info(self):
        return (1 << 34, 1 << 34)


def _device_properties(device: int = 0) -> dict:
    return {"name": b"CPU (geeps.backend.hostcupy)", "totalGlobalMem": 1 << 34,
            "major": 0, "minor": 0, "multiProcessorCount": 1}


runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1, runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0,
    getDeviceProperties=_device_properties, deviceSynchronize=_synchronize_all,
    getDevice=lambda: 0, is_hip=False)


# ---- device arrays -----------------------------------------------------------------------
def _host_array(x) -> bool:
    return isinstance(x, np.ndarray) and not isinstance(x, ndarray)


class ndarray(np.ndarray):
    """A device array: NumPy memory, CuPy's interface for copies."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        for x in inputs + (out or ()):
            if _host_array(x) and x.ndim:
                raise TypeError(f"Unsupported type {type(x)} (a host array given to a "
                                f"device ufunc {ufunc.__name__})")
        inputs = tuple(x.view(np.ndarray) if isinstance(x, ndarray) else x for x in inputs)
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in out)
        r = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if isinstance(r, tuple):
            return tuple(x.view(ndarray) if isinstance(x, np.ndarray) else x for x in r)
        return r.view(ndarray) if isinstance(r, np.ndarray) else r

    def set(self, arr, stream=None) -> None:
        if not _host_array(arr):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray (got {type(arr)})")
        if not self.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        np.copyto(self.view(np.ndarray), arr)
        if is_pinned(arr) and arr.nbytes:
            snap = arr.copy()

            def finished(ref=arr, snap=snap):
                if ref.tobytes() != snap.tobytes():
                    raise HostRace("host rows of an async host->device copy changed before "
                                   "the stream was synchronized past the copy")
            _stream(stream)._enqueue(finished)

    def get(self, stream=None, order="C", out=None, blocking=True):
        s = _stream(stream)
        data = self.view(np.ndarray).copy()
        if out is None:
            if blocking:
                s.synchronize()
            return data
        if not _host_array(out):
            raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
        if out.dtype != self.dtype or out.shape != self.shape:
            raise ValueError(f"out is {out.dtype}{out.shape}, the array {self.dtype}{self.shape}")
        if not out.flags.c_contiguous:
            raise RuntimeError("out must be C-contiguous")
        if blocking or not is_pinned(out):
            np.copyto(out, data)
            if blocking:
                s.synchronize()
            return out
        if out.dtype.kind == "f":
            out[...] = np.nan       # not there yet: the data lands at synchronization
        s._enqueue(lambda: np.copyto(out, data))
        return out

    def __reduce__(self):           # pickling (a worker process) yields a host array
        return np.ndarray.__reduce__(self.view(np.ndarray))


def empty(shape, dtype=np.float32, order="C") -> ndarray:
    return np.empty(shape, dtype, order=order).view(ndarray)


def zeros(shape, dtype=np.float32, order="C") -> ndarray:
    return np.zeros(shape, dtype, order=order).view(ndarray)


def ones(shape, dtype=np.float32) -> ndarray:
    return np.ones(shape, dtype).view(ndarray)


def empty_like(a, dtype=None) -> ndarray:
    return np.empty_like(a.view(np.ndarray), dtype=dtype).view(ndarray)


def zeros_like(a, dtype=None) -> ndarray:
    return np.zeros_like(a.view(np.ndarray), dtype=dtype).view(ndarray)


def arange(*args, **kwargs) -> ndarray:
    return np.arange(*args, **kwargs).view(ndarray)


def asarray(a, dtype=None) -> ndarray:
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return np.array(a, dtype=dtype, copy=True).view(ndarray)


def asnumpy(a, stream=None, order="C", out=None, blocking=True) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(stream=stream, out=out, blocking=blocking)
    return np.asarray(a)


def copyto(dst, src) -> None:
    if not isinstance(dst, ndarray) or (_host_array(src) and src.ndim):
        raise TypeError("copyto: both arrays must be device arrays")
    np.copyto(dst.view(np.ndarray), src.view(np.ndarray) if isinstance(src, ndarray) else src)


def array_equal(a, b) -> bool:
    return bool(np.array_equal(asnumpy(a), asnumpy(b)))


add = np.add
subtract = np.subtract
multiply = np.multiply


class _Pool:
    def free_all_blocks(self, stream=None) -> None:
        return None

    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def n_free_blocks(self) -> int:
        return 0


_pool, _pinned_pool = _Pool(), _Pool()


def get_default_memory_pool() -> _Pool:
    return _pool


def get_default_pinned_memory_pool() -> _Pool:
    return _pinned_pool


# ---- kernels -----------------------------------------------------------------------------
class RawKernel:
    def __init__(self, kernel: hostcuda.HostKernel):
        self._k = kernel
        self.name = kernel.name

    def __call__(self, grid, block, args, *, shared_mem: int = 0) -> None:
        for i, a in enumerate(args):
            if _host_array(a):
                raise TypeError(f"{self.name} argument {i}: a host numpy.ndarray passed to a "
                                "kernel (CuPy takes device arrays only)")
        self._k(grid, block, args, shared_mem=shared_mem)

    @property
    def launches(self) -> int:
        return self._k.launches


class RawModule:
    """cupy.RawModule(code=..., options=...) built for the host."""

    def __init__(self, code: str | None = None, *, path: str | None = None, options=(),
                 backend: str = "nvrtc", name_expressions=None, jitify: bool = False):
        if code is None:
            raise ValueError("the host stand-in builds modules from source code only")
        if not all(isinstance(o, str) for o in options):
            raise TypeError(f"options must be strings: {options!r}")
        self.options = tuple(options)
        self._m = hostcuda.HostModule(code, self.options)

    def get_function(self, name: str) -> RawKernel:
        return RawKernel(self._m.get_function(name))


# ---- the modules, and the CuPy backend on them -------------------------------------------
cuda = types.SimpleNamespace(
    Stream=Stream, ExternalStream=ExternalStream, Event=Event, Device=Device,
    get_current_stream=get_current_stream, get_elapsed_time=get_elapsed_time,
    runtime=runtime, is_available=lambda: True)


def modules() -> tuple[types.ModuleType, types.ModuleType]:
    """Module objects `cupy` and `cupyx` made of this stand-in."""
    me = sys.modules[__name__]
    cupy_mod = types.ModuleType("cupy", "geeps.backend.hostcupy: CuPy on the CPU")
    for k in ("__version__", "float32", "int64", "ndarray", "empty", "zeros", "ones",
              "empty_like", "zeros_like", "arange", "asarray", "asnumpy", "copyto",
              "array_equal", "add", "subtract", "multiply", "get_default_memory_pool",
              "get_default_pinned_memory_pool", "RawModule", "RawKernel", "cuda",
              "HostRace"):
        setattr(cupy_mod, k, getattr(me, k))
    cupy_mod.HOST_STAND_IN = True
    cupyx_mod = types.ModuleType("cupyx", "geeps.backend.hostcupy: cupyx on the CPU")
    cupyx_mod.empty_pinned = empty_pinned
    cupyx_mod.zeros_pinned = zeros_pinned
    return cupy_mod, cupyx_mod


_swap = threading.Lock()


@contextlib.contextmanager
def installed():
    """`cupy` and `cupyx` are this stand-in inside the block (sys.modules restored after)."""
    with _swap:
        saved = {k: sys.modules.get(k) for k in ("cupy", "cupyx")}
        sys.modules["cupy"], sys.modules["cupyx"] = modules()
        try:
            yield sys.modules["cupy"]
        finally:
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v


def install() -> types.ModuleType:
    """Make `import cupy` give this stand-in for the rest of the process (dry runs)."""
    sys.modules["cupy"], sys.modules["cupyx"] = modules()
    return sys.modules["cupy"]


_backend_module = None


def backend_module() -> types.ModuleType:
    """geeps.backend.cupy_backend's code, executed with `cupy` and `cupyx` bound to this
    stand-in (a separate module object: the real one, and sys.modules, are untouched)."""
    global _backend_module
    if _backend_module is None:
        spec = importlib.util.find_spec("geeps.backend.cupy_backend")
        mod = importlib.util.module_from_spec(spec)
        with installed():
            spec.loader.exec_module(mod)
        _backend_module = mod
    return _backend_module


def backend():
    """A CupyBackend on the CPU (needs g++ for its kernels)."""
    return backend_module().CupyBackend()
