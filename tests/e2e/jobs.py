"""Small GeePSJob manifests for the e2e tests: real `geeps server` shards and tiny
Python workers (`python -c ...`) whose behaviour each test chooses."""
from __future__ import annotations

import copy

from geeps.job import spec as _spec


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


# Every worker adds (rank + 1) to a shared table once per clock for 5 clocks, then
# checks the sum: 5 * (1 + 2 + ... + W).
SUM_TABLE = """
import numpy as np, geeps
cfg = geeps.load_config()
c = geeps.Client.from_env()
t = c.create_table("w", n_rows=16, row_width=4, rule="add")
for k in range(1, 6):
    c.push(t, None, np.full((16, 4), cfg.rank + 1, np.float32))
    c.clock()
    values, _ = c.pull(t)
    geeps.report(clock=k, loss=float(values[0, 0]))
want = 5 * cfg.num_workers * (cfg.num_workers + 1) / 2
assert np.all(values == want), (values[0, 0], want)
print("sum ok", values[0, 0], flush=True)
c.close()
"""
