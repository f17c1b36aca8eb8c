"""The CuPy backend: device memory on the GPU, kernels from geeps/backend/kernels/*.cu.

    be = CupyBackend()                        # raises ImportError without CuPy
    with be.transfer_stream(): be.h2d(host_rows, six, cache_rows, dix)

Host memory that crosses the bus (pulled rows, update accumulators, local data that
lives on the host) is allocated pinned, so copies run asynchronously on the transfer
stream the background thread owns, overlapping the application's kernels on the
compute stream. A scattered host->device move gathers on the host into pinned
staging, copies once, and scatters on the device: one launch per operation.

Streams. Work the application thread issues through this backend goes to CuPy's
current stream; the transfer thread issues on its own non-blocking stream. A fence
(`fence()` on the application thread, `wait_fence()` on the transfer thread) orders a
transfer after the compute work issued before it: an event on CuPy's current stream
and, when the process uses torch on the same device and torch's current stream is
another one, an event on torch's too (the application may write its buffers with
torch through DLPack).

Pinned memory. Host arrays come from CuPy's pinned memory pool (cupyx.empty_pinned).
The pool does not know about copies in flight: memory handed back to it, or a staging
buffer written again, must not be the source or target of an unfinished async copy.
So each thread's staging buffers carry the event of their last use, and the host
waits on it before writing them or handing them back. `release()` returns the pools'
cached blocks to the driver.

Kernel cache. CuPy writes compiled kernels under CUPY_CACHE_DIR (default
~/.cupy/kernel_cache) and fails when it cannot (a read-only root filesystem in a pod):
before compiling, `kernel_cache()` points CUPY_CACHE_DIR at a writable folder under
the temp directory when the configured one is not writable.

Arithmetic. CuPy compiles RawModules with -ftz=true; the kernels use explicit PTX
(f32_* in the .cu files) so that subnormals are kept and results stay the NumPy
twins' bits.

Without a GPU this module runs on the CPU under geeps.backend.hostcupy (the same code,
with the .cu files compiled by g++ through kernels/host.h), which is how the test
suite executes it; `nvcc --ptx` compile-checks the sources (tests/unit/test_kernels_nvcc.py).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading

import numpy as np

import cupy as cp
import cupyx

from geeps.backend import numpy_backend as _twins
from geeps.backend.index import Index
from geeps.backend.kernels import KERNELS, source as kernel_source

log = logging.getLogger("geeps.backend")
F32 = np.float32
THREADS = 256           # threads per block of every launch
MAX_BLOCKS = 65535      # blocks per launch at most; the kernels loop grid-stride beyond
NVRTC_OPTIONS = ()      # CuPy appends -ftz=true itself; the .cu files do not depend on it
_HOST = _twins.NumpyBackend(use_torch=False)


def _blocks(n: int) -> int:
    return max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS))


def _writable_dir(d: str) -> bool:
    """Whether `d` is, or can be created as, a folder this process can write in (nothing
    is created here: CuPy makes the folder when it first writes)."""
    d = os.path.abspath(d)
    while not os.path.exists(d):
        parent = os.path.dirname(d)
        if parent == d:
            return False
        d = parent
    return os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)


def kernel_cache() -> str:
    """Where CuPy caches the kernels it compiles: CUPY_CACHE_DIR (default
    ~/.cupy/kernel_cache) when writable; else a folder under the temp directory, set as
    CUPY_CACHE_DIR for this process; else "memory" (CUPY_CACHE_IN_MEMORY=1)."""
    if os.environ.get("CUPY_CACHE_IN_MEMORY", "0") not in ("", "0"):
        return "memory"
    configured = os.environ.get("CUPY_CACHE_DIR") or \
        os.path.join(os.path.expanduser("~"), ".cupy", "kernel_cache")
    if _writable_dir(configured):
        return configured
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    alt = os.path.join(tempfile.gettempdir(), f"geeps-cupy-cache-{uid}")
    if _writable_dir(alt):
        os.makedirs(alt, exist_ok=True)
        log.warning("CuPy's kernel cache %s is not writable; using %s (set CUPY_CACHE_DIR "
                    "to choose)", configured, alt)
        os.environ["CUPY_CACHE_DIR"] = alt
        return alt
    log.warning("no writable folder for CuPy's kernel cache (%s, %s): keeping it in memory",
                configured, alt)
    os.environ["CUPY_CACHE_IN_MEMORY"] = "1"
    return "memory"


class _Staging:
    """One thread's pinned host and device staging, and the event after its last use."""
    __slots__ = ("host", "dev", "done")

    def __init__(self, size: int):
        self.host = cupyx.empty_pinned((size,), F32)
        self.dev = cp.empty((size,), F32)
        self.done = None

    def ready(self) -> None:
        """Block until no copy or kernel issued so far still uses these buffers."""
        if self.done is not None:
            self.done.synchronize()
            self.done = None


