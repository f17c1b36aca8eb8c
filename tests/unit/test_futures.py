"""geeps.futures.Future and what builds on it: the client's Handle, the worker's Job."""
import threading

import pytest

from geeps.errors import WaitTimeout
from geeps.futures import Future
from geeps.client.handles import Handle
from geeps.worker.cache import Job


def test_the_first_outcome_stands():
    f = Future()
    assert not f.done()
    assert f.set_result(1) is True
    assert f.set_exception(ValueError("late")) is False
    assert f.set_result(2) is False
    assert f.done() and f.wait() == 1 and f.wait(0) == 1


def test_an_error_is_raised_to_every_waiter():
    f = Future()
    f.set_exception(KeyError("x"))
    for _ in range(2):
        with pytest.raises(KeyError):
            f.wait()


def test_wait_blocks_until_another_thread_completes_it():
    f = Future()
    threading.Timer(0.05, f.set_result, ("ok",)).start()
    assert f.wait(5) == "ok"


def test_timeouts_name_what_is_late():
    with pytest.raises(TimeoutError):
        Future().wait(0.01)
    with pytest.raises(WaitTimeout, match="no answer within"):
        Handle(1, lambda parts: parts).wait(0.01)
    with pytest.raises(TimeoutError, match="background transfer") as e:
        Job(None).wait(0.01)
    assert not isinstance(e.value, WaitTimeout)


def test_a_handle_combines_its_parts_once_when_the_last_arrives():
    calls = []

    def combine(parts):
        calls.append(list(parts))
        return sum(parts)
    h = Handle(3, combine)
    h.set_part(2, 30)
    h.set_part(0, 10)
    assert not h.done()
    h.set_part(1, 20)
    assert h.done()
    assert calls == []                  # combined by the first waiter, not the producer
    assert h.wait() == 60 and h.wait() == 60
    assert calls == [[10, 20, 30]]
    h.set_exception(RuntimeError("too late"))  # complete already: ignored
    assert h.wait() == 60


def test_a_failed_part_fails_the_handle_and_later_parts_are_ignored():
    h = Handle(2, lambda parts: parts)
    h.set_part(0, "a")
    h.set_exception(ConnectionError("gone"))
    h.set_part(1, "b")
    with pytest.raises(ConnectionError):
        h.wait()


def test_a_handle_of_no_parts_is_done_at_once():
    h = Handle(0, lambda parts: ("combined", parts))
    assert h.done() and h.wait() == ("combined", [])
