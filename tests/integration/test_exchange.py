"""Client.exchange_async: push in chunks marked last, each followed by a read of the same
rows for the next clock, then the clock; the same bits as push, clock, pull."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.cluster import Cluster

pytestmark = pytest.mark.integration


def run(consistency: str, pipelined: bool, clocks: int = 4) -> list[bytes]:
    rng = np.random.default_rng(9)
    n, width = 300, 8                     # 3 chunks of ~1 KiB a shard at chunk_bytes=4096
    grads = [[rng.standard_normal((n, width), dtype=np.float32) for _ in range(clocks)]
             for _ in range(2)]
    seen = [[], []]
    with Cluster(servers=2, workers=2, consistency=consistency) as cl:
        clients = [cl.client(w) for w in range(2)]
        t = clients[0].create_table("x", n, width, rule="sgd", lr=0.5)
        tables = [t, clients[1].open_table("x")]
        errors = []

        def worker(w):
            try:
                c = clients[w]
                for k in range(clocks):
                    if pipelined:
                        out, data_clock = c.exchange_async(tables[w], grads[w][k],
                                                           chunk_bytes=4096).wait(30)
                    else:
                        c.push(tables[w], None, grads[w][k])
                        c.clock()
                        out, data_clock = c.pull(tables[w])
                    assert data_clock >= c.consistency.need(k + 1)
                    seen[w].append(out.tobytes())
            except Exception as e:      # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, errors
        final, _ = clients[0].pull(t, need=clocks)
    return seen[0] + seen[1] + [final.tobytes()]


def test_an_exchange_reads_what_push_clock_pull_reads_under_bsp():
    assert run("bsp", True) == run("bsp", False)


def test_an_exchange_under_ssp_ends_where_push_clock_pull_ends():
    a, b = run("ssp:1", True), run("ssp:1", False)
    assert a[-1] == b[-1], "the final model differs"


def test_an_exchange_is_refused_for_an_async_table_and_a_wrong_shape():
    with Cluster(servers=1, workers=1, consistency="async") as cl:
        c = cl.client(0)
        t = c.create_table("a", 4, 2, rule="add")
        with pytest.raises(ValueError, match="async"):
            c.exchange_async(t, np.zeros((4, 2), np.float32))
    with Cluster(servers=1, workers=1) as cl:
        c = cl.client(0)
        t = c.create_table("a", 4, 2, rule="add")
        with pytest.raises(ValueError, match=r"\(4, 2\)"):
            c.exchange_async(t, np.zeros((3, 2), np.float32))
