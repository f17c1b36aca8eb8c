"""How podman and buildah are invoked: the flags every call needs, in one place.

Daemonless tools, so a laptop or CI runner without a Docker engine can build and run the
images. Each flag below was needed on some machine and is harmless elsewhere:

- `--runtime runc`: crun (podman's default) refuses hosts whose cgroups are in hybrid
  mode; runc runs on both layouts.
- `--cgroup-manager=cgroupfs`: no systemd is needed to place containers in cgroups.
- explicit `--ulimit` values at the caller's own limits: podman's defaults (and even
  `--ulimit host`) try to *raise* limits, which fails without CAP_SYS_RESOURCE.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess

# Every container and image this project makes carries this label, so a crash leaves
# nothing that `remove_labelled` cannot find.
LABEL = "dev.geeps.owner"


class EngineMissing(RuntimeError):
    """podman or buildah is not installed."""


def available() -> bool:
    return shutil.which("podman") is not None and shutil.which("buildah") is not None


# Ceiling of either limit: buildah's chroot builds were refused nproc limits above its
# own (32768 there) even where the caller's were higher; 4096 processes per user is
# plenty for a job's pods (nproc counts every thread of the UID they share).
_CEILING = 4096


def _limit(which: int) -> int:
    soft, hard = resource.getrlimit(which)
    values = [v for v in (soft, hard, _CEILING) if v != resource.RLIM_INFINITY]
    return min(values)


def ulimits() -> list[str]:
    """--ulimit flags at (not above) this process's own limits, nor above _CEILING."""
    return [f"--ulimit=nofile={_limit(resource.RLIMIT_NOFILE)}:{_limit(resource.RLIMIT_NOFILE)}",
            f"--ulimit=nproc={_limit(resource.RLIMIT_NPROC)}:{_limit(resource.RLIMIT_NPROC)}"]


def podman(*args: str) -> list[str]:
    if shutil.which("podman") is None:
        raise EngineMissing("podman is not installed (Debian/Ubuntu: apt-get install podman "
                            "runc)")
    return ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", *args]


def buildah(*args: str) -> list[str]:
    if shutil.which("buildah") is None:
        raise EngineMissing("buildah is not installed (Debian/Ubuntu: apt-get install "
                            "buildah runc)")
    return ["buildah", "--runtime", "runc", *args]


def run(cmd: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {out.returncode}: "
                           f"{(out.stderr or out.stdout)[-2000:]}")
    return out


def image_exists(ref: str) -> bool:
    return run(podman("image", "exists", ref), check=False).returncode == 0


def image_size(ref: str) -> int:
    return int(run(podman("image", "inspect", "--format", "{{.Size}}", ref)).stdout.strip())


def containers(value: str) -> list[str]:
    """Ids of every container (running or not) labelled LABEL=value."""
    out = run(podman("ps", "-a", "-q", "--filter", f"label={LABEL}={value}"), check=False)
    return out.stdout.split()


def remove_labelled(value: str) -> int:
    """Force-remove every container labelled LABEL=value (also those a crash left)."""
    ids = containers(value)
    if ids:
        run(podman("rm", "-f", "-t", "0", *ids), timeout=120, check=False)
    return len(ids)


def remove_stale(prefix: str) -> list[str]:
    """Remove the containers of runs that ended without cleaning up (killed outright):
    those labelled LABEL=<prefix><pid> whose process <pid> is gone. Returns the label
    values removed."""
    out = run(podman("ps", "-a", "--format", "{{.Labels}}", "--filter", f"label={LABEL}"),
              check=False)
    stale = []
    for pid in sorted(set(re.findall(rf"{re.escape(LABEL)}:{re.escape(prefix)}(\d+)",
                                     out.stdout))):
        if not os.path.exists(f"/proc/{pid}"):
            remove_labelled(prefix + pid)
            stale.append(prefix + pid)
    return stale
