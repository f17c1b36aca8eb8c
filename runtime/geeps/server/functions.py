"""Server functions: what a shard runs on a table's rows besides its update rule.

    fns = resolve([{"name": "prox-l1", "args": {"l1": 0.5}}])     # at create
    before_rule(fns, grad_rows, scale)       # "gradient" phase: clip-norm
    after_rule(fns, rows, ids, lr)           # "weights" phase: proximal operators

The allow-list: the built-ins of geeps.job.tableopts.FUNCTIONS (proximal operators of
L1, L2 and the elastic net, gradient clipping by norm) and the functions an installed
package registers under the entry-point group `geeps.server_functions`, looked up by
name only: a name not installed is refused by name, and no code ever comes from a
manifest or a message. An entry point names a callable

    def my_fn(values: np.ndarray, *, lr: float, args: dict) -> None

that changes `values` (float32, the rows a clock updated, a copy gathered for it) in
place; an attribute `phase = "gradient"` makes it run on the mean gradient before the
rule instead of on the weights after it.

Proximal steps follow the seed's Delayed Block Proximal Gradient: after the rule's
step w - lr * g, the rows updated become argmin_u Omega(u) + ||u - w||^2 / (2 lr):
soft-thresholding by lr * l1 for L1, shrinking by 1 / (1 + lr * l2) for L2, both for
the elastic net. `lr` is the rule's rate of that update (1 for `add`).
Clipping is per shard: the norm is of the rows this shard updates in the clock (the
whole table when one shard holds it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from geeps.job import tableopts
from geeps.tables import schedules


@dataclass(frozen=True)
class Function:
    name: str
    args: dict
    phase: str                  # "gradient" | "weights"
    run: Callable               # run(values, *, lr, args) -> None, in place

    def spec(self) -> dict:
        return {"name": self.name, "args": dict(self.args)}


def prox_l1(values: np.ndarray, *, lr: float, args: dict) -> None:
    t = np.float32(lr * args["l1"])
    np.copysign(np.maximum(np.abs(values) - t, np.float32(0)), values, out=values)


def prox_l2(values: np.ndarray, *, lr: float, args: dict) -> None:
    values *= np.float32(1.0 / (1.0 + lr * args["l2"]))


def prox_elastic_net(values: np.ndarray, *, lr: float, args: dict) -> None:
    prox_l1(values, lr=lr, args=args)
    prox_l2(values, lr=lr, args=args)


def clip_norm(values: np.ndarray, *, lr: float, args: dict) -> None:
    norm = float(np.linalg.norm(values.astype(np.float64)))
    if norm > args["max_norm"]:
        values *= np.float32(args["max_norm"] / norm)


BUILTINS: dict[str, Callable] = {"prox-l1": prox_l1, "prox-l2": prox_l2,
                                 "prox-elastic-net": prox_elastic_net,
                                 "clip-norm": clip_norm}
assert set(BUILTINS) == set(tableopts.FUNCTIONS), "built-in functions drifted"


class UnknownFunction(ValueError):
    """A function name that is neither built in nor installed; the text names it."""


def resolve(specs) -> tuple[Function, ...]:
    """The functions of a create request's `functions` field, checked and loaded;
    ValueError naming the function or argument at fault."""
    if specs is None:
        return ()
    if not isinstance(specs, list) or len(specs) > tableopts.MAX_FUNCTIONS:
        raise ValueError(f"must be a list of at most {tableopts.MAX_FUNCTIONS} functions")
    out = []
    for i, s in enumerate(specs):
        if not isinstance(s, dict) or set(s) - {"name", "args"}:
            raise ValueError(f"[{i}] must be {{name, args}}")
        args = s.get("args", {})
        if not isinstance(args, dict):
            raise ValueError(f"[{i}].args must be a mapping")
        try:
            checked = tableopts.function_spec(s.get("name"), args, where=f"[{i}]")
        except ValueError as e:
            raise (UnknownFunction if "not installed" in str(e) else ValueError)(
                str(e)) from None
        name = checked["name"]
        if name in BUILTINS:
            out.append(Function(name, checked["args"], tableopts.FUNCTIONS[name][0],
                                BUILTINS[name]))
            continue
        try:
            run = tableopts.installed()[name].load()
        except Exception as e:      # a broken plug-in is refused, not a crashed shard
            raise ValueError(f"[{i}] function {name!r}: its entry point does not load: "
                             f"{type(e).__name__}: {e}") from None
        if not callable(run):
            raise ValueError(f"[{i}] function {name!r}: its entry point is not callable")
        phase = getattr(run, "phase", "weights")
        if phase not in ("gradient", "weights"):
            raise ValueError(f"[{i}] function {name!r}: phase {phase!r} is not gradient "
                             "or weights")
        out.append(Function(name, checked["args"], phase, run))
    return tuple(out)


def rate(rule: str, hyper: dict, step: int) -> float:
    """The learning rate of the rule's step-th update (1-based), as the rule used it."""
    if "lr" not in hyper:
        return 1.0
    if "schedule" in hyper:
        return schedules.lr_at(hyper["lr"], hyper["schedule"], step - 1)
    return float(hyper["lr"])


def before_rule(fns, grad: np.ndarray, scale: float) -> None:
    """The gradient phase on `grad` (the summed gradient of the rows updated; the rule
    steps on scale * grad): run on the mean, written back summed."""
    for f in fns:
        if f.phase != "gradient":
            continue
        if f.run is clip_norm:      # the mean's norm is the sum's times scale
            f.run(grad, lr=1.0, args={"max_norm": f.args["max_norm"] / scale})
            continue
        if scale != 1.0:
            grad *= np.float32(scale)
        f.run(grad, lr=1.0, args=f.args)
        if scale != 1.0:
            grad *= np.float32(1.0 / scale)


def after_rule(fns, rows: np.ndarray, ids, lr: float) -> None:
    """The weights phase on rows[ids] (a slice or ids), in place."""
    mine = [f for f in fns if f.phase == "weights"]
    if not mine:
        return
    block = rows[ids]
    for f in mine:
        f.run(block, lr=lr, args=f.args)
    rows[ids] = block


def has_phase(fns, phase: str) -> bool:
    return any(f.phase == phase for f in fns)
