"""The GPU-specialized worker: batched operations on a device-memory parameter cache.

    c = geeps.Client.from_env()
    w = Worker(c)                           # budget GEEPS_DEVICE_MEMORY, backend GEEPS_BACKEND
    t = c.create_table("w", 64, 128, rule="sgd", lr=0.1) if rank == 0 else c.open_table("w")
    with w.virtual_iteration():             # record once (buffers are scratch zeros here)
        step(w, t, batches[0])
    for b in batches:                       # real iterations repeat the recorded cycle
        step(w, t, b)

    def step(w, t, batch):
        p = w.read(t, range(0, 64))         # device array, (64, 128); read-only
        g = w.pre_update(t, range(0, 64))   # zeroed device array for the gradient
        g[...] = grad(p, batch)
        w.update(g); w.post_read(p)
        w.clock()                           # push this clock's updates; refresh the cache

The virtual iteration records the application's operations in order; leaving it
builds, once, every operation's gather/scatter indices and the placement plan for the
device budget (geeps.worker.memory.planner). A recording may span several clocks (a cycle); real
clock c follows recorded clock c mod K. Any deviation raises SequenceError naming the
operation and what was recorded.

What blocks: `read` waits until its rows are in device memory: the refresh after the
last clock (which the servers hold back as long as the consistency model requires)
and the copy of rows that live in host memory (usually already prefetched while the
previous operation ran). `local_access` and `pre_update` wait only for their buffer.
`clock` waits for the clock's device->host copies, then hands the pushes and the next
refresh to the client's I/O thread and returns. Not thread-safe: one thread per Worker.
"""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from geeps import backend as _backend
from geeps.backend import from_env
from geeps.errors import WaitTimeout
from geeps.job import memsettings
from geeps.job.units import parse_bytes
from geeps.metrics import Metrics
from geeps.worker import memory
from geeps.worker.cache import ParameterCache
from geeps.worker.ops import POSTS, Cursor, Recorder, SequenceError
from geeps.worker.reads import OwnUpdates, horizon, read_need

log = logging.getLogger("geeps.worker")

_FROM_ENV = object()


def _regions_from_env() -> memory.Regions | None:
    """The region caps the job set (spec.cache.regions), None when it set none: one
    total budget."""
    caps = {name: from_env(var) for name, (_f, var, _a) in memsettings.REGIONS.items()}
    return None if all(v is None for v in caps.values()) else memory.Regions(**caps)


