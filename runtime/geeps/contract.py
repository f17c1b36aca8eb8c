"""Builds the environment contract for one process of a job (pure; see config.py).

Both `geeps run` and the operator call `job_env`, so a process sees the same
variables on a laptop and in a pod.
"""
from __future__ import annotations

from typing import Sequence

from .config import Config
from .spec import GeePSJob


def job_env(job: GeePSJob, role: str, rank: int, servers: Sequence[str], *,
            bind_host: str = "*", checkpoint_dir: str = "", curve_dir: str = "",
            metrics_port: int | None = None, colocate: bool = False) -> dict[str, str]:
    """GEEPS_* variables plus the manifest's plain `env` entries (valueFrom is the
    operator's business: it is not a value a local process can resolve)."""
    cfg = Config(
        job=job.name, role=role, rank=rank, num_workers=job.workers.replicas,
        servers=tuple(servers), consistency=job.consistency,
        device_memory=job.device_memory, checkpoint_dir=checkpoint_dir,
        checkpoint_every=job.checkpoint_every if checkpoint_dir else 0,
        metrics_port=job.metrics_port if metrics_port is None else metrics_port,
        bind_host=bind_host, curve_dir=curve_dir, insecure=job.insecure,
        colocate=colocate,
    )
    env = {e["name"]: e["value"] for e in job.env if "value" in e}
    env.update(cfg.to_env())
    return env
