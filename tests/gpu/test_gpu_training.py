"""geeps.torch training with the model on the GPU, against the CPU.

- one worker: DataParallel on CUDA against the same script on the CPU, within tolerance
  (full float32: TF32 off; cuBLAS and MKL still sum in different orders);
- a two-worker BSP job: two processes, each with its model on the GPU (the same
  device), against one plain PyTorch process on the CPU taking the union of their
  batches.
The parameter servers are real `geeps server` processes on loopback. In a dry run the
models stay on the CPU (torch has no CUDA there) and the same code runs.
"""
import multiprocessing as mp
import time

from tests.cluster import Cluster
from tests.gpu import jobs

RTOL, ATOL = 1e-3, 1e-5


def test_data_parallel_on_the_gpu_equals_the_cpu_run(report, torch_device):
    runs = {}
    for role, dev in (("cpu", "cpu"), ("device", str(torch_device))):
        with Cluster(servers=1, workers=1, consistency="bsp") as cl:
            t0 = time.perf_counter()
            runs[role] = jobs.train_worker(cl.servers, 0, 1, dev, name="mlp")
            runs[role]["s"] = time.perf_counter() - t0
    got = runs["device"]
    assert got["device"] == str(torch_device)
    worst = jobs.compare(got["state"], runs["cpu"]["state"], RTOL, ATOL)
    report["training_one_worker"] = {"device": str(torch_device), "max_abs_diff": worst,
                                     "seconds": {r: v["s"] for r, v in runs.items()}}


def test_two_worker_bsp_job_each_worker_on_the_gpu(report, torch_device):
    world = 2
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t0 = time.perf_counter()
    with Cluster(servers=2, workers=world, consistency="bsp") as cl:
        ps = [ctx.Process(target=jobs.train_worker,
                          args=(cl.servers, r, world, str(torch_device)),
                          kwargs={"queue": q, "bn": False}, daemon=True) for r in range(world)]
        for p in ps:
            p.start()
        try:
            results = dict(q.get(timeout=240) for _ in ps)
        finally:
            for p in ps:
                p.join(30)
                if p.is_alive():
                    p.terminate()
    errors = {r: v["error"] for r, v in results.items() if "error" in v}
    assert not errors, errors
    ref = jobs.train_reference(world)
    worst = {}
    for r in range(world):
        assert results[r]["device"] == str(torch_device)
        worst[r] = jobs.compare(results[r]["state"], ref, RTOL, ATOL)
    report["bsp_two_workers"] = {"device": str(torch_device), "workers": world,
                                 "max_abs_diff": worst, "seconds": time.perf_counter() - t0}