class Worker:
    """A worker's GPU-specialized client over a geeps.Client (see module docstring)."""

    def __init__(self, client, device_memory=_FROM_ENV, backend=None, policy: str = "benefit",
                 metrics: Metrics | None = None, stalls=_FROM_ENV,
                 persist_local: bool = True, regions=_FROM_ENV):
        """device_memory: bytes or a quantity ("2Gi"), None for unlimited; default
        GEEPS_DEVICE_MEMORY. backend: "auto" | "numpy" | "cupy" or a backend object;
        default GEEPS_BACKEND. policy: see geeps.worker.memory.planner. stalls: what
        to do with a plan that makes the application wait for copies (GeePS's memory
        warning level): "refuse" (StallError), "warn" (logged) or "accept"; default
        GEEPS_MEMORY_STALLS (spec.cache.stalls, itself "warn").
        persist_local: local data recorded with fetch/keep may stay pinned across
        clocks (False: it moves at every clock, the old behaviour). regions: separate
        caps for the pool, pinned data and pinned parameters (memory.Regions) within
        the budget; default GEEPS_POOL_MEMORY, GEEPS_PINNED_DATA_MEMORY and
        GEEPS_PINNED_PARAMS_MEMORY (spec.cache.regions; None when none is set).
        Never blocks."""
        self.client = client
        if device_memory is _FROM_ENV:
            device_memory = from_env("GEEPS_DEVICE_MEMORY")
        elif device_memory is not None:
            device_memory = parse_bytes(device_memory)
        self.budget: int | None = device_memory
        if not hasattr(backend, "take"):
            backend = _backend.select(backend or from_env("GEEPS_BACKEND"))
        self.backend = backend
        if policy not in memory.POLICIES:
            raise ValueError(f"placement policy {policy!r} is not one of "
                             f"{', '.join(memory.POLICIES)}")
        self.policy = policy
        if stalls is _FROM_ENV:
            stalls = from_env("GEEPS_MEMORY_STALLS")
        if regions is _FROM_ENV:
            regions = _regions_from_env()
        if stalls not in memory.STALL_LEVELS:
            raise ValueError(f"stalls={stalls!r} is not one of {', '.join(memory.STALL_LEVELS)}")
        self.stalls = stalls
        self.persist_local, self.regions = persist_local, regions
        self._own = OwnUpdates(getattr(getattr(client, "consistency", None), "per_clock",
                                       False))
        # A client made by Client.from_env() carries the process's Metrics and counts
        # push/pull bytes, the clock and iteration time itself: share it, don't recount.
        client_metrics = getattr(client, "metrics", None)
        self.metrics = metrics or client_metrics or Metrics(
            from_env("GEEPS_JOB"), "worker", client.worker)
        self._count_net = getattr(client, "on_transfer", None) is None
        self._count_clock = client_metrics is None
        self.recording = False
        self.cycle = None
        self.plan = None
        self.cache: ParameterCache | None = None
        self._rec: Recorder | None = None
        self._cursor: Cursor | None = None
        self._open: dict[int, tuple[int, object]] = {}     # id(buffer) -> (op id, buffer)
        self._tables: dict = {}
        self._k = 0
        self._push_handles: list[list] = []
        self._clock_handle = None
        self._data_clock: dict[str, int] = {}
        self._last_clock_t: float | None = None
        self._closing = False

    # ---- recording ---------------------------------------------------------------------
    @contextlib.contextmanager
    def virtual_iteration(self):
        """Record the operations of one cycle (ending with clock()); on exit build the
        indices and the plan (raises memory.BudgetError for an impossible budget) and
        start the first refresh. Buffers handed out inside are scratch zeros."""
        if self.cycle is not None:
            raise SequenceError("the sequence is already recorded; real iterations follow")
        self._rec = Recorder()
        self.recording = True
        try:
            yield self
            cycle = self._rec.finish()
        finally:
            self.recording = False
            self._open.clear()
        self.plan = memory.make_plan(cycle, self.budget, self.policy,
                                     persist=self.persist_local, regions=self.regions)
        self._judge_plan()
        if self._own.per_clock:
            self._own.horizon = horizon(self.client.consistency, cycle)
        self.cycle = cycle
        self.cache = ParameterCache(self.plan, self.backend, self.budget,
                                    on_bytes=self.metrics.transfer)
        self._push_handles = [[] for _ in range(cycle.n_clocks)]
        clock = self.client.clock_value
        self._cursor = Cursor(cycle, clock)
        self._k = clock % cycle.n_clocks
        self.metrics.clock.set(clock)
        self._begin(self._k)

    def _live(self):
        if self._cursor is None:
            raise SequenceError("no recorded sequence: run one iteration inside "
                                "`with worker.virtual_iteration():` first")
        return self._cursor

    def _op_of(self, buf, kind: str) -> int:
        got = self._open.get(id(buf))
        if got is None or got[1] is not buf:
            raise SequenceError(f"{kind}: this array is not a buffer of an open operation "
                                "(pass the array the operation returned)")
        return got[0]

    # ---- operations ----------------------------------------------------------------------
    def read(self, table, rows, slack: int | None = None):
        """Rows of `table` as a (len(rows), row_width) device array; blocks until they
        are in device memory (see module docstring). Treat it as read-only: pinned rows
        come in place (NumPy refuses writes to them). slack: the latest clocks whose
        updates it may miss (None: the job's consistency model; geeps.worker.reads).
        Under BSP/SSP an `add` table's rows include this worker's own updates."""
        return self._call("read", table=table, rows=rows, slack=slack)

    def post_read(self, buf) -> None:
        """The application is done with a read's buffer."""
        self._post("read", buf)

    def pre_update(self, table, rows):
        """A zeroed (len(rows), row_width) device array for this clock's update of
        `rows` (distinct); hand it to update(). Blocks only for buffer space."""
        return self._call("pre_update", table=table, rows=rows)

    def update(self, buf) -> None:
        """Add the buffer into the clock's update accumulator (gradients for sgd/
        momentum/adam tables, deltas for add); pushed at clock()."""
        self._post("pre_update", buf)

    def local_access(self, name: str, nbytes: int, fetch: bool = False, keep: bool = False):
        """Local data (never leaves the worker) as a flat float32 device array of
        nbytes/4. By default it lives within a clock, zeroed at its first access in
        each clock. fetch: the first access of a clock finds what a kept access left
        (or what load_local put there); keep: what it holds outlives the clock. Such
        data may stay pinned in device memory across clocks (training data, say);
        fetched data that is not kept is read-only (pinned, writes would stay)."""
        return self._call("local", name=name, nbytes=nbytes, fetch=fetch, keep=keep)

    def post_local_access(self, buf) -> None:
        self._post("local", buf)

    def load_local(self, name: str, values) -> None:
        """Put `values` (any array of the datum's bytes, e.g. a packed data batch) in
        local datum `name`, recorded with fetch=True: its next fetching access finds
        them (pinned data: already in device memory). After the virtual iteration;
        blocks until they are in place."""
        if self.cache is None:
            raise SequenceError("load_local: record the sequence first (the plan decides "
                                "where local data lives)")
        self.cache.load_local(name, values)

    def _call(self, kind: str, table=None, rows=None, name: str | None = None,
              nbytes: int = 0, **opts):
        """An operation's buffer. Recording: scratch zeros (outside the budget), the
        call recorded. After: the call checked against the recording, and the planned
        buffer once its data is in device memory."""
        if self.recording:
            if table is not None:
                self._tables[table.name] = table
            op_id = self._rec.call(kind, table, rows, name, nbytes, **opts)
            shape = (nbytes // 4,) if kind == "local" else (len(rows), table.row_width)
            buf = self.backend.xp.zeros(shape, np.float32)
        else:
            op_id = self._live().call(kind, None if table is None else table.name, rows,
                                      name, nbytes, **opts).id
            buf = self._execute(self.plan.ops[op_id])
        self._open[id(buf)] = (op_id, buf)
        return buf

    def _execute(self, p):
        """The planned buffer of a call, once its data is in device memory."""
        t0 = time.perf_counter()
        buf = self.cache.call(p)
        if p.op.kind != "read":
            return buf
        table = p.op.table
        self.metrics.read_wait.observe(time.perf_counter() - t0)
        self.metrics.cache_reads(table, p.hits, p.misses)
        lag = self.client.clock_value - self._data_clock.get(table, 0)
        self.metrics.clock_lag.observe(max(0, lag))
        if isinstance(buf, np.ndarray) and p.view is not None:
            buf = buf.view()
            buf.flags.writeable = False     # a view of the cache: writes would corrupt it
        return buf

    def _post(self, kind: str, buf) -> None:
        """Close the operation whose buffer `buf` is: recording, record the post; after,
        check it against the recording and write back or accumulate what it holds."""
        op_id = self._op_of(buf, POSTS[kind])
        if self.recording:
            self._rec.post(kind, op_id)
        else:
            self._cursor.post(kind, op_id)
            self.cache.post(self.plan.ops[op_id], buf)
        del self._open[id(buf)]

    # ---- clocks --------------------------------------------------------------------------
    def clock(self) -> int:
        """End this worker's clock: push its updates (one batched push per table), tell
        the servers, and start refreshing the cache for the next clock. Returns the new
        clock (the recorded cycle's clock count while recording)."""
        if self.recording:
            return self._rec.clock()
        k = self._k
        self._live().clock()        # the recording closes every operation before clock()
        acc = self.cache.end_clock(k)
        self._remember_own(k, acc)
        handles = []
        for t, rows in self.plan.clocks[k].push.items():
            kw = {}
            if self.client.filter_needs_weights(self._tables[t]):
                kw["weights"] = self._weights(k, t, rows)
            h = self.client.push_async(self._tables[t], _selection(rows), acc[t], **kw)
            handles.append(h)
            if self._count_net:
                self.metrics.transfer("push", acc[t].nbytes)
        self._push_handles[k] = handles
        self._clock_handle = self.client.clock_async()
        now = time.perf_counter()
        if self._last_clock_t is not None and self._count_clock:
            self.metrics.iteration.observe(now - self._last_clock_t)
        self._last_clock_t = now
        clock = self.client.clock_value
        if self._count_clock:
            self.metrics.clock.set(clock)
        self._k = clock % self.cycle.n_clocks
        self._begin(self._k)
        return clock

    def set_filter(self, table, spec, rows=None) -> None:
        """Filter this worker's pushes to `table` (geeps.tables.filters.filter_spec;
        None: send them whole), per table as the client does (Client.set_filter); the
        job's spec.tables chooses one for a table by name already. The kkt filter
        needs the weights of the rows pushed: here those read in the same clock."""
        self.client.set_filter(table, spec, rows)

    def _weights(self, k: int, t: str, rows: np.ndarray) -> np.ndarray:
        """The values of `rows` of table `t` as refreshed for clock k (the weights the
        clock's reads saw), for the kkt filter."""
        pulled = self.plan.clocks[k].pull.get(t)
        at = None if pulled is None else np.searchsorted(pulled, rows)
        if at is None or (at >= len(pulled)).any() or (pulled[np.minimum(
                at, len(pulled) - 1)] != rows).any():
            raise SequenceError(f"table {t!r}: the kkt filter needs the weights of the rows "
                                f"pushed in clock {k}, and some were not read in it: read "
                                "every row you update, or use another filter")
        return self.cache.pulled[k][t][at]

    def _begin(self, k: int) -> None:
        # The host accumulators of clock k went to a push one cycle ago, zero-copy:
        # they must be on the wire before clock k's transfers write them again. The
        # refresh job waits for that on the transfer thread, ahead of those writes.
        pushes, self._push_handles[k] = self._push_handles[k], []
        handles = []
        clock = self.client.clock_value
        for t, rows in self.plan.clocks[k].pull.items():
            out = self.cache.pulled[k][t]
            need = self._need(k, t, clock)
            handles.append((t, self.client.pull_async(self._tables[t], _selection(rows),
                                                      out=out, need=need)))
            if self._count_net:
                self.metrics.transfer("pull", out.nbytes)
        clock_handle = self._clock_handle

        def wait_pull():
            for h in pushes:
                self._wait(h)
            if clock_handle is not None:
                self._wait(clock_handle)
            for t, h in handles:
                values, data_clock = self._wait(h)
                self._data_clock[t] = data_clock
                self._own.apply(self._tables[t], self.plan.clocks[k].pull[t], values,
                                data_clock, clock)
        self.cache.begin_clock(k, wait_pull)

    # ---- GeePS client parity (geeps.worker.reads, memory.judge_stalls) --------------------
    def _judge_plan(self) -> None:
        report = memory.judge_stalls(self.plan, self.stalls)
        if report is not None:
            log.warning("worker %s: %s", self.client.worker, report)

    def _need(self, k: int, table: str, clock: int) -> int | None:
        """The pull's bound when a read of the clock names its own slack (else None:
        the client applies the job's model)."""
        slack = self.plan.clocks[k].slack.get(table)
        return None if slack is None else read_need(self.client.consistency, clock, slack)

    def _remember_own(self, k: int, acc: dict) -> None:
        """Keep what this clock pushes to `add` tables, for read-my-writes."""
        clock = self.client.clock_value
        for t, rows in self.plan.clocks[k].push.items():
            self._own.record(self._tables[t], clock, rows, acc[t])

    def _wait(self, handle):
        # A refresh may wait for slower workers as long as consistency requires, but
        # not past close(): the next clock's rows are then of no use to anyone.
        while True:
            try:
                return handle.wait(0.2)
            except WaitTimeout:
                if handle.done():
                    raise                   # the servers' own timeout, not our poll
                if self._closing:
                    raise SequenceError("the worker was closed") from None

    def drain(self) -> None:
        """Block until every background transfer queued so far is done (the refresh
        and prefetch that clock() started included); raises a transfer's error."""
        if self.cache is not None:
            self.cache.io.drain()

    def close(self) -> None:
        """Wait for outstanding pushes, stop the transfer thread. The client stays open."""
        self._closing = True
        try:
            for hs in self._push_handles:
                for h in hs:
                    h.wait()
            if self._clock_handle is not None:
                self._clock_handle.wait()
        finally:
            if self.cache is not None:
                self.cache.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _selection(rows: np.ndarray):
    """A contiguous row set as a range (the client then sends zero-copy slices)."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return range(int(rows[0]), int(rows[-1]) + 1)
    return rows
