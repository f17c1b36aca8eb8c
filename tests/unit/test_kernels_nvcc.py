"""Every CUDA source of the CuPy backend compiles (`nvcc --ptx`) and defines exactly the
kernels the backend loads. Compiled as CuPy compiles them (-ftz=true, which CuPy
appends after the backend's options), no float32 instruction fuses a multiply into an
add or flushes subnormals to zero: either would break bit-equality with the NumPy
twins. (tests/unit/test_kernels_host.py executes the same sources on the CPU.)"""
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
    proc = subprocess.run([NVCC, "--ptx", "-ftz=true", str(KDIR.joinpath(name)), "-o", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert entries == set(KERNELS[name])
    assert not re.search(r"\bfma\.", ptx), f"an FMA crept into {name}"
    flushed = sorted(set(re.findall(r"\b\w+(?:\.\w+)*\.ftz\.\w+", ptx)))
    assert not flushed, f"{name} flushes subnormals under -ftz=true: {flushed}"


def test_the_host_header_ships_beside_the_sources():
    assert KDIR.joinpath("host.h").is_file()
