"""`geeps bench`: the command runs the suite and writes its report; numbers are never
asserted (they are the machine's, not the code's)."""
from __future__ import annotations

import os
import subprocess
import sys

from bench.cli import _absolute_out

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bench(*args: str, cwd: str = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geeps", "bench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_list_names_every_section():
    p = _bench("--list")
    assert p.returncode == 0, p.stderr
    for name in ("sync", "cache", "memory", "training", "operator", "scaling", "seed001",
                 "torch_budget", "membership"):
        assert name in p.stdout


def test_unknown_section_is_refused():
    p = _bench("--only", "nonesuch")
    assert p.returncode == 2
    assert "nonesuch" in p.stderr


def test_quick_run_writes_the_report_and_plots(tmp_path):
    # cache and memory start no processes: seconds, and nothing left running.
    p = _bench("--quick", "--only", "cache,memory", "--out", "out", cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    out = tmp_path / "out"
    text = (out / "RESULTS.md").read_text()
    assert "Quick run" in text
    assert "memcpy" in text and "Belady" in text
    assert (out / "cache_ops.png").stat().st_size > 0
    assert (out / "memory.png").stat().st_size > 0


def test_out_path_is_the_callers():
    assert _absolute_out(["--out", "x"]) == ["--out", os.path.abspath("x")]
    assert _absolute_out(["--out=y", "--quick"]) == ["--out=" + os.path.abspath("y"), "--quick"]
