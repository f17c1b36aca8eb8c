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
            "security": {"insecure": True},
            "runPolicy": dict(run_policy or {}),
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body
