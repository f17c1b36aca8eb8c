"""Consistency models: BSP, SSP with a slack, and async.

Clocks count completed iterations: a worker at clock c has finished clocks 0..c-1.
A read at clock c under slack s must see every update from clocks <= c - s - 1,
which holds once every worker has finished c - s clocks (the server's min clock).
BSP is slack 0; async never waits.

A model has one form at each boundary, converted here only: text ('bsp', 'ssp:2',
'async') on the command line and in GEEPS_CONSISTENCY (`parse`, `str`); the manifest's
`spec.consistency: {model, slack}` (`from_spec`, `to_spec`); a Consistency in between.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Consistency:
    model: str          # "bsp" | "ssp" | "async"
    slack: int = 0      # clocks a reader may run ahead of the slowest worker; 0 under BSP

    def need(self, clock: int) -> int:
        """The server min clock a read at `clock` must wait for."""
        if self.model == "async":
            return 0
        return max(0, clock - self.slack)

    @property
    def per_clock(self) -> bool:
        """Whether servers buffer pushes and apply them once per clock (BSP, SSP)."""
        return self.model != "async"

    def __str__(self) -> str:
        return f"ssp:{self.slack}" if self.model == "ssp" else self.model


ACCEPTED = "bsp, ssp:N (N >= 1), async"


def parse(text: str) -> Consistency:
    """Parse 'bsp', 'ssp:N' or 'async' (case-insensitive); raise ValueError otherwise."""
    t = str(text).strip().lower()
    if t == "bsp":
        return Consistency("bsp", 0)
    if t == "async":
        return Consistency("async", 0)
    if t.startswith("ssp:"):
        try:
            slack = int(t[4:])
        except ValueError:
            slack = -1
        if slack >= 1:
            return Consistency("ssp", slack)
    raise ValueError(f"{text!r} is not a consistency model (accepted: {ACCEPTED})")


_SPEC_MODELS = {"bsp": "BSP", "ssp": "SSP", "async": "Async"}   # the manifest's spelling


def from_spec(spec: dict) -> Consistency:
    """From the manifest's `consistency: {model, slack}` (defaulted and schema-checked)."""
    m = spec["model"].lower()
    if m == "ssp":
        return Consistency("ssp", spec["slack"])
    return Consistency(m, 0)


def to_spec(c: Consistency) -> dict:
    """The manifest's `consistency: {model, slack}` for `c` (what from_spec reads back)."""
    return {"model": _SPEC_MODELS[c.model], "slack": c.slack}
