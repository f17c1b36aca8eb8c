"""The low-level client: tables, push, pull and clock against the server shards.

    c = geeps.Client.from_env()                      # or Client(servers=[...], worker=0, ...)
    w = c.create_table("w", n_rows=64, rule="sgd", lr=0.1)
    c.push(w, range(0, 64), grads); c.clock()
    values, data_clock = c.pull(w)                   # waits as the consistency model says

Every call is thread-safe. The `*_async` variants return a Handle at once; `wait()`
blocks until every shard answered. Blocking variants are `*_async(...).wait()`.
Arrays handed to `push_async` are sent zero-copy: don't change them until the handle
completes. One background I/O thread owns all sockets (geeps.client.iothread): it
retries requests whose reply was lost (servers drop duplicates, so an update is applied
once), fails a request with ServerUnreachable, naming the server, when a shard stays
silent for `timeout` seconds, and rolls the job back to a checkpoint when a shard
restarts (geeps.client.recovery): the calls in flight then raise RolledBack.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from geeps.job import env as _config
from geeps.job import consistency as _consistency
from geeps.job import membership as _membership
from geeps.job import tableopts as _tableopts
from geeps.tables.filters import FilterSpec, PushFilter
from geeps.wire import protocol as P
from geeps.errors import (GeepsError, Resplit, RolledBack, ServerError, ServerUnreachable,
                          WaitTimeout)
from geeps.client.handles import Handle
from geeps.client.iothread import IOThread, Request
from geeps.tables.table import DEFAULT_ROW_WIDTH, RULES, Table, as_rows, resolve_hyper

MAX_ROLLBACK_RETRIES = 5  # times create/open_table are made again after rollbacks
RESPLITS = 3              # times a create is made again after the servers changed
# Bytes per chunk of exchange_async, times the number of shards: a worker sends its
# first chunk to every shard at once, so S chunks cross its link before any shard can
# answer one, and as many replies are left after its last push. Measured on the
# network lab (16 MiB per worker, docs/lab.md): 128-256 KiB chunks best at S=4 on
# 200 Mbit/s links, 64 KiB at S=8 on 50 Mbit/s; 1 MiB chunks cost 0.2-0.3 s a clock.
EXCHANGE_ROUND_BYTES = 512 << 10
LEAVE_WAIT_S = 2.0      # seconds close() waits for the shards to hear a worker is done

__all__ = ["Client", "Handle", "Table", "GeepsError", "RolledBack", "ServerError",
           "ServerUnreachable", "WaitTimeout"]


class Client:
    """A worker's connection to every server shard (see the module docstring)."""

    def __init__(self, servers: Sequence[str], worker: int = 0, num_workers: int = 1,
                 consistency: str | _consistency.Consistency = "bsp", *,
                 timeout: float = 30.0, wait_timeout: float = 600.0,
                 config: _config.Config | None = None,
                 on_transfer: Callable[[str, int], None] | None = None,
                 metrics=None, host=None, replication: int | None = None):
        if not servers:
            raise ValueError("servers is empty: give host:port of every shard "
                             "(GEEPS_SERVERS)")
        if not 0 <= worker < num_workers:
            raise ValueError(f"worker {worker} outside 0..{num_workers - 1}")
        self.servers = list(servers)
        self.worker = worker
        self.num_workers = num_workers
        self.consistency = (consistency if isinstance(consistency, _consistency.Consistency)
                            else _consistency.parse(consistency))
        self.timeout = timeout
        self.wait_timeout = wait_timeout
        self.session = int.from_bytes(os.urandom(6), "big")
        self._lock = threading.Lock()
        self._clock = 0
        self._tables: dict[str, Table] = {}
        # metrics: a geeps.metrics.Metrics; it counts pushed/pulled bytes unless the
        # caller counts them itself through on_transfer.
        self.metrics = metrics
        self.on_transfer = on_transfer or (metrics.transfer if metrics else None)
        self._last_clock_at = time.monotonic()
        # host: the shard this process serves itself (geeps.client.hosted.HostedShard),
        # reached in memory; close() keeps it serving until every worker has left.
        self._host = host
        self._local = None if host is None else host.rank
        self._closed = False
        # spec.tables (GEEPS_TABLES): filters and server functions by table name;
        # table name -> [(lo, hi, PushFilter)], the row spans each filter decides.
        self.table_options = _tableopts.parse(config.tables) if config is not None else {}
        self._filters: dict[str, list] = {}
        self._route_cache: dict[str, tuple] = {}     # table -> (key, routed, primaries)
        self._failovers_seen = 0
        # Who holds which rows (geeps.job.membership): the I/O thread keeps it current
        # (a shard of a newer epoch sends it); requests are routed by it.
        if replication is None:
            replication = config.replication if config is not None else 1
        membership = _membership.initial(self.servers, replication)
        self._io = IOThread(self.servers, config=config, timeout=timeout,
                            wait_timeout=wait_timeout,
                            host=host, membership=membership, worker=worker)
        self._io.on_rollback = self._rolled_back
        # A clock's pushes are kept until durable, to send again to a new primary
        # (async pushes apply at once: sent again, they would count twice).
        self._io.keep_pushes = self.consistency.per_clock
        self._io.start()
        try:
            hellos = self._all(lambda k: Request(k, "hello", {
                "worker": worker, "session": self.session, "num_workers": num_workers})).wait()
        except BaseException:
            self._io.stop()
            if host is not None:
                host.stop()
            raise
        if host is not None:
            # Its peers may still read the hosted shard: leave (and serve on until they
            # all have) even when the script never calls close().
            atexit.register(self._close_at_exit)
        # A restarted worker rejoins at the clock the servers know it finished.
        self._clock = min(h["worker_clock"] for h, _ in hellos)
        # A shard restored from its checkpoint (base > 0, its own restart the cause of
        # its state) while another shard answers another cause: nobody has rolled the
        # job back for that restart yet. With co-located shards this worker's own death
        # took its shard along. Start the rollback here (the other workers join it:
        # same cause) and join at its clock.
        k = next((k for k, (h, _) in enumerate(hellos)
                  if h.get("base", 0) > 0 and h.get("cause") == h.get("inc")
                  and any(o.get("cause") != h["inc"] for o, _ in hellos)), None)
        if k is not None:
            try:
                self._io.request_rollback(k, hellos[k][0]).wait(timeout)
            except RolledBack as e:
                self._clock = e.clock
            except BaseException:
                self.close(failed=True)
                raise
        self.joined_at = self._clock    # > 0: this client replaces a worker that died

    @classmethod
    def from_env(cls, environ=None, **kw) -> "Client":
        """A client configured by the GEEPS_* environment (see geeps.job.env)."""
        return cls.from_config(_config.load(environ), **kw)

    @classmethod
    def from_config(cls, cfg: _config.Config, **kw) -> "Client":
        """A client of `cfg`: its metrics served (unless given), and the shard it hosts
        when cfg.colocate."""
        if "metrics" not in kw:
            from geeps.metrics import Metrics
            kw["metrics"] = Metrics.from_config(cfg)
            kw["metrics"].serve(cfg.metrics_port, cfg.metrics_addr)
        if cfg.colocate and "host" not in kw:
            from geeps.client.hosted import HostedShard
            kw["host"] = HostedShard(cfg, metrics=kw["metrics"])
        return cls(cfg.servers, cfg.rank, cfg.num_workers, cfg.consistency,
                   timeout=cfg.timeout, wait_timeout=cfg.wait_timeout, config=cfg, **kw)

    # ---- tables -----------------------------------------------------------------------
    def create_table(self, name: str, n_rows: int, row_width: int = DEFAULT_ROW_WIDTH,
                     rule: str = "sgd", init: np.ndarray | None = None, *,
                     functions: Sequence[dict] | None = None,
                     filter: FilterSpec | None = None, **hyper) -> Table:
        """Create a table on every shard (idempotent for the same spec) and return it.

        `init` (n_rows x row_width) seeds the values; without it rows start at zero. If
        the table exists already its values are kept and `init` is ignored.
        `functions`: server functions ([{"name": "prox-l1", "args": {"l1": 0.1}}],
        geeps.server.functions) the shards run around the rule; `filter`: this
        worker's push filter (geeps.tables.filters). Both default to the job's
        spec.tables entry of this name."""
        opts = self.table_options.get(name)
        if functions is None and opts is not None:
            functions = list(opts.functions)
        functions = [_tableopts.function_spec(f.get("name"), f.get("args"),
                                              where=f"table {name!r}: function")
                     for f in functions or ()]
        if rule not in RULES:
            raise ValueError(f"rule {rule!r} is not one of {', '.join(RULES)}")
        hyper = resolve_hyper(rule, hyper)
        if n_rows < 0 or row_width < 1:
            raise ValueError(f"table {name!r}: n_rows must be >= 0 and row_width >= 1")
        if init is not None:
            init = np.ascontiguousarray(init, dtype=np.float32)
            if init.shape != (n_rows, row_width):
                raise ValueError(f"table {name!r}: init has shape {init.shape}, "
                                 f"expected ({n_rows}, {row_width})")
        def create():
            # Every holder of each segment (primary and replicas) gets the segment.
            m = self._io.membership
            segments = m.segments(n_rows)
            reqs = [Request(k, "create", {
                "table": name, "n_rows": n_rows, "row_width": row_width, "lo": g.lo,
                "hi": g.hi, "rule": rule, "hyper": hyper,
                "per_clock": self.consistency.per_clock, "init": init is not None,
                **({"functions": functions} if functions else {})},
                [] if init is None else [init[g.lo:g.hi]])
                for g in segments for k in g.holders]
            # A member holding none of its rows (fewer rows than servers) hears of it
            # too, by an empty create: an open sent there finds it.
            holding = {k for g in segments for k in g.holders}
            reqs += [Request(k, "create", {
                "table": name, "n_rows": n_rows, "row_width": row_width, "lo": 0, "hi": 0,
                "rule": rule, "hyper": hyper, "per_clock": self.consistency.per_clock,
                "init": False, **({"functions": functions} if functions else {})})
                for k in sorted(set(m.servers) - holding)]
            return self._io.submit(reqs, combine=lambda parts: parts, epoch=m.epoch).wait()
        self._io.n_rows[name] = n_rows
        self._io.widths[name] = row_width
        for attempt in range(RESPLITS):
            try:
                self._across_rollbacks(create)
                break
            except Resplit:
                # the servers changed since this client last looked (a worker that
                # started, or restarted, during a membership change): the requests
                # are made again from the membership the refusal brought
                if attempt == RESPLITS - 1:
                    raise
        bounds = tuple((g.lo, g.hi) for g in self._io.membership.segments(n_rows))
        table = Table(name, n_rows, row_width, rule, hyper, bounds)
        self._tables[name] = table
        self._default_filter(table, filter)
        return table

    def open_table(self, name: str, timeout: float | None = None) -> Table:
        """The table `name`, waiting (up to `timeout`, default wait_timeout) until some
        worker has created it."""
        replies = self._across_rollbacks(
            lambda: self._all(lambda k: Request(k, "open", {"table": name})).wait(timeout))
        specs = [h for h, _ in replies if "n_rows" in h]
        s = specs[0]
        self._io.n_rows[name] = s["n_rows"]
        self._io.widths[name] = s["row_width"]
        table = Table(name, s["n_rows"], s["row_width"], s["rule"], s["hyper"],
                      tuple((g.lo, g.hi) for g in self._io.membership.segments(s["n_rows"])))
        self._tables[name] = table
        self._default_filter(table, None)
        return table

    # ---- push filters -----------------------------------------------------------------
    def set_filter(self, table: Table, spec: FilterSpec | None, rows: range | None = None,
                   ) -> None:
        """Filter this worker's pushes to `rows` (default all) of `table` with `spec`
        (geeps.tables.filters.filter_spec(...); None: send them whole). Each span keeps
        its own residual (error feedback); setting a span anew starts it empty. Pushes
        of rows no span covers are sent whole."""
        rows = range(0, table.n_rows) if rows is None else rows
        if not 0 <= rows.start <= rows.stop <= table.n_rows or rows.step != 1:
            raise ValueError(f"filter rows {rows} outside 0..{table.n_rows} of {table.name!r}")
        spans = [s for s in self._filters.get(table.name, [])
                 if s[1] <= rows.start or s[0] >= rows.stop]
        if spec is not None:
            spans.append((rows.start, rows.stop,
                          PushFilter(spec, len(rows), table.row_width, rank=self.worker)))
        if spans:
            self._filters[table.name] = sorted(spans, key=lambda s: s[0])
        else:
            self._filters.pop(table.name, None)

    def filter_needs_weights(self, table: Table) -> bool:
        """Whether a push to `table` needs the rows' weights (a kkt span)."""
        return any(f.spec.kind == "kkt" for _, _, f in self._filters.get(table.name, ()))

    def filters(self, table: Table) -> list[tuple[int, int, PushFilter]]:
        """(lo, hi, PushFilter) of each filtered span of `table`: their residuals."""
        return list(self._filters.get(table.name, []))

    def _default_filter(self, table: Table, spec: FilterSpec | None) -> None:
        opts = self.table_options.get(table.name)
        if spec is None and opts is not None:
            spec = opts.filter
        if spec is not None:
            self.set_filter(table, spec)

    # ---- push / pull / clock ----------------------------------------------------------
    @property
    def rollbacks(self) -> int:
        """How many times the job rolled back to a checkpoint since this client started
        (a data loader compares it to know its position is stale)."""
        return self._io.timeline

    @property
    def clock_value(self) -> int:
        """Clocks this worker has finished (the clock its next pushes belong to)."""
        return self._clock

    def batch(self):
        """A context: the requests this thread makes inside it are sent at its end,
        those to one shard in one message (a step's last pushes, clock and refresh).

            with client.batch():
                client.push_async(t, None, grads); client.clock_async()
                refresh = client.pull_async(t)
        """
        return self._io.hold()

    def push_async(self, table: Table, rows, values: np.ndarray, *,
                   timeline: int | None = None, defer: bool = False,
                   last: bool = False, weights: np.ndarray | None = None) -> Handle:
        """Send updates for `rows` (a range/slice, or int ids) of the current clock.

        `timeline` (a value of `rollbacks` read earlier): if the job has rolled back
        since, the push is refused with RolledBack rather than sent. `defer`: it may
        wait (at most a fraction of a second) to leave with the next requests, in one
        message with them: for a push that the clock will follow at once. `last`
        (range pushes of BSP/SSP tables): this worker pushes nothing more to these
        rows in this clock, so once every worker's last push of them is in, a shard
        may update them before the clock ends (and answer reads of them early);
        pushing to them again in the clock is an error.
        A table with a push filter (set_filter, spec.tables) sends what the filter
        chooses, as sparse frames, and `last` is ignored; `weights` (the rows' current
        values) are what the kkt filter needs."""
        sel = as_rows(rows, table.n_rows)
        values = np.ascontiguousarray(values, dtype=np.float32)
        n = len(sel)
        if values.shape != (n, table.row_width):
            raise ValueError(f"push to {table.name!r}: values have shape {values.shape}, "
                             f"expected ({n}, {table.row_width})")
        if table.name in self._filters:
            return self._push_filtered(table, sel, values, weights, timeline, defer)
        clock = self._clock
        reqs = []
        m = self._io.membership
        # Only tables applied once per clock take chunks: under async each push is one
        # update (an Adam step counts it), so it must arrive as one message.
        for k, rows_hdr, payload, _ in self._split(table, sel, values,
                                                     chunk=self.consistency.per_clock, m=m):
            if k == self._local or (m.replication > 1 and self.consistency.per_clock):
                # In memory the shard would keep the caller's own array, which the
                # caller may change once the push is acknowledged: hand it a copy.
                # With replicas the push is kept until durable (sent again should
                # its primary fail), past the point the caller may change it.
                # (Without, it is kept by reference, for a membership change: a
                # caller that changes the array within the clock would send the
                # changed values again; copying every push would cost every job.)
                payload = [np.array(x) for x in payload]
            header = {"table": table.name, "worker": self.worker, "session": self.session,
                      "clock": clock, "rows": rows_hdr}
            if last and "range" in rows_hdr:
                header["last"] = True
            reqs.append(Request(k, "push", header, payload, seq=True))
        if self.on_transfer:
            self.on_transfer("push", values.nbytes)
        return self._io.submit(reqs, combine=lambda parts: None, timeline=timeline,
                               defer=defer, epoch=m.epoch)

    def push(self, table: Table, rows, values: np.ndarray, **kw) -> None:
        """push_async(...).wait()"""
        self.push_async(table, rows, values, **kw).wait()

    def _push_filtered(self, table: Table, sel, values: np.ndarray, weights,
                       timeline, defer) -> Handle:
        width = table.row_width
        if weights is not None:
            weights = np.asarray(weights, np.float32).reshape(values.shape)
        if not isinstance(sel, range):      # ids: sorted, a repeated one summed exactly
            sel, inv = np.unique(sel, return_inverse=True)
            acc = np.zeros((len(sel), width), np.float64)
            np.add.at(acc, inv, values)
            values = acc
            if weights is not None:
                w = np.empty((len(sel), width), np.float32)
                w[inv] = weights
                weights = w
        rows = np.arange(sel.start, sel.stop) if isinstance(sel, range) else sel
        keys, vals = [], []
        covered = np.zeros(len(rows), bool)
        for lo, hi, f in self._filters[table.name]:
            inside = (rows >= lo) & (rows < hi)
            if not inside.any():
                continue
            covered |= inside
            if isinstance(sel, range):
                a, b = max(lo, sel.start), min(hi, sel.stop)
                local, part = range(a - lo, b - lo), slice(a - sel.start, b - sel.start)
            else:
                local, part = rows[inside] - lo, inside
            ids, pos, v = f.apply(local, values[part],
                                  None if weights is None else weights[part])
            keys.append((ids[pos // width] + lo) * width + pos % width)
            vals.append(v)
            if self.metrics is not None:
                self.metrics.filtered(table.name, values[part].size * 4,
                                      len(pos) * 8, f.residual_norm())
        if not covered.all():               # rows no filter decides go whole
            whole = np.flatnonzero(~covered)
            keys.append((rows[whole][:, None] * width + np.arange(width)).reshape(-1))
            vals.append(np.asarray(values[whole], np.float32).reshape(-1))
        key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        val = np.concatenate(vals) if vals else np.zeros(0, np.float32)
        order = np.argsort(key, kind="stable")
        key, val = key[order], np.ascontiguousarray(val[order], dtype=np.float32)
        clock = self._clock
        reqs = []
        row_of = key // width
        step = P.CHUNK_BYTES // 8 if self.consistency.per_clock else max(1, len(key))
        m = self._io.membership
        routed, primaries = self._routes(table, m)
        for i, (a, b) in enumerate(routed.bounds):
            k = primaries[i]
            i, j = (int(x) for x in np.searchsorted(row_of, [a, b]))
            for s in range(i, j, step):
                e = min(j, s + step)
                lo, hi = int(row_of[s]), int(row_of[e - 1]) + 1
                offsets = (key[s:e] - lo * width).astype(P.SPARSE_OFFSET)
                reqs.append(Request(k, "push", {
                    "table": table.name, "worker": self.worker, "session": self.session,
                    "clock": clock, "rows": {"sparse": [e - s, lo, hi]}},
                    [offsets, val[s:e].copy()], seq=True))
        if self.on_transfer:
            self.on_transfer("push", key.size * 8)
        return self._io.submit(reqs, combine=lambda parts: None, timeline=timeline,
                               defer=defer, epoch=m.epoch)

    def pull_async(self, table: Table, rows=None, *, out: np.ndarray | None = None,
                   need: int | None = None) -> Handle:
        """Read `rows` (default all); the handle's result is (values, data_clock).

        The read waits on the servers until they hold every update the consistency
        model requires at this worker's clock (`need` overrides that bound)."""
        sel = as_rows(rows, table.n_rows)
        n = len(sel)
        if out is None:
            out = np.empty((n, table.row_width), np.float32)
        elif out.shape != (n, table.row_width) or out.dtype != np.float32:
            raise ValueError(f"pull from {table.name!r}: out must be float32 "
                             f"({n}, {table.row_width})")
        need = self.consistency.need(self._clock) if need is None else need
        reqs = []
        width = table.row_width

        def deliver(header, frames, place):
            # On the I/O thread, as each chunk arrives (see Request.deliver).
            if len(frames) != 1:
                raise P.ProtocolError(f"expected 1 values frame, got {len(frames)}")
            vals = np.frombuffer(frames[0], dtype="<f4")
            out[place] = vals.reshape(-1, width)
        m = self._io.membership
        for k, rows_hdr, payload, place in self._split(table, sel, None, m=m):
            reqs.append(Request(k, "pull", {"table": table.name, "rows": rows_hdr,
                                            "need": need}, payload,
                                deliver=lambda h, f, place=place: deliver(h, f, place)))
        on_transfer = self.on_transfer

        def combine(parts):
            clock = None
            for header, _ in parts:
                clock = header["clock"] if clock is None else min(clock, header["clock"])
            if on_transfer:
                on_transfer("pull", out.nbytes)
            return out, (clock if clock is not None else need)
        return self._io.submit(reqs, combine=combine, epoch=m.epoch)

    def pull(self, table: Table, rows=None, *, out: np.ndarray | None = None,
             need: int | None = None) -> tuple[np.ndarray, int]:
        """pull_async(...).wait(): (values, data_clock)."""
        t0 = time.monotonic()
        values, data_clock = self.pull_async(table, rows, out=out, need=need).wait()
        if self.metrics is not None:
            self.metrics.read_wait.observe(time.monotonic() - t0)
            self.metrics.clock_lag.observe(max(0, self._clock - data_clock))
        return values, data_clock

    def exchange_async(self, table: Table, values: np.ndarray,
                       out: np.ndarray | None = None, *,
                       chunk_bytes: int | None = None,
                       timeline: int | None = None) -> "Step":
        """One clock of a BSP/SSP table, pipelined: push `values` (every row) in chunks
        of about `chunk_bytes`, each marked `last` and followed at once by a read of
        the same rows for the next clock, then finish the clock. A shard updates a
        chunk's rows as soon as every worker's push of them is in and answers the read
        then, so updated rows flow back while later chunks still go out and a
        full-duplex link carries both directions at once (where push, clock, pull one
        after the other leave it half idle). The result is (out, data_clock) as of
        pull; the clock has moved on when it is ready. `chunk_bytes` defaults to
        EXCHANGE_ROUND_BYTES over the number of shards.

            out, _ = client.exchange_async(table, grads).wait()"""
        if not self.consistency.per_clock:
            raise ValueError("exchange_async: only a BSP/SSP table is applied per clock; "
                             "under async push and pull it")
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.shape != (table.n_rows, table.row_width):
            raise ValueError(f"exchange of {table.name!r}: values have shape {values.shape}, "
                             f"expected ({table.n_rows}, {table.row_width})")
        if out is None:
            out = np.empty_like(values)
        if chunk_bytes is None:
            chunk_bytes = EXCHANGE_ROUND_BYTES // len(self.servers)
        step = max(1, chunk_bytes // (4 * table.row_width))
        need = self.consistency.need(self._clock + 1)
        reads, pushes = [], []
        for lo in range(0, table.n_rows, step):
            hi = min(table.n_rows, lo + step)
            pushes.append(self.push_async(table, range(lo, hi), values[lo:hi], last=True,
                                          timeline=timeline))
            reads.append(self.pull_async(table, range(lo, hi), out=out[lo:hi], need=need))
        clock = self.clock_async(timeline=timeline)
        return Step(reads, clock, out, pushes)

    def clock_async(self, *, timeline: int | None = None) -> Handle:
        """Finish the current clock on every shard; the result is the new clock.
        `timeline`: as for push_async (a stale one leaves the clock unchanged)."""
        if timeline is not None and timeline != self.rollbacks:
            return self._io.submit([], combine=lambda parts: None, fail=RolledBack(
                self._clock, "the job rolled back during this clock"))
        with self._lock:
            c = self._clock
            self._clock = c + 1
        if self.metrics is not None:
            now = time.monotonic()
            self.metrics.iteration.observe(now - self._last_clock_at)
            self._last_clock_at = now
            self.metrics.clock.set(c + 1)
            self.metrics.membership_epoch.set(self._io.membership.epoch)
            if self._io.failovers > self._failovers_seen:
                self.metrics.failovers.inc(self._io.failovers - self._failovers_seen)
                self._failovers_seen = self._io.failovers
        m = self._io.membership
        return self._io.submit(
            [Request(k, "clock", {"worker": self.worker, "clock": c})
             for k in sorted(m.servers)], combine=lambda parts: c + 1,
            timeline=timeline, epoch=m.epoch)

    def clock(self) -> int:
        """clock_async().wait()"""
        return self.clock_async().wait()

    def stats(self) -> list[dict]:
        """Each shard's counters and state, one dict per shard: pushes, duplicates,
        errors, pulls, applied, parked, clocks, min_clock, tables, ..."""
        return [h for h, _ in self._all(lambda k: Request(k, "stats", {})).wait()]

    def close(self, failed: bool = False) -> None:
        """Tell every shard this worker is done, then stop the I/O thread; pending
        handles fail. A worker hosting a shard first serves it until every worker has
        left (or GEEPS_WAIT_TIMEOUT passes): the others may still need its rows.
        `failed` (also when a `with` block ends in an exception, or the interpreter
        exits on one): stop at once instead, so the process fails fast and can be
        replaced; its peers then see its shard go. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not failed:
            try:
                self._all(lambda k: Request(k, "leave", {"worker": self.worker})).wait(
                    min(self.timeout, LEAVE_WAIT_S))
            except GeepsError:
                pass        # a shard that is gone needs no goodbye
            if self._host is not None:
                self._host.serve_until_all_left(self.wait_timeout)
        self._io.stop()
        if self._host is not None:
            self._host.stop()

    def _close_at_exit(self) -> None:
        # atexit has no exc_info; an uncaught exception that is ending the interpreter
        # is left in sys.last_value.
        self.close(failed=getattr(sys, "last_value", None) is not None)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)

    # ---- internals --------------------------------------------------------------------
    def _across_rollbacks(self, call: Callable[[], Any]) -> Any:
        # Creating or opening a table belongs to no clock, and a rollback keeps the
        # tables a checkpoint holds: such a call is simply made again on the new
        # timeline (a replacement worker opening its tables meets the rollback its
        # own shard's restart set off).
        for _ in range(MAX_ROLLBACK_RETRIES):
            try:
                return call()
            except RolledBack:
                continue
        return call()

    def _rolled_back(self, clock: int) -> None:
        # Runs on the I/O thread before any caller hears RolledBack.
        with self._lock:
            self._clock = clock
        if self.metrics is not None:
            self.metrics.clock.set(clock)

    def _all(self, make: Callable[[int], Request]) -> Handle:
        m = self._io.membership
        return self._io.submit([make(k) for k in sorted(m.servers)],
                               combine=lambda parts: parts, epoch=m.epoch)

    def _routes(self, table: Table, m) -> tuple[Table, list[int]]:
        """`table` with the row ranges requests are cut into under membership `m`,
        and the primary serving each. The ranges are also cut where any membership
        this client saw cut them, so a request never spans two of the segments a
        shard holds apart."""
        key = (table.n_rows, m.epoch, self._io.cuts_version)
        hit = self._route_cache.get(table.name)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        cuts = self._io.cuts(table.n_rows)
        bounds, primaries = [], []
        for g in m.segments(table.n_rows):
            at = g.lo
            for c in [c for c in cuts if g.lo < c < g.hi] + [g.hi]:
                bounds.append((at, c))
                primaries.append(g.primary)
                at = c
        routed = dataclasses.replace(table, bounds=tuple(bounds))
        self._route_cache[table.name] = (key, routed, primaries)
        return routed, primaries

    def _split(self, table: Table, sel, values, chunk: bool = True, m=None):
        """Per request: (shard, rows header, payload frames, positions in the caller's
        order). With `chunk`, a shard's part is cut into requests of at most
        geeps.wire.protocol.CHUNK_BYTES of values, so every message is small enough to
        be received into reused heap memory (see there)."""
        # Unchunked: one request per shard, a "chunk" as large as any shard's part.
        step = P.chunk_rows(table.row_width) if chunk else max(1, len(sel))
        table, primaries = self._routes(table, m or self._io.membership)
        if isinstance(sel, range):
            for i, lo, hi in table.split_range(sel.start, sel.stop):
                k = primaries[i]
                for s in range(lo, hi, step):
                    e = min(hi, s + step)
                    a, b = s - sel.start, e - sel.start
                    payload = [] if values is None else [values[a:b]]
                    yield k, {"range": [s, e]}, payload, slice(a, b)
            return
        for i, pos, ids in table.split_index(sel):
            k = primaries[i]
            for s in range(0, len(ids), step):
                p = pos[s:s + step]
                i = np.ascontiguousarray(ids[s:s + step], dtype="<i8")
                payload = [i] if values is None else [i, values[p]]
                yield k, {"ids": len(i)}, payload, p


class Step:
    """What exchange_async returns: its reads and clock as one handle. `pushes` and
    `reads` (a handle per chunk, in the order sent; their `done_at`) are its trace."""

    def __init__(self, reads: list[Handle], clock: Handle, out: np.ndarray,
                 pushes: list[Handle] = ()):
        self._reads, self._clock, self._out = reads, clock, out
        self.reads, self.pushes = reads, list(pushes)

    def done(self) -> bool:
        return self._clock.done() and all(r.done() for r in self._reads)

    def wait(self, timeout: float | None = None) -> tuple[np.ndarray, int]:
        """(out, data_clock): every row read for the next clock."""
        deadline = None if timeout is None else time.monotonic() + timeout
        left = lambda: None if deadline is None else max(0.0, deadline - time.monotonic())
        self._clock.wait(left())
        clocks = [r.wait(left())[1] for r in self._reads]
        return self._out, min(clocks) if clocks else 0


def colocated(servers: Sequence[str], rank: int, num_workers: int,
              consistency: str | _consistency.Consistency = "bsp",
              timeout: float = 30.0, host: str = "127.0.0.1",
              server_backend: str = "numpy", send_buffer: int | None = None) -> Client:
    """A client that hosts shard `rank` of `servers` (bound on `host`), as
    GEEPS_COLOCATE=1 makes one: for programs that wire workers up themselves
    (benchmarks, tests). The same Config the environment would have given;
    `server_backend` is its GEEPS_SERVER_BACKEND (where the shard's rules run),
    `send_buffer` its GEEPS_SEND_BUFFER."""
    return Client.from_config(_config.check(_config.Config(
        role="worker", rank=rank, num_workers=num_workers, servers=tuple(servers),
        consistency=(consistency if isinstance(consistency, _consistency.Consistency)
                     else _consistency.parse(consistency)),
        colocate=True, bind_host=host, server_backend=server_backend,
        timeout=timeout, send_buffer=send_buffer)))
