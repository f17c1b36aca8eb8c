"""geeps.torch.layout and DataParallel's mapping of tensors onto table rows (no servers)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from geeps.torch.parallel import _fingerprint, _tensor_store
from geeps.torch.layout import Layout, Store, flat_view


def test_each_tensor_takes_whole_contiguous_rows():
    lay = Layout([("w", (3, 50)), ("b", (3,)), ("s", ()), ("big", (2, 128))], row_width=128)
    spans = [(s.name, s.lo, s.hi, s.numel) for s in lay.slots]
    assert spans == [("w", 0, 2, 150), ("b", 2, 3, 3), ("s", 3, 4, 1), ("big", 4, 6, 256)]
    assert lay.n_rows == 6 and lay.nbytes == 6 * 128 * 4
    assert lay.by_name["b"].rows == range(2, 3)


def test_buckets_are_row_ranges_of_neighbouring_tensors():
    lay = Layout([(f"t{i}", (100,)) for i in range(7)], row_width=32)     # 4 rows each
    per_slot = lay.buckets(0)
    assert [[s.name for s in b] for b in per_slot] == [[f"t{i}"] for i in range(7)]
    grouped = lay.buckets(2 * 4 * 32 * 4)          # two tensors' bytes per bucket
    assert [len(b) for b in grouped] == [2, 2, 2, 1]
    for b in grouped:                               # contiguous: one range per bucket
        assert all(x.hi == y.lo for x, y in zip(b, b[1:]))
    assert [s for b in grouped for s in b] == lay.slots


def test_store_views_share_memory_both_ways():
    lay = Layout([("a", (2, 3)), ("b", (5,))], row_width=4)
    st = Store(lay.n_rows, 4, torch.device("cpu"))
    a = st.view(lay.slots[0])
    st.host[0, 1] = 7.0                     # a pull writes the host rows ...
    assert a[0, 1] == 7.0                   # ... and the parameter sees it, no copy
    a[1, 2] = -1.0                          # in-place updates (BatchNorm) reach the rows
    assert st.host[1, 1] == -1.0            # element 5 of a = row 1, column 1
    assert st.zero_copy and a.data_ptr() == st.host.ctypes.data


def test_flat_view_rejects_nothing_it_should_not():
    t = torch.arange(12.0).view(3, 4)
    lay = Layout([("x", (2, 2)), ("y", (3,))], row_width=4)
    assert flat_view(t, lay.slots[1], 4).tolist() == [4.0, 5.0, 6.0]


def test_parameters_become_views_and_keep_their_identity():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    params = list(net.named_parameters())[::-1]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ids = [id(p) for _, p in params]
    layout, store = _tensor_store(params, row_width=8)
    assert [id(p) for _, p in net.named_parameters()][::-1] == ids   # same objects
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n])                  # values carried over
        s = layout.by_name[n]
        assert p.data_ptr() == store.host[s.lo].ctypes.data
    # Padding stays zero; the extra last row names the layout.
    s = layout.by_name["1.bias"]
    assert np.all(store.host[s.lo].ravel()[2:] == 0)
    assert store.host.shape[0] == layout.n_rows + 1
    assert np.array_equal(store.host[-1], _fingerprint(layout))
    # The optimizer the user made before wrapping updates the rows.
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    assert not np.array_equal(store.host[layout.by_name["0.weight"].lo][:3],
                              before["0.weight"].numpy().ravel()[:3])


def test_fingerprint_depends_on_names_and_shapes():
    a = Layout([("w", (4, 4)), ("b", (4,))], 128)
    b = Layout([("w", (2, 8)), ("b", (4,))], 128)      # same rows, other shapes
    c = Layout([("w", (4, 4)), ("b", (4,))], 128)
    assert a.n_rows == b.n_rows
    assert not np.array_equal(_fingerprint(a), _fingerprint(b))
    assert np.array_equal(_fingerprint(a), _fingerprint(c))


def test_bad_row_width_and_device_are_refused():
    with pytest.raises(ValueError, match="row_width"):
        Layout([("a", (2,))], 0)
    with pytest.raises(ValueError, match="meta"):
        Store(2, 4, torch.device("meta"))
