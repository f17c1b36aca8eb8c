"""Push filters (geeps.tables.filters) and the options that choose them (tableopts)."""
import math

import numpy as np
import pytest

from geeps.job import tableopts
from geeps.tables.filters import PushFilter, filter_spec

N_ROWS, WIDTH, CLOCKS = 12, 8, 100
SPECS = {
    "significant": filter_spec("significant", threshold=0.5),
    "topk": filter_spec("topk", fraction=0.05),
    "randomk": filter_spec("randomk", fraction=0.1, seed=3),
    "kkt": filter_spec("kkt", l1=0.8, feedback=True),
}


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_error_feedback_is_exact_over_100_clocks(kind):
    """Over 100 pushes of random gradients (ranges, ids, repeated rows), for every
    coordinate: the fsum of everything sent plus the residual equals the fsum of the
    raw gradients exactly (the module docstring says why it is exact)."""
    rng = np.random.default_rng(17)
    f = PushFilter(SPECS[kind], N_ROWS, WIDTH)
    raw = [[[] for _ in range(WIDTH)] for _ in range(N_ROWS)]
    sent = [[[] for _ in range(WIDTH)] for _ in range(N_ROWS)]
    sent_any = 0
    for clock in range(CLOCKS):
        if clock % 3:
            a = int(rng.integers(0, N_ROWS - 1))
            rows = range(a, int(rng.integers(a + 1, N_ROWS + 1)))
            ids = np.arange(rows.start, rows.stop)
        else:
            ids = np.sort(rng.choice(N_ROWS, size=5, replace=False))
            rows = ids
        g = (rng.standard_normal((len(ids), WIDTH)) *
             10.0 ** rng.integers(-3, 3, (len(ids), 1))).astype(np.float32)
        weights = np.where(rng.random((len(ids), WIDTH)) < 0.7, 0.0, 1.0).astype(np.float32)
        out_ids, pos, vals = f.apply(rows, g, weights)
        assert vals.dtype == np.float32 and (np.diff(pos) > 0).all()
        for r, row in enumerate(ids):
            for c in range(WIDTH):
                raw[row][c].append(float(g[r, c]))
        for p, v in zip(pos, vals):
            sent[out_ids[p // WIDTH]][p % WIDTH].append(float(v))
        sent_any += len(pos)
    total = N_ROWS * WIDTH
    assert 0 < sent_any < CLOCKS * total, "the filter sent nothing or everything"
    for row in range(N_ROWS):
        for c in range(WIDTH):
            assert math.fsum(sent[row][c] + [f.residual[row, c]]) == math.fsum(raw[row][c]), \
                (kind, row, c)
    assert f.residual_norm() > 0


def test_topk_sends_the_largest_and_randomk_the_count():
    g = np.arange(100, dtype=np.float32).reshape(10, 10) - 50
    _, pos, vals = PushFilter(filter_spec("topk", fraction=0.03), 10, 10).apply(range(10), g)
    assert sorted(np.abs(vals)) == [49, 49, 50]
    _, pos, _ = PushFilter(filter_spec("randomk", fraction=0.03), 10, 10).apply(range(10), g)
    assert len(pos) == 3


def test_kkt_skips_zero_weights_within_l1_and_drops_them_by_default():
    f = PushFilter(filter_spec("kkt", l1=1.0), 1, 4)
    g = np.array([[0.5, 2.0, 0.5, -1.5]], np.float32)
    w = np.array([[0.0, 0.0, 0.3, 0.0]], np.float32)
    _, pos, vals = f.apply(range(1), g, w)
    assert pos.tolist() == [1, 2, 3] and vals.tolist() == [2.0, 0.5, -1.5]
    assert f.residual_norm() == 0.0, "kkt drops what the optimality condition skips"
    with pytest.raises(ValueError, match="needs the weights"):
        f.apply(range(1), g)


def test_significant_is_relative_to_the_largest():
    f = PushFilter(filter_spec("significant", threshold=0.1), 1, 4)
    _, pos, _ = f.apply(range(1), np.array([[10.0, 0.5, -1.0, 0.0]], np.float32))
    assert pos.tolist() == [0, 2]


def test_mask_leaves_other_coordinates_whole():
    f = PushFilter(filter_spec("topk", fraction=0.01), 2, 4)
    mask = np.array([[True] * 4, [False] * 4])
    _, pos, _ = f.apply(range(2), np.ones((2, 4), np.float32), mask=mask)
    assert len(pos) == 5 and pos[1:].tolist() == [4, 5, 6, 7] and pos[0] < 4


@pytest.mark.parametrize("kind,params,needle", [
    ("topk", {"fraction": 0}, "fraction must be > 0"),
    ("topk", {"fraction": 2}, "fraction must be a number in"),
    ("topk", {"threshold": 0.1}, "takes no parameter 'threshold'"),
    ("bloom", {}, "filter type 'bloom'"),
])
def test_filter_spec_refuses_naming_the_parameter(kind, params, needle):
    with pytest.raises(ValueError, match=needle):
        filter_spec(kind, **params)


def test_unknown_function_is_refused_by_name_and_builtins_check_args():
    with pytest.raises(ValueError, match="'prox-l7' is not installed"):
        tableopts.function_spec("prox-l7")
    with pytest.raises(ValueError, match="needs argument 'l1'"):
        tableopts.function_spec("prox-l1")
    with pytest.raises(ValueError, match="takes no argument 'l3'"):
        tableopts.function_spec("prox-l2", {"l2": 1, "l3": 2})
    assert tableopts.function_spec("prox-elastic-net", {"l1": 1, "l2": 0.5})["args"] == \
        {"l1": 1, "l2": 0.5}


def test_options_parse_from_the_environment_text():
    text = tableopts.to_text([{"name": "w", "filter": {"type": "kkt", "l1": 0.5},
                               "functions": [{"name": "prox-l1", "args": {"l1": 0.5}}]}])
    opts = tableopts.parse(text)["w"]
    assert opts.filter.kind == "kkt" and not opts.filter.feedback
    assert opts.functions == ({"name": "prox-l1", "args": {"l1": 0.5}},)
    assert tableopts.parse("") == {}
