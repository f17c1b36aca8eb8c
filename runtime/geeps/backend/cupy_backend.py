"""The CuPy backend: device memory on the GPU, kernels from geeps/backend/kernels/*.cu.

    be = CupyBackend()                        # raises ImportError without CuPy
    with be.transfer_stream(): be.h2d(host_rows, six, cache_rows, dix)

Host memory that crosses the bus (pulled rows, update accumulators, local data that
lives on the host) is allocated pinned, so copies run asynchronously on the transfer
stream the background thread owns, overlapping the application's kernels on the
compute stream. A scattered host->device move gathers on the host into pinned
staging, copies once, and scatters on the device: one launch per operation.

This path cannot run without a GPU: its kernels are compile-checked with `nvcc --ptx`
(tests/unit/test_kernels_nvcc.py) and computed by the NumPy twins in numpy_backend.py.
"""
from __future__ import annotations

import threading
from importlib import resources

import numpy as np

import cupy as cp
import cupyx

from geeps.backend import numpy_backend as _twins
from geeps.backend.kernels import KERNELS

F32 = np.float32
THREADS = 256


def kernel_source(filename: str) -> str:
    return resources.files("geeps.backend.kernels").joinpath(filename).read_text()


def _blocks(n: int) -> int:
    return max(1, min(65535, (n + THREADS - 1) // THREADS))


class CupyBackend:
    """Kernels on the current device. Thread-safe: the background thread issues on
    its own stream; staging buffers are per thread."""

    name = "cupy"
    gpu = True
    xp = cp

    def __init__(self):
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device visible")
        self.k = {}
        for filename, names in KERNELS.items():
            module = cp.RawModule(code=kernel_source(filename), options=("-std=c++14",))
            for n in names:
                self.k[n] = module.get_function(n)
        self._stream = cp.cuda.Stream(non_blocking=True)
        self._local = threading.local()

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
        # Pinned host and device staging, grown on demand, one pair per thread.
        st = getattr(self._local, "st", None)
        if st is None or st[0].size < n * width:
            size = max(n * width, 1 << 16)
            st = (cupyx.empty_pinned((size,), F32), cp.empty((size,), F32))
            self._local.st = st
        return st[0][:n * width].reshape(n, width), st[1][:n * width].reshape(n, width)

    # ---- kernels -----------------------------------------------------------------------
    def _launch(self, name: str, n: int, width: int, *args) -> None:
        total = n * width
        if total:
            self.k[name]((_blocks(total),), (THREADS,), args + (np.int64(n), np.int64(width)))

    def take(self, src, ix, out):
        if ix.run is not None:
            out[...] = src[ix.run[0]:ix.run[1]]
        else:
            self._launch("gather_rows", len(ix), src.shape[1], src, ix.device, out)
        return out

    def put(self, dst, ix, src) -> None:
        if ix.run is not None:
            dst[ix.run[0]:ix.run[1]] = src
        else:
            self._launch("scatter_rows", len(ix), dst.shape[1], dst, ix.device, src)

    def put_add(self, dst, ix, src) -> None:
        if ix.run is not None:
            view = dst[ix.run[0]:ix.run[1]]
            cp.add(view, src, out=view)
        else:
            self._launch("scatter_add_rows", len(ix), dst.shape[1], dst, ix.device, src)

    def move(self, src, six, dst, dix, add: bool = False) -> None:
        if six.run is not None:
            (self.put_add if add else self.put)(dst, dix, src[six.run[0]:six.run[1]])
        elif dix.run is not None and not add:
            self.take(src, six, dst[dix.run[0]:dix.run[1]])
        elif not add:
            self._launch("move_rows", len(six), src.shape[1], src, six.device, dst, dix.device)
        else:
            tmp = cp.empty((len(six), src.shape[1]), F32)
            self.take(src, six, tmp)
            self.put_add(dst, dix, tmp)

    def zero(self, dst) -> None:
        dst.fill(0)

    # ---- transfers ---------------------------------------------------------------------
    def h2d(self, host: np.ndarray, six, dev, dix) -> None:
        width = host.shape[1]
        if six.run is not None and dix.run is not None:
            dev[dix.run[0]:dix.run[1]].set(host[six.run[0]:six.run[1]],
                                           stream=cp.cuda.get_current_stream())
            return
        h_stage, d_stage = self._staging(len(six), width)
        _twins.NumpyBackend(use_torch=False).take(host, six, h_stage)
        d_stage.set(h_stage, stream=cp.cuda.get_current_stream())
        self.put(dev, dix, d_stage)

    def d2h(self, dev, six, host: np.ndarray, dix, add: bool = False) -> None:
        width = dev.shape[1]
        h_stage, d_stage = self._staging(len(six), width)
        self.take(dev, six, d_stage)
        d_stage.get(out=h_stage, stream=cp.cuda.get_current_stream())
        cp.cuda.get_current_stream().synchronize()   # the host side reads it next
        _twins.NumpyBackend(use_torch=False).move(
            h_stage, _run(len(six)), host, dix, add=add)

    def transfer_stream(self):
        return self._stream

    def fence(self):
        ev = cp.cuda.Event(block=False, disable_timing=True)
        ev.record(cp.cuda.get_current_stream())
        return ev

    def wait_fence(self, fence) -> None:
        if fence is not None:
            cp.cuda.get_current_stream().wait_event(fence)

    def sync_transfers(self) -> None:
        self._stream.synchronize()

    # ---- fused update rules ------------------------------------------------------------
    def sgd(self, param, grad, lr, weight_decay=0.0):
        n = param.size
        self.k["sgd_update"]((_blocks(n),), (THREADS,),
                             (param, grad, np.int64(n), F32(lr), F32(weight_decay)))

    def momentum(self, param, grad, velocity, lr, mu, weight_decay=0.0):
        n = param.size
        self.k["momentum_update"]((_blocks(n),), (THREADS,),
                                  (param, grad, velocity, np.int64(n), F32(lr), F32(mu),
                                   F32(weight_decay)))

    def adam(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
             weight_decay=0.0):
        s = _twins.adam_scalars(step, lr, beta1, beta2, eps, weight_decay)
        n = param.size
        self.k["adam_update"]((_blocks(n),), (THREADS,),
                              (param, grad, m, v, np.int64(n), s["lr"], s["b1"], s["omb1"],
                               s["b2"], s["omb2"], s["mscale"], s["vscale"], s["eps"],
                               s["wd"]))


def _run(n: int):
    from geeps.backend.index import Index
    return Index((0, n), None)
