"""What a job is, and what each of its processes is told.

A GeePSJob manifest (`spec`) is validated once, by the schema the CRD is made from;
`env` turns a job into the GEEPS_* environment of each process (`job_env`) and reads it
back inside the process (`load`); `consistency` is the model a job runs under;
`progress` is the line a script prints for the launcher and the operator; `exits` says
what a process's exit status means and whether a restart can help; `units` parses
Kubernetes quantities. Nothing here opens a socket or starts a process.
"""
from geeps.job.consistency import Consistency
from geeps.job.env import Config, ConfigError, job_env, load
from geeps.job.progress import report
from geeps.job.units import format_bytes, parse_bytes

__all__ = ["Config", "ConfigError", "Consistency", "GeePSJob", "SpecError", "format_bytes",
           "job_env", "load", "parse_bytes", "report"]


def __getattr__(name):
    # The spec pulls in jsonschema, which a worker process never needs.
    if name in ("GeePSJob", "SpecError"):
        from geeps.job import spec
        return getattr(spec, name)
    raise AttributeError(name)
