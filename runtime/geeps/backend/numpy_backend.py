"""The NumPy backend: device memory is host RAM; the NumPy twins of every CUDA kernel.

    be = NumpyBackend()
    be.take(rows, be.prepare(make_index([5, 2])), out=buf)    # buf[i] = rows[idx[i]]
    sgd(param, grad, lr=0.1, weight_decay=0.0)                # in place, float32

The twins compute the same function as geeps/backend/kernels/*.cu, bit for bit: every float32
operation rounded separately, in the kernels' order, subnormals kept
(tests/unit/test_kernels_host.py runs the kernels on the CPU against them, tests/gpu on a
device). The update rules are plain functions so the parameter servers can call them on
their host rows:

    sgd(param, grad, lr, weight_decay)
    momentum(param, grad, velocity, lr, mu, weight_decay)        # v = mu*v + g; p -= lr*v
    adam(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)   # step >= 1

Large gathers and scatters go through PyTorch's CPU index kernels (torch is a
dependency of geeps): on rows of a few hundred bytes NumPy's fancy indexing reaches a
quarter to a half of memcpy bandwidth, torch's index_select/index_add_ about all of
it. Both give identical bits (a copy is a copy; a scatter-add over distinct rows is
one float32 add per element); tests hold them to that.
"""
from __future__ import annotations

import contextlib

import numpy as np

F32 = np.float32
TORCH_MIN_ELEMS = 1 << 14   # below this, NumPy's lower call overhead wins


def _check(what: str, a: np.ndarray, like: np.ndarray | None = None) -> None:
    if a.dtype != F32:
        raise TypeError(f"{what} must be float32 (got {a.dtype})")
    if like is not None and a.shape != like.shape:
        raise ValueError(f"{what} has shape {a.shape}, expected {like.shape} like param")


def _decayed(grad: np.ndarray, param: np.ndarray, weight_decay: float) -> np.ndarray:
    # g + wd * p, without touching the caller's gradient.
    if not weight_decay:
        return grad
    g = F32(weight_decay) * param
    g += grad
    return g


def sgd(param: np.ndarray, grad: np.ndarray, lr: float, weight_decay: float = 0.0,
        scratch: bool = False) -> None:
    """p -= lr * (g + wd * p), in place on float32 `param` (twin of sgd_update).
    With `scratch` the caller's `grad` may be overwritten: the same arithmetic without
    a temporary the size of `param` (the servers' shards are hundreds of MB)."""
    _check("param", param)
    _check("grad", grad, param)
    g = _decayed(grad, param, weight_decay)
    if scratch or g is not grad:
        np.multiply(g, F32(lr), out=g)
        param -= g
    else:
        param -= F32(lr) * g


def momentum(param: np.ndarray, grad: np.ndarray, velocity: np.ndarray, lr: float,
             mu: float, weight_decay: float = 0.0, scratch: bool = False) -> None:
    """v = mu * v + g; p -= lr * v (PyTorch's convention), in place (twin of
    momentum_update). `scratch`: as for sgd."""
    _check("param", param)
    _check("grad", grad, param)
    _check("velocity", velocity, param)
    g = _decayed(grad, param, weight_decay)
    velocity *= F32(mu)
    velocity += g
    if scratch or g is not grad:
        np.multiply(velocity, F32(lr), out=g)
        param -= g
    else:
        param -= F32(lr) * velocity


def adam_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float) -> dict[str, np.float32]:
    """The float32 scalars of one Adam step, rounded once on the host for both the
    kernel and its twin (bias corrections are computed in float64 first)."""
    if step < 1:
        raise ValueError(f"adam step must be >= 1 (the count of this update), got {step}")
    return {"lr": F32(lr), "b1": F32(beta1), "omb1": F32(1.0 - beta1), "b2": F32(beta2),
            "omb2": F32(1.0 - beta2), "mscale": F32(1.0 / (1.0 - beta1 ** step)),
            "vscale": F32(1.0 / (1.0 - beta2 ** step)), "eps": F32(eps),
            "wd": F32(weight_decay)}


def adam(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, step: int,
         lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0) -> None:
    """Bias-corrected Adam, in place (twin of adam_update); `step` counts this update
    from 1:  m = b1 m + (1-b1) g;  v = b2 v + ((1-b2) g) g;
             p -= (lr (m / (1-b1^t))) / (sqrt(v / (1-b2^t)) + eps)"""
    _check("param", param)
    _check("grad", grad, param)
    _check("m", m, param)
    _check("v", v, param)
    s = adam_scalars(step, lr, beta1, beta2, eps, weight_decay)
    g = _decayed(grad, param, weight_decay)
    m *= s["b1"]
    m += s["omb1"] * g
    v *= s["b2"]
    t = s["omb2"] * g
    t *= g
    v += t
    num = m * s["mscale"]
    num *= s["lr"]
    den = v * s["vscale"]
    np.sqrt(den, out=den)
    den += s["eps"]
    num /= den
    param -= num


