"""Update rules the servers run on their rows: add, sgd, momentum, adam.

Optimizer state (velocity, Adam moments, step) lives beside the rows on the server, so
workers send gradients, not parameters. Each rule updates in place, in float32,
through an array backend (geeps.backend.select_rules, GEEPS_SERVER_BACKEND):

- numpy (the default): the NumPy twins on the shard's host rows.
- cupy: the rows and the optimizer state are kept in device memory and sgd, momentum
  and adam run as the rules.cu kernels; the host rows stay a copy of the device rows
  after every update (replies and checkpoints read them; pinned memory once `hold`
  made them), and the optimizer state comes back to the host only when read
  (checkpoints, digests). Meant for a shard whose process has a GPU: the co-located
  shard of a worker that trains on one.
- host-cuda: the same code as cupy, on the CUDA sources compiled for the CPU
  (geeps.backend.hostcupy): how the test suite runs the kernels on a real server.

The kernels and the twins compute the same float32 bits (finite inputs; see
docs/gpu.md), so a shard gives the same rows on every backend. `add` has no kernel and
no state: it is one addition per value, cheaper on the host than the two transfers it
would need, so it stays there on every backend.

    st = RuleState("momentum", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}, (n, w),
                   backend)
    rows = st.hold(rows)                   # the host rows to keep (a pinned copy on a GPU)
    st.apply(rows, grad)                   # dense
    st.apply(rows, grad_rows, rows=ids)    # only the rows a sparse update touched
"""
from __future__ import annotations

import contextlib
from collections.abc import MutableMapping

import numpy as np

from geeps.backend import numpy_backend as _np
from geeps.backend.index import Index, make_index
from geeps.tables import schedules
from geeps.tables.table import resolve_hyper

GRADIENT_RULES = ("sgd", "momentum", "adam")    # averaged over workers; `add` is summed
SLOTS = {"momentum": ("velocity",), "adam": ("m", "v")}    # optimizer state per rule
F32 = np.float32
_HOST = _np.NumpyBackend(use_torch=False)


def describe(backend) -> dict:
    """The rule backend of a shard and the kernels it launched (for `stats`)."""
    be = backend if backend is not None else _HOST
    return {"rule_backend": be.name, "kernel_launches": dict(getattr(be, "launches", {}))}


