"""A launch plan moved onto a lab: each process on its own simulated host.

`geeps run --lab rate=200mbit job.yaml` builds a lab with one host per process of the
plan (geeps.lab), then starts each process inside its host. What changes in the plan:
the shards' addresses are their hosts' lab addresses (each host has its own ports, so
the plan's port numbers are kept), every process binds its host's address, and its
argv runs inside the host's namespace. Everything else (environment, restarts) is the
plan's own. `place` and `on_host` are pure; JoinHosts adds a host to the running lab for
each server that joins a coordinated job (replicated or elastic servers).
"""
from __future__ import annotations

import dataclasses

from geeps.lab import netns
from geeps.lab.topology import Host, Lab
from geeps.launch.plan import LaunchPlan, ProcessSpec


def host_names(plan: LaunchPlan) -> list[str]:
    """One lab host per process, named as the launcher names the process."""
    return [p.name for p in plan.processes]


def place(plan: LaunchPlan, lab: Lab) -> LaunchPlan:
    serving = [p for p in plan.processes if plan.job.serves_shards(p.role)]
    if len(serving) != len(plan.servers):
        raise ValueError(f"{len(serving)} processes serve shards, the plan has "
                         f"{len(plan.servers)} shard addresses")
    servers = tuple(f"{lab.host(p.name).ip}:{addr.rsplit(':', 1)[1]}"
                    for p, addr in zip(sorted(serving, key=lambda p: p.rank), plan.servers))
    return dataclasses.replace(plan, servers=servers, processes=tuple(
        on_host(dataclasses.replace(p, env=dict(p.env, GEEPS_SERVERS=",".join(servers))),
                lab.host(p.name))
        for p in plan.processes))


def on_host(spec: ProcessSpec, host: Host) -> ProcessSpec:
    """Process `spec` run inside `host`, bound to the host's address."""
    env = dict(spec.env, GEEPS_BIND_HOST=host.ip, GEEPS_METRICS_ADDR=host.ip)
    return dataclasses.replace(spec, argv=tuple(netns.exec_argv(host, list(spec.argv))),
                               env=env)


class JoinHosts:
    """Where servers that join a running job on the lab run: each on a new host of its
    own (geeps.launch.elastic asks for one per joiner), listening on the port the plan's
    shards use (each host has its own ports)."""

    def __init__(self, lab: Lab, plan: LaunchPlan):
        self.lab, self.port = lab, int(plan.servers[0].rsplit(":", 1)[1])

    def address(self, name: str) -> str:
        self.lab, host = netns.add_host(self.lab, name)
        return f"{host.ip}:{self.port}"

    def place(self, spec: ProcessSpec) -> ProcessSpec:
        return on_host(spec, self.lab.host(spec.name))
