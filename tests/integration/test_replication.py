"""Replication (issue 16): with spec.servers.replication = 2 each segment's primary
forwards a clock's aggregated sum to its replica, which applies the same rule, so
under BSP the replica holds the primary's bits (rule state included) at every clock.
Real `geeps server` processes over loopback."""
import numpy as np
import pytest

from geeps.job import membership as ms
from geeps.wire import protocol as P
from tests.cluster import Cluster
from tests.helpers import wait_for

pytestmark = pytest.mark.integration
ROWS, WIDTH = 300, 4


def ask(client, server: int, op: str, **fields) -> dict:
    """One request to one server, through the client's own connection."""
    from geeps.client.iothread import Request
    h = client._io.submit([Request(server, op, fields)], combine=lambda parts: parts)
    return h.wait(10)[0][0]


def segment_digests(client, m, name: str, n_rows: int) -> list[tuple[str, ...]]:
    """Each segment's digest on each of its holders (primary first)."""
    out = []
    for seg in m.segments(n_rows):
        out.append(tuple(ask(client, k, "digest", table=name, lo=seg.lo)["digest"]
                         for k in seg.holders))
    return out


@pytest.mark.parametrize("rule,hyper", [("adam", {"lr": 0.01}), ("momentum", {"lr": 0.05})])
def test_replicas_hold_the_primarys_bits_at_every_clock(rule, hyper):
    with Cluster(servers=2, workers=2, GEEPS_REPLICATION="2") as cl:
        c0, c1 = cl.client(0, replication=2), cl.client(1, replication=2)
        m = ms.initial(cl.servers, 2)
        assert all(len(s.holders) == 2 for s in m.segments(ROWS))
        init = np.linspace(-1, 1, ROWS * WIDTH, dtype=np.float32).reshape(ROWS, WIDTH)
        t0 = c0.create_table("w", ROWS, WIDTH, rule, init=init, **hyper)
        t1 = c1.open_table("w")
        rows = np.arange(ROWS, dtype=np.float32)[:, None]
        for clock in range(4):
            for c, t in ((c0, t0), (c1, t1)):
                g = np.sin(rows * 0.01 + clock + c.worker).astype(np.float32)
                c.push(t, range(ROWS), np.repeat(g, WIDTH, axis=1))
                if clock % 2:       # some clocks by id too: the gather-scatter path
                    c.push(t, np.arange(0, ROWS, 7), np.ones((len(range(0, ROWS, 7)), WIDTH),
                                                          np.float32))
            c0.clock(), c1.clock()
            values, data_clock = c0.pull(t0)        # answered once the replicas acked
            assert data_clock >= clock + 1
            digests = segment_digests(c0, m, "w", ROWS)
            for seg, d in zip(m.segments(ROWS), digests):
                assert len(set(d)) == 1, f"clock {clock}: segment [{seg.lo}, {seg.hi}) " \
                                         f"differs between its holders {seg.holders}"
        stats = c0.stats()
        assert all(s.get("replicated", 0) >= 4 for s in stats), stats
        assert not np.array_equal(values, init)


def test_a_request_of_an_old_epoch_is_refused_with_the_membership():
    with Cluster(servers=2, workers=1, GEEPS_REPLICATION="2") as cl:
        c = cl.client(0, replication=2)
        t = c.create_table("w", ROWS, WIDTH, "sgd", lr=0.1)
        m = ms.initial(cl.servers, 2)
        m2 = ms.Membership(2, m.servers, m.runs, m.replication)  # same rows, epoch 2
        for k in (0, 1):
            r = ask(c, k, "membership", membership=m2.to_json())
            assert r["epoch"] == 2 and r["ready"] is True
        # the client still routes by epoch 1: refused as stale, it adopts epoch 2 and
        # sends the push again, which is then applied
        c.push(t, range(ROWS), np.ones((ROWS, WIDTH), np.float32))
        c.clock()
        assert c._io.membership.epoch == 2
        values, _ = c.pull(t)
        np.testing.assert_allclose(values, -0.1)


# ---- failover without rollback ---------------------------------------------------------
CLOCKS = 12


def _grad(worker: int, clock: int) -> np.ndarray:
    rows = np.arange(ROWS, dtype=np.float32)[:, None]
    return np.repeat(np.sin(rows * 0.01 + clock * 0.1 + worker).astype(np.float32), WIDTH,
                     axis=1)


def send_membership(address: str, m) -> dict:
    """The tiny stand-in for the coordinator: one `membership` request to one server."""
    import zmq
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{address}")
    try:
        sock.send_multipart(P.request("membership", 1, membership=m.to_json()))
        assert sock.poll(10_000), f"{address} did not answer the membership"
        return P.decode_header(sock.recv_multipart()[0])
    finally:
        sock.close()


def train(kill_at: int | None = None):
    """2 workers (threads), 2 servers, replication 2, BSP, CLOCKS clocks of adam; with
    `kill_at`, server 1 is SIGKILLed once both workers finished that many clocks and
    server 0 is told (epoch 2) that its replica of server 1's rows is now primary."""
    import os
    import signal
    import threading
    import time
    init = np.linspace(-1, 1, ROWS * WIDTH, dtype=np.float32).reshape(ROWS, WIDTH)
    with Cluster(servers=2, workers=2, timeout=20, GEEPS_REPLICATION="2") as cl:
        clients = [cl.client(w, replication=2) for w in range(2)]
        tables = [clients[0].create_table("w", ROWS, WIDTH, "adam", init=init, lr=0.01)]
        tables.append(clients[1].open_table("w"))
        progress, errors = [0, 0], []

        def work(w):
            c, t = clients[w], tables[w]
            try:
                while c.clock_value < CLOCKS:
                    c.push(t, range(ROWS), _grad(w, c.clock_value))
                    c.clock()
                    c.pull(t)
                    progress[w] = c.clock_value
                    time.sleep(0.05)
            except BaseException as e:      # noqa: BLE001 -- the test reports it
                errors.append(e)
        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(2)]
        for th in threads:
            th.start()
        if kill_at is not None:
            wait_for(lambda: min(progress) >= kill_at or errors, 60, what="the kill clock")
            os.kill(cl.procs[1].pid, signal.SIGKILL)
            cl.procs[1].wait(10)
            reply = send_membership(cl.servers[0], ms.fail(ms.initial(cl.servers, 2), 1))
            assert reply["ok"] and reply["epoch"] == 2, reply
        for th in threads:
            th.join(120)
        assert not errors, errors
        assert not any(th.is_alive() for th in threads)
        final = clients[0].pull(tables[0])[0]
        return final, [c.rollbacks for c in clients], [c._io.failovers for c in clients]


def test_a_killed_primary_fails_over_to_its_replica_with_the_same_bits():
    reference, _, _ = train()
    final, rollbacks, failovers = train(kill_at=4)
    assert rollbacks == [0, 0]              # nobody rolled back
    assert all(f >= 1 for f in failovers), failovers
    assert final.tobytes() == reference.tobytes()
