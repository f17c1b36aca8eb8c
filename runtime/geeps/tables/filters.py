"""Push filters: what a worker sends of an update, and the residual it keeps.

    f = PushFilter(filter_spec("topk", fraction=0.01), n_rows, row_width)
    pos, vals = f.apply(rows, grads)          # flat positions in the push, float32 values
    f.residual_norm()                          # what is held back

A filter looks at the accumulated update a = residual[rows] + values and chooses the
coordinates to send; with error feedback (the default) the rest stays in the residual
and joins the next push of those rows, so over any number of pushes

    sum of everything sent + the residual == sum of the raw updates.

Exactness: the residual is kept in float64 and a sent value is the float32 rounding
of its accumulated sum, the rounding error staying in the residual (x - fl32(x) is
exact in float64). The identity is then exact, bit for bit, whenever the float64
additions residual + value are: always when, per coordinate, the values and partial
sums span fewer than 2**29 (53 - 24 bits) in magnitude; beyond that each addition
may round by at most 2**-53 of the partial sum. tests/unit/test_filters.py checks it
with math.fsum over 100 pushes of random updates for every filter.

Kinds (geeps.job.tableopts.FILTERS holds their parameters): `significant` sends a
coordinate whose accumulated change is at least `threshold` times the push's largest;
`topk` the ceil(fraction * n) largest of the push (a geeps.torch bucket, or a client
push); `randomk` as many at random; `kkt` (L1-regularised models, seed: Delayed Block
Proximal Gradient) skips a coordinate whose weight is zero and whose gradient is
within the L1 weight, its optimality condition, so it needs the weights of the
pushed rows; it drops what it skips (feedback false) unless told to keep it.
Without feedback no residual exists: what is not sent is dropped, and what is sent
is the float32 update itself.

Not covered: a rollback to a checkpoint (geeps.client.recovery) rewinds the servers,
not the workers' residuals; what they hold from the clocks being redone is added to
the redone pushes once more (bounded by one residual, and decayed by the filter's
own sending, but not exact).
"""
from __future__ import annotations

import numpy as np

from geeps.job.tableopts import FilterSpec, filter_spec

__all__ = ["PushFilter", "FilterSpec", "filter_spec", "select"]


def select(spec: FilterSpec, acc: np.ndarray, weights: np.ndarray | None,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """The boolean mask of the coordinates of `acc` (flat, float64) to send."""
    n = acc.size
    p = spec.params
    if n == 0:
        return np.zeros(0, bool)
    if spec.kind == "significant":
        mag = np.abs(acc)
        top = mag.max()
        return (mag >= p["threshold"] * top) & (mag > 0)
    if spec.kind in ("topk", "randomk"):
        k = min(n, max(1, int(np.ceil(p["fraction"] * n))))
        mask = np.zeros(n, bool)
        if spec.kind == "topk":
            mask[np.argpartition(np.abs(acc), n - k)[n - k:]] = True
        else:
            mask[rng.choice(n, size=k, replace=False)] = True
        return mask
    if spec.kind == "kkt":
        if weights is None:
            raise ValueError("the kkt filter needs the weights of the pushed rows "
                             "(push_async(..., weights=w))")
        w = np.asarray(weights).reshape(-1)
        if w.size != n:
            raise ValueError(f"kkt filter: weights hold {w.size} values, the push {n}")
        return ~((w == 0) & (np.abs(acc) <= p["l1"]))
    raise AssertionError(spec.kind)     # filter_spec refused other kinds


def _sumsq(x: np.ndarray) -> float:
    # Not np.vdot: BLAS in a process that also runs torch can cost milliseconds a call
    # (its threads contend with torch's); an elementwise square and a sum cost microseconds.
    return float(np.square(x).sum())


class PushFilter:
    """One worker's filter of one table (or part of one): its residual, row by row.

    The residual is a float64 array the table's size, made at the first push: any
    row selection, ranges or ids, finds what it left behind in earlier pushes."""

    def __init__(self, spec: FilterSpec, n_rows: int, row_width: int, *, rank: int = 0):
        self.spec = spec
        self.n_rows, self.row_width = n_rows, row_width
        self._residual: np.ndarray | None = None
        self._sq = 0.0      # the residual's squared norm, kept up to date per push
        self._rng = np.random.default_rng([int(spec.params.get("seed", 0)), rank])
        self.sent_bytes = 0         # after filtering: indices and values
        self.raw_bytes = 0          # what the pushes would have sent dense

    @property
    def residual(self) -> np.ndarray:
        if self._residual is None:
            self._residual = np.zeros((self.n_rows, self.row_width), np.float64)
        return self._residual

    def residual_norm(self) -> float:
        # Updated from the rows each push touches: a metric read per push must not
        # cost a pass over a residual the table's size.
        return float(np.sqrt(max(self._sq, 0.0)))

    def apply(self, rows, values: np.ndarray, weights: np.ndarray | None = None,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Filter a push of `values` (n x row_width) to `rows` (a range, or unique int
        ids): (row ids, flat positions within those rows' block, float32 values
        sent), positions ascending. `mask` (n x row_width bool, optional): the
        coordinates this filter decides; the others are sent whole (geeps.torch
        parameter groups without a filter share a bucket with groups with one)."""
        if isinstance(rows, range):
            ids = None
            block = slice(rows.start, rows.stop)
        else:
            ids = np.asarray(rows, np.int64)
            block = ids
        if self.spec.feedback:
            r = self.residual
            old = r[block]
            self._sq -= _sumsq(old)
            acc = old + values          # float64: exact sums (see the module docstring)
        else:                           # nothing is kept: no residual to read or write
            acc = np.array(values, np.float64)
        flat = acc.reshape(-1)
        if mask is None:
            send = select(self.spec, flat, weights, self._rng)
        else:
            m = np.asarray(mask, bool).reshape(-1)
            send = ~m
            if m.any():
                send[m] = select(self.spec, flat[m],
                                 None if weights is None else
                                 np.asarray(weights).reshape(-1)[m], self._rng)
        pos = np.flatnonzero(send)
        vals = flat[pos].astype(np.float32)
        if self.spec.feedback:
            flat[pos] -= vals           # the rounding of each sent value stays behind
            r[block] = acc
            self._sq += _sumsq(flat)
        self.raw_bytes += values.size * 4
        self.sent_bytes += len(pos) * 8     # a uint32 offset and a float32 value each
        return (np.arange(rows.start, rows.stop) if ids is None else ids), pos, vals
