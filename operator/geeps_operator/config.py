"""The operator's own configuration: what `geeps operator` flags turn into.

    cfg = OperatorConfig(connection=kopf.ConnectionInfo(server="http://127.0.0.1:8001"))

Every field has its unit and default; tests shorten the intervals, production keeps
the defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

import kopf

from geeps.job.spec import DEFAULT_IMAGE


@dataclass(frozen=True)
class OperatorConfig:
    connection: kopf.ConnectionInfo             # where the Kubernetes API is, with credentials
    namespaces: tuple[str, ...] = ()            # watched namespaces; empty = all (cluster-wide)
    resync_seconds: float = 10.0                # s; every job is reconciled at least this
    #                                             often, so TTL and deadlines hold without events
    health_port: int = 8080                     # liveness endpoint /healthz; 0 disables
    metrics_port: int = 9090                    # the operator's Prometheus /metrics; 0 disables
    runtime_image: str = DEFAULT_IMAGE          # pods' image when a job names none
    progress_timeout_seconds: float = 2.0       # s one scrape of worker 0's metrics may take
    allow_host_path: bool = False               # jobs may mount hostPath volumes (the chart's
    #                                             jobPods.allowHostPath); else refused
    blocked_deadline_seconds: float = 600.0     # s a job may stay Blocked (a pod that
    #                                             cannot start, a refused write) before it fails
    terminating_grace_seconds: float = 300.0    # s a pod may stay terminating past its
    #                                             deletionTimestamp before it is force-deleted
    leader_election: bool = False               # hold a Lease before reconciling (replicas > 1)
    lease_namespace: str = "default"            # where the Lease lives
    lease_name: str = "geeps-operator"
    lease_seconds: float = 15.0                 # s without renewal before a standby takes over
    identity: str = ""                          # this replica's name in the Lease
    user_agent: str = "geeps-operator/0.1.0"    # so API audit logs name us
    finalizer: str = "geeps.dev/operator"       # the finalizer older versions put on jobs
    #                                             (kopf's, for a timer); removed on sight

    @property
    def limits(self):
        from .policy import Limits
        return Limits(allow_host_path=self.allow_host_path,
                      blocked_deadline=self.blocked_deadline_seconds,
                      terminating_grace=self.terminating_grace_seconds)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
