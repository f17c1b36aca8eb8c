"""No CUDA kernel without a caller: every `__global__` kernel of kernels/*.cu is loaded
by the CuPy backend and launched by it on a path the code takes, not only by the
kernel tests.

The two paths that use device memory run here through the backend seam on the
CPU-executed kernels (GEEPS_SERVER_BACKEND=host-cuda / geeps.backend.hostcupy), and
every kernel must have been launched by one of them:
- the worker's memory manager (ParameterCache): row kernels for reads, updates
  accumulated in pinned rows, transfers (gather_rows, scatter_rows, scatter_add_rows,
  move_rows);
- a parameter-server shard (ShardState) with its rows on the device: the update rules
  (sgd_update, momentum_update, adam_update) and the gather/scatter of a sparse update.
A kernel added to a .cu file without a caller fails here: wire it or delete it.
"""
from importlib import resources

import numpy as np
import pytest

from geeps.backend import KERNELS, hostcuda, select_rules
from geeps.backend.kernels import source
from geeps.server.shard import ShardState
from geeps.tables import Table
from geeps.wire import protocol as P
from geeps.worker.memory.planner import make_plan, minimum_budget, working_set
from tests.workloads import drive_cache, record

pytestmark = pytest.mark.skipif(hostcuda.compiler() is None,
                                reason="no C++ compiler (g++): the CUDA sources cannot be "
                                       "compiled for the CPU")


def _sources() -> dict[str, tuple[str, ...]]:
    kernels = resources.files("geeps.backend.kernels")
    return {f.name: hostcuda.kernel_names(source(f.name))
            for f in kernels.iterdir() if f.name.endswith(".cu")}


def test_the_backend_loads_every_kernel_the_sources_define():
    assert {f: set(k) for f, k in _sources().items()} == \
        {f: set(k) for f, k in KERNELS.items()}, \
        "geeps.backend.kernels.KERNELS must list every __global__ kernel of every .cu file"


def _embedding_step(api, t, batch):
    # Two lookups of one table in a clock: the second update of a row adds into the
    # pinned accumulator the first one wrote (scatter_add_rows).
    first, second = batch
    r = api.read(t, first)
    api.post_read(r)
    for rows, value in ((first, 1.0), (second, 2.0)):
        g = api.pre_update(t, rows)
        g[:] = value
        api.update(g)
    api.clock()


def _worker_paths(be) -> None:
    t = Table("emb", 64, 8, "sgd")
    cyc = record(_embedding_step, t, [(np.array([0, 5, 9, 20, 33]), np.array([5, 20, 40, 41])),
                                      (np.array([1, 5, 9, 21, 33]), np.array([9, 33, 50]))])
    for frac in (0.5, 1.0):
        budget = max(int(working_set(cyc) * frac), minimum_budget(cyc))
        drive_cache(be, cyc, make_plan(cyc, budget, "benefit"), clocks=2 * cyc.n_clocks)


def _server_paths(be) -> None:
    st = ShardState(0, 1, rule_backend=be)
    n, w = 40, 3
    ids = np.arange(0, n, 2, dtype=np.int64)      # scattered: gathered, updated, scattered
    for rule, hyper in (("sgd", {"lr": 0.1}), ("momentum", {"lr": 0.1, "momentum": 0.9}),
                        ("adam", {"lr": 0.01})):
        st.handle(b"p", P.request("create", 1, table=rule, n_rows=n, row_width=w, lo=0, hi=n,
                                  rule=rule, hyper=hyper, per_clock=False, init=False))
        for rows, grad in (({"range": [0, n]}, [np.ones((n, w), np.float32)]),
                           ({"ids": len(ids)}, [ids, np.ones((len(ids), w), np.float32)])):
            st.handle(b"p", P.request("push", 1, grad, table=rule, worker=0, session=1,
                                      clock=0, seq=st.stats["pushes"], rows=rows))
        assert st.stats["errors"] == st.stats["duplicates"] == 0
        assert st.tables[rule].rows.any(), f"{rule}: the pushes changed no row"


def test_every_kernel_is_launched_on_a_path_the_code_takes():
    be = select_rules("host-cuda")
    assert set(be.launches) == {k for names in KERNELS.values() for k in names}
    _worker_paths(be)
    _server_paths(be)
    idle = sorted(k for k, n in be.launches.items() if n == 0)
    assert not idle, f"kernels without a caller on the worker's or the server's path: {idle}"
