"""Build the two images (dockerfiles/) with buildah, daemonless.

    python tools/build_images.py                 # operator + runtime (CPU variant)
    python tools/build_images.py --variant cuda  # the runtime image clusters run (default
                                                 # of the Dockerfile)

Where the real base images cannot be pulled (no registry reachable, as in an offline CI
runner), `--stand-in` makes a stand-in for python:3.11-slim-bookworm from Debian's own
packages with debootstrap and passes it in through the Dockerfiles' ARGs. It is cached by
a content key (the inputs that make it) under ~/.cache/geeps, so only the first build
pays for it; buildah's layer cache makes an unchanged rebuild take seconds. Nothing in
the Dockerfiles knows about the stand-in: with a registry, the same ARGs take the real
images.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from . import engine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILES = os.path.join(REPO, "dockerfiles")
VERSION = "0.1.0"
OPERATOR = "geeps/operator"
RUNTIME = "geeps/runtime"
PYTHON_IMAGE = "python:3.11-slim-bookworm"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"

# What the stand-in is made of: everything its content key covers.
STAND_IN = {
    "suite": "bookworm",
    "variant": "minbase",
    # python-is-python3: the official images have `python`; Dockerfiles may call it.
    "include": ["python3", "python3-venv", "python3-pip", "python-is-python3",
                "ca-certificates"],
    "recipe": 1,          # bump when the way it is made changes
}


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "geeps", "images")


def stand_in_key() -> str:
    return hashlib.sha256(json.dumps(STAND_IN, sort_keys=True).encode()).hexdigest()[:16]


def stand_in_ref() -> str:
    return f"localhost/geeps-stand-in/python:3.11-slim-bookworm-{stand_in_key()}"


def stand_in(log=print) -> str:
    """The stand-in base image's reference, made (or imported from the cache) if needed."""
    ref = stand_in_ref()
    if engine.image_exists(ref):
        return ref
    tarball = os.path.join(cache_dir(), f"python-3.11-slim-bookworm-{stand_in_key()}.tar")
    if not os.path.exists(tarball):
        if os.geteuid() != 0:
            raise SystemExit("debootstrap needs root to make the stand-in base image; run "
                             "as root, or pass --base with an image you can pull")
        os.makedirs(cache_dir(), exist_ok=True)
        t0 = time.monotonic()
        log(f"making the stand-in base image with debootstrap ({STAND_IN['suite']}) ...")
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            rootfs = os.path.join(tmp, "rootfs")
            engine.run(["debootstrap", f"--variant={STAND_IN['variant']}",
                        "--include=" + ",".join(STAND_IN["include"]),
                        STAND_IN["suite"], rootfs], timeout=1800)
            # Smaller and closer to the slim image: no apt lists or docs.
            for d in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                      "var/cache/apt/archives"):
                subprocess.run(["find", os.path.join(rootfs, d), "-mindepth", "1",
                                "-type", "f", "-delete"], check=False)
            partial = tarball + ".partial"
            engine.run(["tar", "--one-file-system", "-C", rootfs, "-cf", partial, "."],
                       timeout=600)
            os.replace(partial, tarball)      # a crash never leaves a half tarball
        log(f"  debootstrap took {time.monotonic() - t0:.0f} s")
    engine.run(engine.podman("import", "--change", f"LABEL {engine.LABEL}=stand-in",
                             tarball, ref), timeout=600)
    return ref