def _contiguous(name: str, *arrays) -> None:
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: the kernel needs C-contiguous rows (got strides "
                             f"{a.strides} for shape {a.shape})")


class CupyBackend:
    """Kernels on the current device. Thread-safe: the background thread issues on
    its own stream; staging buffers are per thread."""

    name = "cupy"
    gpu = True
    xp = cp

    def __init__(self):
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device visible")
        self.device = cp.cuda.Device().id
        self.cache_dir = kernel_cache()
        self.k = {}
        for filename, names in KERNELS.items():
            module = cp.RawModule(code=kernel_source(filename), options=NVRTC_OPTIONS)
            for n in names:
                self.k[n] = module.get_function(n)
        # Launches per kernel, for a shard's `stats` and the test that every kernel has
        # a caller (approximate under concurrent threads: a counter, not a lock).
        self.launches = dict.fromkeys(self.k, 0)
        self._stream = cp.cuda.Stream(non_blocking=True)
        self._local = threading.local()
        self._all_staging: list = []
        self._lock = threading.Lock()

    # ---- memory ------------------------------------------------------------------------
    def device_empty(self, shape):
        return cp.empty(shape, F32)

    def host_empty(self, shape) -> np.ndarray:
        return cupyx.empty_pinned(shape, F32)

    def to_numpy(self, a) -> np.ndarray:
        return cp.asnumpy(a)

    def prepare(self, ix):
        if ix.run is None and ix.device is None:
            ix.device = cp.asarray(ix.array)
        return ix

    def _staging(self, n: int, width: int):
        # Pinned host and device staging, grown on demand, one pair per thread. The
        # previous use must be over before the host writes the buffers again, or hands
        # them back to the pools (which reuse memory without looking at streams).
        st = getattr(self._local, "st", None)
        if st is not None:
            st.ready()
        if st is None or st.host.size < n * width:
            new = _Staging(max(n * width, 1 << 16))
            with self._lock:        # the old pair (idle: ready() above) goes back to the pools
                self._all_staging = [s for s in self._all_staging if s is not st] + [new]
            st = self._local.st = new
        return st

    def release(self) -> None:
        """Wait for this backend's copies, drop the staging buffers and give the cached
        blocks of CuPy's device and pinned pools back to the driver."""
        self._stream.synchronize()
        with self._lock:
            for st in self._all_staging:
                st.ready()
            self._all_staging = []
        self._local = threading.local()
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()

    # ---- kernels -----------------------------------------------------------------------
    def _launch(self, name: str, n: int, width: int, *args) -> None:
        total = n * width
        if total:
            _contiguous(name, *(a for a in args if hasattr(a, "flags")))
            self.k[name]((_blocks(total),), (THREADS,), args + (np.int64(n), np.int64(width)))
            self.launches[name] += 1

    @staticmethod
    def _width(name: str, a, b) -> int:
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"{name}: rows of {a.shape[1:]} and {b.shape[1:]} differ")
        return a.shape[1]

    def take(self, src, ix, out):
        if ix.run is not None:
            out[...] = src[ix.run[0]:ix.run[1]]
        else:
            self._launch("gather_rows", len(ix), self._width("gather_rows", src, out), src,
                         ix.device, out)
        return out

    def put(self, dst, ix, src) -> None:
        if ix.run is not None:
            dst[ix.run[0]:ix.run[1]] = src
        else:
            self._launch("scatter_rows", len(ix), self._width("scatter_rows", dst, src), dst,
                         ix.device, src)

    def put_add(self, dst, ix, src) -> None:
        if ix.run is not None:
            view = dst[ix.run[0]:ix.run[1]]
            cp.add(view, src, out=view)
        else:
            self._launch("scatter_add_rows", len(ix), self._width("scatter_add_rows", dst, src),
                         dst, ix.device, src)

    def move(self, src, six, dst, dix, add: bool = False) -> None:
        if six.run is not None:
            (self.put_add if add else self.put)(dst, dix, src[six.run[0]:six.run[1]])
        elif dix.run is not None and not add:
            self.take(src, six, dst[dix.run[0]:dix.run[1]])
        elif not add:
            self._launch("move_rows", len(six), self._width("move_rows", src, dst), src,
                         six.device, dst, dix.device)
        else:
            tmp = cp.empty((len(six), src.shape[1]), F32)
            self.take(src, six, tmp)
            self.put_add(dst, dix, tmp)

    def zero(self, dst) -> None:
        dst.fill(0)

    # ---- transfers ---------------------------------------------------------------------
    def h2d(self, host: np.ndarray, six, dev, dix) -> None:
        stream = cp.cuda.get_current_stream()
        if six.run is not None and dix.run is not None:
            # Straight from the caller's (pinned) rows: they must stay as they are until
            # the stream passes this copy (the transfer thread syncs after each job).
            dev[dix.run[0]:dix.run[1]].set(host[six.run[0]:six.run[1]], stream=stream)
            return
        width = host.shape[1]
        n = len(six)
        st = self._staging(n, width)
        h_stage = st.host[:n * width].reshape(n, width)
        d_stage = st.dev[:n * width].reshape(n, width)
        _HOST.take(host, six, h_stage)
        d_stage.set(h_stage, stream=stream)
        self.put(dev, dix, d_stage)
        st.done = stream.record()

    def d2h(self, dev, six, host: np.ndarray, dix, add: bool = False) -> None:
        stream = cp.cuda.get_current_stream()
        if six.run is not None and dix.run is not None and not add:
            out = host[dix.run[0]:dix.run[1]]
            if out.flags.c_contiguous:
                # Straight into the caller's rows, no staging (a shard's whole rows
                # after an update would need staging of their size); blocking: the
                # stream is synchronized before this returns, as below.
                dev[six.run[0]:six.run[1]].get(out=out, stream=stream)
                return
        width = dev.shape[1]
        n = len(six)
        st = self._staging(n, width)
        h_stage = st.host[:n * width].reshape(n, width)
        d_stage = st.dev[:n * width].reshape(n, width)
        self.take(dev, six, d_stage)
        d_stage.get(out=h_stage, stream=stream)
        stream.synchronize()            # the host side reads it next
        _HOST.move(h_stage, Index((0, n), None), host, dix, add=add)

    def transfer_stream(self):
        return self._stream

    def _torch_stream(self):
        """torch's current stream on this device when torch uses CUDA here (else None)."""
        torch = sys.modules.get("torch")        # only a process that imported it uses it
        if torch is None or not torch.cuda.is_initialized():
            return None
        if torch.cuda.current_device() != self.device:
            return None
        return cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)

    def fence(self):
        s = cp.cuda.get_current_stream()
        ev = cp.cuda.Event(block=False, disable_timing=True)
        ev.record(s)
        t = self._torch_stream()
        if t is None or t.ptr == s.ptr:
            return ev
        ev_t = cp.cuda.Event(block=False, disable_timing=True)
        ev_t.record(t)
        return (ev, ev_t)

    def wait_fence(self, fence) -> None:
        if fence is None:
            return
        stream = cp.cuda.get_current_stream()
        for ev in (fence if isinstance(fence, tuple) else (fence,)):
            stream.wait_event(ev)

    def sync_transfers(self) -> None:
        self._stream.synchronize()

    # ---- fused update rules ------------------------------------------------------------
    def _rule(self, name: str, n: int, args) -> None:
        if n:
            _contiguous(name, *(a for a in args if hasattr(a, "flags")))
            self.k[name]((_blocks(n),), (THREADS,), args)
            self.launches[name] += 1

    # `scratch` (the twins may overwrite the gradient) means nothing to the kernels,
    # which only read it.
    def sgd(self, param, grad, lr, weight_decay=0.0, scratch=False):
        n = param.size
        self._rule("sgd_update", n, (param, grad, np.int64(n), F32(lr), F32(weight_decay)))

    def momentum(self, param, grad, velocity, lr, mu, weight_decay=0.0, scratch=False):
        n = param.size
        self._rule("momentum_update", n, (param, grad, velocity, np.int64(n), F32(lr), F32(mu),
                                          F32(weight_decay)))

    def adam(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
             weight_decay=0.0):
        s = _twins.adam_scalars(step, lr, beta1, beta2, eps, weight_decay)
        n = param.size
        self._rule("adam_update", n, (param, grad, m, v, np.int64(n), s["lr"], s["b1"],
                                      s["omb1"], s["b2"], s["omb2"], s["mscale"], s["vscale"],
                                      s["eps"], s["wd"]))
