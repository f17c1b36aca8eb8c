"""The parameter cache and access-buffer pool in device memory, run by a plan.

    cache = ParameterCache(plan, backend, budget)      # allocates within the budget
    cache.begin_clock(k, wait_pull)                    # refresh pinned rows, prefetch
    buf = cache.call(op_plan)                          # blocks until its data is there
    cache.post(op_plan, buf)                           # write back / accumulate
    host_acc = cache.end_clock(k)                      # blocks; rows ready to push

Device memory holds, per table, the pinned parameter rows and pinned update-
accumulator rows, the pinned local data, and one pool for access buffers; every
allocation goes through DeviceMemory, which refuses to exceed the budget. Host memory
(pinned on a GPU) holds what the servers send (per clock of the cycle), the
accumulators that leave for the servers, and local data that is not pinned.

One TransferThread (on a GPU: its own CUDA stream) runs every host<->device copy and
every fill of an access buffer, in order: the refresh of pinned rows after a clock,
the prefetch of the next operation's buffer while the current one runs, write-backs
of local data and the device->host copy of updates. The application thread only
waits on the job it needs. Not thread-safe: one application thread drives a cache.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from geeps.backend import Index
from geeps.futures import Future
from geeps.job.units import format_bytes


class DeviceBudgetExceeded(MemoryError):
    """An allocation would take device memory past the worker's budget."""


class DeviceMemory:
    """Every device allocation of one worker, held to `budget` bytes (None: no limit)."""

    def __init__(self, backend, budget: int | None):
        self.backend = backend
        self.budget = budget
        self.used = 0
        self.parts: dict[str, int] = {}

    def alloc(self, shape, what: str):
        n = int(np.prod(shape)) * 4
        if self.budget is not None and self.used + n > self.budget:
            raise DeviceBudgetExceeded(
                f"allocating {what} ({format_bytes(n)}) would use {format_bytes(self.used + n)}"
                f" of device memory, over the budget of {format_bytes(self.budget)}")
        self.used += n
        self.parts[what] = self.parts.get(what, 0) + n
        out = self.backend.device_empty(shape)
        out.fill(0)
        return out


class Job(Future):
    """One unit of background work; `wait()` blocks until it ran, re-raising its error
    (TimeoutError if `timeout` seconds pass first). The TransferThread completes it."""
    __slots__ = ("fn", "fence")

    def __init__(self, fn: Callable[[], None] | None, fence=None):
        super().__init__()
        self.fn = fn
        self.fence = fence

    def _timeout_error(self, timeout: float | None) -> BaseException:
        return TimeoutError(f"background transfer still running after {timeout} s")


class TransferThread:
    """Runs jobs in submission order on one thread (and one transfer stream).

    After a job fails, every later job fails with the same error: a missing refresh
    must not let a read see stale rows. `submit` is thread-safe and never blocks."""

    def __init__(self, backend, name: str = "geeps-transfer"):
        self.backend = backend
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], None] | None, fence=None) -> Job:
        job = Job(fn, fence)
        self._q.put(job)
        return job

    def _run(self) -> None:
        be = self.backend
        with be.transfer_stream():
            while True:
                job = self._q.get()
                if job is None:
                    return
                try:
                    if self.error is not None:
                        raise self.error
                    be.wait_fence(job.fence)
                    if job.fn is not None:
                        job.fn()
                    be.sync_transfers()
                except BaseException as e:     # handed to whoever waits on the job
                    self.error = self.error or e
                    job.set_exception(e)
                else:
                    job.set_result()

    def drain(self) -> None:
        """Block until every job submitted so far ran; raise the first error."""
        self.submit(None).wait()
        if self.error is not None:
            raise self.error

    def close(self, timeout: float = 10.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)


@dataclass
class OpStats:
    """What happened at an operation's calls (the manager's own accounting)."""
    calls: int = 0
    ready_at_call: int = 0      # its data was already in device memory when called
    waited: int = 0             # the application blocked for its data
    wait_s: float = 0.0


