"""Every example runs end to end through `geeps run`, with real servers and workers.

Each examples/*/job.yaml runs with small arguments (SMALL below; an example missing
from it fails the test, so a new example cannot go untested); 02-digits-cnn runs its
manifest unchanged, since the README promises its accuracy. The run uses a copy of
the manifest that differs only in `args` (and where said, cache.deviceMemory).
"""
from __future__ import annotations

import difflib
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from geeps_examples import datasets as gdata
from tests.helpers import REPO, kill_group

pytestmark = pytest.mark.integration

EXAMPLES = sorted(glob.glob(os.path.join(REPO, "examples", "*", "job.yaml")))
# name -> args for CI (None: the manifest's own args)
SMALL = {
    "01-minimal": ["--epochs", "1"],
    "02-digits-cnn": None,
    "03-cifar10-resnet": ["--synthetic", "--steps", "2", "--batch", "4", "--width", "8",
                          "--report-every", "1"],
    "04-sparse-lr": ["--samples", "40000", "--features", "200000", "--informative", "5000",
                     "--batch", "250", "--epochs", "3", "--device-fraction", "0.5",
                     "--report-every", "5", "--max-logloss", "0.40"],
    "05-sparse-lr-proximal": ["--samples", "8000", "--features", "40000", "--clocks", "40",
                              "--report-every", "5", "--max-logloss", "0.68"],
}
TIMEOUT = 180


