"""Training data kept in device memory across clocks (fetch/keep local data), on
examples/04-sparse-lr's own step against a real `geeps server`; the NumPy backend
stands in for the device, with the budget and byte accounting enforced as on a GPU."""
import uuid

import numpy as np
import pytest

from geeps.metrics import Metrics
from geeps.worker import Worker, memory
from geeps_examples import datasets as gdata
from tests.cluster import Cluster
from tests.helpers import wait_for
from tests.workloads import load_example

pytestmark = pytest.mark.integration
FEATURES, WIDTH, BATCH = 20_000, 16, 250


def example():
    return load_example("04-sparse-lr")


def test_pinned_training_data_moves_strictly_fewer_bytes_per_epoch_than_wiping_it():
    ex = example()
    gen = gdata.KDDGenerator(n_samples=4000, n_features=FEATURES, informative=2000)
    packed = [gdata.pack_batch(gen.batch(j, BATCH), FEATURES, WIDTH)
              for j in range(gen.n_batches(BATCH))]
    n_rows = -(-(FEATURES + 1) // WIDTH)
    dry = ex.DryRun()
    with Cluster(servers=1, workers=1) as cl:
        c = cl.client(0)
        runs = {}
        for persist in (True, False):
            t = c.create_table(f"lr{int(persist)}", n_rows, WIDTH, rule="adam", lr=0.02)
            if not runs:        # one budget for both: half the persisting working set
                for j, pb in enumerate(packed):
                    ex.step(dry, t, j, pb)
                budget = memory.working_set(dry.rec.finish()) // 2
            w = Worker(c, device_memory=budget, backend="numpy", persist_local=persist,
                       stalls="accept", metrics=Metrics(job=f"t-{uuid.uuid4().hex[:8]}"))
            with w.virtual_iteration():
                for j, pb in enumerate(packed):
                    ex.step(w, t, j, pb)
            for j, pb in enumerate(packed):
                w.load_local(f"data{j}", pb.data)
            losses = [ex.step(w, t, j, pb) for j, pb in enumerate(packed)]  # epoch 0
            w.drain()
            before = dict(w.cache.moved)
            losses += [ex.step(w, t, j, pb) for j, pb in enumerate(packed)]  # epoch 1
            w.drain()
            moved = sum(w.cache.moved[d] - before[d] for d in before)
            assert moved == w.plan.moved_bytes     # what the plan predicted, measured
            assert w.plan.device_bytes <= budget and w.cache.mem.used <= budget
            pinned = sum(pb.nbytes for j, pb in enumerate(packed)
                         if f"data{j}" in w.plan.local_offsets)
            runs[persist] = (moved, losses, pinned)
            w.close()
        (kept, kept_losses, kept_pinned), (wiped, wiped_losses, wiped_pinned) = \
            runs[True], runs[False]
        total = sum(pb.nbytes for pb in packed)
        assert 0 < kept_pinned < total and wiped_pinned == 0
        assert kept < wiped, (kept, wiped)
        # Both runs start from zero weights; where the data lives changes nothing else.
        assert np.array_equal(kept_losses, wiped_losses)


def test_the_next_batch_arrives_while_the_current_one_computes():
    """Nothing of clock k+1 is queued before clock k ends but the staged batch: its
    fill completes while clock k's slow operation still runs, and its call waits for
    nothing."""
    with Cluster(servers=1, workers=1) as cl:
        c = cl.client(0)
        t = c.create_table("stg", 64, 32, rule="add")
        batches = [np.full(256, k + 1, np.float32) for k in range(4)]
        seen = []

        def step(w, k, slow=lambda: None):
            d = w.local_access(f"data{k}", 1024, fetch=True)
            seen.append(float(d[0]))
            r = w.read(t, range(0, 8))
            slow()
            w.post_read(r)
            w.post_local_access(d)
            w.clock()
        w = Worker(c, device_memory=4096, backend="numpy", persist_local=False,
                   metrics=Metrics(job=f"t-{uuid.uuid4().hex[:8]}"))
        with w.virtual_iteration():
            for k in range(4):
                step(w, k)
        ids = [p.op.id for p in w.plan.ops if p.op.kind == "local"]
        assert [w.plan.ops[i].prefetch_at for i in ids[1:]] == ids[:-1]
        for k, b in enumerate(batches):
            w.load_local(f"data{k}", b)
        seen.clear()
        step(w, 0)
        for k in (1, 2, 3):
            nxt = ids[(k + 1) % 4]
            step(w, k, slow=lambda: wait_for(lambda: w.cache.prefetched(nxt), 10,
                                             what="the staged batch"))
        for k in (2, 3):            # staged while a slow operation of the clock before ran
            st = w.cache.stats[ids[k]]
            assert (st.calls, st.ready_at_call, st.waited) == (1, 1, 0)
        assert seen == [1.0, 2.0, 3.0, 4.0]
        w.close()
