"""geeps_examples.datasets: the CIFAR-10 binary reader, the libsvm reader, the KDD2010-shaped generator."""
import bz2
import gzip
import tracemalloc

import numpy as np
import pytest

from geeps_examples import datasets as gdata


# ---- CIFAR-10 -------------------------------------------------------------------------
def raw_records(labels, seed=0):
    """Records built byte by byte as the format describes: label, 1024 R, 1024 G, 1024 B."""
    rng = np.random.default_rng(seed)
    planes = rng.integers(0, 256, (len(labels), 3, 1024), dtype=np.uint8)
    out = b"".join(bytes([lab]) + planes[i, 0].tobytes() + planes[i, 1].tobytes()
                   + planes[i, 2].tobytes() for i, lab in enumerate(labels))
    return out, planes


def test_cifar_reader_parses_the_binary_format(tmp_path):
    raw, planes = raw_records([3, 0, 9])
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(raw)
    images, labels = gdata.read_cifar10_file(str(p))
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == [3, 0, 9] and labels.dtype == np.int64
    # Channel c of image i is plane c, row-major 32 x 32.
    assert np.array_equal(images[1, 2], planes[1, 2].reshape(32, 32))
    assert np.array_equal(images[2, 0, 5], planes[2, 0, 160:192])


def test_cifar_writer_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 3, 32, 32)).astype(np.uint8)
    y = rng.integers(0, 10, 5)
    gdata.write_cifar10_file(str(tmp_path / "t.bin"), x, y)
    x2, y2 = gdata.read_cifar10_file(str(tmp_path / "t.bin"))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_truncated_cifar_file_names_file_and_offset(tmp_path):
    raw, _ = raw_records([1, 2])
    p = tmp_path / "data_batch_2.bin"
    p.write_bytes(raw[:-100])
    with pytest.raises(gdata.DataError, match=r"data_batch_2\.bin: truncated.*byte offset 3073"):
        gdata.read_cifar10_file(str(p))


def test_bad_cifar_label_names_record_and_offset(tmp_path):
    raw, _ = raw_records([1, 2, 57])
    p = tmp_path / "test_batch.bin"
    p.write_bytes(raw)
    with pytest.raises(gdata.DataError, match=r"test_batch\.bin: record 2 at byte offset "
                                              r"6146 has label 57"):
        gdata.read_cifar10_file(str(p))


