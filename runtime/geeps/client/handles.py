"""Handles returned by asynchronous calls: `wait()` blocks until every part answered."""
from __future__ import annotations

import threading
from typing import Any, Callable


class Handle:
    """Completion of one asynchronous call made of one request per shard.

        h = client.pull_async(table); ...; values, clock = h.wait()

    `wait()` may be called from any thread, any number of times; it returns the
    result or raises the first error a part failed with."""

    def __init__(self, n_parts: int, combine: Callable[[list], Any]):
        self._parts: list = [None] * n_parts
        self._left = n_parts
        self._combine = combine
        self._error: BaseException | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._result: Any = None
        self._combined = False
        if n_parts == 0:
            self._event.set()

    def _resolve(self, index: int, value: Any) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._parts[index] = value
            self._left -= 1
            if self._left == 0:
                self._event.set()

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._error = error
            self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        if not self._event.wait(timeout):
            from geeps.errors import WaitTimeout
            raise WaitTimeout(f"no answer within {timeout} s")
        if self._error is not None:
            raise self._error
        with self._lock:
            if not self._combined:
                self._result = self._combine(self._parts)
                self._combined = True
                self._parts = []
        return self._result
