"""The progress board of `geeps run`: what the workers' progress lines add up to.

Workers print `geeps:progress {json}` lines (geeps.job.progress); the supervisor feeds
each one to the board, which keeps per worker the latest clock, loss and accuracy and
the samples reported over the last RATE_WINDOW seconds, and sums them up for the live
status line and the final summary. Pure: times are passed in, nothing is printed.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

RATE_WINDOW = 10.0          # s of reports the samples/s figure averages over


@dataclass
class _Worker:
    started: float | None = None                    # when the launcher started it
    clock: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    total: float = 0.0                              # samples reported so far
    reports: deque = field(default_factory=deque)   # (time, samples) inside the window
    anchor: float | None = None                     # start of the first report's interval


class ProgressBoard:
    """What the workers' progress lines add up to (pure: times are passed in).

    board = ProgressBoard(2); board.started(0, t0)
    board.update(0, {"clock": 3, "samples": 64, "loss": 0.5}, t1)
    board.status()    # 'clock 3 | 64 samples/s | loss 0.5 | 1/2 workers reporting'
    """

    def __init__(self, workers: int, window: float = RATE_WINDOW):
        self.workers = [_Worker() for _ in range(workers)]
        self.window = window
        self.version = 0                # bumped by every update, so displays know news

    def started(self, rank: int, now: float) -> None:
        self.workers[rank].started = now

    def update(self, rank: int, fields: dict, now: float) -> None:
        w = self.workers[rank]
        for key in ("clock", "loss", "accuracy"):
            v = fields.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                setattr(w, key, v)
        n = fields.get("samples")
        if isinstance(n, (int, float)) and not isinstance(n, bool) and n >= 0:
            if w.anchor is None:
                # The first report counts samples since the process started.
                w.anchor = w.started if w.started is not None else now
            w.reports.append((now, n))
            w.total += n
            while len(w.reports) > 1 and w.reports[0][0] < now - self.window:
                w.anchor = w.reports.popleft()[0]
        self.version += 1

    def rate(self) -> float | None:
        """Samples/s summed over workers, each over its last `window` seconds."""
        total, any_rate = 0.0, False
        for w in self.workers:
            if w.reports and w.reports[-1][0] > w.anchor:
                total += sum(n for _, n in w.reports) / (w.reports[-1][0] - w.anchor)
                any_rate = True
        return total if any_rate else None

    def mean(self, key: str) -> float | None:
        """The latest `key` (loss, accuracy) averaged over the workers reporting it."""
        vals = [getattr(w, key) for w in self.workers if getattr(w, key) is not None]
        return sum(vals) / len(vals) if vals else None

    def clocks(self) -> tuple[float, float] | None:
        vals = [w.clock for w in self.workers if w.clock is not None]
        return (min(vals), max(vals)) if vals else None

    @property
    def total_samples(self) -> float:
        return sum(w.total for w in self.workers)

    def status(self) -> str:
        parts = []
        c = self.clocks()
        if c:
            lo, hi = (format_number(x) for x in c)
            parts.append(f"clock {lo}" if lo == hi else f"clock {lo}..{hi}")
        r = self.rate()
        if r is not None:
            parts.append(f"{r:,.0f} samples/s")
        loss = self.mean("loss")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        acc = self.mean("accuracy")
        if acc is not None:
            parts.append(f"accuracy {acc:.4g}")
        reporting = sum(1 for w in self.workers if w.clock is not None or w.reports)
        if reporting < len(self.workers):
            parts.append(f"{reporting}/{len(self.workers)} workers reporting")
        return " | ".join(parts)


def format_number(x: float) -> str:
    """3.0 -> '3', 2.5 -> '2.5': a clock as the launcher's lines show it."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