class ParameterCache:
    """Executes a MemoryPlan (see module docstring)."""

    def __init__(self, plan, backend, budget: int | None,
                 on_bytes: Callable[[str, int], None] | None = None):
        self.plan = plan
        self.be = backend
        self.mem = DeviceMemory(backend, budget)
        self.on_bytes = on_bytes or (lambda d, n: None)
        self.moved = {"h2d": 0, "d2h": 0}
        self._lock = threading.Lock()
        t = plan.tables
        self.param = {n: self.mem.alloc((k, t[n].width), f"pinned rows of {n!r}")
                      for n, k in plan.param_slots.items() if k}
        self.acc = {n: self.mem.alloc((k, t[n].width), f"pinned updates of {n!r}")
                    for n, k in plan.acc_slots.items() if k}
        self.local = self.mem.alloc((plan.local_floats,), "pinned local data") \
            if plan.local_floats else None
        self.pool = self.mem.alloc((plan.pool_bytes // 4,), "access-buffer pool") \
            if plan.pool_bytes else None
        host = backend.host_empty
        self.pulled = [{n: host((len(r), t[n].width)) for n, r in c.pull.items()}
                       for c in plan.clocks]
        self.acc_host = [{n: host((len(r), t[n].width)) for n, r in c.push.items()}
                         for c in plan.clocks]
        # Host homes: of local data that is not pinned, and of data that crosses clock
        # boundaries (load_local writes there whether or not it is pinned).
        self.local_home = {}
        for p in plan.ops:
            op = p.op
            if op.kind == "local" and (p.view is None or op.fetch or op.keep) \
                    and op.name not in self.local_home:
                self.local_home[op.name] = host((1, op.nbytes // 4))
        for p in plan.ops:
            for ix in (p.pin_buf, p.pin_slots, p.host_buf, p.host_src):
                if ix is not None:
                    backend.prepare(ix)
            for pair in (p.to_pin_copy, p.to_pin_add, p.to_host_copy, p.to_host_add):
                if pair is not None:
                    backend.prepare(pair[0]), backend.prepare(pair[1])
        for c in plan.clocks:
            for a, b in list(c.refresh.values()) + list(c.flush.values()):
                backend.prepare(a), backend.prepare(b)
        self._whole = Index((0, 1), None)
        self.prefetch_of: dict[int, list] = {}      # op id (-1 + clock) -> ops it prefetches
        for p in plan.ops:
            if p.prefetch_at is not None:
                key = p.prefetch_at if p.prefetch_at >= 0 else ("start", p.op.clock)
                self.prefetch_of.setdefault(key, []).append(p)
        self.fills: dict[int, Job] = {}
        self.refresh_job: Job | None = None
        self.stats = [OpStats() for _ in plan.ops]
        self.io = TransferThread(backend)

    # ---- helpers -------------------------------------------------------------------------
    def _count(self, direction: str, nbytes: int) -> None:
        if nbytes:
            with self._lock:
                self.moved[direction] += nbytes
            self.on_bytes(direction, nbytes)

    def buffer(self, p):
        """The device array an operation hands the application."""
        op = p.op
        if p.view is not None:
            a, b = p.view
            if op.kind == "local":
                return self.local[a:b]
            region = self.param if op.kind == "read" else self.acc
            return region[op.table][a:b]
        off, shape = p.buf
        n = int(np.prod(shape))
        out = self.pool[off:off + n].reshape(shape)
        return out[0] if op.kind == "local" else out

    def _fill(self, p) -> Job:
        """Submit the job that puts an operation's data into its pool buffer."""
        op = p.op
        buf = self.buffer(p)
        be = self.be
        if op.kind == "read":
            t = op.table
            pulled = self.pulled[op.clock][t]

            def run():
                if p.pin_buf is not None:
                    be.move(self.param[t], p.pin_slots, buf, p.pin_buf)
                if p.host_buf is not None:
                    be.h2d(pulled, p.host_src, buf, p.host_buf)
                    self._count("h2d", len(p.host_buf) * buf.shape[1] * 4)
        elif op.kind == "pre_update" or (p.first and not op.fetch):
            def run():
                be.zero(buf)
        else:
            home = self.local_home[op.name]
            start = p.held // 4         # the first `held` bytes are in place already

            def run():
                be.h2d(home[:, start:], self._whole, buf[start:].reshape(1, -1), self._whole)
                self._count("h2d", op.nbytes - p.held)
        job = self.io.submit(run, be.fence())
        self.fills[op.id] = job
        return job

    def prefetched(self, op_id: int) -> bool:
        """Whether the operation's buffer is already filled, ahead of its call."""
        job = self.fills.get(op_id)
        return job is not None and job.done()

    # ---- the clock ------------------------------------------------------------------------
    def begin_clock(self, k: int, wait_pull: Callable[[], None]) -> None:
        """Queue the refresh of clock k's pinned rows (after `wait_pull()` returns, on
        the transfer thread) and the prefetch of its first operation. Never blocks."""
        c = self.plan.clocks[k]

        def refresh():
            wait_pull()
            for t, (host_ix, slots) in c.refresh.items():
                self.be.h2d(self.pulled[k][t], host_ix, self.param[t], slots)
                self._count("h2d", len(slots) * self.param[t].shape[1] * 4)
        self.refresh_job = self.io.submit(refresh, self.be.fence())
        for p in self.prefetch_of.get(("start", k), ()):
            self._fill(p)

    def call(self, p):
        """The operation's buffer, once its data is in device memory (blocks until then).

        Also queues the prefetch of the operations planned to fill during this one."""
        op = p.op
        st = self.stats[op.id]
        st.calls += 1
        job = self.fills.pop(op.id, None)
        if job is None and p.view is None and not p.cont:
            job = self._fill(p)             # not prefetchable: fill now
            self.fills.pop(op.id, None)
        for nxt in self.prefetch_of.get(op.id, ()):
            self._fill(nxt)
        if job is None and op.kind == "read":
            job = self.refresh_job          # a view of pinned rows: needs the refresh
        if job is None or job.done():
            st.ready_at_call += 1
            if job is not None:
                job.wait()
        else:
            t0 = time.perf_counter()
            job.wait()
            st.waited += 1
            st.wait_s += time.perf_counter() - t0
        buf = self.buffer(p)
        if p.view is not None and (op.kind == "pre_update" or
                                   (op.kind == "local" and p.first and not op.fetch)):
            self.be.zero(buf)
        return buf

    def post(self, p, buf) -> None:
        """End an operation: write back local data that lives on the host, accumulate an
        update (pinned rows in place; the rest copied to host memory in the background)."""
        op = p.op
        be = self.be
        if op.kind == "local" and p.view is None and not p.keep and \
                (not p.last or op.keep):
            home = self.local_home[op.name]
            start = p.hold // 4         # the first `hold` bytes stay for the next access

            def write_back():
                be.d2h(buf[start:].reshape(1, -1), self._whole, home[:, start:], self._whole)
                self._count("d2h", op.nbytes - p.hold)
            self.io.submit(write_back, be.fence())
        elif op.kind == "pre_update" and p.view is None:
            t = op.table
            if p.to_pin_copy is not None:
                be.move(buf, p.to_pin_copy[0], self.acc[t], p.to_pin_copy[1])
            if p.to_pin_add is not None:
                be.move(buf, p.to_pin_add[0], self.acc[t], p.to_pin_add[1], add=True)
            if p.to_host_copy is not None or p.to_host_add is not None:
                host = self.acc_host[op.clock][t]

                def to_host():
                    for pair, add in ((p.to_host_copy, False), (p.to_host_add, True)):
                        if pair is not None:
                            be.d2h(buf, pair[0], host, pair[1], add=add)
                            self._count("d2h", len(pair[0]) * buf.shape[1] * 4)
                self.io.submit(to_host, be.fence())

    def load_local(self, name: str, values) -> None:
        """Put `values` (float32, the datum's size) in local datum `name`: its host home,
        and its pinned place if it has one (copied there on the transfer thread, after
        every transfer queued so far, and counted). Blocks until done."""
        home = self.local_home.get(name)
        if home is None:
            raise KeyError(f"local data {name!r} was not recorded with fetch=True or "
                           "keep=True")
        flat = np.ascontiguousarray(values).reshape(-1).view(np.float32)
        if flat.size != home.size:
            raise ValueError(f"local data {name!r} holds {home.size * 4} bytes; got "
                             f"{flat.size * 4}")
        at = self.plan.local_offsets.get(name)

        def load():
            home[0, :] = flat
            if at is not None:
                self.be.h2d(home, self._whole, self.local[at:at + home.size].reshape(1, -1),
                            self._whole)
                self._count("h2d", home.size * 4)
        self.io.submit(load, self.be.fence()).wait()
        # A fill of this datum queued before the load (the prefetch at a clock's start)
        # copied the old values: fill again, after the load.
        for op_id in [o for o in self.fills if self.plan.ops[o].op.name == name]:
            self._fill(self.plan.ops[op_id])

    def end_clock(self, k: int) -> dict:
        """Flush pinned accumulators to host memory; block until every transfer of the
        clock is done. Returns {table: host rows of clock k's updates} for the push."""
        c = self.plan.clocks[k]

        def flush():
            for t, (slots, host_ix) in c.flush.items():
                self.be.d2h(self.acc[t], slots, self.acc_host[k][t], host_ix)
                self._count("d2h", len(slots) * self.acc[t].shape[1] * 4)
        self.io.submit(flush, self.be.fence())
        self.io.drain()
        return self.acc_host[k]

    def close(self) -> None:
        self.io.close()
