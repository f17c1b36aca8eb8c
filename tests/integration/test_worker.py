"""The GPU-specialized worker against real `geeps server` processes over loopback.

The NumPy backend stands in for the GPU (device and host are both RAM here), with the
budget, pools and byte accounting enforced as on a GPU.
"""
import threading
import uuid

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from geeps.job.env import ConfigError
from geeps.metrics import Metrics
from geeps.worker import SequenceError, Worker, memory
from tests.cluster import Cluster
from tests.helpers import free_port, kill_group, wait_for
from tests.workloads import (DenseModel, SparseModel, dense_batches, dense_step, record,
                             sparse_batches, sparse_step)

pytestmark = pytest.mark.integration
FRACTIONS = (None, 0.75, 0.5, 0.25)     # budget: unlimited, then shares of the working set


def counters(m: Metrics, table_names):
    return {"h2d": m.value("geeps_transfer_bytes_total", direction="h2d"),
            "d2h": m.value("geeps_transfer_bytes_total", direction="d2h"),
            "miss": sum(m.value("geeps_cache_reads_total", table=t, result="miss")
                        for t in table_names),
            "hit": sum(m.value("geeps_cache_reads_total", table=t, result="hit")
                       for t in table_names)}


def train(client, make_tables, step, recorded, batches, budget):
    """Record one cycle over `recorded` batches, then one real clock per batch; returns
    the worker, the losses and the counters of the real clocks."""
    m = Metrics(job=f"t-{uuid.uuid4().hex[:8]}", rank=client.worker)
    model = make_tables(client)
    w = Worker(client, device_memory=budget, backend="numpy", metrics=m)
    with w.virtual_iteration():
        for b in recorded:
            step(w, model, b)
    w.drain()                       # the first refresh: outside the measured window
    names = list(w.cycle.tables)
    before = counters(m, names)
    losses = [step(w, model, b) for b in batches]
    w.drain()                       # the refresh clock() started: same as the first
    after = counters(m, names)
    w.close()
    check_accounting(w, {k: after[k] - before[k] for k in after}, len(batches))
    return w, losses, {k: after[k] - before[k] for k in after}


def check_accounting(w, window, clocks):
    """What moved is exactly what the plan predicted; the budget held."""
    cycles = clocks // w.cycle.n_clocks
    assert window["h2d"] == cycles * w.plan.h2d_bytes
    assert window["d2h"] == cycles * w.plan.d2h_bytes
    reads = [p for p in w.plan.ops if p.op.kind == "read"]
    assert window["miss"] == cycles * sum(p.misses for p in reads)
    assert w.cache.mem.used == w.plan.device_bytes
    assert w.budget is None or w.cache.mem.used <= w.budget


def assert_grows(rows, key):
    vals = [r[key] for r in rows]
    assert vals == sorted(vals) and vals[-1] > vals[0], (key, vals)


def test_dense_training_is_identical_under_every_budget():
    """One recorded clock; each real clock trains on a new batch (same operations)."""
    data = dense_batches(12)
    ws = memory.working_set(record(dense_step, DenseModel(), data[:1]))
    results = []
    with Cluster(servers=2, workers=1) as cl:
        for frac in FRACTIONS:
            c = cl.client(0)
            model = DenseModel(f"mlp{frac}")

            def tables(c, model=model):
                model.table = c.create_table(model.table.name, model.table.n_rows,
                                             model.width, rule="sgd", lr=0.2,
                                             init=model.init())
                return model
            budget = None if frac is None else int(ws * frac)
            w, losses, window = train(c, tables, dense_step, data[:1], data, budget)
            final, _ = c.pull(model.table)
            results.append((frac, losses, final, window))
    ref_losses, ref_final = results[0][1], results[0][2]
    assert ref_losses[-1] < ref_losses[0], "the model should learn"
    for frac, losses, final, _window in results[1:]:
        assert losses == ref_losses, frac
        assert final.tobytes() == ref_final.tobytes(), frac
    windows = [r[3] for r in results]
    assert_grows(windows, "miss")
    assert_grows(windows, "h2d")
    assert windows[0]["miss"] == 0


