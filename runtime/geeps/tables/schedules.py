"""Learning-rate schedules the servers follow.

The rate of an update is a pure function of how many updates the table has applied
(under BSP and SSP: its clock; under async every push is an update), so every shard, a restarted one and a replay after a
rollback agree on it without a message, and a checkpoint holds it already (the count
is the rule's step). A schedule is a small document in the rule's hyperparameters:

    ServerOptimizer(model, "momentum", lr=0.1, momentum=0.9,
                    schedule={"decay": "cosine", "total": 5000, "warmup": 200})
    ServerOptimizer(model, "sgd", lr=0.1,
                    schedule={"decay": "step", "milestones": [3000, 4500], "gamma": 0.1})

Update k (from 0) uses lr * warm(k) * decay(k): warm(k) = min(1, (k + 1) / warmup)
(linear warm-up, as torch's LinearLR from 1/warmup); decay is one of
- "constant": 1
- "step": gamma ** (milestones passed: those <= k), torch's MultiStepLR
- "cosine": from 1 down to min_lr / lr over `total` updates, then min_lr / lr;
  torch's CosineAnnealingLR without restarts
- "linear": the same, along a straight line
"""
from __future__ import annotations

import math

DECAYS = ("constant", "step", "cosine", "linear")
FIELDS = {          # accepted fields of each decay, besides `decay` and `warmup`
    "constant": (),
    "step": ("milestones", "gamma"),
    "cosine": ("total", "min_lr"),
    "linear": ("total", "min_lr"),
}


def _int(spec: dict, key: str, minimum: int) -> int:
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < minimum:
        raise ValueError(f"schedule field {key!r} must be an integer >= {minimum} (got {v!r})")
    return int(v)


def _num(spec: dict, key: str, lo: float, hi: float = math.inf) -> float:
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ValueError(f"schedule field {key!r} must be a number in [{lo}, {hi}] "
                         f"(got {v!r})")
    return float(v)


def resolve(spec) -> dict:
    """The schedule with defaults filled; ValueError naming the field at fault. A
    constant rate without warm-up resolves to {} (the same table as no schedule)."""
    if not isinstance(spec, dict):
        raise ValueError(f"schedule must be a mapping such as {{'decay': 'cosine', "
                         f"'total': 1000}} (got {type(spec).__name__})")
    decay = spec.get("decay", "constant")
    if decay not in DECAYS:
        raise ValueError(f"schedule field 'decay' {decay!r:.40} is not one of "
                         f"{', '.join(DECAYS)}")
    unknown = set(spec) - {"decay", "warmup", *FIELDS[decay]}
    if unknown:
        raise ValueError(f"schedule field {sorted(unknown)[0]!r} is not one a {decay!r} "
                         f"schedule takes (accepted: decay, warmup"
                         f"{''.join(', ' + f for f in FIELDS[decay])})")
    out = {"decay": decay, "warmup": _int(spec, "warmup", 0) if "warmup" in spec else 0}
    if decay == "step":
        if "milestones" not in spec:
            raise ValueError("schedule field 'milestones' is required by a 'step' schedule")
        ms = spec["milestones"]
        if not isinstance(ms, (list, tuple)) or not ms:
            raise ValueError(f"schedule field 'milestones' must be a non-empty list of "
                             f"update counts (got {ms!r:.60})")
        out["milestones"] = [_int({"milestones": m}, "milestones", 1) for m in ms]
        if out["milestones"] != sorted(set(out["milestones"])):
            raise ValueError(f"schedule field 'milestones' must increase (got {list(ms)})")
        out["gamma"] = _num(spec, "gamma", 0.0, 1.0) if "gamma" in spec else 0.1
    elif decay in ("cosine", "linear"):
        if "total" not in spec:
            raise ValueError(f"schedule field 'total' (updates to decay over) is required "
                             f"by a {decay!r} schedule")
        out["total"] = _int(spec, "total", 1)
        out["min_lr"] = _num(spec, "min_lr", 0.0) if "min_lr" in spec else 0.0
    if decay == "constant" and not out["warmup"]:
        return {}
    return out


def lr_at(lr: float, schedule: dict, k: int) -> float:
    """The rate of update k (from 0) under a resolved schedule ({}: constant lr)."""
    if not schedule:
        return lr
    warm = min(1.0, (k + 1) / schedule["warmup"]) if schedule["warmup"] else 1.0
    decay = schedule["decay"]
    if decay == "step":
        rate = lr * schedule["gamma"] ** sum(1 for m in schedule["milestones"] if m <= k)
    elif decay in ("cosine", "linear"):
        t = min(k, schedule["total"]) / schedule["total"]
        f = (1 + math.cos(math.pi * t)) / 2 if decay == "cosine" else 1 - t
        rate = schedule["min_lr"] + (lr - schedule["min_lr"]) * f
    else:
        rate = lr
    return rate * warm
