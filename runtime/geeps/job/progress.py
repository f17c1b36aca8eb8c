"""Progress lines a training script prints and `geeps run` shows.

A script calls `geeps.report(clock=c, loss=l, samples=n, accuracy=a)`; it writes one
line `geeps:progress {json}` to stdout, which the launcher reads (and `kubectl logs`
shows as-is in a pod). Fields are optional; `samples` counts samples since the last
report so the launcher can compute samples/s (from the first report on); `epoch` is
the current epoch, and `clocks` and `epochs` the run's totals, from which the
launcher shows "clock 40/200 | epoch 1/10" and an ETA.
"""
from __future__ import annotations

import json
import sys

MARKER = "geeps:progress "


def report(**fields) -> None:
    """Print one progress line (thread-safe enough: one write call)."""
    clean = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, int) else v)
             for k, v in fields.items() if v is not None}
    sys.stdout.write(MARKER + json.dumps(clean, sort_keys=True) + "\n")
    sys.stdout.flush()


def parse(line: str) -> dict | None:
    """The fields of a progress line, or None for any other line."""
    if not line.startswith(MARKER):
        return None
    try:
        data = json.loads(line[len(MARKER):])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