def test_sparse_training_on_two_workers_is_identical_under_every_budget():
    """Each clock touches a different subset of embedding rows (a cycle of 6)."""
    K, clocks = 6, 12
    ws = memory.working_set(record(sparse_step, SparseModel(), sparse_batches(K, seed=10)))
    runs = []
    with Cluster(servers=2, workers=2) as cl:
        for frac in FRACTIONS:
            budget = None if frac is None else int(ws * frac)
            prefix = f"sp{frac}".replace(".", "_")
            out, errors = {}, []
            created = threading.Event()

            def run(rank):
                try:
                    c = cl.client(rank)
                    model = SparseModel(prefix)

                    def tables(c):
                        if rank == 0:
                            emb, head = model.init()
                            model.emb = c.create_table(model.emb.name, model.emb.n_rows,
                                                       model.emb.row_width, rule="sgd",
                                                       lr=0.5, init=emb)
                            model.head = c.create_table(model.head.name, model.head.n_rows,
                                                        model.head.row_width, rule="sgd",
                                                        lr=0.5, init=head)
                            created.set()
                        else:
                            created.wait(30)
                            model.emb = c.open_table(model.emb.name)
                            model.head = c.open_table(model.head.name)
                        return model
                    data = sparse_batches(K, seed=10 + rank)
                    w, losses, window = train(c, tables, sparse_step, data,
                                              [data[i % K] for i in range(clocks)], budget)
                    out[rank] = (losses, window, model)
                except BaseException as e:      # reported below, with the worker's rank
                    errors.append((rank, e))
            threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errors, errors
            c = cl.clients[-1]
            model = out[0][2]
            final = (c.pull(model.emb)[0], c.pull(model.head)[0])
            runs.append((out, final))
    ref_out, ref_final = runs[0]
    for (out, final), frac in zip(runs[1:], FRACTIONS[1:]):
        for rank in (0, 1):
            assert out[rank][0] == ref_out[rank][0], (frac, rank)
        assert final[0].tobytes() == ref_final[0].tobytes(), frac
        assert final[1].tobytes() == ref_final[1].tobytes(), frac
    for rank in (0, 1):
        windows = [out[rank][1] for out, _ in runs]
        assert_grows(windows, "miss")
        assert_grows(windows, "h2d")


def _listening(host: str, port: int) -> bool:
    import socket
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def one_table_worker(cl, name, rows=64, width=32, **kw):
    c = cl.client(0)
    init = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    t = c.create_table(name, rows, width, rule="add", init=init)
    return c, t, init, Worker(c, backend="numpy",
                              metrics=Metrics(job=f"t-{uuid.uuid4().hex[:8]}"), **kw)


def test_prefetch_fills_the_next_read_while_a_slow_operation_runs():
    A, B = range(0, 16), range(32, 48)
    with Cluster(servers=1, workers=1) as cl:
        c, t, init, probe = one_table_worker(cl, "pf0")

        def step(w, slow=lambda: None):
            a = w.read(t, A)
            w.post_read(a)
            x = w.local_access("slow", 64)
            slow()
            w.post_local_access(x)
            b = w.read(t, B)
            got = np.array(b)
            w.post_read(b)
            w.clock()
            return got
        with probe.virtual_iteration():
            step(probe)
        ws = probe.plan.working_set_bytes
        probe.close()
        # Pin nothing, so both reads come from host memory through the access buffers.
        w = Worker(c, device_memory=ws - 1, backend="numpy", policy="stream",
                   metrics=probe.metrics)
        with w.virtual_iteration():
            step(w)
        b_id = 2
        pb = w.plan.ops[b_id]
        assert pb.op.describe() == "read(table 'pf0', 16 rows)"
        assert pb.view is None and pb.misses == 16 and pb.prefetch_at == 1
        # The slow operation lasts until the manager has B's rows in device memory.
        got = step(w, slow=lambda: wait_for(lambda: w.cache.prefetched(b_id), 10,
                                            what="the prefetch of the second read"))
        st = w.cache.stats[b_id]
        assert (st.calls, st.ready_at_call, st.waited) == (1, 1, 0)
        assert np.array_equal(got, init[32:48])
        w.close()


def test_deviation_and_impossible_budget_are_refused_by_name(monkeypatch):
    with Cluster(servers=1, workers=1) as cl:
        c, t, _init, w = one_table_worker(cl, "dev0")
        with pytest.raises(SequenceError, match="no recorded sequence"):
            w.read(t, range(0, 4))
        with w.virtual_iteration():
            r = w.read(t, range(0, 8))
            u = w.pre_update(t, range(0, 8))
            w.update(u)
            w.post_read(r)
            w.clock()
        with pytest.raises(SequenceError, match=r"operation 0 of clock 0 of the recorded "
                           r"cycle: expected read\(table 'dev0', 8 rows\) but the application "
                           r"called read\(table 'dev0', 9 rows\)"):
            w.read(t, range(0, 9))
        r = w.read(t, range(0, 8))
        with pytest.raises(SequenceError, match=r"expected pre_update\(table 'dev0', 8 rows\) "
                                                r"but the application called clock\(\)"):
            w.clock()
        with pytest.raises(SequenceError, match="not a buffer of an open operation"):
            w.post_read(np.zeros((8, 32), np.float32))
        with pytest.raises(ValueError, match="read-only"):
            r[0, 0] = 1             # pinned rows are handed out in place: not writable
        w.close()

        small = Worker(c, device_memory=1000, backend="numpy")
        with pytest.raises(memory.BudgetError, match=r"budget 1000 B \(1000 bytes\) is below "
                                                     r"what this sequence needs"):
            with small.virtual_iteration():
                r = small.read(t, range(0, 64))
                small.post_read(r)
                small.clock()
        monkeypatch.setenv("GEEPS_DEVICE_MEMORY", "lots")
        with pytest.raises(ConfigError, match="GEEPS_DEVICE_MEMORY='lots' is invalid"):
            Worker(c, backend="numpy")
        monkeypatch.setenv("GEEPS_DEVICE_MEMORY", "2Ki")
        assert Worker(c, backend="numpy").budget == 2048


