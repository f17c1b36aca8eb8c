"""The client's I/O thread never leaves a caller waiting: when it fails, what is pending
and whatever is submitted afterwards fail at once, naming the failure."""
from __future__ import annotations

import pytest

from geeps.client.iothread import IOThread, Request
from geeps.errors import GeepsError


def test_a_failed_io_thread_fails_what_is_pending_and_what_comes_after():
    io = IOThread(["127.0.0.1:9"], timeout=30)      # nothing listens: nothing answers
    io.start()
    try:
        # A header the wire cannot encode makes the thread itself fail (a bug's stand-in).
        bad = io.submit([Request(0, "ping", {"x": object()})], combine=lambda parts: None)
        with pytest.raises(GeepsError, match="I/O thread failed"):
            bad.wait(10)
        io.join(10)
        assert not io.is_alive()
        later = io.submit([Request(0, "ping", {})], combine=lambda parts: None)
        with pytest.raises(GeepsError, match="I/O thread failed"):
            later.wait(1)
    finally:
        io.stop()
