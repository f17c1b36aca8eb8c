"""The house as docs/architecture.md draws it, checked by import-linter's contracts
(pyproject.toml, [tool.importlinter]): layers, forbidden imports, no cycles."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

PYPROJECT = os.path.join(REPO, "pyproject.toml")
LINT = shutil.which("lint-imports")

needs_linter = pytest.mark.skipif(LINT is None, reason="import-linter is not installed "
                                  "(the [dev] extra brings it)")


def lint(pythonpath: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run([LINT, PYPROJECT, "--no-cache"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)


def source_path(root: str) -> str:
    return os.pathsep.join(os.path.join(root, d) for d in ("runtime", "operator", "examples"))


@needs_linter
def test_contracts_hold():
    p = lint(source_path(REPO))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout


@pytest.mark.parametrize("module, line, contract", [
    # The server reaching up into the client: a layer skipped the wrong way.
    ("runtime/geeps/server/shard.py", "import geeps.client.client",
     "A server never imports a client"),
    # Two siblings importing each other.
    ("runtime/geeps/tables/schedules.py", "import geeps.tables.table",
     "No import cycles"),
    # The operator pulling in the training runtime.
    ("operator/geeps_operator/status.py", "import geeps.torch",
     "The operator uses only"),
])
@needs_linter
def test_a_wrong_import_breaks_a_contract(tmp_path, module, line, contract):
    for d in ("runtime", "operator", "examples"):
        shutil.copytree(os.path.join(REPO, d), tmp_path / d,
                        ignore=shutil.ignore_patterns("__pycache__", "data", "checkpoints"))
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # the deliberate violation\n")
    p = lint(source_path(str(tmp_path)))
    assert p.returncode != 0, p.stdout
    broken = [ln for ln in p.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), p.stdout
    importer = module.split("/", 1)[1][:-3].replace("/", ".")
    assert importer.rpartition(".")[0] in p.stdout      # names where the import is


def test_runtime_imports_without_the_operator_stack():
    """The runtime image has neither kopf nor the kubernetes client: importing the pod
    library must not need them (nor aiohttp, the operator's HTTP client)."""
    blocked = ("kopf", "kubernetes", "kubernetes_asyncio", "aiohttp", "geeps_operator")
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed in the runtime image")
sys.meta_path.insert(0, Block())
import geeps, geeps.server, geeps.client, geeps.worker, geeps.launch, geeps.cli
import geeps.torch
assert not [m for m in sys.modules if m.split(".")[0] in {blocked!r}]
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
