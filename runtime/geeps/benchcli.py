"""`geeps bench`: run the benchmarks in the repository's bench/ folder.

    geeps bench                 # every bench/bench_*.py with its defaults
    geeps bench sync cache      # only bench_sync.py and bench_cache_ops.py

Each benchmark prints its measurements beside a named baseline from the same run.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys


def _bench_dir() -> str | None:
    for base in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))):
        d = os.path.join(base, "bench")
        if os.path.isdir(d):
            return d
    return None


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    d = _bench_dir()
    if d is None:
        print("geeps bench: no bench/ folder here; run it from a checkout of the repository",
              file=sys.stderr)
        return 2
    scripts = sorted(glob.glob(os.path.join(d, "bench_*.py")))
    if argv:
        scripts = [s for s in scripts
                   if any(os.path.basename(s).startswith(f"bench_{a}") or
                          os.path.basename(s) == a for a in argv)]
        if not scripts:
            print(f"geeps bench: no benchmark named {' '.join(argv)}", file=sys.stderr)
            return 2
    status = 0
    for s in scripts:
        print(f"== {os.path.basename(s)}", flush=True)
        status |= subprocess.call([sys.executable, s])
    return status
