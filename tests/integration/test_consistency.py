"""BSP equivalence and the SSP bound, on real server processes over loopback."""
import threading

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.cluster import Cluster
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

N_FEATURES, N_CLASSES = 64, 10
N_PARAMS = N_FEATURES * N_CLASSES + N_CLASSES
WIDTH = 128
N_ROWS = -(-N_PARAMS // WIDTH)


def softmax_grad(flat, x, y):
    """Mean cross-entropy gradient of a linear softmax classifier, float32."""
    W = flat[:N_FEATURES * N_CLASSES].reshape(N_FEATURES, N_CLASSES)
    b = flat[N_FEATURES * N_CLASSES:N_PARAMS]
    z = x @ W + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    p /= np.float32(len(y))
    g = np.zeros(N_ROWS * WIDTH, np.float32)
    g[:N_FEATURES * N_CLASSES] = (x.T @ p).ravel()
    g[N_FEATURES * N_CLASSES:N_PARAMS] = p.sum(axis=0)
    return g.reshape(N_ROWS, WIDTH)


def train(cluster, workers, batch, clocks, x, y):
    """Each worker takes its slice of every global batch of workers*batch samples."""
    results = {}

    def run(rank):
        c = cluster.client(rank)
        t = c.create_table("w", N_ROWS, WIDTH, rule="sgd", lr=0.5) if rank == 0 \
            else c.open_table("w")
        for step in range(clocks):
            params, _ = c.pull(t)
            lo = step * workers * batch + rank * batch
            g = softmax_grad(params.ravel(), x[lo:lo + batch], y[lo:lo + batch])
            c.push(t, None, g)
            c.clock()
        results[rank] = c.pull(t)[0]

    threads = [threading.Thread(target=run, args=(r,)) for r in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(results) == workers, "a worker failed"
    return results


def test_bsp_two_workers_equal_one_worker_with_twice_the_batch():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target
    B, clocks = 16, 20
    with Cluster(servers=2, workers=2, consistency="bsp") as two:
        got = train(two, 2, B, clocks, x, y)
    with Cluster(servers=1, workers=1, consistency="bsp") as one:
        want = train(one, 1, 2 * B, clocks, x, y)[0]
    np.testing.assert_array_equal(got[0], got[1])  # both workers see the same model
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-7)
    assert np.abs(want).sum() > 1.0, "training did nothing: the comparison would be vacuous"


def test_ssp_bound_holds_and_the_fast_worker_blocks():
    slack = 2
    with Cluster(servers=2, workers=2, consistency=f"ssp:{slack}") as cl:
        fast, slow = cl.client(0), cl.client(1)
        t = fast.create_table("w", 8, 4, rule="add")
        slow.open_table("w")
        one = np.ones((8, 4), np.float32)
        # The slow worker finishes 3 clocks, then stops; the fast worker runs ahead.
        for _ in range(3):
            slow.push(t, None, one)
            slow.clock()
        replies = []
        for c in range(3 + slack + 1):
            values, data_clock = fast.pull(t)
            replies.append((c, data_clock, values[0, 0]))
            fast.push(t, None, one)
            fast.clock()
        for c, data_clock, _ in replies:
            assert data_clock >= c - slack, f"read at clock {c} saw data of clock {data_clock}"
        # Now at clock 6 with the slow worker at 3: 6 - 2 > 3, so the read must wait.
        assert fast.clock_value == 6
        h = fast.pull_async(t)
        wait_for(lambda: sum(s["parked"] for s in fast.stats()) == 2, 10,
                 what="the fast worker's read parked on both shards")
        assert not h.done()
        slow.push(t, None, one)
        slow.clock()       # slow reaches 4 = 6 - slack: the bound holds, the read returns
        values, data_clock = h.wait(10)
        assert data_clock == 4
        # Clocks 0..3 applied: 4 from the slow worker and 4 from the fast one.
        assert values[0, 0] == 8.0
