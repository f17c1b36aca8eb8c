"""geeps.torch under a device budget: time per step and bytes moved at 100%, 50% and
35% of the working set, against the same model with no budget.

    python bench/bench_torch_budget.py            # 8 x Linear(512, 512), batch 256
    python bench/bench_torch_budget.py --quick

One worker (`gt.DataParallel` over its in-process shard, as `python train.py` alone
runs), the same batches for every row, the rows' models taking turns step by step.
The working set is what one step touches: parameters, their gradients and the
activations saved in the model's forward. Rows:
- unlimited: DataParallel without device_budget, the baseline of every ratio. Its
  bytes are what a GPU run moves anyway (the refresh's parameters in, the gradients
  out); on this CPU the rows are the tensors and nothing is copied.
- 100% / 50% / 35%: device_budget at that share (geeps.torch.paging): parameters
  brought in per module, gradients out as accumulated, saved activations offloaded,
  with Belady's choice on the first step's recorded accesses. MIN is Belady's bytes on
  each step's recorded sequence (geeps.torch.paging.belady).
Every row checks its losses are bit for bit the unlimited run's. On a machine without
a GPU the "device" is RAM and every copy a RAM copy: the time ratio is the cost of
the bookkeeping and of memcpy at this machine's bandwidth, not of PCIe.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHARES = (1.0, 0.5, 0.35)


def _mlp(width: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def _batches(width: int, batch: int, steps: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, width, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(steps)]


def _working_set(width: int, depth: int, batch: int) -> int:
    from geeps.torch.paging import DeviceBudget, working_set
    net = _mlp(width, depth)
    pager = DeviceBudget(net, None)
    x, y = _batches(width, batch, 1)[0]
    with pager.step():
        out = net(x)
    F.cross_entropy(out, y).backward()
    pager.close()
    return working_set(pager.traces[0])


def _runs(budgets: dict, data, depth: int, warmup: int) -> dict:
    """Train one model per budget on the same batches, the models taking turns step by
    step (a burst of load from elsewhere then hits every row alike)."""
    import geeps.torch as gt
    from geeps.torch.paging import belady
    width = data[0][0].shape[1]
    models = {}
    for name, budget in budgets.items():
        model = gt.DataParallel(_mlp(width, depth), name=name, device_budget=budget)
        models[name] = (model, gt.ServerOptimizer(model, "sgd", lr=0.01))
    times: dict = {n: [] for n in budgets}
    losses: dict = {n: [] for n in budgets}
    for x, y in data:
        for name, (model, opt) in models.items():
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.sync()
            times[name].append(time.perf_counter() - t0)
            losses[name].append(loss.detach().clone())
    out = {}
    for name, (model, _opt) in models.items():
        model.close()
        r = out[name] = {"step_s": statistics.median(times[name][warmup:]),
                         "losses": losses[name]}
        pager, budget = model.budget, budgets[name]
        if pager is not None:
            n = len(pager.traces)
            r.update(peak=pager.peak, moved=sum(pager.moved.values()) / n,
                     min=sum(sum(belady(t, budget).values()) for t in pager.traces) / n,
                     unlimited_moved=sum(sum(belady(t, None).values())
                                         for t in pager.traces) / n)
    return out


def run(quick: bool = False, width: int = 512, depth: int = 8, batch: int = 256) -> dict:
    if quick:
        width, depth, batch = 64, 3, 16
    steps, warmup = (4, 1) if quick else (20, 3)
    torch.set_num_threads(1)
    data = _batches(width, batch, steps)
    ws = _working_set(width, depth, batch)
    budgets = {"unlimited": None, **{f"{s:.0%}": int(s * ws) for s in SHARES}}
    res = _runs(budgets, data, depth, warmup)
    base = res["unlimited"]
    rows = [{"share": None, "budget": None, "step_s": base["step_s"], "same": True,
             "moved": res[f"{SHARES[0]:.0%}"]["unlimited_moved"]}]
    for share in SHARES:
        r = res[f"{share:.0%}"]
        rows.append({"share": share, "budget": budgets[f"{share:.0%}"], "step_s": r["step_s"],
                     "peak": r["peak"], "moved": r["moved"], "min": r["min"],
                     "same": all(torch.equal(a, b) for a, b in zip(base["losses"],
                                                                   r["losses"]))})
    return {"width": width, "depth": depth, "batch": batch, "steps": steps,
            "working_set": ws, "rows": rows}


def report(r: dict) -> str:
    mib = 2 ** 20
    base = r["rows"][0]
    L = [f"{r['depth'] + 1} Linear layers of width {r['width']}, batch {r['batch']}, "
         f"{r['steps']} steps; working set (parameters + gradients + saved activations) "
         f"{r['working_set'] / mib:.2f} MiB. Baseline: the same model with no budget.", "",
         "| budget | time/step | vs unlimited | moved/step | vs unlimited | vs MIN | peak | "
         "bitwise equal |", "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if row["share"] is None:
            L.append(f"| unlimited | {row['step_s'] * 1e3:.1f} ms | 1.00x | "
                     f"{row['moved'] / mib:.2f} MiB (params in, grads out; 0 on a CPU) | "
                     "1.00x | | | |")
            continue
        L.append(f"| {row['share']:.0%} ({row['budget'] / mib:.2f} MiB) | "
                 f"{row['step_s'] * 1e3:.1f} ms | {row['step_s'] / base['step_s']:.2f}x | "
                 f"{row['moved'] / mib:.2f} MiB | {row['moved'] / base['moved']:.2f}x | "
                 f"{row['moved'] / row['min']:.3f}x | {row['peak'] / mib:.2f} MiB | "
                 f"{'yes' if row['same'] else 'NO'} |")
    L += ["", "No GPU here: the device is RAM and a copy is a memcpy, so the time ratio is "
          "the bookkeeping and copies at this machine's memory bandwidth; on a GPU the "
          "bytes cross PCIe (the moved column is the one that carries over)."]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny model (numbers mean nothing)")
    args = ap.parse_args()
    print(report(run(args.quick)))


if __name__ == "__main__":
    main()
