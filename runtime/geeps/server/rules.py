"""Update rules the servers run on their rows: add, sgd, momentum, adam.

Optimizer state (velocity, Adam moments, step) lives beside the rows on the server, so
workers send gradients, not parameters. Each rule updates in place, in float32, with
the backend's NumPy twins of the worker-side fused kernels.

    st = RuleState("momentum", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}, (n, w))
    st.apply(params, grad)                 # dense
    st.apply(params, grad_rows, rows=ids)  # only the rows a sparse update touched
"""
from __future__ import annotations

import numpy as np

from geeps.backend import numpy_backend as _np
from geeps.tables import schedules
from geeps.tables.table import resolve_hyper

GRADIENT_RULES = ("sgd", "momentum", "adam")    # averaged over workers; `add` is summed


class RuleState:
    def __init__(self, rule: str, hyper: dict, shape: tuple[int, int]):
        self.rule = rule
        self.hyper = resolve_hyper(rule, hyper)
        self.step = 0
        self.slots: dict[str, np.ndarray] = {}
        if rule == "momentum":
            self.slots["velocity"] = np.zeros(shape, np.float32)
        elif rule == "adam":
            self.slots["m"] = np.zeros(shape, np.float32)
            self.slots["v"] = np.zeros(shape, np.float32)

    def apply(self, params: np.ndarray, grad: np.ndarray, rows: np.ndarray | None = None,
              scale: float = 1.0, scratch: bool = False, count: bool = True) -> None:
        """Apply one update of `scale * grad`. `grad` is dense (like params) or, with
        `rows`, one row per id. With `scratch`, `grad` belongs to the caller's scratch
        space and is scaled in place (no temporary the size of the shard); otherwise it
        is left as it is. `count=False`: the rest of an update begin() counted."""
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
        self._update(params[lo:hi], g, {k: v[lo:hi] for k, v in self.slots.items()}, True)

    def _update(self, p: np.ndarray, g: np.ndarray, slots: dict, own: bool) -> None:
        # The backend's NumPy twins are the arithmetic of the worker-side CUDA kernels:
        # one definition of each rule for servers and workers alike.
        h = self.hyper
        if "schedule" in h:     # this update is the step-th (apply and begin count it)
            h = dict(h, lr=schedules.lr_at(h["lr"], h["schedule"], self.step - 1))
        if self.rule == "add":
            p += g
        elif self.rule == "sgd":
            _np.sgd(p, g, h["lr"], h["weight_decay"], scratch=own)
        elif self.rule == "momentum":
            _np.momentum(p, g, slots["velocity"], h["lr"], h["momentum"], h["weight_decay"],
                         scratch=own)
        elif self.rule == "adam":
            _np.adam(p, g, slots["m"], slots["v"], self.step, h["lr"], h["beta1"],
                     h["beta2"], h["eps"], h["weight_decay"])
        else:  # resolve_hyper already refused unknown rules
            raise AssertionError(self.rule)
