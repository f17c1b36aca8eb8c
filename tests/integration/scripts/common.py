"""What the stand-in processes of the launcher tests share: recording themselves."""
from __future__ import annotations

import json
import os
import sys
import time

DIR = os.environ["TEST_DIR"]


def name() -> str:
    return f"{os.environ['GEEPS_ROLE']}-{os.environ['GEEPS_RANK']}"


def record(stem: str, text: str) -> None:
    """Write DIR/stem whole or not at all, so a test never reads half a file."""
    tmp = os.path.join(DIR, f".{stem}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(DIR, stem))


def record_self() -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith(("GEEPS_", "TEST_"))}
    env["PYTHONUNBUFFERED"] = os.environ.get("PYTHONUNBUFFERED", "")
    env["cwd"] = os.getcwd()
    env["argv0"] = sys.executable
    record(f"{name()}.env.json", json.dumps(env))
    record(f"{name()}.pid", str(os.getpid()))


def wait_for_peers(timeout: float = 20.0) -> None:
    """Block until every server and worker of the job has recorded its pid."""
    want = int(os.environ["GEEPS_NUM_WORKERS"]) + len(os.environ["GEEPS_SERVERS"].split(","))
    deadline = time.monotonic() + timeout
    while sum(f.endswith(".pid") and f[0] in "sw" for f in os.listdir(DIR)) < want:
        if time.monotonic() > deadline:
            sys.exit(99)
        time.sleep(0.02)
