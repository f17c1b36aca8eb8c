"""Operation sequences: what a virtual iteration records and real iterations must repeat.

    rec = Recorder()
    a = rec.read(table, range(0, 64)); rec.post_read(a)
    u = rec.pre_update(table, range(0, 64)); rec.update(u)
    x = rec.local_access("act1", 4096); rec.post_local_access(x)
    rec.clock()
    cycle = rec.finish()                # immutable; the planner builds indices from it
    cur = Cursor(cycle)                 # real iterations: every call is checked
    op = cur.call("read", table.name, range(0, 64))

A recorded cycle may span several clocks (one per distinct batch of a sparse workload,
say); real iterations repeat it, clock c following recorded clock c mod K. A call
that deviates from the recording raises SequenceError naming the position, what was
recorded and what was called. Pure data and checks; no I/O, no threads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CALLS = ("read", "pre_update", "local")
POSTS = {"read": "post_read", "pre_update": "update", "local": "post_local_access"}


class SequenceError(ValueError):
    """A real iteration deviated from the recorded sequence (or recording is misused)."""


@dataclass(frozen=True)
class TableInfo:
    name: str
    n_rows: int
    width: int          # floats per row

    @property
    def row_bytes(self) -> int:
        return self.width * 4


@dataclass(frozen=True, eq=False)
class Op:
    """One recorded call: read, pre_update (its update closes it) or local access."""
    id: int                         # position among the cycle's calls
    kind: str                       # read | pre_update | local
    clock: int                      # clock within the cycle
    table: str | None = None
    rows: np.ndarray | None = None  # int64, read-only, in the application's order
    run: tuple[int, int] | None = None   # rows given as range(a, b): cheap to compare
    name: str | None = None         # local data
    nbytes: int = 0                 # bytes of the data the op touches
    slack: int | None = None        # read: clocks it may lag (None: the job's model)
    fetch: bool = False             # local: starts a clock with what a kept access left
    keep: bool = False              # local: what it holds outlives the clock

    def describe(self) -> str:
        if self.kind == "local":
            flags = "".join(f", {f}=True" for f in ("fetch", "keep") if getattr(self, f))
            return f"local_access({self.name!r}, {self.nbytes} bytes{flags})"
        slack = "" if self.slack is None else f", slack={self.slack}"
        return f"{self.kind}(table {self.table!r}, {len(self.rows)} rows{slack})"

    def options(self) -> dict:
        """The options a real call must repeat (see Cursor.call)."""
        if self.kind == "local":
            return {"fetch": self.fetch, "keep": self.keep}
        return {"slack": self.slack} if self.kind == "read" else {}

    def matches_rows(self, rows) -> bool:
        if isinstance(rows, range) and rows.step == 1 and self.run is not None:
            return (rows.start, rows.stop) == self.run
        a = np.asarray(rows)
        return a.shape == self.rows.shape and bool(np.array_equal(a, self.rows))


@dataclass(frozen=True)
class Access:
    """One step of a recorded clock: an operation's call, or its post."""
    kind: str   # "call" | "post"
    op: int


@dataclass(frozen=True, eq=False)
class Cycle:
    """The recorded sequence: per clock, its accesses in order; each clock ends with clock()."""
    ops: tuple[Op, ...]
    clocks: tuple[tuple[Access, ...], ...]
    tables: dict[str, TableInfo] = field(default_factory=dict)

    @property
    def n_clocks(self) -> int:
        return len(self.clocks)

    def describe(self, ev: Access) -> str:
        op = self.ops[ev.op]
        if ev.kind == "call":
            return op.describe()
        return f"{POSTS[op.kind]}(of operation {op.id}: {op.describe()})"


def normalize_rows(table: TableInfo, rows) -> tuple[np.ndarray, tuple[int, int] | None]:
    """int64 rows (read-only) and, when given as a unit-step range, its bounds."""
    run = None
    if isinstance(rows, slice):
        rows = range(*rows.indices(table.n_rows))
    if isinstance(rows, range):
        if rows.step == 1:
            run = (rows.start, rows.stop)
        a = np.arange(rows.start, rows.stop, rows.step, dtype=np.int64)
    else:
        a = np.asarray(rows)
        if a.size and a.dtype.kind not in "iu":
            raise TypeError(f"rows of table {table.name!r} must be integers "
                            f"(got dtype {a.dtype})")
        a = np.array(a, dtype=np.int64).ravel() if a.size else np.zeros(0, np.int64)
    if len(a) == 0:
        raise ValueError(f"an operation on table {table.name!r} names no rows")
    if a.min() < 0 or a.max() >= table.n_rows:
        raise IndexError(f"rows of table {table.name!r} must lie in 0..{table.n_rows - 1} "
                         f"(got {a.min()}..{a.max()})")
    a.setflags(write=False)
    return a, run