class RuleState:
    def __init__(self, rule: str, hyper: dict, shape: tuple[int, int], backend=None):
        self.rule = rule
        self.hyper = resolve_hyper(rule, hyper)
        self.step = 0
        self.be = backend if backend is not None else _HOST
        names = SLOTS.get(rule, ())
        self.device: _Resident | None = None
        if self.be.gpu and rule in GRADIENT_RULES:
            self.device = _Resident(self.be, tuple(shape), names)
            self.slots: MutableMapping[str, np.ndarray] = self.device.slots
        else:
            self.slots = {k: np.zeros(shape, F32) for k in names}

    def hold(self, rows: np.ndarray) -> np.ndarray:
        """The host rows the shard keeps for this state: `rows` itself on the host; on
        a device, a pinned copy whose values are also uploaded."""
        if self.device is None:
            return rows
        return self.device.hold(rows)

    def apply(self, params: np.ndarray, grad: np.ndarray, rows: np.ndarray | None = None,
              scale: float = 1.0, scratch: bool = False, count: bool = True) -> None:
        """Apply one update of `scale * grad`. `grad` is dense (like params) or, with
        `rows`, one row per id (distinct ids). With `scratch`, `grad` belongs to the
        caller's scratch space and is scaled in place (no temporary the size of the
        shard); otherwise it is left as it is. `count=False`: the rest of an update
        begin() counted."""
        if count:
            self.step += 1
        if scale != 1.0:
            if scratch and grad.flags.writeable:
                grad *= np.float32(scale)
            else:
                grad = grad * np.float32(scale)
        # The gradient may be overwritten when it is the caller's scratch or a copy
        # made here.
        own = (scratch and grad.flags.writeable) or scale != 1.0
        if self.device is not None:
            _check(params, grad, rows)
            if rows is None:
                self.device.update(self, params, grad, 0, len(params))
            else:
                self.device.update_rows(self, params, grad, rows)
            return
        if rows is None:
            self._update(params, grad, self.slots, own)
            return
        p = params[rows]
        slots = {k: v[rows] for k, v in self.slots.items()}
        self._update(p, grad, slots, own)
        params[rows] = p
        for k, v in slots.items():
            self.slots[k][rows] = v

    def begin(self) -> None:
        """Count one update that apply_slice() then applies block by block."""
        self.step += 1

    def apply_slice(self, params: np.ndarray, grad: np.ndarray, lo: int, hi: int,
                    scale: float = 1.0) -> None:
        """Rows lo..hi of a dense update counted by begin(); `grad` is the caller's
        scratch (overwritten). Elementwise, so the blocks together give the bits of
        one apply() over all rows."""
        g = grad[lo:hi]
        if scale != 1.0:
            g *= np.float32(scale)
        if self.device is not None:
            _check(params, grad, None)
            self.device.update(self, params, grad, lo, hi)
            return
        self._update(params[lo:hi], g, {k: v[lo:hi] for k, v in self.slots.items()}, True)

    def hyper_now(self) -> dict:
        """The hyper-parameters of the step-th update (a schedule's lr at it)."""
        h = self.hyper
        if "schedule" in h:     # this update is the step-th (apply and begin count it)
            h = dict(h, lr=schedules.lr_at(h["lr"], h["schedule"], self.step - 1))
        return h

    def launch(self, p, g, slots: dict, own: bool = False) -> None:
        """One update of `p` by `g` with the backend's rule (a kernel on a device, the
        NumPy twin on the host); `slots` are the optimizer state of the same rows."""
        h = self.hyper_now()
        be = self.be
        if self.rule == "sgd":
            be.sgd(p, g, h["lr"], h["weight_decay"], scratch=own)
        elif self.rule == "momentum":
            be.momentum(p, g, slots["velocity"], h["lr"], h["momentum"], h["weight_decay"],
                        scratch=own)
        elif self.rule == "adam":
            be.adam(p, g, slots["m"], slots["v"], self.step, h["lr"], h["beta1"],
                    h["beta2"], h["eps"], h["weight_decay"])
        else:  # resolve_hyper already refused unknown rules; `add` never comes here
            raise AssertionError(self.rule)

    def _update(self, p: np.ndarray, g: np.ndarray, slots: dict, own: bool) -> None:
        if self.rule == "add":
            p += g
        else:
            self.launch(p, g, slots, own)


def _check(params: np.ndarray, grad: np.ndarray, rows) -> None:
    # What the twins check, before anything crosses to the device.
    for what, a in (("params", params), ("grad", grad)):
        if a.dtype != F32:
            raise TypeError(f"{what} must be float32 (got {a.dtype})")
    want = params.shape if rows is None else (len(rows),) + params.shape[1:]
    if grad.shape != want:
        raise ValueError(f"grad has shape {grad.shape}, expected {want}")


def _run(a: int, b: int) -> Index:
    return Index((a, b), None)


