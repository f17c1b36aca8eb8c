"""PNG plots of a suite run (matplotlib, Agg: no display needed)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt      # noqa: E402


def _save(fig, out: str, name: str, names: list) -> None:
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=90)
    plt.close(fig)
    names.append(name)


def draw(results: dict, out: str) -> list[str]:
    names: list[str] = []
    for fn in (_sync, _cache, _memory, _training, _scaling):
        try:
            fn(results, out, names)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            print(f"plot {fn.__name__[1:]} skipped: {type(e).__name__}: {e}")
    return names


def _sync(r, out, names):
    rows = r["sync"]["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for s, co in sorted({(x["servers"], bool(x.get("colocated"))) for x in rows}):
        sel = [x for x in rows if x["servers"] == s and bool(x.get("colocated")) == co]
        what = f"S={s} in the workers" if co else f"S={s}"
        ax.plot([x["mib"] for x in sel], [x["geeps_s"] * 1e3 for x in sel], "o-",
                label=f"geeps push+pull, {what}")
        ax.plot([x["mib"] for x in sel], [x["zmq_s"] * 1e3 for x in sel], "x--",
                label=f"raw ZeroMQ echo, {what}")
    sel = [x for x in rows if x["servers"] == rows[0]["servers"] and not x.get("colocated")]
    ax.plot([x["mib"] for x in sel], [x["gloo_s"] * 1e3 for x in sel], "s-k",
            label="gloo all_reduce")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("table size (MiB)")
    ax.set_ylabel("ms per clock (this machine)")
    ax.set_title("Synchronization, W=2 workers, TCP loopback")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, out, "sync.png", names)


def _cache(r, out, names):
    rows = r["cache"]["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    labels = [f"{x['op']}\n{x['width']} floats/row" for x in rows]
    xs = range(len(rows))
    w = 0.27
    ax.bar([i - w for i in xs], [x["memcpy_gbps"] for x in rows], w, label="memcpy (same bytes)")
    ax.bar(list(xs), [x["gbps"] for x in rows], w, label="geeps batched kernel")
    ax.bar([i + w for i in xs], [x["loop_gbps"] for x in rows], w, label="per-row Python loop")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("GB/s (this machine)")
    ax.set_yscale("log")
    ax.set_title("Batched cache operations, rows in random order")
    top = max(max(x["memcpy_gbps"], x["gbps"]) for x in rows)
    ax.set_ylim(top=top * 8)            # room above the bars for the legend (log axis)
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    _save(fig, out, "cache_ops.png", names)


def _memory(r, out, names):
    rows = r["memory"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6), sharey=True)
    for ax, wl in zip(axes, ("dense", "sparse")):
        sel = [x for x in rows if x["workload"] == wl]
        fr = [x["budget_frac"] * 100 for x in sel]
        for pol, label in (("benefit", "ours"), ("geeps", "GeePS policy"),
                           ("stream", "pin nothing")):
            pts = [(f, x[pol]["moved"] / max(x["belady_bytes"], 1))
                   for f, x in zip(fr, sel) if x[pol]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_title(f"{wl} workload")
        ax.set_xlabel("device budget (% of working set)")
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("bytes moved / Belady's MIN")
    axes[0].legend(fontsize=8)
    _save(fig, out, "memory.png", names)


def _training(r, out, names):
    tta = r["training"]["tta"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = {"single": "one process", "ddp": "DDP gloo (W=2)", "bsp": "geeps BSP (W=2)",
              "ssp": "geeps SSP 1 (W=2)"}
    for mode, v in tta.items():
        c = v["curve"]
        ax.plot([t for _, t, _ in c], [a for _, _, a in c], ".-", label=labels.get(mode, mode))
    ax.axhline(0.95, color="k", lw=0.8, ls=":")
    ax.set_ylim(0.5, 1.0)
    ax.set_xlabel("training seconds (worker 0, evaluation excluded; this machine)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Digits CNN: accuracy vs time")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    _save(fig, out, "training.png", names)


def _scaling(r, out, names):
    sc = r["scaling"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ns = None
    for name, m in sc["models"].items():
        ns = [x["n"] for x in m["table"]]
        ax.plot(ns, [x["speedup"] for x in m["table"]], "o-", ms=3, label=name)
    ax.plot(ns, ns, "k:", lw=0.8, label="linear")
    n, s = sc["published"]
    ax.plot([n], [s], "r*", ms=14, label=f"GeePS published: {s:g}x at {n}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("machines (one GPU each)")
    ax.set_ylabel("throughput / one machine")
    ax.set_title("Scaling model (bench/scaling.py)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, out, "scaling.png", names)
