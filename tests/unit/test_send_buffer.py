"""GEEPS_SEND_BUFFER reaches a worker's connections to its shards (docs/lab.md: a small
kernel send buffer keeps a worker's flows to its shards even on a deep-queued link)."""
from __future__ import annotations

import zmq

from geeps.job import env
from geeps.wire.transport import connect_dealer


def test_the_send_buffer_is_set_on_each_shard_connection_and_left_alone_by_default():
    ctx = zmq.Context.instance()
    tuned = connect_dealer(ctx, "tcp://127.0.0.1:9", env.load({"GEEPS_SEND_BUFFER": "64Ki"}))
    default = connect_dealer(ctx, "tcp://127.0.0.1:9", env.load({}))
    try:
        assert tuned.getsockopt(zmq.SNDBUF) == 64 << 10
        assert default.getsockopt(zmq.SNDBUF) == -1     # ZeroMQ's "the kernel decides"
    finally:
        tuned.close(0)
        default.close(0)
