"""Render docs/dashboard.png: the Grafana dashboard's panels, drawn from real Prometheus data.

    python tools/render_dashboard.py          # runs tests/metrics/cached-job.yaml, writes the PNG
    python tools/render_dashboard.py --manifest examples/01-minimal/job.yaml --workers 4

Starts what tests/metrics starts (tools/promstack.py): Debian's prometheus, `geeps
operator` against kmock's Kubernetes API emulator, and `geeps run MANIFEST` with metrics
on; when the job ends, every panel query of charts/geeps-operator/dashboards/geeps.json
is read back with /api/v1/query_range and drawn with matplotlib, one subplot per panel,
laid out as on the dashboard's grid. No Grafana is needed (none runs here); the queries,
legends and units are the dashboard's own.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from promstack import (REPO, JobFailed, Prometheus, concrete, load_dashboard,  # noqa: E402
                       observed_run)

OUT = os.path.join(REPO, "docs", "dashboard.png")
BG, PANEL, GRID, TEXT = "#111217", "#181b1f", "#2c3235", "#ccccdc"
# Grafana's classic palette, so the picture reads like the dashboard.
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff",
          "#ff780a", "#96d98d", "#fade2a"]


def legend(fmt: str, labels: dict) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label value."""
    import re
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


def scale(unit: str, values: list[float]) -> tuple[float, str]:
    """A divisor and axis label for Grafana's unit names (bytes/s, seconds, ratio)."""
    peak = max((abs(v) for v in values if math.isfinite(v)), default=0)
    if unit == "Bps":
        for div, name in ((2**30, "GiB/s"), (2**20, "MiB/s"), (2**10, "KiB/s")):
            if peak >= div:
                return div, name
        return 1, "B/s"
    if unit == "s":
        return (1e-3, "ms") if peak < 1 else (1, "s")
    if unit == "percentunit":
        return 0.01, "%"
    return 1, ""


def collect(prom: Prometheus, dashboard: dict, variables: dict, start: float, end: float,
            step: float) -> list[dict]:
    """Per panel: title, unit, grid position and the series of each of its queries."""
    panels = []
    for p in dashboard["panels"]:
        series = []
        for t in p["targets"]:
            for s in prom.query_range(concrete(t["expr"], variables), start, end, step):
                pts = [(float(x) - start, float(v)) for x, v in s["values"]]
                series.append((legend(t.get("legendFormat", ""), s["metric"]), pts))
        defaults = p["fieldConfig"]["defaults"]
        panels.append({"title": p["title"], "unit": defaults.get("unit", ""),
                       "min": defaults.get("min"), "max": defaults.get("max"),
                       "grid": p["gridPos"], "series": series})
    return panels


def draw(panels: list[dict], title: str, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    rows = max(p["grid"]["y"] + p["grid"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, rows * 0.42), facecolor=BG)
    gs = GridSpec(rows, 24, figure=fig, hspace=0.0, wspace=0.0,
                  left=0.01, right=0.99, top=1 - 1.2 / rows / 1.0 * 0.9, bottom=0.02)
    fig.suptitle(title, color=TEXT, fontsize=15, x=0.01, ha="left")
    for p in panels:
        g = p["grid"]
        ax = fig.add_subplot(gs[g["y"]:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        # Leave a gutter inside each grid cell, as Grafana does between panels.
        box = ax.get_position()
        ax.set_position([box.x0 + 0.035, box.y0 + 0.028, box.width - 0.045, box.height - 0.055])
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=TEXT, labelsize=8)
        ax.grid(color=GRID, linewidth=0.6)
        ax.set_title(p["title"], color=TEXT, fontsize=10, loc="left")
        values = [v for _, pts in p["series"] for _, v in pts]
        div, unit = scale(p["unit"], values)
        for i, (label, pts) in enumerate(p["series"]):
            xs = [x for x, v in pts if math.isfinite(v)]
            ys = [v / div for v in (v for _, v in pts) if math.isfinite(v)]
            # Every other series dashed: equal series (push and pull bytes are often the
            # same) would otherwise hide each other.
            ax.plot(xs, ys, color=COLORS[i % len(COLORS)], linewidth=1.4, label=label,
                    linestyle="--" if i % 2 else "-")
        if p["min"] is not None or p["max"] is not None:
            lo = None if p["min"] is None else p["min"] / div
            hi = None if p["max"] is None else p["max"] / div
            pad = 0.03 * ((hi or 0) - (lo or 0))
            ax.set_ylim(None if lo is None else lo - pad, None if hi is None else hi + pad)
        if not p["series"]:
            ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_ylabel(unit, color=TEXT, fontsize=8)
        ax.set_xlabel("seconds since the job started", color=TEXT, fontsize=7)
        if p["series"]:
            ax.legend(fontsize=7, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT,
                      loc="upper left", ncol=2 if len(p["series"]) > 4 else 1)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=90, facecolor=BG)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # The metrics test's job: it runs the GPU-specialized worker under a device budget,
    # so every panel has data (01-minimal's low-level client has no parameter cache).
    ap.add_argument("--manifest", default=os.path.join(REPO, "tests", "metrics", "cached-job.yaml"))
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--timeout", type=float, default=600, help="seconds the job may run")
    args = ap.parse_args(argv)
    dashboard = load_dashboard()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with observed_run(tmp, args.manifest, servers=args.servers, workers=args.workers,
                              timeout=args.timeout) as (prom, job, name, _):
                panels = collect(prom, dashboard, {"job": name}, job.started, job.ended + 2,
                                 0.5)
        except JobFailed as e:
            print(f"render_dashboard: {e}", file=sys.stderr)
            return 1
    draw(panels, f"{dashboard['title']}: job {name}, {args.servers} servers, "
                 f"{args.workers} workers (local run, scraped by Prometheus every 1 s)", args.out)
    empty = [p["title"] for p in panels if not p["series"]]
    print(args.out)
    if empty:
        print(f"render_dashboard: panels without data: {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
