"""Server functions (geeps.server.functions) and sparse pushes, on a ShardState: each
function against a NumPy reference, user functions from an installed entry point,
and the refusals that name what is at fault."""
import json
import sys

import numpy as np
import pytest

from geeps.server import functions as F
from geeps.server.shard import ShardState
from geeps.wire import protocol as P

N, W, WORKERS = 6, 4, 2
LR = 0.5


def reply(out):
    (peer, frames), = out
    return json.loads(frames[0]), frames[1:]


def create(st, functions, rule="sgd", hyper=None, per_clock=True, init=None):
    init = np.linspace(-2, 2, N * W, dtype=np.float32).reshape(N, W) if init is None else init
    return reply(st.handle(b"p", P.request(
        "create", 1, [init], table="t", n_rows=N, row_width=W, lo=0, hi=N, rule=rule,
        hyper={"lr": LR} if hyper is None else hyper, per_clock=per_clock, init=True,
        functions=functions)))[0], init


def sparse_push(st, worker, clock, seq, rows, cols, vals, lo=0, hi=N):
    offsets = ((np.asarray(rows) - lo) * W + np.asarray(cols)).astype("<u4")
    return reply(st.handle(b"p", P.request(
        "push", 1, [offsets, np.asarray(vals, np.float32)], table="t", worker=worker,
        session=7, clock=clock, seq=seq, rows={"sparse": [len(offsets), lo, hi]})))[0]


def soft(x, t):
    return np.sign(x) * np.maximum(np.abs(x) - t, 0)


