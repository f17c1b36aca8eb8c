"""geeps.torch training with the model on the GPU, against the CPU.

- one worker: DataParallel on CUDA against the same script on the CPU, within tolerance
  (full float32: TF32 off; cuBLAS and MKL still sum in different orders);
- a two-worker BSP job: two processes, each with its model on the GPU (the same
  device), against one plain PyTorch process on the CPU taking the union of their
  batches;
- a two-worker co-located BSP job (each worker serves one shard, GeePS's layout) whose
  shards apply Adam on the device (GEEPS_SERVER_BACKEND=cupy: rows and moments in
  device memory, the rules.cu kernels), against the same job with its shards on the
  NumPy twins.
The parameter servers are real `geeps server` processes on loopback, or the workers
themselves. In a dry run the models stay on the CPU (torch has no CUDA there), the
shards run the kernels compiled for the CPU (host-cuda), and the same code runs.
"""
import multiprocessing as mp
import queue
import threading
import time

from tests.cluster import Cluster
from tests.gpu import jobs
from tests.gpu.conftest import DRY
from tests.helpers import free_ports

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


def _colocated_job(world: int, device: str, backend: str) -> dict:
    """`world` workers, threads of this process (each one's hello needs the others'
    shards up, so they start together), each training on `device` and hosting one
    shard on `backend`."""
    servers = [f"127.0.0.1:{p}" for p in free_ports(world)]
    q = queue.Queue()
    ts = [threading.Thread(target=jobs.train_worker, args=(servers, r, world, device),
                           kwargs={"queue": q, "bn": False, "rule": "adam",
                                   "colocate": backend}, daemon=True) for r in range(world)]
    for t in ts:
        t.start()
    results = dict(q.get(timeout=240) for _ in ts)
    for t in ts:
        t.join(30)
    errors = {r: v["error"] for r, v in results.items() if "error" in v}
    assert not errors, (backend, errors)
    return results


def test_colocated_shards_apply_adam_on_the_device(report, torch_device):
    """Bitwise on a GPU when torch computes the same gradients twice (deterministic
    settings, same device); within the training tolerance otherwise."""
    world = 2
    backend = "host-cuda" if DRY else "cupy"
    t0 = time.perf_counter()
    twin = _colocated_job(world, str(torch_device), "numpy")
    t1 = time.perf_counter()
    dev = _colocated_job(world, str(torch_device), backend)
    t2 = time.perf_counter()
    shards = dev[0]["shards"]
    assert [s["rule_backend"] for s in shards] == [backend] * world, shards
    assert all(s["kernel_launches"]["adam_update"] >= jobs.STEPS for s in shards), shards
    assert [s["rule_backend"] for s in twin[0]["shards"]] == ["numpy"] * world
    worst, bitwise = {}, True
    for r in range(world):
        assert dev[r]["device"] == str(torch_device)
        worst[r] = jobs.compare(dev[r]["state"], twin[r]["state"], RTOL, ATOL)
        bitwise &= all(dev[r]["state"][k].tobytes() == twin[r]["state"][k].tobytes()
                       for k in twin[r]["state"])
    if DRY:     # the same CPU arithmetic end to end: nothing may differ
        assert bitwise, worst
    report["colocated_adam_on_device"] = {
        "device": str(torch_device), "workers": world, "shard_backend": backend,
        "bitwise_equal_to_numpy_shards": bitwise, "max_abs_diff": worst,
        "kernel_launches": [s["kernel_launches"] for s in shards],
        "seconds": {"numpy": t1 - t0, backend: t2 - t1}}