def host_wheels() -> str | None:
    """A find-links directory pip on this machine is configured with (where a CPU torch
    wheel may already be), so the build need not download one."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                         capture_output=True, text=True)
    path = out.stdout.strip()
    return path if out.returncode == 0 and os.path.isdir(path) else None


@dataclass
class Built:
    ref: str
    seconds: float
    size: int


def _build(dockerfile: str, ref: str, args: dict[str, str], mounts: list[str],
           log) -> Built:
    cmd = engine.buildah(
        "bud", "--layers", "--isolation", "chroot", "--network", "host",
        *engine.ulimits(), "--label", f"{engine.LABEL}=image",
        # pip in a build trusts what this machine trusts (a proxy's CA, say).
        "-v", "/etc/ssl/certs:/etc/ssl/certs:ro",
        *[f"-v={m}" for m in mounts],
        *[f"--build-arg={k}={v}" for k, v in args.items()],
        "-f", os.path.join(DOCKERFILES, dockerfile), "-t", ref, REPO)
    t0 = time.monotonic()
    log(f"building {ref} ...")
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        raise SystemExit(f"building {ref} failed:\n{out.stdout[-6000:]}")
    built = Built(ref, time.monotonic() - t0, engine.image_size(ref))
    log(f"  {ref}: {built.size / 1e6:.0f} MB, built in {built.seconds:.0f} s")
    return built


def runtime_tag(variant: str) -> str:
    return f"{RUNTIME}:{VERSION}" + ("-cpu" if variant == "cpu" else "")


def build(which: tuple[str, ...] = ("operator", "runtime"), variant: str = "cpu",
          base: str | None = None, wheels: str | None = None, log=print) -> list[Built]:
    """Build the images named in `which`; `base` replaces python:3.11-slim-bookworm
    (None: the stand-in). Returns what was built, with sizes."""
    python = base or stand_in(log)
    out = []
    if "operator" in which:
        out.append(_build("operator.Dockerfile", f"{OPERATOR}:{VERSION}",
                          {"PYTHON_IMAGE": python}, [], log))
    if "runtime" in which:
        args = {"BUILD_IMAGE": python}
        mounts = []
        if variant == "cpu":
            # The CPU variant: a slim Python base with Python in it already, the CPU
            # torch build, no CuPy.
            args.update(BASE_IMAGE=python, SYSTEM_PYTHON="", CUPY_VERSION="",
                        TORCH_INDEX=CPU_TORCH_INDEX)
            if wheels:
                mounts.append(f"{wheels}:/host-wheels:ro")
                # pip prefers the local +cpu build (a higher local version) over PyPI's.
                args.update(PIP_FIND_LINKS="/host-wheels", TORCH_INDEX="")
        out.append(_build("runtime.Dockerfile", runtime_tag(variant), args, mounts, log))
    return out


def check_runtime(ref: str) -> str:
    """What the runtime image imports, run as its own user on a read-only root: geeps
    and torch, CuPy where installed, and never kopf."""
    code = ("import importlib.util, geeps, torch; "
            "assert importlib.util.find_spec('kopf') is None, 'kopf in the runtime image'; "
            "cupy = importlib.util.find_spec('cupy') is not None; "
            "print('geeps', geeps.__version__, 'torch', torch.__version__, 'cupy', cupy)")
    out = engine.run(engine.podman("run", "--rm", "--pull=never", "--read-only",
                                   "--cap-drop=ALL", "--security-opt=no-new-privileges",
                                   *engine.ulimits(), "--network=none",
                                   "--entrypoint", "python", ref, "-c", code), timeout=120)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build_images", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="operator and/or runtime (default: both)")
    p.add_argument("--variant", choices=["cpu", "cuda"], default="cpu",
                   help="the runtime image's variant (cuda: the Dockerfile's defaults, "
                        "for clusters; cpu: tagged -cpu)")
    p.add_argument("--base", help=f"the image to use for {PYTHON_IMAGE} (default: a "
                   "stand-in made with debootstrap, since none can be pulled offline)")
    p.add_argument("--wheels", default=host_wheels(),
                   help="a directory of wheels (a CPU torch) the runtime build may use "
                        "(default: pip's configured find-links, if any)")
    a = p.parse_args(argv)
    which = tuple(a.images) or ("operator", "runtime")
    if set(which) - {"operator", "runtime"}:
        p.error(f"unknown image(s) {sorted(set(which) - {'operator', 'runtime'})}")
    if not engine.available():
        print("build_images: buildah and podman are needed (apt-get install buildah podman "
              "runc debootstrap)", file=sys.stderr)
        return 2
    built = build(which, a.variant, a.base, a.wheels)
    for b in built:
        print(f"{b.ref}\t{b.size / 1e6:.0f} MB\t{b.seconds:.0f} s")
        if b.ref.startswith(RUNTIME):
            print("  " + check_runtime(b.ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