def run_job(tmp_path, manifest: str, args=None, timeout: float = TIMEOUT):
    """`geeps run` on a copy of `manifest` with `args` replaced; (exit code, output)."""
    with open(manifest) as f:
        job = yaml.safe_load(f)
    if args is not None:
        job["spec"]["args"] = list(args)
    path = tmp_path / os.path.basename(os.path.dirname(manifest))
    path = path.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(job))
    proc = subprocess.Popen([sys.executable, "-m", "geeps", "run", "--quiet",
                             "--metrics-port", "0", str(path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, out


def test_every_example_is_covered():
    names = {os.path.basename(os.path.dirname(p)) for p in EXAMPLES}
    assert names == set(SMALL), f"examples without CI arguments: {names - set(SMALL)}"


@pytest.mark.parametrize("manifest", EXAMPLES, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_example_runs_end_to_end(tmp_path, manifest):
    name = os.path.basename(os.path.dirname(manifest))
    code, out = run_job(tmp_path, manifest, SMALL.get(name))
    assert code == 0, out[-4000:]
    assert "succeeded" in out, out[-2000:]
    # geeps run saw progress lines: its summary counts samples and the last loss.
    assert re.search(r"[\d,]+ samples, [\d,]+ samples/s; final loss [\d.e+-]+", out), out[-2000:]
    if name == "02-digits-cnn":
        accs = [float(a) for a in re.findall(r"test accuracy (\d\.\d+)", out)]
        assert len(accs) == 2 and min(accs) >= 0.95, out[-2000:]
    if name == "03-cifar10-resnet":
        assert "SYNTHETIC DATA" in out
    if name == "04-sparse-lr":
        loss, constant = map(float, re.search(
            r"held-out log-loss (\d\.\d+) \(constant predictor (\d\.\d+)", out).groups())
        # The generator's Bayes floor at this size is 0.275; a constant predictor 0.659.
        assert loss <= 0.40 < constant, out[-2000:]
        ratios = [float(r) for r in re.findall(r"cache hit ratio (\d\.\d+)", out)]
        assert len(ratios) == 2 and all(0.0 <= r < 1.0 for r in ratios), out[-2000:]
        # A budget of half the working set (training data included): the planner pins
        # data first (a pinned batch never moves again; a pinned row is refreshed at
        # every clock anyway), some of it, and streams the rest.
        pinned = re.findall(r"training data pinned (\d+\.\d+) of (\d+\.\d+) MiB", out)
        assert len(pinned) == 2 and all(0 < float(p) < float(t) for p, t in pinned), \
            out[-2000:]
    if name == "05-sparse-lr-proximal":
        # The mechanism at a small size (the full-size claims: bench/bench_filters.py):
        # the KKT filter sends a fraction of the dense bytes, the servers' proximal
        # step leaves most weights exactly zero, and the model beats a constant.
        loss, constant = map(float, re.search(
            r"held-out log-loss (\d\.\d+) \(constant predictor (\d\.\d+)", out).groups())
        assert loss < constant - 0.02, out[-2000:]
        zeros = float(re.search(r"zero weights (\d\.\d+)", out).group(1))
        assert zeros >= 0.9, out[-2000:]
        ratios = [float(r) for r in re.findall(r"bytes ratio (\d\.\d+)", out)]
        assert len(ratios) == 2 and all(0.0 < r <= 0.4 for r in ratios), out[-2000:]


CIFAR = os.path.join(REPO, "examples", "03-cifar10-resnet", "job.yaml")


def test_cifar_without_files_says_where_to_put_them(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    code, out = run_job(tmp_path, CIFAR, ["--data", str(empty), "--steps", "1"])
    assert code != 0
    assert f"CIFAR-10 binary files not found in {empty}" in out
    assert "data_batch_1.bin" in out and "cifar-10-binary.tar.gz" in out


def test_cifar_trains_from_files_in_the_binary_format(tmp_path):
    """The real reader path end to end, on tiny files in the real format."""
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in gdata.CIFAR_TRAIN_FILES + (gdata.CIFAR_TEST_FILE,):
        gdata.write_cifar10_file(str(d / name), rng.integers(0, 256, (8, 3, 32, 32)),
                                 rng.integers(0, 10, 8))
    code, out = run_job(tmp_path, CIFAR, ["--data", str(d), "--epochs", "1", "--batch", "4",
                                          "--width", "8", "--report-every", "1",
                                          "--save", str(tmp_path / "model.pt")])
    assert code == 0, out[-3000:]
    assert "SYNTHETIC" not in out
    assert len(re.findall(r"epoch 0 test accuracy \(its share\) \d\.\d+", out)) == 2
    import torch
    state = torch.load(tmp_path / "model.pt")
    assert "fc.weight" in state and "bn1.running_mean" in state


def changed_lines(a: list[str], b: list[str]):
    """(replaced, inserted, deleted) line counts of the diff from a to b."""
    replaced = inserted = deleted = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "replace":
            replaced += max(i2 - i1, j2 - j1)
        elif tag == "insert":
            inserted += j2 - j1
        elif tag == "delete":
            deleted += i2 - i1
    return replaced, inserted, deleted


def code_lines(path: str) -> list[str]:
    """The script without its module docstring (the docstrings say how to run each)."""
    with open(path) as f:
        text = f.read()
    end = text.index('"""', 3) + 3
    return text[end:].splitlines()


def test_distributed_digits_script_differs_from_the_single_process_one_by_three_lines():
    d = os.path.join(REPO, "examples", "02-digits-cnn")
    single = code_lines(os.path.join(d, "train_single.py"))
    dist = code_lines(os.path.join(d, "train.py"))
    replaced, inserted, deleted = changed_lines(single, dist)
    added = [line for line in dist if line not in single]
    assert (replaced, inserted, deleted) == (3, 1, 0), added
    assert "import geeps.torch as gt" in added     # the one added line is the import


def test_digits_scripts_run_alone_without_geeps_run():
    """`python train.py` with no GEEPS_* at all: one in-process shard, same steps as the
    single-process script."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEEPS_")}
    d = os.path.join("examples", "02-digits-cnn")
    steps = {}
    for script in ("train_single.py", "train.py"):
        p = subprocess.run([sys.executable, os.path.join(d, script), "--epochs", "2",
                            "--min-accuracy", "0.5"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        steps[script] = int(re.search(r"after 2 epochs, (\d+) steps", p.stdout).group(1))
    assert steps["train.py"] == steps["train_single.py"] == 2 * (1347 // 32 + 1)


def test_more_workers_without_servers_is_refused():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEEPS_")}
    env["GEEPS_NUM_WORKERS"] = "2"
    p = subprocess.run([sys.executable, "-c", "import geeps.torch as gt; gt.init()"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "GEEPS_SERVERS" in p.stderr and "GEEPS_NUM_WORKERS=2" in p.stderr


def test_sparse_lr_proximal_trains_from_a_libsvm_file(tmp_path):
    """Example 05's --libsvm path end to end, on a small file in the real format."""
    gen = gdata.KDDGenerator(n_samples=4000, n_features=5000, informative=200, nnz=20, seed=3)
    path = tmp_path / "small.svm"
    gdata.write_libsvm(str(path), [gen.batch(i, 1000) for i in range(4)])
    manifest = os.path.join(REPO, "examples", "05-sparse-lr-proximal", "job.yaml")
    code, out = run_job(tmp_path, manifest, ["--libsvm", str(path), "--features", "5000",
                                             "--clocks", "20", "--report-every", "5"])
    assert code == 0, out[-3000:]
    assert "data: " + str(path) in out
    assert float(re.search(r"zero weights (\d\.\d+)", out).group(1)) >= 0.5, out[-2000:]