def test_metrics_are_served_with_job_role_and_rank():
    port = free_port()
    with Cluster(servers=1, workers=1) as cl:
        job = f"t-{uuid.uuid4().hex[:8]}"
        m = Metrics(job=job)
        m.serve(port)
        c = cl.client(0, metrics=m)     # as Client.from_env() makes it: counts net bytes
        t = c.create_table("met0", 64, 32, rule="add")
        w = Worker(c, backend="numpy")
        assert w.metrics is m
        with w.virtual_iteration():
            w.post_read(w.read(t, range(0, 8)))
            w.clock()
        for _ in range(3):
            w.post_read(w.read(t, range(0, 8)))
            w.clock()
        w.drain()
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        samples = {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
                   for fam in text_string_to_metric_families(text) for smp in fam.samples}
        mine = {"job": job, "role": "worker", "rank": "0"}

        def value(name, **labels):
            return samples[(name, tuple(sorted(dict(mine, **labels).items())))]
        assert value("geeps_cache_reads_total", table="met0", result="hit") == 24
        assert value("geeps_transfer_bytes_total", direction="h2d") == 4 * 8 * 32 * 4
        assert value("geeps_clock") == 3
        assert value("geeps_clock_lag_bucket", le="0.0") == 3     # BSP, one worker
        assert value("geeps_read_wait_seconds_count") == 3
        assert value("geeps_iteration_seconds_count") == 3     # once per clock, not twice
        assert value("geeps_transfer_bytes_total", direction="pull") == 4 * 8 * 32 * 4
        for name in ("geeps_server_update_seconds", "geeps_parked_reads",
                     "geeps_server_clock", "geeps_server_push_bytes_total"):
            assert f"# TYPE {name.removesuffix('_total')}" in text
        w.close()


def test_a_dead_server_fails_the_next_read_naming_it():
    from geeps.errors import ServerUnreachable
    with Cluster(servers=1, workers=1, timeout=1.0) as cl:
        # The 1 s timeout is for the server's death below, not its start-up (slow on a
        # loaded machine): wait until it listens first.
        host, port = cl.servers[0].rsplit(":", 1)
        wait_for(lambda: _listening(host, int(port)), 30, what="the server listening")
        c, t, _init, w = one_table_worker(cl, "dead0")
        with w.virtual_iteration():
            w.post_read(w.read(t, range(0, 8)))
            w.clock()
        w.post_read(w.read(t, range(0, 8)))
        w.drain()
        kill_group(cl.procs[0])
        w.clock()                       # hands the push and the refresh to the I/O thread
        with pytest.raises(ServerUnreachable, match=cl.servers[0]):
            w.read(t, range(0, 8))
        with pytest.raises(ServerUnreachable):
            w.drain()                   # the transfer thread stays failed: no stale reads
        with pytest.raises(ServerUnreachable):
            w.close()                   # says so, and still stops the transfer thread
        assert not w.cache.io._thread.is_alive()


def test_close_does_not_wait_for_workers_that_stopped():
    """Worker 1 never starts: worker 0's refresh after its clock waits (BSP) for it,
    and close() must not sit through the servers' wait timeout."""
    with Cluster(servers=1, workers=2) as cl:
        c, t, _init, w = one_table_worker(cl, "stop0")
        with w.virtual_iteration():
            w.post_read(w.read(t, range(0, 8)))
            w.clock()
        w.post_read(w.read(t, range(0, 8)))     # clock 0 needs nobody
        w.clock()                               # clock 1's refresh needs worker 1
        assert not w.cache.refresh_job.done()
        closer = threading.Thread(target=w.close)
        closer.start()
        closer.join(5)
        assert not closer.is_alive()
