import logging
import os

import numpy as np
import pytest

from geeps.server import checkpoint


def arrays(v):
    return {"w/rows": np.full((3, 2), v, np.float32), "w/slot/m": np.arange(6.0).reshape(3, 2)}


def test_round_trip_and_newest(tmp_path):
    d = str(tmp_path)
    for c in (2, 4, 6, 8):
        checkpoint.write(d, 0, c, {"num_workers": 2, "tables": []}, arrays(c))
    assert checkpoint.clocks(d, 0) == [8, 6, 4], "keeps the newest three"
    clock, header, got = checkpoint.newest(d, 0)
    assert clock == 8 and header["num_workers"] == 2
    np.testing.assert_array_equal(got["w/rows"], np.full((3, 2), 8))
    np.testing.assert_array_equal(got["w/slot/m"], np.arange(6.0).reshape(3, 2))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_newest_is_skipped_with_a_warning_naming_it(tmp_path, caplog, damage):
    d = str(tmp_path)
    checkpoint.write(d, 1, 2, {"num_workers": 1, "tables": []}, arrays(2))
    bad = checkpoint.write(d, 1, 4, {"num_workers": 1, "tables": []}, arrays(4))
    with open(bad, "r+b") as f:
        if damage == "truncate":
            f.truncate(os.path.getsize(bad) // 2)
        else:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
    with caplog.at_level(logging.WARNING, logger="geeps.server.checkpoint"):
        clock, _, got = checkpoint.newest(d, 1)
    assert clock == 2
    assert os.path.basename(bad) in caplog.text
    assert checkpoint.valid_clocks(d, 1) == [2]


def test_a_crash_before_rename_leaves_the_previous_one_intact_and_in_use(tmp_path):
    d = str(tmp_path)
    checkpoint.write(d, 0, 2, {"num_workers": 1, "tables": []}, arrays(2))

    class Crash(Exception):
        pass

    def crash(tmp):
        assert os.path.exists(tmp)          # the new one is fully written, not yet named
        raise Crash()
    with pytest.raises(Crash):
        checkpoint.write(d, 0, 4, {"num_workers": 1, "tables": []}, arrays(4),
                         before_rename=crash)
    assert checkpoint.clocks(d, 0) == [2]
    clock, _, got = checkpoint.newest(d, 0)
    assert clock == 2 and got["w/rows"][0, 0] == 2


def test_drop_after_removes_a_dead_timeline(tmp_path):
    d = str(tmp_path)
    for c in (3, 6, 9):
        checkpoint.write(d, 0, c, {"num_workers": 1, "tables": []}, arrays(c))
    checkpoint.drop_after(d, 0, 3)
    assert checkpoint.clocks(d, 0) == [3]


def forge(path, header):
    """A checkpoint file whose checksum is valid but whose header is `header`."""
    import hashlib
    import json
    import struct
    head = json.dumps(header).encode()
    body = checkpoint.MAGIC + struct.pack("<Q", len(head)) + head + b"\0" * 16
    with open(path, "wb") as f:
        f.write(body + hashlib.sha256(body).digest())


MALFORMED = [
    {"rank": 0, "clock": 4},                                            # no 'arrays'
    [1, 2, 3],                                                          # not an object
    {"num_workers": 1, "tables": [], "arrays": [{"name": "x"}]},        # array fields
    {"num_workers": 1, "tables": [], "arrays": [{"name": "x", "dtype": "<f4", "shape": [9999],
                                                 "offset": 0, "nbytes": 4}]},   # too long
    {"num_workers": 1, "tables": [], "arrays": [{"name": "x", "dtype": "nope", "shape": [1],
                                                 "offset": 0, "nbytes": 4}]},
    {"num_workers": 1, "arrays": []},                                   # no 'tables'
]


@pytest.mark.parametrize("header", MALFORMED)
def test_a_malformed_header_with_a_valid_checksum_is_skipped_like_damage(tmp_path, caplog,
                                                                          header):
    d = str(tmp_path)
    checkpoint.write(d, 0, 2, {"num_workers": 1, "tables": []}, arrays(2))
    forge(checkpoint.path_for(d, 0, 4), header)
    with caplog.at_level(logging.WARNING, logger="geeps.server.checkpoint"):
        clock, _, got = checkpoint.newest(d, 0)
    assert clock == 2 and got["w/rows"][0, 0] == 2
    assert "skipping checkpoint" in caplog.text and "clock-000000004" in caplog.text
    assert checkpoint.valid_clocks(d, 0) == [2]


def test_a_server_starts_from_the_older_checkpoint_when_the_newest_header_is_malformed(
        tmp_path, caplog):
    """F5: `KeyError: 'tables'` at start stopped the server; the header a server loads
    (its tables' specs) is checked by loading it, and skipped like damage."""
    from geeps.job import env as config
    from geeps.server.server import Server
    from geeps.server.shard import ShardState
    from geeps.wire import protocol as P
    from geeps.wire.ports import free_port
    d = str(tmp_path)
    good = ShardState(0, 1)
    good.handle(b"p", P.request(
        "create", 1, table="t", n_rows=2, row_width=1, lo=0, hi=2, rule="add", hyper={},
        per_clock=True, init=False))
    checkpoint.write(d, 0, 2, *good.save_state())
    # valid checksum and arrays, but a table spec without its fields
    checkpoint.write(d, 0, 4, {"num_workers": 1, "tables": [{"table": "t"}]}, arrays(4))
    cfg = config.load({"GEEPS_ROLE": "server", "GEEPS_SERVERS": f"127.0.0.1:{free_port()}",
                       "GEEPS_BIND_HOST": "127.0.0.1", "GEEPS_CHECKPOINT_DIR": d})
    with caplog.at_level(logging.WARNING):
        server = Server(cfg)
    try:
        assert server.state.base == 2 and set(server.state.tables) == {"t"}
        assert "clock-000000004" in caplog.text and "malformed" in caplog.text
    finally:
        server.close()
