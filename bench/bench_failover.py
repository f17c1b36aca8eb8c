"""What losing a server costs a running job: failover to a replica against rollback to a
checkpoint, on the same job (issue 16).

    python bench/bench_failover.py [--clocks 150] [--kill-at 40] [--rows 3000]

Both runs: `geeps run` of tests/integration/scripts/ring_worker.py (BSP, 2 workers, 3
servers, sgd/momentum/adam tables of --rows x 4, a 20 ms compute stand-in per clock);
server 1 is SIGKILLed once worker 0 finished clock --kill-at.

- failover: spec.servers.replication 2: the replica of server 1's rows serves them at
  once, a joining server takes server 1's place in the background.
- rollback (baseline): replication 1 and a checkpoint every 10 clocks: the launcher
  restarts server 1 from its checkpoint and every worker rolls back to it.

Printed per run: the median time per clock, the stall (the longest gap between two
clocks of worker 0 around the failure; target for failover: at most 1 s), the time
from the kill until the job is past the clock it had reached (recovery), and whether
the final parameters equal a fault-free run's bits.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "integration", "scripts", "ring_worker.py")


def run(tmp: str, servers: dict, args, kill: bool, checkpoint: int = 0) -> dict:
    times = os.path.join(tmp, "times.txt")
    save = os.path.join(tmp, "params.npy")
    spec = {"command": ["python", SCRIPT],
            "args": ["--clocks", str(args.clocks), "--rows", str(args.rows), "--save", save,
                     "--times", times, "--pace", "0.02"],
            "servers": {"restartPolicy": "OnFailure", **servers},
            "workers": {"replicas": 2}, "runPolicy": {"backoffLimit": 3}}
    if checkpoint:
        spec["checkpoint"] = {"everyClocks": checkpoint}
    path = os.path.join(tmp, "job.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"apiVersion": "geeps.dev/v1alpha1", "kind": "GeePSJob",
                        "metadata": {"name": "failover"}, "spec": spec}, f)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(REPO, "runtime"), REPO])}
    proc = subprocess.Popen([sys.executable, "-m", "geeps", "run", "--quiet",
                             "--metrics-port", "0", path], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    killed_at = reached = None
    try:
        if kill:
            deadline = time.monotonic() + 120
            while _last_clock(times) < args.kill_at:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the job did not reach clock {args.kill_at}")
                time.sleep(0.005)       # polling a file another process writes
            reached = _last_clock(times)
            os.kill(_server_pid(proc.pid, 1), signal.SIGKILL)
            killed_at = time.monotonic()
        text, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}):\n{text[-3000:]}")
    rows = [tuple(map(float, line.split())) for line in open(times) if line.strip()]
    stamps = [t for _, t in rows]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    out = {"median": statistics.median(gaps), "params": np.load(save),
           "rolled back": "rolled back" in text}
    if killed_at is not None:
        around = [b - a for a, b in zip(stamps, stamps[1:])
                  if a >= killed_at - 2 and a <= killed_at + 30]
        out["stall"] = max(around) if around else float("nan")
        after = [t for c, t in rows if t > killed_at and c > reached]
        out["recovery"] = (after[0] - killed_at) if after else float("nan")
    return out


def _last_clock(path: str) -> int:
    try:
        with open(path) as f:
            lines = f.read().strip().split("\n")
        return int(lines[-1].split()[0]) if lines and lines[-1] else 0
    except (OSError, ValueError, IndexError):
        return 0


def _server_pid(launcher: int, rank: int) -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == launcher and {b"GEEPS_ROLE=server", f"GEEPS_RANK={rank}".encode()} <= env:
            return int(pid)
    raise RuntimeError(f"no server-{rank} under launcher {launcher}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clocks", type=int, default=150)
    ap.add_argument("--kill-at", type=int, default=40)
    ap.add_argument("--rows", type=int, default=3000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "a"))
        os.makedirs(os.path.join(d, "b"))
        os.makedirs(os.path.join(d, "c"))
        clean = run(os.path.join(d, "a"), {"replicas": 3}, args, kill=False)
        fo = run(os.path.join(d, "b"), {"replicas": 3, "replication": 2}, args, kill=True)
        rb = run(os.path.join(d, "c"), {"replicas": 3}, args, kill=True, checkpoint=10)
    print(f"BSP, 2 workers, 3 servers, {args.clocks} clocks, server 1 SIGKILLed at clock "
          f"{args.kill_at}; fault-free median {clean['median'] * 1e3:.1f} ms/clock")
    print("| recovery | stall (longest gap between clocks) | kill -> past the clock reached | "
          "rolled back | bits = fault-free |")
    print("|---|---|---|---|---|")
    for name, r in (("failover to a replica (replication 2)", fo),
                    ("rollback to a checkpoint (baseline, replication 1)", rb)):
        same = np.array_equal(r["params"], clean["params"])
        print(f"| {name} | {r['stall']:.3f} s | {r['recovery']:.3f} s | "
              f"{'yes' if r['rolled back'] else 'no'} | {'yes' if same else 'NO'} |")
    print(f"failover stall / rollback stall: {fo['stall'] / rb['stall']:.2f}; "
          f"recovery: {fo['recovery'] / rb['recovery']:.2f} (target: failover stall <= 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
