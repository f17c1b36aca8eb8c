"""Load: 4 clients x 5,000 batched pushes at two shards, every update audited; and
parked reads capped, with a clear error past the cap."""
import threading

import numpy as np
import pytest

import geeps
from tests.cluster import Cluster

pytestmark = pytest.mark.integration
CLIENTS, PUSHES, ROWS, WIDTH, BATCH = 4, 5000, 64, 8, 4


def test_no_update_lost_or_applied_twice_under_load():
    with Cluster(servers=2, workers=CLIENTS, consistency="async", timeout=60) as cl:
        clients = [cl.client(w) for w in range(CLIENTS)]
        t = clients[0].create_table("audit", ROWS, WIDTH, rule="add")
        errors = []

        def hammer(w):
            try:
                c = clients[w]
                rng = np.random.default_rng(w)
                handles = []
                for i in range(PUSHES):
                    rows = rng.choice(ROWS, BATCH, replace=False)
                    # Worker w adds 10**w to each row it touches: the final sums tell how
                    # often every worker's pushes landed on every row.
                    handles.append(c.push_async(t, rows, np.full((BATCH, WIDTH), 10.0 ** w,
                                                                 np.float32)))
                    if len(handles) >= 256:
                        for h in handles:
                            h.wait(60)
                        handles = []
                for h in handles:
                    h.wait(60)
            except Exception as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=hammer, args=(w,)) for w in range(CLIENTS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
        assert not errors, errors
        expected = np.zeros(ROWS)
        for w in range(CLIENTS):
            rng = np.random.default_rng(w)
            for _ in range(PUSHES):
                expected[rng.choice(ROWS, BATCH, replace=False)] += 10.0 ** w
        values, _ = clients[0].pull(t)
        # async `add` applies each push at once, so the table is the exact audit sum
        # (float32 holds these integers exactly: at most 5,000 x 1,000 per row).
        np.testing.assert_array_equal(values[:, 0], expected.astype(np.float32))
        assert (values == values[:, :1]).all()
        stats = clients[0].stats()
        assert sum(s["pushes"] for s in stats) >= CLIENTS * PUSHES
        assert sum(s["errors"] for s in stats) == 0


def test_parked_reads_are_capped_with_a_clear_error():
    with Cluster(servers=1, workers=2, GEEPS_MAX_PARKED="8") as cl:
        c = cl.client(0)
        t = c.create_table("w", 4, 2, rule="add")
        parked = [c.pull_async(t, need=5) for _ in range(8)]   # worker 1 never clocks
        with pytest.raises(geeps.ServerError, match="GEEPS_MAX_PARKED"):
            c.pull(t, need=5)
        assert c.stats()[0]["parked"] == 8
        assert not any(h.done() for h in parked)