class _Resident:
    """A shard's rows and optimizer state in device memory.

    The rows are mirrored: `host` (the array the shard reads replies and checkpoints
    from) is rewritten from the device after every update, so it never lags. The
    optimizer state is read on the host only for checkpoints and digests, so it comes
    back only then (DeviceSlots). Everything runs on a stream of its own, so a
    co-located shard's updates do not queue behind the training step of the worker
    that hosts it; each update ends with that stream synchronized (the host rows are
    read next), which also makes the gradient's host memory free for reuse.

    The device is the backend's (the one current where it was made: a worker's after
    torch.cuda.set_device), made current around every operation: a co-located shard
    runs on its client's I/O thread, where CUDA's current device is 0 by default."""

    def __init__(self, be, shape: tuple[int, int], names: tuple[str, ...]):
        self.be = be
        self.shape = shape
        self.host: np.ndarray | None = None
        self.grad = None            # device gradient buffer, made at the first update
        with be.xp.cuda.Device(be.device):
            self.stream = be.xp.cuda.Stream(non_blocking=True)
            with self.stream:
                self.params = be.device_empty(shape)
                self.slots = DeviceSlots(self, names)

    @contextlib.contextmanager
    def on(self):
        """The backend's device and this state's stream, current."""
        with self.be.xp.cuda.Device(self.be.device), self.stream:
            yield

    def hold(self, rows: np.ndarray) -> np.ndarray:
        host = self.be.host_empty(self.shape)
        np.copyto(host, rows)
        self._upload(host)
        return host

    def _upload(self, host: np.ndarray) -> None:
        """Make `host` the rows mirrored (the shard's rows moved or were replaced)."""
        n = len(host)
        with self.on():
            if n:
                self.be.h2d(np.ascontiguousarray(host), _run(0, n), self.params, _run(0, n))
            self.stream.synchronize()
        self.host = host

    def _grad(self, n: int):
        if self.grad is None:
            self.grad = self.be.device_empty(self.shape)
        return self.grad[:n]

    def update(self, st: RuleState, host: np.ndarray, grad: np.ndarray, lo: int,
               hi: int) -> None:
        """Rows lo..hi of a dense update: grad[lo:hi] up, the kernel, rows down."""
        if host is not self.host:
            self._upload(host)
        if hi <= lo:
            return
        be = self.be
        with self.on():
            g = self._grad(self.shape[0])[lo:hi]
            be.h2d(np.ascontiguousarray(grad[lo:hi]), _run(0, hi - lo), g, _run(0, hi - lo))
            st.launch(self.params[lo:hi], g,
                      {k: self.slots.device(k)[lo:hi] for k in self.slots})
            be.d2h(self.params, _run(lo, hi), host, _run(lo, hi))

    def update_rows(self, st: RuleState, host: np.ndarray, grad: np.ndarray,
                    rows: np.ndarray) -> None:
        """A sparse update: gather the rows on the device (gather_rows), update them,
        scatter them back (scatter_rows) and down into the host rows."""
        if host is not self.host:
            self._upload(host)
        k = len(rows)
        if not k:
            return
        be = self.be
        with self.on():
            ix = be.prepare(make_index(rows))
            g = self._grad(k)
            be.h2d(np.ascontiguousarray(grad), _run(0, k), g, _run(0, k))
            p = be.device_empty(g.shape)
            be.take(self.params, ix, p)
            slots = {}
            for name in self.slots:
                slots[name] = be.device_empty(g.shape)
                be.take(self.slots.device(name), ix, slots[name])
            st.launch(p, g, slots)
            be.put(self.params, ix, p)
            for name, s in slots.items():
                be.put(self.slots.device(name), ix, s)
            be.d2h(p, _run(0, k), host, ix)


class DeviceSlots(MutableMapping):
    """The optimizer state of a device-resident RuleState, as the host sees it: a
    mapping of name -> host array like the host state's dict. Reading a slot copies it
    down when the device has changed it since; assigning one (a checkpoint restore)
    copies it up."""

    def __init__(self, res: _Resident, names: tuple[str, ...]):
        self._res = res
        self._dev = {}
        for k in names:
            self._dev[k] = res.be.device_empty(res.shape)
            res.be.zero(self._dev[k])
        self._host: dict[str, np.ndarray] = {}
        self._stale = set(names)        # the host copy is behind the device

    def device(self, name: str):
        """The device array of a slot, about to be written."""
        self._stale.add(name)
        return self._dev[name]

    def __getitem__(self, name: str) -> np.ndarray:
        dev = self._dev[name]
        if name in self._stale:
            res = self._res
            host = self._host.get(name)
            if host is None:
                host = self._host[name] = res.be.host_empty(res.shape)
            n = len(host)
            with res.on():
                if n:
                    res.be.d2h(dev, _run(0, n), host, _run(0, n))
                res.stream.synchronize()
            self._stale.discard(name)
        return self._host[name]

    def __setitem__(self, name: str, value) -> None:
        if name not in self._dev:
            raise KeyError(f"optimizer state {name!r}: this rule keeps "
                           f"{', '.join(self._dev) or 'none'}")
        res = self._res
        value = np.asarray(value)
        if value.dtype != F32 or value.shape != res.shape:
            raise ValueError(f"optimizer state {name!r}: {value.dtype}{value.shape} for "
                             f"rows of float32{res.shape}")
        host = self._host.get(name)
        if host is None:
            host = self._host[name] = res.be.host_empty(res.shape)
        np.copyto(host, value)
        n = len(host)
        with res.on():
            if n:
                res.be.h2d(host, _run(0, n), self._dev[name], _run(0, n))
            res.stream.synchronize()
        self._stale.discard(name)

    def __delitem__(self, name: str) -> None:
        raise TypeError("a rule's optimizer state cannot be removed")

    def __iter__(self):
        return iter(self._dev)

    def __len__(self) -> int:
        return len(self._dev)
