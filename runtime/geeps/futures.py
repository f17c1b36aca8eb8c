"""A result that one thread sets once and any number of threads wait for.

    f = Future()
    f.set_result(42)              # producer side: the first outcome set stands
    f.wait(timeout=5.0)           # consumer side: 42, or the error set, re-raised

The one implementation behind geeps.client.Handle (what the client's `*_async` calls
return, answered part by part by its I/O thread) and the worker's background
transfer jobs (geeps.worker.cache.Job). It lives at the bottom of the layers so that
both can build on it: no I/O, no geeps imports.
"""
from __future__ import annotations

import threading
import time
from typing import Any


class Future:
    """Completion of one piece of work: `wait()` blocks until it has a result or an
    error, then returns the one or raises the other, from any thread, any number of
    times. `done()` never blocks.

    Producer side: `set_result(value)` or `set_exception(error)`, once; later calls
    are ignored (they return False), so whoever fails work that may have completed
    meanwhile needs no lock of its own.

    Subclasses may override `_timeout_error` (what `wait` raises when its timeout
    passes) and `_value` (the result `wait` returns, e.g. computed on first use)."""

    __slots__ = ("_lock", "_event", "_result", "_error", "done_at")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        # time.monotonic() when it completed: a schedule's trace (which chunk's reply
        # came when) without a thread watching each handle.
        self.done_at: float | None = None

    # ---- producer side ----------------------------------------------------------------
    def set_result(self, value: Any = None) -> bool:
        """Complete with `value`; False (and nothing changes) if already complete."""
        with self._lock:
            return self._settle(value, None)

    def set_exception(self, error: BaseException) -> bool:
        """Complete with `error`, which `wait()` raises; False if already complete."""
        with self._lock:
            return self._settle(None, error)

    def _settle(self, value: Any, error: BaseException | None) -> bool:
        # The caller holds self._lock (or no other thread can see the object yet).
        if self._event.is_set():
            return False
        self._result, self._error = value, error
        self.done_at = time.monotonic()
        self._event.set()
        return True

    # ---- consumer side ----------------------------------------------------------------
    def done(self) -> bool:
        """Whether it has completed (with a result or an error)."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until complete (at most `timeout` seconds, then raise
        `_timeout_error(timeout)`); return the result or raise the error."""
        if not self._event.wait(timeout):
            raise self._timeout_error(timeout)
        if self._error is not None:
            raise self._error
        return self._value()

    def _timeout_error(self, timeout: float | None) -> BaseException:
        return TimeoutError(f"not complete after {timeout} s")

    def _value(self) -> Any:
        return self._result
