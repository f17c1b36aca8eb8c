"""What tools/gpu_check.sh finds on this machine, and whether the GPU check can run.

    python tools/gpu_env.py gpu        # CuPy, torch, the driver and a device (no geeps)
    python tools/gpu_env.py deps       # the modules geeps and the tests import
    python tools/gpu_env.py backend    # geeps' CuPy backend: imports, compiles its kernels

Prints one `found:` line per fact and, when something is wrong, one `problem:` line
saying what and what to do; never a traceback. Exit status: 0 usable, 3 no usable GPU,
4 a module is missing, 5 the CUDA stack is broken (versions, NVRTC, the compiler).
"""
from __future__ import annotations

import importlib
import os
import platform
import sys

NO_GPU, MISSING, BROKEN = 3, 4, 5
DEPS = ("numpy", "yaml", "prometheus_client", "zmq", "orjson", "jsonschema", "torch",
        "sklearn", "pytest")


def found(what: str, value) -> None:
    print(f"  found: {what}: {value}", flush=True)


def problem(code: int, text: str) -> int:
    print(f"  problem: {text}", flush=True)
    return code


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


def gpu() -> int:
    found("python", f"{platform.python_version()} ({sys.executable})")
    try:
        import cupy
    except ImportError as e:
        return problem(NO_GPU, f"CuPy does not import ({e}): no usable GPU here. Install "
                               "cupy-cuda13x, or run `tools/gpu_check.sh --dry-run` on a CPU")
    except Exception as e:
        return problem(BROKEN, f"CuPy fails to import: {type(e).__name__}: {e}")
    found("cupy", cupy.__version__)
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return problem(NO_GPU, f"CuPy sees no usable CUDA device ({type(e).__name__}: {e}). "
                               "No GPU or no driver here; `tools/gpu_check.sh --dry-run` "
                               "checks the script on a CPU")
    if n < 1:
        return problem(NO_GPU, "no CUDA device visible (CUDA_VISIBLE_DEVICES?)")
    try:
        rt = cupy.cuda.runtime.runtimeGetVersion()
        drv = cupy.cuda.runtime.driverGetVersion()
    except Exception as e:
        return problem(BROKEN, f"cannot read the CUDA versions: {type(e).__name__}: {e}")
    found("CUDA driver supports", _cuda_version(drv))
    found("CuPy's CUDA runtime", _cuda_version(rt))
    for i in range(n):
        try:
            p = cupy.cuda.runtime.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            found(f"device {i}", f"{name}, {p['totalGlobalMem'] / 2**30:.0f} GiB, "
                                 f"compute capability {p['major']}.{p['minor']}")
        except Exception as e:
            return problem(BROKEN, f"device {i} does not answer: {type(e).__name__}: {e}")
    if drv < rt and drv // 1000 < rt // 1000:
        return problem(BROKEN, f"the driver supports CUDA {_cuda_version(drv)}, older than "
                               f"CuPy's CUDA {_cuda_version(rt)}: install a newer driver or "
                               "a CuPy built for this CUDA")
    try:
        import torch
    except Exception as e:
        return problem(MISSING, f"torch does not import: {type(e).__name__}: {e}")
    found("torch", f"{torch.__version__} (CUDA {torch.version.cuda})")
    if not torch.cuda.is_available():
        return problem(BROKEN, f"torch {torch.__version__} cannot use the GPU (torch.cuda."
                               "is_available() is False): a CPU build, or one for another CUDA")
    tmaj = int(str(torch.version.cuda).split(".")[0])
    if tmaj != rt // 1000:
        print(f"  note: torch is built for CUDA {torch.version.cuda}, CuPy for "
              f"{_cuda_version(rt)}; each loads its own runtime, which works, but the check "
              "expects CUDA 13 builds of both", flush=True)
    elif tmaj != 13:
        print(f"  note: CUDA {tmaj} builds (the check was prepared for CUDA 13)", flush=True)
    try:
        x = torch.ones(4, device="cuda") * 2
        a = cupy.asarray(x)                 # DLPack / CUDA array interface both ways
        assert float(a.sum()) == 8.0
        found("torch <-> CuPy on the device", "ok")
    except Exception as e:
        return problem(BROKEN, f"torch and CuPy cannot share device memory: "
                               f"{type(e).__name__}: {e}")
    return 0


def deps() -> int:
    missing = []
    for m in DEPS:
        try:
            mod = importlib.import_module(m)
            found(m, getattr(mod, "__version__", "?"))
        except Exception as e:
            missing.append(f"{m} ({type(e).__name__}: {e})")
    if missing:
        return problem(MISSING, "missing: " + "; ".join(missing) + ". tools/gpu_wheels.sh "
                       "prepares their wheels (on a machine with network) in .gpu-wheels/")
    return 0


def backend() -> int:
    try:
        import geeps
        from geeps import backend as B
    except Exception as e:
        return problem(MISSING, f"geeps does not import: {type(e).__name__}: {e}")
    found("geeps", f"{getattr(geeps, '__version__', '?')} from "
                   f"{os.path.dirname(geeps.__file__)}")
    try:
        be = B.select("cupy")
    except Exception as e:
        return problem(BROKEN, f"the CuPy backend cannot start (compiling its kernels with "
                               f"NVRTC): {type(e).__name__}: {e}")
    found("CuPy kernel cache", be.cache_dir)
    found("backend", f"{be.name}, kernels {', '.join(sorted(be.k))}")
    return 0


def main(argv) -> int:
    what = argv[1] if len(argv) > 1 else "gpu"
    steps = {"gpu": gpu, "deps": deps, "backend": backend}
    if what not in steps:
        print(f"usage: {argv[0]} gpu|deps|backend", file=sys.stderr)
        return 2
    try:
        return steps[what]()
    except Exception as e:          # never a traceback: one line saying what broke
        return problem(BROKEN, f"{what} check failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
