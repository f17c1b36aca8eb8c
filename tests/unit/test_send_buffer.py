"""GEEPS_SEND_BUFFER reaches both ends of every worker-shard connection (docs/lab.md: small
kernel send buffers keep the flows sharing a deep-queued link even)."""

from __future__ import annotations

import zmq

from geeps.job import env
from geeps.wire.transport import bind_router, connect_dealer


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


def test_a_shard_answers_over_the_same_send_buffer():
    ctx = zmq.Context.instance()
    cfg = env.load({"GEEPS_SEND_BUFFER": "32Ki", "GEEPS_INSECURE": "1"})
    sock, auth = bind_router(ctx, "tcp://127.0.0.1:*", cfg)
    try:
        assert sock.getsockopt(zmq.SNDBUF) == 32 << 10
    finally:
        sock.close(0)
        assert auth is None