class Recorder:
    """Builds a Cycle from the calls of a virtual iteration. Not thread-safe."""

    def __init__(self):
        self._ops: list[Op] = []
        self._clocks: list[tuple[Access, ...]] = []
        self._events: list[Access] = []
        self._open: dict[int, Op] = {}
        self._locals: dict[str, int] = {}
        self._open_locals: dict[str, int] = {}
        self.tables: dict[str, TableInfo] = {}

    def _table(self, table) -> TableInfo:
        info = TableInfo(table.name, table.n_rows, table.row_width)
        known = self.tables.setdefault(info.name, info)
        if known != info:
            raise ValueError(f"table {info.name!r} changed shape during the recording")
        return info

    def _new_op(self, **kw) -> int:
        op = Op(id=len(self._ops), clock=len(self._clocks), **kw)
        self._ops.append(op)
        self._open[op.id] = op
        self._events.append(Access("call", op.id))
        return op.id

    def call(self, kind: str, table=None, rows=None, name: str | None = None,
             nbytes: int = 0, **opts) -> int:
        """Record a call of `kind` (read, pre_update: table and rows; local: name and
        nbytes; options as the methods take them); returns its operation id."""
        if kind == "local":
            return self.local_access(name, nbytes, **opts)
        if kind == "read":
            return self.read(table, rows, **opts)
        return self.pre_update(table, rows, **opts)

    def post(self, kind: str, op_id: int) -> None:
        """Record the post that closes operation `op_id`, a call of `kind`."""
        op = self._open.get(op_id)
        if op is None or op.kind != kind:
            what = "was never recorded" if op_id >= len(self._ops) or op_id < 0 else \
                "is not an open " + kind
            raise SequenceError(f"{POSTS[kind]}: operation {op_id} {what}")
        del self._open[op_id]
        if kind == "local":
            del self._open_locals[op.name]
        self._events.append(Access("post", op_id))

    def read(self, table, rows, slack: int | None = None) -> int:
        """slack: this read may miss the updates of at most `slack` of the latest
        clocks (GeePS's per-read slack; 0 reads as BSP); None follows the job's model."""
        info = self._table(table)
        a, run = normalize_rows(info, rows)
        if slack is not None and (isinstance(slack, bool) or
                                  not isinstance(slack, (int, np.integer)) or slack < 0):
            raise ValueError(f"read(table {info.name!r}): slack must be an int >= 0 or "
                             f"None (got {slack!r})")
        return self._new_op(kind="read", table=info.name, rows=a, run=run,
                            nbytes=len(a) * info.row_bytes,
                            slack=None if slack is None else int(slack))

    def post_read(self, op_id: int) -> None:
        self.post("read", op_id)

    def pre_update(self, table, rows) -> int:
        info = self._table(table)
        a, run = normalize_rows(info, rows)
        if run is None and len(np.unique(a)) != len(a):
            vals, counts = np.unique(a, return_counts=True)
            raise ValueError(f"pre_update(table {info.name!r}): row {vals[counts > 1][0]} "
                             "appears twice; sum its updates in one row")
        return self._new_op(kind="pre_update", table=info.name, rows=a, run=run,
                            nbytes=len(a) * info.row_bytes)

    def update(self, op_id: int) -> None:
        self.post("pre_update", op_id)

    def local_access(self, name: str, nbytes: int, fetch: bool = False,
                     keep: bool = False) -> int:
        """fetch: the first access of a clock finds what the datum held when a kept
        access of an earlier clock was posted (or what Worker.load_local put there)
        instead of zeros; keep: what this access leaves outlives the clock (GeePS's
        fetch/keep). Every access of one datum names the same flags."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"local data needs a non-empty name (got {name!r})")
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 1:
            raise ValueError(f"local data {name!r}: nbytes must be a positive int "
                             f"(got {nbytes!r})")
        nbytes = int(nbytes)
        if nbytes % 4:
            raise ValueError(f"local data {name!r} holds float32 values: nbytes must be a "
                             f"multiple of 4 (got {nbytes})")
        fetch, keep = bool(fetch), bool(keep)
        if self._locals.setdefault(name, (nbytes, fetch, keep)) != (nbytes, fetch, keep):
            was = self._locals[name]
            if was[0] != nbytes:
                raise ValueError(f"local data {name!r} was recorded with {was[0]} bytes, "
                                 f"now {nbytes}")
            raise ValueError(f"local data {name!r} was recorded with fetch={was[1]}, "
                             f"keep={was[2]}, now fetch={fetch}, keep={keep}")
        if name in self._open_locals:
            raise SequenceError(f"local data {name!r} is already open (operation "
                                f"{self._open_locals[name]}); post it first")
        op_id = self._new_op(kind="local", name=name, nbytes=nbytes, fetch=fetch, keep=keep)
        self._open_locals[name] = op_id
        return op_id

    def post_local_access(self, op_id: int) -> None:
        self.post("local", op_id)

    def clock(self) -> int:
        """End the recorded clock; returns how many clocks the recording holds."""
        if self._open:
            raise SequenceError("clock() with operations still open: " + ", ".join(
                f"{o.describe()} (operation {o.id})" for o in self._open.values()))
        self._clocks.append(tuple(self._events))
        self._events = []
        return len(self._clocks)

    def finish(self) -> Cycle:
        """The recorded cycle; the recording must end with clock()."""
        if self._events or self._open:
            raise SequenceError("the virtual iteration must end with clock() "
                                f"({len(self._events)} operations after the last clock)")
        if not self._clocks:
            raise SequenceError("the virtual iteration recorded no clock()")
        return Cycle(tuple(self._ops), tuple(self._clocks), dict(self.tables))


class Cursor:
    """Walks a Cycle during real iterations, checking every call. Not thread-safe."""

    def __init__(self, cycle: Cycle, clock: int = 0):
        self.cycle = cycle
        self.k = clock % cycle.n_clocks
        self.i = 0

    def _expect(self, got: str) -> Access | None:
        events = self.cycle.clocks[self.k]
        return events[self.i] if self.i < len(events) else None

    def _fail(self, expected: str, got: str):
        raise SequenceError(
            f"operation {self.i} of clock {self.k} of the recorded cycle: expected "
            f"{expected} but the application called {got}")

    def _expected_text(self) -> str:
        ev = self._expect("")
        return "clock()" if ev is None else self.cycle.describe(ev)

    def call(self, kind: str, table: str | None = None, rows=None, name: str | None = None,
             nbytes: int = 0, **opts) -> Op:
        """The recorded Op this call corresponds to; SequenceError if it deviates (in
        what it names or in its options: slack, fetch, keep)."""
        ev = self._expect(kind)
        if kind == "local":
            got = f"local_access({name!r}, {nbytes} bytes)"
        else:
            n = len(rows) if hasattr(rows, "__len__") else "?"
            got = f"{kind}(table {table!r}, {n} rows)"
        if ev is None or ev.kind != "call":
            self._fail(self._expected_text(), got)
        op = self.cycle.ops[ev.op]
        ok = op.kind == kind and (
            (op.name == name and op.nbytes == nbytes) if kind == "local"
            else (op.table == table and op.matches_rows(rows)))
        if not ok:
            if op.kind == kind and kind != "local" and op.table == table:
                got += " with different rows"
            self._fail(op.describe(), got)
        want = op.options()
        given = {k: opts.get(k, type(v)() if isinstance(v, bool) else None)
                 for k, v in want.items()}
        if kind == "local":
            given = {k: bool(v) for k, v in given.items()}
        if given != want:
            self._fail(op.describe(), got + " with " + ", ".join(
                f"{k}={v!r}" for k, v in given.items()))
        self.i += 1
        return op

    def post(self, kind: str, op_id: int) -> None:
        ev = self._expect(kind)
        got = f"{POSTS[kind]}(of operation {op_id})"
        if ev is None or ev.kind != "post" or ev.op != op_id \
                or self.cycle.ops[op_id].kind != kind:
            self._fail(self._expected_text(), got)
        self.i += 1

    def clock(self) -> int:
        """End the clock; returns the position in the cycle of the next one."""
        if self._expect("clock") is not None:
            self._fail(self._expected_text(), "clock()")
        self.k = (self.k + 1) % self.cycle.n_clocks
        self.i = 0
        return self.k
