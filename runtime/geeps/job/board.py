"""The progress board of `geeps run`: what the workers' progress lines add up to.

Workers print `geeps:progress {json}` lines (geeps.job.progress); the supervisor feeds
each one to the board, which keeps per worker the latest clock, epoch, loss and
accuracy and the samples reported over the last RATE_WINDOW seconds, and sums them up
for the live status line and the final summary. Pure: times are passed in, nothing
is printed.

Rates start at a worker's first report, not at its start: importing torch and
building the model are not training. When a script reports its totals (`clocks=`,
`epochs=`), the line shows them, and the clock rate since the first report gives an
ETA.
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
    epoch: float | None = None
    first: tuple[float, float] | None = None        # (time, clock) of the first clock
    last: tuple[float, float] | None = None         # (time, clock) of the latest


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
        self.total_clocks: float | None = None      # as the scripts report them
        self.total_epochs: float | None = None

    def started(self, rank: int, now: float) -> None:
        self.workers[rank].started = now

    def update(self, rank: int, fields: dict, now: float) -> None:
        w = self.workers[rank]
        for key in ("clock", "loss", "accuracy", "epoch"):
            v = fields.get(key)
            if _number(v):
                setattr(w, key, v)
        for key, attr in (("clocks", "total_clocks"), ("epochs", "total_epochs")):
            if _number(fields.get(key)) and fields[key] > 0:
                setattr(self, attr, fields[key])
        if _number(fields.get("clock")):
            w.last = (now, fields["clock"])
            if w.first is None:
                w.first = w.last
        n = fields.get("samples")
        if _number(n) and n >= 0:
            w.total += n
            if w.anchor is None:
                # The first report's samples include the start-up (imports, model,
                # connecting): the rate starts from it instead.
                w.anchor = now
            else:
                w.reports.append((now, n))
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

    def eta(self) -> float | None:
        """Seconds until the slowest worker reaches the reported total clocks, at the
        clock rate each worker kept since its first clock; None when unknown."""
        if self.total_clocks is None:
            return None
        worst = None
        for w in self.workers:
            if w.first is None or w.last is None or w.last[0] <= w.first[0] \
                    or w.last[1] <= w.first[1]:
                return None
            speed = (w.last[1] - w.first[1]) / (w.last[0] - w.first[0])
            left = max(0.0, self.total_clocks - w.last[1]) / speed
            worst = left if worst is None else max(worst, left)
        return worst

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
            text = f"clock {lo}" if lo == hi else f"clock {lo}..{hi}"
            if self.total_clocks is not None:
                text += f"/{format_number(self.total_clocks)}"
            parts.append(text)
        epochs = [w.epoch for w in self.workers if w.epoch is not None]
        if epochs:
            text = f"epoch {format_number(min(epochs))}"
            if self.total_epochs is not None:
                text += f"/{format_number(self.total_epochs)}"
            parts.append(text)
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        r = self.rate()
        if r is not None:
            parts.append(f"{r:,.0f} samples/s")
        loss = self.mean("loss")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        acc = self.mean("accuracy")
        if acc is not None:
            parts.append(f"accuracy {acc:.4g}")
        reporting = sum(1 for w in self.workers if w.clock is not None or w.total)
        if reporting == 0:
            return f"waiting for the first progress line of {len(self.workers)} workers " \
                   f"(they start, import and connect to the servers)"
        if reporting < len(self.workers):
            parts.append(f"{reporting}/{len(self.workers)} workers reporting")
        return " | ".join(parts)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def format_duration(s: float) -> str:
    """72 -> '1m12s', 3700 -> '1h01m', 9 -> '9s'."""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def format_number(x: float) -> str:
    """3.0 -> '3', 2.5 -> '2.5': a clock as the launcher's lines show it."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
