"""The one report of tools/gpu_check.sh: the GPU tests, their measurements and the
bench section, merged into OUT/report.md (and OUT/report.json).

    python tools/gpu_report.py OUT        # reads OUT/env.txt, pytest.xml, tests.json, bench.json

Exit status 0 when every test passed (skips allowed only in a dry run) and the bench
met its targets (not judged in a dry run), else 1.
"""
from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _tests(path: str) -> dict:
    out = {"passed": [], "failed": [], "skipped": [], "error": None}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        out["error"] = f"no test results ({e})"
        return out
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            out["failed"].append((name, msg[0][:300] if msg else ""))
        elif skip is not None:
            out["skipped"].append((name, (skip.get("message") or "")[:200]))
        else:
            out["passed"].append(name)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def main(out: str) -> int:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "bench"))
    tests = _tests(os.path.join(out, "pytest.xml"))
    meas = _load(os.path.join(out, "tests.json")) or {}
    bench = _load(os.path.join(out, "bench.json"))
    try:
        with open(os.path.join(out, "env.txt")) as f:
            env = f.read().rstrip()
    except OSError:
        env = "(not recorded)"
    dry = bool(meas.get("dry_run") or (bench or {}).get("dry_run"))
    lines = ["# geeps GPU check" + (" (DRY RUN on the CPU: CuPy replaced by the host-compiled "
                                    "kernels; numbers are not meaningful)" if dry else ""), "",
             "## What was found", "", "```", env, "```", "",
             f"## Tests: {len(tests['passed'])} passed, {len(tests['failed'])} failed, "
             f"{len(tests['skipped'])} skipped", ""]
    if tests["error"]:
        lines.append(f"- {tests['error']}")
    for name, msg in tests["failed"]:
        lines.append(f"- FAILED {name}: {msg}")
    for name, msg in tests["skipped"]:
        lines.append(f"- skipped {name}: {msg}")
    lines += ["", "## Measurements", ""]
    for key in ("environment", "kernels", "kernels_full_grid", "subnormals", "prefetch_overlap",
                "training_one_worker", "bsp_two_workers", "colocated_adam_on_device"):
        if key in meas:
            lines.append(f"- {key}: {_fmt(meas[key])}")
    for row in meas.get("memory_manager", []):
        lines.append(f"- memory manager, {row['workload']} at {row['budget_frac']:.0%} of the "
                     f"working set: moved {_fmt(row['moved'])}; {row['ready_at_call']} of "
                     f"{row['calls']} buffers ready when called; {row['s_per_clock'] * 1e3:.1f} "
                     "ms per clock")
    lines += ["", "## Bench (geeps bench, GPU section)", ""]
    if bench is None:
        lines.append("- no bench results")
    else:
        import bench_gpu
        lines.append(bench_gpu.report(bench))
    ok = not tests["failed"] and not tests["error"] and bool(tests["passed"])
    if not dry:
        ok = ok and not tests["skipped"] and bench is not None and bool(bench.get("ok"))
    elif bench is None or "skipped" in bench:
        ok = False
    lines += ["", f"**Result: {'PASS' if ok else 'FAIL'}**", ""]
    text = "\n".join(lines)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"ok": ok, "dry_run": dry, "tests": tests, "measurements": meas,
                   "bench": bench, "environment": env}, f, indent=1, default=str)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} OUT", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
