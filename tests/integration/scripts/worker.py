"""A stand-in training script for the launcher tests (needs no parameter server).

It records its pid and GEEPS_* environment in $TEST_DIR, then does as its flags say.
"""
import argparse
import os
import signal
import subprocess
import sys

import common

import geeps

p = argparse.ArgumentParser()
p.add_argument("--clocks", type=int, default=0, help="report progress for this many clocks")
p.add_argument("--crash-rank", type=int, help="this rank exits with --code once peers started")
p.add_argument("--code", type=int, default=3)
p.add_argument("--hang", action="store_true", help="wait for a signal once peers started")
p.add_argument("--grandchild", action="store_true", help="start a child that would outlive us")
p.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM")
p.add_argument("--say", help="print this on stdout and stderr")
args = p.parse_args()
rank = int(os.environ["GEEPS_RANK"])


def interrupted(signum, frame):
    common.record(f"{common.name()}.sigint", "1")
    sys.exit(130)


signal.signal(signal.SIGINT, interrupted)
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if args.grandchild:
    gc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    common.record(f"grandchild-{rank}.pid", str(gc.pid))
common.record_self()
if args.say:
    print(args.say)
    print(args.say, file=sys.stderr)
for c in range(1, args.clocks + 1):
    geeps.report(clock=c, loss=1.0 / (c + rank), samples=32, accuracy=0.5)
if args.crash_rank is not None or args.hang:
    common.wait_for_peers()
if args.crash_rank == rank:
    print(f"worker {rank} crashing on purpose", file=sys.stderr)
    sys.exit(args.code)
if args.hang or args.crash_rank is not None:
    while True:
        signal.pause()
