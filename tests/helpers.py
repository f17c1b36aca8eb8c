"""Small helpers shared by the tests: waiting on conditions, free ports, child cleanup."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Callable, TypeVar

from geeps.wire.ports import free_port, free_ports  # noqa: F401  (tests import them from here)

T = TypeVar("T")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(pred: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> T:
    """Poll `pred` until it returns a truthy value; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def kill_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate a child started with start_new_session=True, and all it started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


def _load_prctl():
    import ctypes
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up now, not in the child: a forked child of a threaded process must not load
# libraries or allocate before exec.
_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the test process dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG), so an interrupted run leaves no servers behind."""
    if _PRCTL is not None:
        _PRCTL(1, 9)        # PR_SET_PDEATHSIG, SIGKILL
