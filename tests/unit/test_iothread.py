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


def test_a_last_push_ends_its_message_but_what_carries_no_values_joins_it():
    """A last push's rows can be summed as soon as its message is in; a later push's
    bytes in the same message would hold them back (a pipelined clock's chunks each
    travel alone). Its refresh and the clock still share its message."""
    import numpy as np
    import zmq

    from geeps.wire import protocol as P

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    io = IOThread([f"127.0.0.1:{port}"], timeout=30)
    io.start()
    try:
        chunk = np.ones((4, 8), np.float32)

        def push(lo, last):
            return Request(0, "push", {"table": "t", "rows": {"range": [lo, lo + 4]},
                                       **({"last": True} if last else {})}, [chunk], seq=True)
        with io.hold():
            for r in (push(0, True), Request(0, "pull", {"table": "t"}), push(4, True),
                      Request(0, "pull", {"table": "t"}), Request(0, "clock", {}),
                      push(8, False), push(12, False)):
                io.submit([r], combine=lambda parts: None)
        messages = []
        while sum(len(m) for m in messages) < 7:
            assert router.poll(10_000), f"only {messages} arrived"
            frames = router.recv_multipart()
            messages.append([h["op"] for h, _ in P.batch_parts(P.decode_header(frames[1]),
                                                                frames[1:])]
                            if P.decode_header(frames[1])["op"] == "batch"
                            else [P.decode_header(frames[1])["op"]])
        assert messages == [["push", "pull"], ["push", "pull", "clock"], ["push", "push"]]
    finally:
        io.stop()
        router.close(0)


WEDGE = """
import os, sys, zmq
from geeps.client.iothread import _unwatch
ctx = zmq.Context()
router = ctx.socket(zmq.ROUTER)
port = router.bind_to_random_port("tcp://127.0.0.1")
dealer = ctx.socket(zmq.DEALER)
mon = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
dealer.connect(f"tcp://127.0.0.1:{port}")
dealer.send(b"hello")
assert router.poll(5000), "never connected"
router.recv_multipart()
if sys.argv[1] == "unwatch":
    _unwatch(dealer)
mon.close(linger=0)              # the monitor's reading end goes first, as at a close
router.close(linger=0)           # and the peer drops the connection meanwhile
# Does the context still move bytes? A fresh pair on it:
r2 = ctx.socket(zmq.ROUTER)
p2 = r2.bind_to_random_port("tcp://127.0.0.1")
d2 = ctx.socket(zmq.DEALER)
d2.connect(f"tcp://127.0.0.1:{p2}")
d2.send(b"x")
print("moves" if r2.poll(3000) else "wedged", flush=True)
os._exit(0)                       # a wedged context would hang its own teardown
"""


def test_a_monitor_is_stopped_before_its_reading_end_closes_or_the_context_wedges():
    """libzmq's I/O thread sends each monitor event with a blocking send; once the
    monitor's reading end is closed, the next event (here the peer dropping the
    connection) blocks that thread for good and every socket of the context stops.
    The I/O thread therefore stops a socket's monitor before closing its reading end
    (_unwatch). The first run shows the hazard is real, so the second one means
    something. A child process each: a wedged context cannot be torn down."""
    import subprocess
    import sys

    def run(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", WEDGE, mode], capture_output=True,
                              text=True, timeout=60).stdout.strip()

    assert run("close") == "wedged"
    assert run("unwatch") == "moves"
