"""Datasets the examples train on: CIFAR-10 binary files, libsvm text, KDD2010-shaped data.

    images, labels = load_cifar10("data/cifar-10-batches-bin", train=True)  # uint8 NCHW
    for batch in iter_libsvm("kdda.bz2", batch_size=1000): ...              # SparseBatch
    gen = KDDGenerator()                     # the real size: 8,407,752 x 20,216,830
    batch = gen.batch(17, 1000)              # generated on demand, never all at once

Bad input raises DataError naming the file and where: the byte offset of a CIFAR
record, the line number of a libsvm line.
"""
from __future__ import annotations

import bz2
import gzip
import io
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32      # one label byte, then 1024 R, 1024 G, 1024 B bytes
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and the place."""


class DataMissing(DataError, FileNotFoundError):
    """Data files are not where they were looked for; the message says where to put them."""


# ---- CIFAR-10 -----------------------------------------------------------------------
def read_cifar10_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary file: (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    data = np.fromfile(path, dtype=np.uint8)
    whole, rest = divmod(len(data), CIFAR_RECORD)
    if rest:
        raise DataError(f"{path}: truncated: {len(data)} bytes is {whole} records of "
                        f"{CIFAR_RECORD} bytes plus {rest}; the record at byte offset "
                        f"{whole * CIFAR_RECORD} is incomplete")
    if whole == 0:
        raise DataError(f"{path}: empty (a CIFAR-10 file holds records of {CIFAR_RECORD} bytes)")
    records = data.reshape(whole, CIFAR_RECORD)
    labels = records[:, 0]
    bad = np.flatnonzero(labels > 9)
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: record {i} at byte offset {i * CIFAR_RECORD} has label "
                        f"{labels[i]}; CIFAR-10 labels are 0-9 (is this CIFAR-100 or "
                        "another format?)")
    return records[:, 1:].reshape(whole, 3, 32, 32), labels.astype(np.int64)


def cifar10_missing(directory: str) -> list[str]:
    """The CIFAR-10 binary files absent from `directory`."""
    return [f for f in CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)
            if not os.path.isfile(os.path.join(directory, f))]


def load_cifar10(directory: str, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The training (data_batch_1..5.bin) or test (test_batch.bin) split.

    Raises DataMissing saying where to put the files when any is absent."""
    missing = cifar10_missing(directory)
    if missing:
        raise DataMissing(
            f"CIFAR-10 binary files not found in {os.path.abspath(directory)} (missing: "
            f"{', '.join(missing)}). Download the binary version, {CIFAR_URL}, and extract "
            f"it so that {os.path.join(directory, CIFAR_TRAIN_FILES[0])} exists (the archive "
            "holds a folder cifar-10-batches-bin/), or point --data at that folder.")
    files = CIFAR_TRAIN_FILES if train else (CIFAR_TEST_FILE,)
    parts = [read_cifar10_file(os.path.join(directory, f)) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_cifar10_file(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write records in the CIFAR-10 binary format (for tests and small fixtures)."""
    images = np.asarray(images, np.uint8).reshape(len(labels), -1)
    if images.shape[1] != CIFAR_RECORD - 1:
        raise ValueError(f"images must be (N, 3, 32, 32); got {images.shape[1]} bytes each")
    out = np.empty((len(labels), CIFAR_RECORD), np.uint8)
    out[:, 0] = labels
    out[:, 1:] = images
    out.tofile(path)


# ---- sparse batches and libsvm ------------------------------------------------------
@dataclass
class SparseBatch:
    """Samples in CSR form: sample i has features indices[indptr[i]:indptr[i+1]]."""
    labels: np.ndarray          # float32 (n,), 0 or 1
    indptr: np.ndarray          # int64 (n + 1,)
    indices: np.ndarray         # int64 (nnz,), 0-based feature ids
    values: np.ndarray          # float32 (nnz,)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def rows_of_samples(self) -> np.ndarray:
        """The sample each nonzero belongs to (int64 (nnz,))."""
        return np.repeat(np.arange(len(self.labels)), np.diff(self.indptr))


def _open_text(path: str):
    if path.endswith(".bz2"):
        return io.TextIOWrapper(bz2.open(path, "rb"), encoding="ascii", errors="replace")
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="ascii", errors="replace")
    return open(path, encoding="ascii", errors="replace")


def _parse_line(path: str, lineno: int, line: str, n_features: int | None):
    parts = line.split()
    try:
        label = float(parts[0])
    except ValueError:
        raise DataError(f"{path} line {lineno}: label {parts[0]!r:.40} is not a number") from None
    if label not in (-1.0, 0.0, 1.0):
        raise DataError(f"{path} line {lineno}: label {parts[0]!r:.40} is not a binary label "
                        "(-1, 0 or +1)")
    idx, val = [], []
    for tok in parts[1:]:
        i, sep, v = tok.partition(":")
        try:
            if not sep:
                raise ValueError
            i, v = int(i), float(v)
        except ValueError:
            raise DataError(f"{path} line {lineno}: {tok!r:.40} is not index:value") from None
        if i < 1:
            raise DataError(f"{path} line {lineno}: feature index {i}: libsvm indices "
                            "start at 1")
        if n_features is not None and i > n_features:
            raise DataError(f"{path} line {lineno}: feature index {i} above n_features "
                            f"{n_features}")
        idx.append(i - 1)
        val.append(v)
    return (1.0 if label > 0 else 0.0), idx, val


def iter_libsvm(path: str, batch_size: int = 1000,
                n_features: int | None = None) -> Iterator[SparseBatch]:
    """Batches of a libsvm/svmlight file (`label idx:val ...`, indices from 1; labels
    -1/+1 or 0/1 become 0/1; .gz and .bz2 read as such). Streams: memory is one
    batch. Blank lines and `#` comments are skipped."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")

    def flush(labels, indptr, idx, val):
        return SparseBatch(np.array(labels, np.float32), np.array(indptr, np.int64),
                           np.array(idx, np.int64), np.array(val, np.float32))
    try:
        f = _open_text(path)
    except OSError as e:
        raise DataMissing(f"{path}: cannot open: {e.strerror}") from None
    with f:
        labels, indptr, idx, val = [], [0], [], []
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0]
            if not line.strip():
                continue
            y, i, v = _parse_line(path, lineno, line, n_features)
            labels.append(y)
            idx.extend(i)
            val.extend(v)
            indptr.append(len(idx))
            if len(labels) == batch_size:
                yield flush(labels, indptr, idx, val)
                labels, indptr, idx, val = [], [0], [], []
        if labels:
            yield flush(labels, indptr, idx, val)