def test_missing_cifar_files_say_where_to_put_them(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(raw_records([0])[0])
    with pytest.raises(gdata.DataMissing) as e:
        gdata.load_cifar10(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "data_batch_2.bin" in msg and "data_batch_1.bin," not in msg
    assert gdata.CIFAR_URL in msg
    assert isinstance(e.value, FileNotFoundError)


def test_cifar_splits_concatenate_files_in_order(tmp_path):
    for i, name in enumerate(gdata.CIFAR_TRAIN_FILES + (gdata.CIFAR_TEST_FILE,)):
        (tmp_path / name).write_bytes(raw_records([i, i], seed=i)[0])
    _, y = gdata.load_cifar10(str(tmp_path), train=True)
    assert y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    _, y = gdata.load_cifar10(str(tmp_path), train=False)
    assert y.tolist() == [5, 5]


# ---- libsvm ---------------------------------------------------------------------------
SVM = """# a comment line
+1 1:0.5 3:2 10:1

-1 2:1.5   # trailing comment
0 4:1 5:1
1 1:1
"""


def test_libsvm_reader_yields_csr_batches(tmp_path):
    p = tmp_path / "a.svm"
    p.write_text(SVM)
    batches = list(gdata.iter_libsvm(str(p), batch_size=3))
    assert [len(b) for b in batches] == [3, 1]
    b = batches[0]
    assert b.labels.tolist() == [1, 0, 0]
    assert b.indptr.tolist() == [0, 3, 4, 6]
    assert b.indices.tolist() == [0, 2, 9, 1, 3, 4]          # 0-based
    assert b.values.tolist() == [0.5, 2, 1, 1.5, 1, 1]
    assert b.rows_of_samples.tolist() == [0, 0, 0, 1, 2, 2]
    assert batches[1].labels.tolist() == [1]


@pytest.mark.parametrize("opener,suffix", [(gzip.open, ".gz"), (bz2.open, ".bz2")])
def test_libsvm_reads_compressed_files(tmp_path, opener, suffix):
    p = tmp_path / ("a.svm" + suffix)
    with opener(p, "wt") as f:
        f.write(SVM)
    assert sum(len(b) for b in gdata.iter_libsvm(str(p), batch_size=2)) == 4


@pytest.mark.parametrize("line,message", [
    ("+1 1:0.5 3-2", r"line 3: '3-2' is not index:value"),
    ("+1 0:1", r"line 3: feature index 0: libsvm indices start at 1"),
    ("yes 1:1", r"line 3: label 'yes' is not a number"),
    ("2 1:1", r"line 3: label '2' is not a binary label"),
    ("-1 11:1", r"line 3: feature index 11 above n_features 10"),
    ("-1 1:x", r"line 3: '1:x' is not index:value"),
])
def test_bad_libsvm_line_names_file_and_line(tmp_path, line, message):
    p = tmp_path / "bad.svm"
    p.write_text(f"+1 1:1\n\n{line}\n-1 2:1\n")
    with pytest.raises(gdata.DataError, match=r"bad\.svm " + message):
        list(gdata.iter_libsvm(str(p), batch_size=10, n_features=10))


def test_libsvm_missing_file_is_named(tmp_path):
    with pytest.raises(gdata.DataMissing, match="nope.svm"):
        list(gdata.iter_libsvm(str(tmp_path / "nope.svm")))


def test_generated_batches_round_trip_through_libsvm(tmp_path):
    gen = gdata.KDDGenerator(n_samples=200, n_features=1000, informative=100)
    batches = [gen.batch(i, 50) for i in range(4)]
    p = str(tmp_path / "gen.svm")
    gdata.write_libsvm(p, batches)
    back = list(gdata.iter_libsvm(p, batch_size=50, n_features=1000))
    for a, b in zip(batches, back):
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.indptr, b.indptr)
        assert np.array_equal(a.indices, b.indices) and np.array_equal(a.values, b.values)


# ---- KDD2010-shaped generator ---------------------------------------------------------
def test_generator_is_a_pure_function_of_seed_and_batch():
    gen = gdata.KDDGenerator(n_samples=10_000, n_features=50_000)
    a, b = gen.batch(3, 100), gen.batch(3, 100)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.labels, b.labels)
    c = gen.batch(4, 100)
    assert not np.array_equal(a.indices[:50], c.indices[:50])
    h = gen.heldout(3, 100)
    assert not np.array_equal(a.indices[:50], h.indices[:50])
    other = gdata.KDDGenerator(n_samples=10_000, n_features=50_000, seed=1).batch(3, 100)
    assert not np.array_equal(a.indices[:50], other.indices[:50])


def test_generated_samples_are_valid_sparse_rows():
    gen = gdata.KDDGenerator(n_samples=10_000, n_features=5_000)
    b = gen.batch(0, 500)
    assert b.indices.min() >= 0 and b.indices.max() < 5_000
    for i in range(len(b)):
        row = b.indices[b.indptr[i]:b.indptr[i + 1]]
        assert len(row) >= 1 and np.all(np.diff(row) > 0)      # sorted, repeats merged
    assert 20 < np.diff(b.indptr).mean() <= gen.nnz
    assert set(np.unique(b.labels)) == {0.0, 1.0}


def test_feature_frequencies_follow_the_power_law():
    gen = gdata.KDDGenerator(n_samples=100_000, n_features=1_000_000, nnz=36, zipf=1.2)
    counts = np.bincount(np.concatenate([gen.batch(i, 1000).indices for i in range(20)]),
                         minlength=1_000_000)
    # Zipf: the count of feature f falls as (f + 1)^-1.2 (repeats within a sample are
    # merged, which flattens only the very top).
    f = np.array([9, 99, 999])
    ratio = counts[f[:-1]] / counts[f[1:]]
    assert np.all(np.abs(np.log(ratio) / np.log(10) - 1.2) < 0.25), counts[f]
    assert counts[0] > counts[9] > counts[99] > counts[999] > 0


