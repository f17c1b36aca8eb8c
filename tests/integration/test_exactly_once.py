"""A push whose reply is lost is re-sent by the client and applied once; a server
that is not there is named in the error."""
import contextlib
import threading
import time

import numpy as np
import pytest
import zmq

import geeps
from geeps.wire import protocol as P
from tests.cluster import Cluster
from tests.helpers import free_port

pytestmark = pytest.mark.integration


class LossyProxy(threading.Thread):
    """Forwards one client's traffic to one server over real TCP sockets, dropping the
    reply to the first push it forwards (as a network fault or a crash would): the
    whole message, when the push was part of a batch."""

    def __init__(self, server: str):
        super().__init__(daemon=True)
        self.address = f"127.0.0.1:{free_port()}"
        self.server = server
        self.dropped = []
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self):
        ctx = zmq.Context.instance()
        front = ctx.socket(zmq.ROUTER)
        front.bind(f"tcp://{self.address}")
        back = ctx.socket(zmq.DEALER)
        back.connect(f"tcp://{self.server}")
        self.ready.set()
        push_ids = set()
        peer = None
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        try:
            while not self.stop.is_set():
                for sock, _ in poller.poll(50):
                    if sock is front:
                        peer, *frames = front.recv_multipart()
                        h = P.decode_header(frames[0])
                        for part in h.get("parts", [h]):      # a batch: its requests
                            if part.get("op") == "push":
                                push_ids.add(part["id"])
                        back.send_multipart(frames)
                    else:
                        frames = back.recv_multipart()
                        h = P.decode_header(frames[0])
                        ids = {part.get("id") for part in h.get("parts", [h])}
                        if ids & push_ids and not self.dropped:
                            self.dropped.append(h)
                            continue
                        front.send_multipart([peer, *frames])
        finally:
            front.close(0)
            back.close(0)


@contextlib.contextmanager
def through_lossy_proxy():
    """A client of one server whose first push reply is dropped, and a table of it."""
    with Cluster(servers=1, workers=1) as cl:
        proxy = LossyProxy(cl.servers[0])
        proxy.start()
        proxy.ready.wait(5)
        try:
            c = geeps.Client([proxy.address], 0, 1, "bsp", timeout=10)
            yield c, c.create_table("w", 4, 2, rule="add"), proxy
            c.close()
        finally:
            proxy.stop.set()
            proxy.join(5)


def assert_applied_once(c, t):
    values, clock = c.pull(t)
    assert clock == 1
    np.testing.assert_array_equal(values, np.ones((4, 2)))   # once, not twice
    assert c.stats()[0]["duplicates"] == 1                   # the retry did arrive


def test_push_resent_after_lost_reply_is_applied_once():
    with through_lossy_proxy() as (c, t, proxy):
        c.push(t, None, np.ones((4, 2), np.float32))   # its reply is dropped
        assert proxy.dropped, "the proxy did not drop the reply: the test proves nothing"
        c.clock()
        assert_applied_once(c, t)


def test_batch_whose_reply_is_lost_is_resent_and_applied_once():
    with through_lossy_proxy() as (c, t, proxy):
        with c.batch():      # one message: push and clock; its reply is dropped
            pushed = c.push_async(t, None, np.ones((4, 2), np.float32))
            clocked = c.clock_async()
        pushed.wait(10)
        assert clocked.wait(10) == 1
        # The dropped message answered both: they did travel as one batch.
        assert proxy.dropped and len(proxy.dropped[0].get("parts", [])) == 2
        assert_applied_once(c, t)


def test_raw_duplicate_push_is_acknowledged_and_dropped():
    with Cluster(servers=1, workers=1) as cl:
        c = cl.client(0)
        t = c.create_table("w", 4, 2, rule="add")
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(f"tcp://{cl.servers[0]}")
        try:
            frames = P.request("push", 1, [np.full((4, 2), 2.0, np.float32)], table="w",
                               worker=0, session=99, clock=0, seq=0, rows={"range": [0, 4]})
            for expect_dup in (False, True):
                sock.send_multipart(frames)
                assert sock.poll(5000)
                h = P.decode_header(sock.recv_multipart()[0])
                assert h["ok"] and bool(h.get("duplicate")) == expect_dup
        finally:
            sock.close(0)
        c.clock()
        np.testing.assert_array_equal(c.pull(t)[0], np.full((4, 2), 2.0))


def test_unreachable_server_is_named_quickly():
    nobody = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(geeps.ServerUnreachable, match=nobody.replace(".", r"\.")):
        geeps.Client([nobody], 0, 1, timeout=1.0)
    assert time.monotonic() - t0 < 10
