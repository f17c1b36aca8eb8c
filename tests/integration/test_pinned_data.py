"""Training data kept in device memory across clocks (fetch/keep local data), on
examples/04-sparse-lr's own step against a real `geeps server`; the NumPy backend
stands in for the device, with the budget and byte accounting enforced as on a GPU."""
import importlib.util
import os
import uuid

import numpy as np
import pytest

from geeps.metrics import Metrics
from geeps.worker import Worker, memory
from geeps_examples import datasets as gdata
from tests.cluster import Cluster
from tests.helpers import REPO

pytestmark = pytest.mark.integration
FEATURES, WIDTH, BATCH = 20_000, 16, 250


def example():
    path = os.path.join(REPO, "examples", "04-sparse-lr", "train.py")
    spec = importlib.util.spec_from_file_location("sparse_lr_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
