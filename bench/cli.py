"""`geeps bench`: the benchmark suite, written to bench/RESULTS.md and bench/*.png.

    geeps bench                       # every section, about 10 minutes on 2 cores
    geeps bench --quick               # a tiny subset of each section, for a smoke test
    geeps bench --only sync,scaling   # some sections (sync cache memory training
                                      # operator scaling gpu filters seed001
                                      # torch_budget membership)
    geeps bench --list                # the sections and what each compares
    geeps bench --script sync         # one bench/bench_*.py alone, its own report

Every row names its baseline and prints its ratio to it, measured in the same run.
Run it from a checkout of the repository: the benchmarks live in bench/, not in the
installed package (`geeps bench` finds the checkout and runs `python -m bench.cli`).
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys


def _repo() -> str:
    """The checkout this file is in: the suite imports bench.* and tests.workloads."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scripts(repo: str, names: list[str]) -> list[str]:
    scripts = sorted(glob.glob(os.path.join(repo, "bench", "bench_*.py")))
    if names:
        scripts = [s for s in scripts
                   if any(os.path.basename(s).startswith(f"bench_{a}") or
                          os.path.basename(s) == a for a in names)]
    return scripts


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    repo = _repo()
    # The suite imports bench.* and tests.workloads: the checkout goes first on the path,
    # in a process of its own so that its spawn start method and imports stay there.
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if argv and argv[0] == "--script":
        scripts = _scripts(repo, argv[1:])
        if not scripts:
            print(f"geeps bench: no benchmark script named {' '.join(argv[1:])}",
                  file=sys.stderr)
            return 2
        status = 0
        for s in scripts:
            print(f"== {os.path.basename(s)}", flush=True)
            status |= subprocess.call([sys.executable, s], cwd=repo, env=env)
        return status
    return subprocess.call([sys.executable, "-m", "bench.suite", *_absolute_out(argv)],
                           cwd=repo, env=env)


def _absolute_out(argv: list[str]) -> list[str]:
    """--out is the caller's path; the suite runs from the checkout's root."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--out" and i + 1 < len(out):
            out[i + 1] = os.path.abspath(out[i + 1])
        elif a.startswith("--out="):
            out[i] = "--out=" + os.path.abspath(a[len("--out="):])
    return out


if __name__ == "__main__":
    sys.exit(main())
