"""Update rules the servers run on their rows: add, sgd, momentum, adam.

Optimizer state (velocity, Adam moments, step) lives beside the rows on the server, so
workers send gradients, not parameters. Each rule updates in place, in float32, the
same arithmetic as the worker-side fused kernels in the backend.

    st = RuleState("momentum", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}, (n, w))
    st.apply(params, grad)                 # dense
    st.apply(params, grad_rows, rows=ids)  # only the rows a sparse update touched
"""
from __future__ import annotations

import numpy as np

from .tables import resolve_hyper

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

    def apply(self, params: np.ndarray, grad: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Apply one update. `grad` is dense (like params) or, with `rows`, one row per id."""
        self.step += 1
        if rows is None:
            self._update(params, grad, self.slots)
            return
        p = params[rows]
        slots = {k: v[rows] for k, v in self.slots.items()}
        self._update(p, grad, slots)
        params[rows] = p
        for k, v in slots.items():
            self.slots[k][rows] = v

    def _update(self, p: np.ndarray, g: np.ndarray, slots: dict) -> None:
        h = self.hyper
        f32 = np.float32
        if self.rule == "add":
            p += g
            return
        if h.get("weight_decay"):
            g = g + f32(h["weight_decay"]) * p
        if self.rule == "sgd":
            p -= f32(h["lr"]) * g
        elif self.rule == "momentum":
            v = slots["velocity"]
            v *= f32(h["momentum"])
            v += g
            p -= f32(h["lr"]) * v
        elif self.rule == "adam":
            b1, b2 = h["beta1"], h["beta2"]
            m, v = slots["m"], slots["v"]
            m *= f32(b1)
            m += f32(1 - b1) * g
            v *= f32(b2)
            v += f32(1 - b2) * g * g
            mhat_scale = f32(1.0 / (1 - b1 ** self.step))
            vhat_scale = f32(1.0 / (1 - b2 ** self.step))
            p -= f32(h["lr"]) * (m * mhat_scale) / (np.sqrt(v * vhat_scale) + f32(h["eps"]))
        else:  # resolve_hyper already refused unknown rules
            raise AssertionError(self.rule)
