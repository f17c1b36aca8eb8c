"""Every CUDA source of the CuPy backend compiles (`nvcc --ptx`) and defines exactly the
kernels the backend loads; the update rules contain no fused multiply-add, which
would break bit-equality with their NumPy twins."""
import re
import shutil
import subprocess
from importlib import resources

import pytest

from geeps.backend import KERNELS

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine "
                                                     "(the CUDA sources cannot be compiled)")
KDIR = resources.files("geeps.backend.kernels")


def sources():
    return sorted(p.name for p in KDIR.iterdir() if p.name.endswith(".cu"))


def test_every_source_is_known_to_the_backend():
    assert sources() == sorted(KERNELS)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_compiles_to_ptx_with_the_kernels_the_backend_loads(name, tmp_path):
    out = tmp_path / (name + ".ptx")
    proc = subprocess.run([NVCC, "--ptx", str(KDIR.joinpath(name)), "-o", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert entries == set(KERNELS[name])
    if name == "rules.cu":
        assert not re.search(r"\bfma\.", ptx), "an FMA crept into the update rules"