_torch = None


def _torch_mod():
    global _torch
    if _torch is None:
        try:
            import torch
            _torch = torch
        except ImportError:     # torch is a dependency, but the twins must not need it
            _torch = False
    return _torch


class NumpyBackend:
    """Device memory is RAM; transfers are copies (accounted by the caller the same
    way as on a GPU). Thread-safe: kernels touch only the arrays they are given."""

    name = "numpy"
    gpu = False
    xp = np

    def __init__(self, use_torch: bool = True):
        self.torch = _torch_mod() if use_torch else False

    # ---- memory ------------------------------------------------------------------------
    def device_empty(self, shape) -> np.ndarray:
        return np.empty(shape, F32)

    def host_empty(self, shape) -> np.ndarray:
        return np.empty(shape, F32)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def release(self) -> None:
        """Give cached memory back (the CuPy backend's pools; nothing to do here)."""
        return None

    def prepare(self, ix):
        """Give an Index the form this backend's kernels take (done once per index)."""
        if ix.run is None and ix.device is None:
            ix.device = self.torch.from_numpy(ix.array.copy()) if self.torch else ix.array
        return ix

    # ---- kernels (twins of kernels/rows.cu) --------------------------------------------
    def _fast(self, *arrays) -> bool:
        return bool(self.torch) and arrays[0].size >= TORCH_MIN_ELEMS and \
            all(a.flags.writeable for a in arrays)

    def take(self, src: np.ndarray, ix, out: np.ndarray) -> np.ndarray:
        """out[i] = src[ix[i]] (gather_rows)."""
        if ix.run is not None:
            np.copyto(out, src[ix.run[0]:ix.run[1]])
        elif self._fast(out, src):
            t = self.torch
            t.index_select(t.from_numpy(src), 0, ix.device, out=t.from_numpy(out))
        else:
            np.take(src, ix.array, axis=0, out=out, mode="clip")
        return out

    def put(self, dst: np.ndarray, ix, src: np.ndarray) -> None:
        """dst[ix[i]] = src[i] (scatter_rows); the rows of ix are distinct."""
        if ix.run is not None:
            np.copyto(dst[ix.run[0]:ix.run[1]], src)
        elif self._fast(src, dst):
            t = self.torch
            t.from_numpy(dst).index_copy_(0, ix.device, t.from_numpy(src))
        else:
            dst[ix.array] = src

    def put_add(self, dst: np.ndarray, ix, src: np.ndarray) -> None:
        """dst[ix[i]] += src[i] (scatter_add_rows); the rows of ix are distinct."""
        if ix.run is not None:
            view = dst[ix.run[0]:ix.run[1]]
            np.add(view, src, out=view)
        elif self._fast(src, dst):
            t = self.torch
            t.from_numpy(dst).index_add_(0, ix.device, t.from_numpy(src))
        else:
            dst[ix.array] += src

    def move(self, src: np.ndarray, six, dst: np.ndarray, dix, add: bool = False) -> None:
        """dst[dix[i]] = src[six[i]] (or +=): move_rows, or a slice when either is a run."""
        if six.run is not None:
            part = src[six.run[0]:six.run[1]]
            (self.put_add if add else self.put)(dst, dix, part)
        elif dix.run is not None and not add:
            self.take(src, six, dst[dix.run[0]:dix.run[1]])
        else:
            tmp = np.empty((len(six),) + src.shape[1:], F32)
            self.take(src, six, tmp)
            (self.put_add if add else self.put)(dst, dix, tmp)

    def zero(self, dst: np.ndarray) -> None:
        dst.fill(0)

    # ---- transfers: host <-> device (here both RAM; a stream of their own on GPU) -----
    def h2d(self, host: np.ndarray, six, dev: np.ndarray, dix) -> None:
        self.move(host, six, dev, dix)

    def d2h(self, dev: np.ndarray, six, host: np.ndarray, dix, add: bool = False) -> None:
        self.move(dev, six, host, dix, add=add)

    def transfer_stream(self):
        """Context in which the background thread issues its copies."""
        return contextlib.nullcontext()

    def fence(self):
        """Mark the compute work issued so far; a transfer waiting on it sees its writes."""
        return None

    def wait_fence(self, fence) -> None:
        return None

    def sync_transfers(self) -> None:
        return None

    # ---- fused update rules on device arrays (twins of kernels/rules.cu) ---------------
    # `scratch`: the caller's grad may be overwritten (see sgd); the kernels never need it.
    def sgd(self, param, grad, lr, weight_decay=0.0, scratch=False):
        sgd(param, grad, lr, weight_decay, scratch)

    def momentum(self, param, grad, velocity, lr, mu, weight_decay=0.0, scratch=False):
        momentum(param, grad, velocity, lr, mu, weight_decay, scratch)

    def adam(self, param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
             weight_decay=0.0):
        adam(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)