def write_libsvm(path: str, batches) -> None:
    """Write SparseBatches as libsvm text (labels 0/1 as -1/+1, indices from 1)."""
    with open(path, "w") as f:
        for b in batches:
            for i in range(len(b)):
                lo, hi = b.indptr[i], b.indptr[i + 1]
                feats = " ".join(f"{j + 1}:{v:g}" for j, v in zip(b.indices[lo:hi],
                                                                 b.values[lo:hi]))
                f.write(f"{'+1' if b.labels[i] > 0 else '-1'} {feats}\n")


# ---- KDD2010-shaped generator -------------------------------------------------------
KDD2010_SAMPLES = 8_407_752     # KDD Cup 2010 (algebra), libsvm version
KDD2010_FEATURES = 20_216_830
KDD2010_NNZ = 36                # 305,613,510 nonzeros / 8,407,752 samples = 36.3


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a stateless hash of uint64s (so a weight needs no table)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


@dataclass(frozen=True)
class KDDGenerator:
    """Sparse binary classification data shaped like KDD2010, made on demand.

    Feature frequencies follow a power law (Zipf with exponent `zipf`: feature 0 is
    the most frequent, feature f about (f+1)^-zipf as often); every sample draws
    `nnz` features (repeats merged), values 1. Labels come from a logistic model
    whose true weights are a hash of the feature id (N(0, weight_scale^2) for the
    `informative` most frequent features, 0 after them) plus `bias`: nothing of size
    n_features is ever stored, so the real 8.4M x 20.2M shape costs no memory.
    Batch i is a pure function of (seed, i); held-out batches come from another
    stream. The Bayes log-loss (labels scored with the true weights) is the floor any
    trained model can reach: `bayes_logloss()`.
    """
    n_samples: int = KDD2010_SAMPLES
    n_features: int = KDD2010_FEATURES
    nnz: int = KDD2010_NNZ          # features drawn per sample
    zipf: float = 1.2               # power-law exponent (> 1)
    informative: int = 100_000      # features with a nonzero true weight
    weight_scale: float = 1.0       # std of the true weights
    bias: float = -0.5              # true intercept
    seed: int = 0

    def __post_init__(self):
        if self.n_samples < 1 or self.n_features < 1 or self.nnz < 1:
            raise ValueError("n_samples, n_features and nnz must be >= 1")
        if not self.zipf > 1:
            raise ValueError(f"zipf must be > 1 (got {self.zipf})")

    def n_batches(self, batch_size: int) -> int:
        return self.n_samples // batch_size

    def true_weights(self, ids: np.ndarray) -> np.ndarray:
        """The true weight of each feature id (float32), computed, not stored."""
        ids = np.asarray(ids, np.int64)
        key = ids.astype(np.uint64) * np.uint64(2) + np.uint64(self.seed) * np.uint64(1 << 40)
        u1 = (_mix64(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        u2 = (_mix64(key + np.uint64(1)) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)
        w = (z * self.weight_scale).astype(np.float32)
        w[ids >= self.informative] = 0.0
        return w

    def _features(self, rng: np.random.Generator, n: int) -> np.ndarray:
        ids = rng.zipf(self.zipf, size=(n, self.nnz)) - 1
        out = ids >= self.n_features
        while out.any():             # a truncated power law: redraw the few past the end
            ids[out] = rng.zipf(self.zipf, size=int(out.sum())) - 1
            out = ids >= self.n_features
        return ids

    def _make(self, stream: int, i: int, batch_size: int) -> SparseBatch:
        rng = np.random.default_rng([self.seed, stream, i])
        ids = np.sort(self._features(rng, batch_size), axis=1)
        keep = np.ones_like(ids, bool)
        keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
        indices = ids[keep].astype(np.int64)
        counts = keep.sum(axis=1)
        indptr = np.zeros(batch_size + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        values = np.ones(len(indices), np.float32)
        logits = np.add.reduceat(self.true_weights(indices).astype(np.float64),
                                 indptr[:-1]) + self.bias
        p = 1.0 / (1.0 + np.exp(-logits))
        labels = (rng.random(batch_size) < p).astype(np.float32)
        return SparseBatch(labels, indptr, indices, values)

    def batch(self, i: int, batch_size: int) -> SparseBatch:
        """Training samples [i * batch_size, (i + 1) * batch_size)."""
        if not 0 <= i < self.n_batches(batch_size):
            raise IndexError(f"batch {i} outside 0..{self.n_batches(batch_size) - 1} "
                             f"({self.n_samples} samples of batch {batch_size})")
        return self._make(0, i, batch_size)

    def heldout(self, i: int, batch_size: int) -> SparseBatch:
        """Held-out batch i: same distribution, a stream disjoint from training."""
        return self._make(1, i, batch_size)

    def bayes_logloss(self, n_batches: int = 4, batch_size: int = 2000) -> float:
        """Mean log-loss of the true model on held-out batches (the floor)."""
        total, n = 0.0, 0
        for i in range(n_batches):
            b = self.heldout(i, batch_size)
            logits = np.add.reduceat(self.true_weights(b.indices).astype(np.float64),
                                     b.indptr[:-1]) + self.bias
            total += float(logloss(logits, b.labels) * len(b))
            n += len(b)
        return total / n

    def describe(self) -> str:
        nbytes = self.n_samples * self.nnz * 12     # int64 id + float32 value per nonzero
        return (f"{self.n_samples:,} samples x {self.n_features:,} features, ~{self.nnz} "
                f"nonzeros each (Zipf {self.zipf}; ~{nbytes / 2**30:.1f} GiB if stored), "
                f"generated batch by batch")


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits against 0/1 labels, computed stably."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


# ---- sparse batches as the device computes on them ------------------------------------
@dataclass(frozen=True)
class PackedBatch:
    """A sparse LR batch in one flat float32 array, the unit a worker keeps in device
    memory (a local datum fetched at each clock: pinned, it stays there across epochs).

    Weights are packed `width` to a table row with the intercept after the last
    feature; `rows` (host side: the read names them) are the rows the batch touches,
    and `data` holds, in order: each nonzero's position in the read buffer and then
    the intercept's (int32 bits, nnz + 1), the sample of each nonzero (int32 bits,
    nnz), the values (nnz) and the labels (n)."""
    rows: np.ndarray
    data: np.ndarray
    nnz: int
    n: int

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def pack_batch(batch: SparseBatch, n_features: int, width: int) -> PackedBatch:
    feats = np.append(batch.indices, n_features)            # the intercept is feature n
    rows, where = np.unique(feats // width, return_inverse=True)
    pos = (where * width + feats % width).astype(np.int32)
    nnz, n = len(batch.indices), len(batch)
    data = np.concatenate([pos.view(np.float32),
                           batch.rows_of_samples.astype(np.int32).view(np.float32),
                           batch.values.astype(np.float32), batch.labels.astype(np.float32)])
    return PackedBatch(rows, data, nnz, n)


def unpack_batch(flat, nnz: int, n: int):
    """(positions, samples, values, labels) as views of a packed batch's flat array
    (NumPy or CuPy alike): positions end with the intercept's."""
    pos = flat[:nnz + 1].view(np.int32)
    sample = flat[nnz + 1:2 * nnz + 1].view(np.int32)
    return pos, sample, flat[2 * nnz + 1:3 * nnz + 1], flat[3 * nnz + 1:3 * nnz + 1 + n]


def packed_bytes(nnz: int, n: int) -> int:
    """Bytes of a packed batch of n samples with nnz nonzeros (see PackedBatch)."""
    return 4 * (3 * nnz + n + 1)


def fit_batches(batches, max_bytes: int, row_bytes: int = 0, width: int = 16,
                n_features: int = 0) -> list[SparseBatch]:
    """Variable-size batches, each taking at most `max_bytes` of device memory (the
    report's dynamic fitting: as many samples as the memory left for a batch holds),
    cut from `batches` (SparseBatch, consumed in order; samples keep their order). A
    batch takes its packed bytes plus `row_bytes` per weight row it touches (`width`
    weights a row, the intercept at feature `n_features`): pass the bytes its read and
    update buffers take per row to fit those too. A single sample too large raises
    DataError naming it."""
    out: list[SparseBatch] = []
    labels, indices, values, counts = [], [], [], []
    rows: set = set()
    nnz = 0
    seen = 0

    def cost(k: int, n: int, new_rows: int) -> int:
        return packed_bytes(k, n) + row_bytes * (len(rows) + new_rows)

    def flush():
        nonlocal nnz
        if counts:
            indptr = np.zeros(len(counts) + 1, np.int64)
            np.cumsum(counts, out=indptr[1:])
            out.append(SparseBatch(np.array(labels, np.float32), indptr,
                                   np.concatenate(indices), np.concatenate(values)))
        labels.clear(), indices.clear(), values.clear(), counts.clear()
        rows.clear()
        if row_bytes:
            rows.add(n_features // width)       # the intercept's row, in every batch
        nnz = 0
    flush()
    for b in batches:
        for i in range(len(b)):
            lo, hi = int(b.indptr[i]), int(b.indptr[i + 1])
            k = hi - lo
            mine = {int(f) // width for f in b.indices[lo:hi]} if row_bytes else set()
            alone = packed_bytes(k, 1) + row_bytes * len(mine | {n_features // width})
            if alone > max_bytes:
                raise DataError(f"sample {seen} has {k} nonzeros: {alone} bytes, over the "
                                f"{max_bytes} bytes a batch may take")
            if cost(nnz + k, len(counts) + 1, len(mine - rows)) > max_bytes:
                flush()
            rows.update(mine)
            labels.append(b.labels[i])
            indices.append(b.indices[lo:hi])
            values.append(b.values[lo:hi])
            counts.append(k)
            nnz += k
            seen += 1
    flush()
    return out
