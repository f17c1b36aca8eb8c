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
