"""tools/gpu_check.sh, the one-command GPU verification, without a GPU: it says so in one
line and exits 3 (no traceback), and its dry run (CuPy replaced by the CUDA sources
compiled for the CPU, geeps.backend.hostcupy) passes end to end, so the script, the GPU
tests and the bench section cannot rot where CI has no GPU."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO

SCRIPT = os.path.join(REPO, "tools", "gpu_check.sh")


def _has_cupy() -> bool:
    try:
        import cupy  # noqa: F401
        return True
    except Exception:
        return False


def _run(*args, tmp_path, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    env.pop("GEEPS_GPU_DRYRUN", None)
    return subprocess.run(["bash", SCRIPT, *args, "--out", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.skipif(_has_cupy(), reason="CuPy is installed here: this checks a machine without")
def test_without_a_gpu_it_exits_3_saying_why(tmp_path):
    p = _run(tmp_path=tmp_path, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 3, out
    assert "no usable GPU here" in out and "--dry-run" in out, out
    assert "Traceback" not in out, out
    env = {k: v for k, v in os.environ.items() if k != "GEEPS_GPU_DRYRUN"}
    for args, code in (((), 0), (("--strict",), 3)):    # `geeps bench --script` runs it bare
        bench = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_gpu.py"),
                                *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                               env=env)
        assert bench.returncode == code and "GPU section skipped" in bench.stdout, bench
        assert "Traceback" not in bench.stdout + bench.stderr


def test_usage_errors_exit_2(tmp_path):
    p = _run("--frobnicate", tmp_path=tmp_path, timeout=30)
    assert p.returncode == 2 and "unknown argument --frobnicate" in p.stderr


@pytest.mark.skipif(shutil.which(os.environ.get("CXX") or "g++") is None,
                    reason="the dry run compiles the CUDA sources with g++, not installed")
def test_the_dry_run_passes_and_writes_one_report(tmp_path):
    p = _run("--dry-run", tmp_path=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "DRY RUN" in report and "**Result: PASS**" in report, report
    for section in ("kernels: comparisons twins.check_all, failures []", "memory manager",
                    "prefetch_overlap", "training_one_worker", "bsp_two_workers",
                    "colocated_adam_on_device", "| server adam |",
                    "| 128 | gather |"):
        assert section in report, section
    assert "FAILED" not in report


def test_the_report_fails_on_a_failed_test(tmp_path):
    (tmp_path / "pytest.xml").write_text(textwrap.dedent("""\
        <testsuites><testsuite name="pytest" tests="2">
          <testcase classname="tests.gpu.test_gpu_kernels" name="test_a"/>
          <testcase classname="tests.gpu.test_gpu_kernels" name="test_b">
            <failure message="AssertionError: gather 9x3 n=7: 2 of 21 floats differ"/>
          </testcase>
        </testsuite></testsuites>"""))
    (tmp_path / "tests.json").write_text('{"dry_run": true}')
    (tmp_path / "bench.json").write_text('{"skipped": "no GPU"}')
    p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gpu_report.py"),
                        str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 1
    report = (tmp_path / "report.md").read_text()
    assert "FAILED tests.gpu.test_gpu_kernels::test_b: AssertionError: gather 9x3" in report
    assert "**Result: FAIL**" in report
