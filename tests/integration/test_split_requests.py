"""A request in flight when the membership cuts its rows in two (issue 16): how the
client splits range, by-id and sparse requests along the new segments, and puts a
pull's rows back in the caller's order (the pure parts; the path through real servers
runs in tests/integration/test_membership_changes.py)."""
import numpy as np
import pytest

from geeps.client.iothread import Request, _joined, _parts

pytestmark = pytest.mark.integration


def test_pieces_of_a_by_id_and_a_sparse_push_and_their_reassembly():
    ids = np.array([9, 1, 5, 2], np.int64)
    r = Request(0, "push", {"table": "w", "rows": {"ids": 4}},
                [ids, np.arange(8, dtype=np.float32).reshape(4, 2)])
    pieces = _parts(r, np.array([0, 4, 8]), 2)
    assert [(p[0][0], list(p[0][1][0])) for p in pieces] == \
        [({"ids": 2}, [1, 2]), ({"ids": 1}, [5]), ({"ids": 1}, [9])]
    np.testing.assert_array_equal(pieces[0][0][1][1], [[2, 3], [6, 7]])
    # a pull's parts come back per segment and are put back in the caller's order
    vals = {i: np.asarray(p[0][1][0], np.float32).tobytes() for i, p in enumerate(pieces)}
    back = np.frombuffer(_joined(pieces, vals, 4), np.float32)
    np.testing.assert_array_equal(back, ids)
    # sparse: offsets (row - lo) * width + column, rows [2, 10)
    offs = np.array([0, 3, 5, 12, 15], np.uint32)      # rows 2, 3, 4, 8, 9
    r = Request(0, "push", {"table": "w", "rows": {"sparse": [5, 2, 10]}},
                [offs, np.arange(5, dtype=np.float32)])
    parts = _parts(r, np.array([0, 4, 8]), 2)
    assert [p[0][0] for p in parts] == [{"sparse": [2, 2, 4]}, {"sparse": [1, 4, 8]},
                                        {"sparse": [2, 8, 10]}]
    assert [list(p[0][1][0]) for p in parts] == [[0, 3], [1], [0, 3]]
    assert [list(p[0][1][1]) for p in parts] == [[0, 1], [2], [3, 4]]

