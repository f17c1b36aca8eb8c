"""Real `geeps server` processes applying pushes through the rules.cu kernels
(GEEPS_SERVER_BACKEND=host-cuda: rows and optimizer state in the backend's device
memory, the CuPy backend's code on the kernels compiled for the CPU), against servers
on the NumPy twins: the same rows bit for bit, and each server says which backend it
ran and how many kernels it launched. The same for shards co-located in their workers
(GeePS's layout, where a worker with a GPU would run them on it)."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from geeps.backend import hostcuda
from tests.cluster import Cluster
from tests.helpers import free_ports

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(hostcuda.compiler() is None,
                                 reason="no C++ compiler (g++): the CUDA sources cannot be "
                                        "compiled for the CPU")]

N, W, CLOCKS = 50, 16, 4
RULES = {"sgd": {"lr": 0.1, "weight_decay": 0.01},
         "momentum": {"lr": 0.05, "momentum": 0.9},
         "adam": {"lr": 0.01, "weight_decay": 0.001}}


def _train(backend: str):
    """Two workers, two shards, BSP: every rule's table pushed dense and by scattered
    ids each clock. Returns (final rows per table, each shard's stats)."""
    out, stats = {}, []
    with Cluster(servers=2, workers=2, consistency="bsp", GEEPS_SERVER_BACKEND=backend) as cl:
        def run(rank):
            c = cl.client(rank)
            rng = np.random.default_rng(rank)
            tables = {r: c.create_table(r, N, W, rule=r, **h) for r, h in RULES.items()}
            # Every other row of 300, by id only: more runs than a shard updates as
            # slices, so it gathers, updates and scatters them (gather/scatter_rows).
            tables["emb"] = c.create_table("emb", 300, 4, rule="adam", **RULES["adam"])
            ids = np.arange(rank, N, 3)
            for _ in range(CLOCKS):
                for name, t in tables.items():
                    c.pull(t)
                    if name == "emb":
                        e = np.arange(0, 300, 2)
                        c.push(t, e, rng.standard_normal((len(e), 4)).astype(np.float32))
                        continue
                    c.push(t, None, rng.standard_normal((N, W)).astype(np.float32))
                    c.push(t, ids, rng.standard_normal((len(ids), W)).astype(np.float32))
                c.clock()
            if rank == 0:
                out.update({r: c.pull(t)[0] for r, t in tables.items()})
                stats.extend(c.stats())

        threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    assert set(out) == set(RULES) | {"emb"}, "a worker failed"
    return out, stats


def test_servers_on_the_kernels_equal_servers_on_the_twins():
    want, twin_stats = _train("numpy")
    got, stats = _train("host-cuda")
    for rule in want:
        assert got[rule].tobytes() == want[rule].tobytes(), rule
        assert np.abs(want[rule]).sum() > 1.0, "no update happened: a vacuous comparison"
    assert [s["rule_backend"] for s in twin_stats] == ["numpy", "numpy"]
    for s in stats:
        assert s["rule_backend"] == "host-cuda"
        ran = s["kernel_launches"]
        assert all(ran[k] >= CLOCKS for k in ("sgd_update", "momentum_update",
                                               "adam_update")), ran
        assert ran["gather_rows"] > 0 and ran["scatter_rows"] > 0, ran


def test_a_server_backend_that_cannot_run_here_is_refused_in_one_line():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    env = dict(os.environ, GEEPS_ROLE="server", GEEPS_RANK="0", GEEPS_NUM_WORKERS="1",
               GEEPS_SERVERS=f"127.0.0.1:{free_ports(1)[0]}", GEEPS_SERVER_BACKEND="cupy")
    p = subprocess.run([sys.executable, "-m", "geeps", "server"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "GEEPS_SERVER_BACKEND=cupy needs CuPy" in p.stderr and "Traceback" not in p.stderr


def _colocated(backend: str) -> tuple[np.ndarray, list]:
    """Two workers (threads) each hosting one shard on `backend` (GeePS's layout), Adam
    over a dense table for three clocks; returns worker 0's final rows and the stats."""
    import geeps.client
    servers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    out: dict = {}

    def run(rank):
        c = geeps.client.colocated(servers, rank, 2, "bsp", timeout=30, server_backend=backend)
        try:
            rng = np.random.default_rng(rank)
            t = c.create_table("w", N, W, rule="adam", **RULES["adam"]) if rank == 0 \
                else c.open_table("w")
            for _ in range(3):
                c.pull(t)
                c.push(t, None, rng.standard_normal((N, W)).astype(np.float32))
                c.clock()
            if rank == 0:
                out["rows"], out["stats"] = c.pull(t)[0], c.stats()
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert "rows" in out, "a worker failed"
    return out["rows"], out["stats"]


def test_colocated_shards_on_the_kernels_equal_colocated_shards_on_the_twins():
    want, twin_stats = _colocated("numpy")
    got, stats = _colocated("host-cuda")
    assert got.tobytes() == want.tobytes() and np.abs(want).sum() > 1.0
    assert [s["rule_backend"] for s in stats] == ["host-cuda"] * 2
    assert [s["rule_backend"] for s in twin_stats] == ["numpy"] * 2
    assert all(s["kernel_launches"]["adam_update"] >= 3 for s in stats), stats
