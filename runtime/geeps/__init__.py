"""geeps: a GPU-specialized parameter server for data-parallel training.

    import geeps
    client = geeps.Client.from_env()          # reads GEEPS_*; see geeps.job.env
    w = client.create_table("w", n_rows=10, row_width=128, rule="sgd", lr=0.1)
"""
from geeps.job.env import Config, ConfigError, load as load_config
from geeps.job.consistency import Consistency
from geeps.metrics import report

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "Consistency", "load_config", "report", "__version__"]


def __getattr__(name):
    # The client pulls in zmq and threads; import it only when asked for.
    if name in ("Client", "Handle", "Table", "GeepsError", "RolledBack", "ServerError",
                "ServerUnreachable", "WaitTimeout"):
        from geeps.client import client
        return getattr(client, name)
    if name == "Worker":
        from geeps.worker.worker import Worker
        return Worker
    raise AttributeError(name)
