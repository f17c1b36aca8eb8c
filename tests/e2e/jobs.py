"""Small GeePSJob manifests for the e2e tests: real `geeps server` shards and tiny
Python workers (`python -c ...`) whose behaviour each test chooses."""
from __future__ import annotations

import copy

from geeps import spec as _spec


def job(ns: str, name: str, worker_code: str = "pass", *, servers: int = 1, workers: int = 1,
        restart: str = "OnFailure", run_policy: dict | None = None, **spec) -> dict:
    """A job whose workers run `python -c worker_code` (GEEPS_* in their environment)."""
    body = {
        "apiVersion": _spec.API_VERSION, "kind": _spec.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "image": "geeps/runtime:test",
            "command": ["python", "-c", worker_code],
            "servers": {"replicas": servers},
            "workers": {"replicas": workers, "gpus": 0, "restartPolicy": restart},
            "runPolicy": dict(run_policy or {}),
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


# Worker programs (python -c). Marker files live in the directory named by $MARKS.
CRASH_ONCE = """
import os, sys
mark = os.path.join(os.environ["MARKS"], "attempt-" + os.environ["GEEPS_RANK"])
with open(mark, "a") as f:
    f.write("x")
first = open(mark).read() == "x"
sys.exit(int(os.environ.get("FIRST_EXIT", "3")) if first and os.environ["GEEPS_RANK"] == "0" else 0)
"""

ALWAYS_FAIL = "import sys; sys.exit(1)"

# Report clock 5, then wait for the file $MARKS/go.
WAIT_FOR_GO = """
import os, time, geeps
geeps.report(clock=5, loss=0.5)
while not os.path.exists(os.path.join(os.environ["MARKS"], "go")):
    time.sleep(0.05)
"""


def env(**values: str) -> list[dict]:
    return [{"name": k, "value": str(v)} for k, v in values.items()]
