"""A cluster on one machine: each process of a job on its own simulated host.

A host is a network namespace with one link to a shared bridge, of a given rate (tbf)
and loss (nftables); links can be cut, slowed or made lossy while a job runs. `topology`
describes a lab and the commands that build and fault it (pure); `netns` runs them, and
removes a lab on exit or, after a crash, on the next run; `cli` is `geeps lab`.
`geeps run --lab rate=200mbit ...` starts a job on one.
"""
from geeps.lab.topology import Lab, LabSpecError, Link, Options, parse_options

__all__ = ["Lab", "LabSpecError", "Link", "Options", "parse_options"]
