"""A launch plan moved onto a lab: each process on its own simulated host (pure).

`geeps run --lab rate=200mbit job.yaml` builds a lab with one host per process of the
plan (geeps.lab), then starts each process inside its host. What changes in the plan:
the shards' addresses are their hosts' lab addresses (each host has its own ports, so
the plan's port numbers are kept), every process binds its host's address, and its
argv runs inside the host's namespace. Everything else (environment, restarts) is the
plan's own.
"""
from __future__ import annotations

import dataclasses

from geeps.lab import netns
from geeps.lab.topology import Lab
from geeps.launch.plan import LaunchPlan


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
    moved = []
    for p in plan.processes:
        host = lab.host(p.name)
        env = dict(p.env, GEEPS_SERVERS=",".join(servers), GEEPS_BIND_HOST=host.ip,
                   GEEPS_METRICS_ADDR=host.ip)
        moved.append(dataclasses.replace(p, argv=tuple(netns.exec_argv(host, list(p.argv))),
                                         env=env))
    return dataclasses.replace(plan, processes=tuple(moved), servers=servers)
