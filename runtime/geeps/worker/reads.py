"""What a worker's read sees: how stale it may be, and its own updates (read-my-writes).

    need = read_need(consistency, clock, plan.clocks[k].slack.get(table))
    own = OwnUpdates()
    own.record(table, clock, rows, values)         # at clock(): what this worker pushed
    own.apply(table, rows, pulled, data_clock, clock)   # when a pull arrives

Slack per read (GeePS): a read may name how many of the latest clocks' updates it can
do without, tighter or looser than the job's model. A clock's reads of one table
travel as one pull, so the pull waits as long as its strictest read allows.

Read-my-writes (GeePS, under SSP): the servers apply a clock's updates only when
every worker finished it, so a worker running up to `slack` clocks ahead reads rows
without its own latest updates. For `add` tables (the pushed delta is what the row
gains: the rule is a sum) the worker adds what it pushed in the clocks the reply
lacks -- those at or after the reply's data clock -- to what it read. Other rules
(sgd, momentum, adam) turn the pushed gradient into a step only the server can take,
so their reads stay as the servers sent them; so do reads under async, whose
servers apply a push when it arrives and report no clock that says which.
"""
from __future__ import annotations

import threading

import numpy as np

RMW_RULES = ("add",)       # rules whose update the worker can apply itself: a sum


def read_need(consistency, clock: int, slack: tuple | None) -> int:
    """The servers' min clock the pull of a clock must wait for. `slack`: (the
    smallest slack its reads named, whether some read follows the job's model); None
    when every read follows the model."""
    model = consistency.need(clock)
    if slack is None:
        return model
    tightest, default_too = slack
    need = max(0, clock - tightest)
    return max(need, model) if default_too else need


class OwnUpdates:
    """The updates this worker pushed that the servers may not have applied yet, per
    table (only tables it applies them for: see `wants`). Thread-safe: recorded by the
    application thread, applied on the transfer thread."""

    def __init__(self, per_clock: bool, horizon: int = 1 << 30):
        self.per_clock = per_clock      # BSP/SSP: a reply's clock says what it holds
        # Clocks back a reply can lag (the loosest slack + 1): older updates are in
        # every reply, so a table pushed but never read keeps no more than that.
        self.horizon = horizon
        self._lock = threading.Lock()
        self._log: dict[str, list] = {}   # table -> [(clock, sorted rows, values)]

    def wants(self, table) -> bool:
        return self.per_clock and getattr(table, "rule", None) in RMW_RULES

    def record(self, table, clock: int, rows: np.ndarray, values: np.ndarray) -> None:
        """This worker's update of `rows` (sorted) in `clock`; values are copied (the
        caller reuses its accumulators)."""
        if not self.wants(table):
            return
        with self._lock:
            log = self._log.setdefault(table.name, [])
            log[:] = [e for e in log if e[0] >= clock - self.horizon]
            log.append((clock, np.asarray(rows), np.array(values, np.float32, copy=True)))

    def apply(self, table, rows: np.ndarray, out: np.ndarray, data_clock: int,
              clock: int) -> int:
        """Add to `out` (the pulled values of sorted `rows`) this worker's updates of
        the clocks data_clock..clock-1, which the reply does not hold yet; forget
        the older ones (every later reply holds them). Returns how many clocks it added."""
        if not self.wants(table):
            return 0
        with self._lock:
            log = self._log.get(table.name, [])
            log[:] = [e for e in log if e[0] >= data_clock]
            pending = [e for e in log if e[0] < clock]
        for _c, urows, vals in pending:
            _, at_out, at_upd = np.intersect1d(rows, urows, assume_unique=True,
                                               return_indices=True)
            if len(at_out):
                out[at_out] += vals[at_upd]
        return len(pending)


def horizon(consistency, cycle) -> int:
    """How many clocks back a read of `cycle` may lag under `consistency`: the
    loosest slack (the model's or a read's own) plus one."""
    named = [op.slack for op in cycle.ops if op.kind == "read" and op.slack is not None]
    return max([consistency.slack] + named) + 1