def test_the_real_size_is_described_without_materializing_it():
    gen = gdata.KDDGenerator()          # KDD2010: 8,407,752 x 20,216,830
    assert (gen.n_samples, gen.n_features) == (8_407_752, 20_216_830)
    assert gen.n_batches(1000) == 8407
    tracemalloc.start()
    b = gen.batch(8406, 1000)           # the last batch, as cheap as the first
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20, peak      # a 20.2M-float weight vector would be 80 MB
    assert b.indices.max() < gen.n_features
    assert "8,407,752 samples x 20,216,830 features" in gen.describe()
    with pytest.raises(IndexError, match="batch 8407 outside"):
        gen.batch(8407, 1000)


def test_true_weights_are_computed_not_stored():
    gen = gdata.KDDGenerator(informative=1000)
    ids = np.arange(20_216_830 - 5, 20_216_830)
    assert np.all(gen.true_weights(ids) == 0)        # past `informative`
    w = gen.true_weights(np.arange(1000))
    assert np.array_equal(w, gen.true_weights(np.arange(1000)))
    assert abs(w.mean()) < 0.15 and 0.85 < w.std() < 1.15      # N(0, 1)


def test_bayes_loss_is_below_the_constant_predictor():
    gen = gdata.KDDGenerator(n_samples=10_000, n_features=100_000, informative=3_000)
    bayes = gen.bayes_logloss(n_batches=2, batch_size=1000)
    y = np.concatenate([gen.heldout(i, 1000).labels for i in range(2)])
    p = y.mean()
    constant = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert bayes < constant - 0.2


def test_logloss_matches_the_definition():
    z = np.array([-2.0, 0.0, 3.0])
    y = np.array([0.0, 1.0, 1.0])
    p = 1 / (1 + np.exp(-z))
    want = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert gdata.logloss(z, y) == pytest.approx(want)
    assert np.isfinite(gdata.logloss(np.array([1e4, -1e4]), np.array([0.0, 1.0])))


def test_batches_fitted_to_a_byte_budget_keep_every_sample_in_order():
    from geeps_examples.datasets import (KDDGenerator, fit_batches, pack_batch, packed_bytes,
                                         unpack_batch)
    gen = KDDGenerator(n_samples=600, n_features=5000, informative=500)
    src = [gen.batch(j, 200) for j in range(3)]
    room = 20_000
    fitted = fit_batches(src, room)
    sizes = [packed_bytes(len(b.indices), len(b)) for b in fitted]
    assert all(s <= room for s in sizes) and len(set(len(b) for b in fitted)) > 1
    # Greedy: the next sample would not have fitted in the batch before it.
    for b, nxt in zip(fitted, fitted[1:]):
        first = int(nxt.indptr[1])
        assert packed_bytes(len(b.indices) + first, len(b) + 1) > room
    assert np.array_equal(np.concatenate([b.indices for b in fitted]),
                          np.concatenate([b.indices for b in src]))
    assert np.array_equal(np.concatenate([b.labels for b in fitted]),
                          np.concatenate([b.labels for b in src]))
    p = pack_batch(fitted[0], 5000, 16)
    assert p.nbytes == sizes[0]
    pos, sample, vals, labels = unpack_batch(p.data, p.nnz, p.n)
    assert np.array_equal(sample, fitted[0].rows_of_samples) and np.array_equal(labels,
                                                                               fitted[0].labels)
    with pytest.raises(Exception, match="sample 0 has .* over the 40 bytes"):
        fit_batches(src, 40)


def test_batches_fitted_with_their_weight_rows_leave_room_for_both():
    from geeps_examples.datasets import KDDGenerator, fit_batches, packed_bytes
    gen = KDDGenerator(n_samples=400, n_features=5000, informative=500)
    room, row_bytes, width = 30_000, 2 * 16 * 4, 16
    fitted = fit_batches([gen.batch(0, 400)], room, row_bytes, width, 5000)
    for b in fitted:
        rows = len(np.unique(np.append(b.indices, 5000) // width))
        assert packed_bytes(len(b.indices), len(b)) + row_bytes * rows <= room
    assert sum(len(b) for b in fitted) == 400
    assert len(fitted) > len(fit_batches([gen.batch(0, 400)], room))   # rows cost room
