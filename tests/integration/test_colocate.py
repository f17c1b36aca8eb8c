"""Co-located shards (GEEPS_COLOCATE=1): each worker serves one shard in its own
process and reaches it in memory; the others reach it over TCP. Real sockets, real
threads; workers are threads of this process here and processes under `geeps run`."""
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from sklearn.datasets import load_digits

import geeps
import geeps.client
from tests.cluster import Cluster
from tests.helpers import REPO, free_ports
from tests.integration.test_consistency import N_ROWS, WIDTH, train

pytestmark = pytest.mark.integration
PS_WORKER = os.path.join(REPO, "tests", "integration", "scripts", "ps_worker.py")


class Colocated:
    """Like tests.cluster.Cluster, but no server processes: client r hosts shard r."""

    def __init__(self, workers: int, consistency: str = "bsp"):
        self.num_workers = workers
        self.consistency = consistency
        self.servers = [f"127.0.0.1:{p}" for p in free_ports(workers)]
        self.clients: list[geeps.Client] = []

    def client(self, worker: int) -> geeps.Client:
        c = geeps.client.colocated(self.servers, worker, self.num_workers, self.consistency,
                                  timeout=10)
        self.clients.append(c)
        return c

    def all_clients(self) -> list[geeps.Client]:
        """One client per worker, made at once: each one's hello needs the others'
        shards up."""
        out: dict[int, geeps.Client] = {}
        ts = [threading.Thread(target=lambda r=r: out.__setitem__(r, self.client(r)))
              for r in range(self.num_workers)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        return [out[r] for r in range(self.num_workers)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # Each host serves until every worker left: close them all at once.
        ts = [threading.Thread(target=c.close) for c in self.clients]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert not any(t.is_alive() for t in ts), "a hosting client never finished closing"


def digits():
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target


def test_colocated_bsp_gives_the_bits_of_separate_servers():
    x, y = digits()
    with Colocated(2) as co:
        together = train(co, 2, 16, 20, x, y)
        # Each client reached its own shard in memory, the other over TCP.
        c0 = next(c for c in co.clients if c.worker == 0)
        assert [s.address for s in c0._io._shards] == ["in-process", co.servers[1]]
    with Cluster(servers=2, workers=2) as cl:
        apart = train(cl, 2, 16, 20, x, y)
    for r in (0, 1):
        assert together[r].shape == (N_ROWS, WIDTH)
        assert together[r].tobytes() == apart[r].tobytes()


def test_a_host_that_finished_serves_until_the_others_leave():
    with Colocated(2, consistency="async") as co:
        c0, c1 = co.all_clients()
        t = c0.create_table("w", 8, 4, rule="add")
        c1.open_table("w")
        closer = threading.Thread(target=c0.close)
        closer.start()              # worker 0 is done; its shard must stay up
        for _ in range(10):
            c1.push(t, None, np.ones((8, 4), np.float32))
            c1.clock()
        values, _ = c1.pull(t)
        assert np.all(values == 10)
        assert closer.is_alive()    # still serving: worker 1 has not left
        c1.close()
        closer.join(10)
        assert not closer.is_alive()


def test_a_local_push_is_copied_so_the_caller_may_reuse_its_array():
    with Colocated(1) as co:
        c = co.client(0)
        t = c.create_table("w", 4, 4, rule="add")
        g = np.ones((4, 4), np.float32)
        c.push(t, None, g)
        g[:] = 100                  # the push was acknowledged: the array is ours again
        c.clock()
        assert np.all(c.pull(t)[0] == 1)


def test_geeps_run_colocate_trains_without_server_processes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "geeps", "run", "--colocate", "--workers", "2",
         "--metrics-port", "0", "--", "python", PS_WORKER, "--clocks", "5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("sum ok 15") == 2
    pids = re.search(r"pids: (.*)", proc.stderr).group(1)
    assert "server" not in pids and "worker-1" in pids
    assert "2 shards served by the workers themselves" in proc.stderr
