"""Handles returned by asynchronous calls: `wait()` blocks until every part answered."""
from __future__ import annotations

from typing import Any, Callable

from geeps.errors import WaitTimeout
from geeps.futures import Future


class Handle(Future):
    """Completion of one asynchronous call made of one request per shard.

        h = client.pull_async(table); ...; values, clock = h.wait()

    `wait()` may be called from any thread, any number of times; it returns the
    result or raises the first error a part failed with (WaitTimeout if `timeout`
    seconds pass first). The result is `combine(parts)`, computed once, by the first
    thread that waits for it.

    Producer side (the client's I/O thread, see geeps.client.iothread; not for callers
    of the client): `set_part(i, answer)` for each part, or `set_exception(error)`,
    which completes the handle whatever parts are still missing. `set_result(parts)`
    gives every part at once."""

    def __init__(self, n_parts: int, combine: Callable[[list], Any]):
        super().__init__()
        self._parts: list = [None] * n_parts
        self._left = n_parts
        self._combine = combine
        self._combined = False
        if n_parts == 0:
            self._settle([], None)

    def set_part(self, index: int, value: Any) -> None:
        """Part `index` answered `value`; the handle completes with its last part.
        Ignored once the handle is complete (a part failed, say)."""
        with self._lock:
            if self._event.is_set():
                return
            self._parts[index] = value
            self._left -= 1
            if self._left == 0:
                parts, self._parts = self._parts, []
                self._settle(parts, None)

    def _value(self) -> Any:
        with self._lock:
            if not self._combined:
                self._result = self._combine(self._result)
                self._combined = True
        return self._result

    def _timeout_error(self, timeout: float | None) -> BaseException:
        return WaitTimeout(f"no answer within {timeout} s")