REFERENCES = {
    "prox-l1": ({"l1": 0.6}, lambda w: soft(w, LR * 0.6)),
    "prox-l2": ({"l2": 0.6}, lambda w: w / (1 + LR * 0.6)),
    "prox-elastic-net": ({"l1": 0.6, "l2": 0.3},
                         lambda w: soft(w, LR * 0.6) / (1 + LR * 0.3)),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_proximal_function_matches_numpy_after_sparse_pushes(name):
    args, ref = REFERENCES[name]
    st = ShardState(0, WORKERS)
    h, init = create(st, [{"name": name, "args": args}])
    assert h["ok"] and h["functions"] == [{"name": name, "args": args}], h
    rng = np.random.default_rng(1)
    g = [rng.standard_normal((N, W)).astype(np.float32) for _ in range(WORKERS)]
    touched = np.zeros((N, W), bool)
    touched[[1, 1, 4], [0, 3, 2]] = True
    dense_sum = np.zeros((N, W), np.float64)
    for w in range(WORKERS):
        r, c = np.nonzero(touched)
        assert sparse_push(st, w, 0, 0, r, c, g[w][r, c])["ok"]
        dense_sum[touched] += g[w][touched]
        st.handle(b"p", P.request("clock", 2, worker=w, clock=0))
    want = init.astype(np.float64).copy()
    rows = [1, 4]                     # the rows a clock updates: the rule, then the function
    want[rows] = ref(want[rows] - LR * dense_sum[rows] / WORKERS)
    np.testing.assert_allclose(st.tables["t"].rows, want, rtol=0, atol=1e-6)
    assert (st.tables["t"].rows[[0, 2, 3, 5]] == init[[0, 2, 3, 5]]).all(), \
        "rows no push touched were changed"


def test_clip_norm_clips_the_mean_gradient_before_the_rule():
    st = ShardState(0, WORKERS)
    h, init = create(st, [{"name": "clip-norm", "args": {"max_norm": 1.0}}], per_clock=False,
                     hyper={"lr": 1.0}, init=np.zeros((N, W), np.float32))
    assert h["ok"], h
    r, c = np.array([0, 2, 5]), np.array([1, 1, 3])
    assert sparse_push(st, 0, 0, 0, r, c, [3.0, 4.0, 0.0])["ok"]
    mean = np.array([3.0, 4.0, 0.0]) / WORKERS         # norm 2.5 -> clipped to 1
    want = np.zeros((N, W))
    want[r, c] = -mean / np.linalg.norm(mean)
    np.testing.assert_allclose(st.tables["t"].rows, want, rtol=0, atol=1e-6)


def test_function_survives_a_checkpoint_round_trip():
    st = ShardState(0, 1)
    create(st, [{"name": "prox-l1", "args": {"l1": 1.0}}])
    header, arrays = st.save_state()
    other = ShardState(0, 1)
    other.load_state(0, header, arrays)
    assert other.tables["t"].spec() == st.tables["t"].spec()


@pytest.mark.parametrize("functions,needle", [
    ([{"name": "prox-l9"}], "'prox-l9' is not installed"),
    ([{"name": "prox-l1"}], "needs argument 'l1'"),
    ([{"name": "prox-l1", "args": {"l1": -1}}], "must be >= 0"),
    ([{"name": "prox-l1", "args": {"l1": "big"}}], "must be a finite number"),
    ([{"name": "os.system", "args": {}}], "not installed"),
    ("prox-l1", "must be a list"),
])
def test_unknown_or_bad_function_is_refused_by_name_and_creates_nothing(functions, needle):
    st = ShardState(0, 1)
    h, _ = create(st, functions)
    assert not h["ok"] and "functions" in h["error"] and needle in h["error"], h
    assert st.tables == {}


def test_user_function_from_an_installed_entry_point(tmp_path, monkeypatch):
    """A package installed on the path (a real dist-info, as pip writes it) registers
    a function under geeps.server_functions; a shard finds it by name."""
    (tmp_path / "myfns.py").write_text(
        "def halve(values, *, lr, args):\n    values *= args.get('by', 0.5)\n")
    dist = tmp_path / "myfns-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myfns\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[geeps.server_functions]\nhalve = myfns:halve\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    st = ShardState(0, 1)
    h, init = create(st, [{"name": "halve", "args": {"by": 0.25}}], rule="add", hyper={})
    assert h["ok"], h
    assert sparse_push(st, 0, 0, 0, [2], [1], [1.0])["ok"]
    st.handle(b"p", P.request("clock", 2, worker=0, clock=0))
    want = init.copy()
    want[2] = (want[2] + np.array([0, 1, 0, 0], np.float32)) * 0.25
    np.testing.assert_allclose(st.tables["t"].rows, want, rtol=0, atol=1e-6)
    sys.modules.pop("myfns", None)


@pytest.mark.parametrize("frames_of,needle", [
    (lambda: ([np.array([0, 30], "<u4"), np.ones(2, np.float32)], 2, 0, N),
     "offset 30 outside the 6 x 4"),
    (lambda: ([np.array([0, 1], "<u4"), np.ones(3, np.float32)], 2, 0, N),
     "frame 2 (sparse values): expected 2 float32"),
    (lambda: ([np.array([0, 1, 2], "<u4"), np.ones(2, np.float32)], 2, 0, N),
     "frame 1 (sparse offsets): expected 2 uint32"),
    (lambda: ([np.array([3, 3], "<u4"), np.ones(2, np.float32)], 2, 0, N),
     "strictly increasing"),
    (lambda: ([np.array([5, 2], "<u4"), np.ones(2, np.float32)], 2, 0, N),
     "strictly increasing"),
    (lambda: ([np.array([0], "<u4"), np.ones(1, np.float32)], 1, 2, N + 3),
     "outside table rows"),
    (lambda: ([np.array([0], "<u4"), np.array([np.nan], np.float32)], 1, 0, N),
     "non-finite"),
])
def test_malformed_sparse_push_is_refused_naming_the_frame(frames_of, needle):
    st = ShardState(0, 1)
    create(st, [])
    before = st.tables["t"].rows.copy()
    payload, nnz, lo, hi = frames_of()
    h, _ = reply(st.handle(b"p", P.request(
        "push", 1, payload, table="t", worker=0, session=7, clock=0, seq=0,
        rows={"sparse": [nnz, lo, hi]})))
    assert not h["ok"] and needle in h["error"], h
    st.handle(b"p", P.request("clock", 2, worker=0, clock=0))
    assert (st.tables["t"].rows == before).all()
    assert st.tables["t"].pending == {}


def test_a_pull_cannot_be_sparse():
    st = ShardState(0, 1)
    create(st, [])
    h, _ = reply(st.handle(b"p", P.request("pull", 1, [], table="t", need=0,
                                           rows={"sparse": [0, 0, 1]})))
    assert not h["ok"] and "only a push can be sparse" in h["error"]


def test_resolve_rejects_a_plugin_that_does_not_load(tmp_path, monkeypatch):
    dist = tmp_path / "broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[geeps.server_functions]\nbad = nosuchmod:f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="'bad': its entry point does not load"):
        F.resolve([{"name": "bad"}])


def test_push_bytes_count_what_came_not_the_dense_rows():
    """A sparse push of 3 values over 2 rows counts its 3 offsets and 3 values (24
    bytes), not the 2 dense rows it becomes (32 bytes); a dense push counts its values."""
    st = ShardState(0, 1)
    create(st, [], rule="add", hyper={})
    assert sparse_push(st, 0, 0, 0, [1, 1, 4], [0, 3, 2], [1.0, 2.0, 3.0])["ok"]
    assert st.stats["push_bytes"] == 3 * 4 + 3 * 4
    h, _ = reply(st.handle(b"p", P.request(
        "push", 2, [np.ones((2, W), np.float32)], table="t", worker=0, session=7, clock=0,
        seq=1, rows={"range": [0, 2]})))
    assert h["ok"], h
    assert st.stats["push_bytes"] == 24 + 2 * W * 4
