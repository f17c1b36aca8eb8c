"""A parameter-server cluster of real `geeps server` processes on loopback, for tests.

    with Cluster(servers=2, workers=2, consistency="ssp:1") as cl:
        c = cl.client(worker=0)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import geeps

from .helpers import die_with_parent, free_ports, kill_group


class Cluster:
    def __init__(self, servers: int = 1, workers: int = 1, consistency: str = "bsp",
                 timeout: float = 10.0, **env: str):
        self.n_servers = servers
        self.num_workers = workers
        self.consistency = consistency
        self.timeout = timeout
        self.extra_env = env
        self.servers = [f"127.0.0.1:{p}" for p in free_ports(servers)]
        self.procs: list[subprocess.Popen] = []
        # Each server's stderr, printed when the block fails: a server that died at start
        # otherwise shows only as a client timing out.
        self.logs: list = []
        self.clients: list[geeps.Client] = []

    def env(self, role: str, rank: int) -> dict[str, str]:
        return dict(os.environ, GEEPS_ROLE=role, GEEPS_RANK=str(rank),
                    GEEPS_NUM_WORKERS=str(self.num_workers),
                    GEEPS_SERVERS=",".join(self.servers), GEEPS_BIND_HOST="127.0.0.1",
                    GEEPS_CONSISTENCY=self.consistency, **self.extra_env)

    def start_server(self, rank: int) -> subprocess.Popen:
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-m", "geeps", "server"],
                                env=self.env("server", rank), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=log,
                                preexec_fn=die_with_parent)
        self.procs.append(proc)
        self.logs.append((rank, proc, log))
        return proc

    def __enter__(self) -> "Cluster":
        for rank in range(self.n_servers):
            self.start_server(rank)
        return self

    def client(self, worker: int = 0, **kw) -> geeps.Client:
        kw.setdefault("timeout", self.timeout)
        c = geeps.Client(self.servers, worker, self.num_workers, self.consistency, **kw)
        self.clients.append(c)
        return c

    def __exit__(self, *exc) -> None:
        for c in self.clients:
            c.close()
        for p in self.procs:
            kill_group(p)
        for rank, proc, log in self.logs:
            if exc[0] is not None:
                log.seek(0)
                tail = log.read()[-4000:].decode(errors="replace")
                sys.stderr.write(f"--- server {rank} (exit {proc.returncode}) ---\n"
                                 f"{tail}\n")
            log.close()
