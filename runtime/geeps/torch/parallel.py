"""DataParallel: a torch model whose parameters are views of geeps table rows.

    model = DataParallel(Net())          # see geeps.torch for the whole picture
    y = model(x)                         # waits for the refresh the last step started

The parameters (and float buffers) are packed into rows (geeps.torch.layout); hooks
on the parameters push each bucket of gradients as backward completes it. The
optimizers (geeps.torch.optim) drive it through two methods, their whole protocol:
`attach_optimizer(mode, rule, hyper)` once, when created, and `end_clock()` at each
step().
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from typing import Callable, Literal

import logging

import numpy as np
import torch

from geeps.torch import context as _context
from geeps.backend import from_env
from geeps.client.client import Client
from geeps.errors import RolledBack
from geeps.job.units import parse_bytes
from geeps.tables.filters import FilterSpec
from geeps.tables.table import DEFAULT_ROW_WIDTH
from geeps.torch.context import init
from geeps.torch.layout import Layout, Slot, Store, flat_view
from geeps.torch.paging import DeviceBudget

log = logging.getLogger("geeps.torch")

_FROM_ENV = object()    # device_budget not given: the job's (GEEPS_TORCH_DEVICE_BUDGET)

BUCKET_BYTES = 4 << 20  # gradients per push: small enough that the first bucket leaves
#                         early in backward, large enough that per-message cost vanishes

# What an optimizer sends at each clock: "grad", the gradients (ServerOptimizer: the
# servers run the rule), or "delta", the mean change of the parameters since the last
# refresh (LocalOptimizer: a torch optimizer ran on every worker; an `add` table).
UpdateMode = Literal["grad", "delta"]


class _Bucket:
    __slots__ = ("slots", "lo", "hi", "trainable", "ready", "pushed", "handle")

    def __init__(self, slots: list[Slot], trainable: set[int]):
        self.slots = slots
        self.lo, self.hi = slots[0].lo, slots[-1].hi
        self.trainable = trainable
        self.ready: set[int] = set()
        self.pushed = False
        self.handle = None


def _fingerprint(layout: Layout) -> np.ndarray:
    """One row naming every tensor and shape: a worker that built another model under
    the same table name finds out at its first read, whatever the row count."""
    digest = hashlib.sha256(repr([(s.name, s.shape) for s in layout.slots]).encode()).digest()
    row = np.zeros(layout.row_width, np.float32)
    n = min(len(digest), layout.row_width)
    row[:n] = np.frombuffer(digest[:n], np.uint8)
    return row


def _tensor_store(named: list[tuple[str, torch.Tensor]], row_width: int,
                  device: torch.device | None = None):
    layout = Layout([(n, t.shape) for n, t in named], row_width)
    if device is None:
        device = named[0][1].device if named else torch.device("cpu")
    # The last row holds the fingerprint; no push ever touches it, so no rule moves it.
    store = Store(layout.n_rows + 1, row_width, device)
    store.host[-1] = _fingerprint(layout)
    store.upload()
    for slot, (_, t) in zip(layout.slots, named):
        view = store.view(slot)
        view.copy_(t.detach())
        t.data = view           # same tensor object (optimizers keep it), new storage
    return layout, store


def _pin_in_place(rows: np.ndarray) -> None:
    """Page-lock the rows the refresh lands in, where they are (loads from them can then
    run asynchronously), until the array is freed. Needs a GPU: not run by the CPU-only
    tests."""
    cudart = torch.cuda.cudart()
    ptr = rows.ctypes.data
    cudart.cudaHostRegister(ptr, rows.nbytes, 0)
    weakref.finalize(rows, cudart.cudaHostUnregister, ptr)


class DataParallel(torch.nn.Module):
    """Wrap a model for data-parallel training on geeps.

        model = gt.DataParallel(Net())          # before creating the optimizer
        y = model(x)                            # blocks until the last refresh arrived

    Parameters are packed into one table (name `name`), last-registered first so that
    neighbours in backward are neighbours in rows, and become views of this worker's
    copy of those rows (zero-copy: torch.from_numpy on CPU, DLPack over CuPy on a
    GPU). The tables are created (rank 0, with its initial values) or opened (other
    ranks, which then start from rank 0's values) when an optimizer is attached.

    Buffers: float32 buffers (BatchNorm's running mean and variance) live in a
    second table, `name.buffers`, with rule `add`. Each worker updates its copy in
    forward as usual; at step() it pushes (its value - the value at the last refresh)
    / W, so after the refresh every worker holds the mean over workers of their
    updated statistics (for a running mean: exactly what one process would compute
    from the union of the batches). Other buffers (num_batches_tracked, which
    advances identically on every worker) stay local.

    `forward`, `sync()` and `state_dict()` block until the refresh started by the last
    step() arrived (under BSP: until every worker finished that clock). Read the
    parameters yourself only after one of them. Gradient hooks and step() never block
    on the network. Not thread-safe: one training thread per model.

    `client`: the geeps Client to use (default: init()'s). `on_push(names, rows)` is
    called after each bucket of gradients leaves, with its tensors' names and rows.

    `bucket_refresh` (ServerOptimizer's gradients, BSP/SSP): right after a bucket's
    push leaves in backward, ask for the bucket's rows of the next clock (BytePS's
    partition-and-pipeline): a shard answers once every worker's push of them is in, so
    the replies flow in while later buckets still go out. They land in a host buffer
    (the parameters are still in use until backward ends; one more host copy of the
    model) and are copied into the parameters when the step's refresh completes (the
    next forward or sync()). The rows are the ones the whole refresh would read.

    Push filters (geeps.tables.filters), per parameter group: `filters` maps a
    pattern of parameter names (fnmatch: "fc.*", "*.bias") to a filter spec or None
    (sent whole); a parameter takes the first pattern it matches, unmatched ones go
    whole. Without `filters`, the job's spec.tables decides: an entry named like the
    model (`name`) filters every parameter, one named "<name>:<pattern>" a group (and
    the model's entry then the parameters no group takes).
    top-k and random-k choose per bucket within a group; what is not sent stays in
    this worker's residual (error feedback, Client.filters(model_table)).

    `device_budget` (bytes or a quantity, "2Gi"; None: the whole model stays in device
    memory; default GEEPS_TORCH_DEVICE_BUDGET, spec.cache.torchDeviceBudget): train a
    model larger than the device (geeps.torch.paging). The rows stay in host memory,
    where the refresh lands; each module's parameters are brought into device memory
    for its forward and again for its backward, gradients leave as soon as they are
    accumulated, and saved activations are offloaded, all within the budget (checked
    at every operation, `budget.peak`, `budget.moved`). Steps are bit for bit those
    without a budget. On the CPU the device is RAM, held to the budget the same way.
    Needs a ServerOptimizer (a LocalOptimizer runs a torch optimizer on parameters
    that are not resident) and excludes no_sync() (gradients do not stay on the
    device); not counted: buffers, and what is saved outside the model's forward.
    """

    def __init__(self, module: torch.nn.Module, *, name: str = "model",
                 bucket_bytes: int = BUCKET_BYTES, row_width: int = DEFAULT_ROW_WIDTH,
                 client: Client | None = None,
                 on_push: Callable[[tuple[str, ...], range], None] | None = None,
                 filters: dict[str, FilterSpec | None] | None = None,
                 device_budget: int | str | None = _FROM_ENV,
                 bucket_refresh: bool = True):
        super().__init__()
        self._group_filters = filters
        self.module = module
        self.name = name
        if client is None:
            client = init().client
        self._client = client
        self._on_push = on_push
        params = list(module.named_parameters())
        if not params:
            raise ValueError("the module has no parameters: nothing to train")
        params.reverse()            # backward produces the last layers' gradients first
        for n, p in params:
            if p.dtype != torch.float32:
                raise TypeError(f"parameter {n!r} is {p.dtype}: geeps tables hold float32 "
                                "(train in float32; autocast still works)")
        devices = {p.device for _, p in params}
        if len(devices) > 1:
            raise ValueError(f"parameters on several devices ({sorted(map(str, devices))}): "
                             "put the whole model on one device before wrapping it")
        self._params = [p for _, p in params]
        if device_budget is _FROM_ENV:
            device_budget = from_env("GEEPS_TORCH_DEVICE_BUDGET")
        elif device_budget is not None:
            device_budget = parse_bytes(device_budget)
        home = torch.device("cpu") if device_budget is not None else None
        self._playout, self._pstore = _tensor_store(params, row_width, home)
        buffers = [(n, b) for n, b in module.named_buffers() if b.dtype == torch.float32]
        self._buffers_synced = [b for _, b in buffers]
        self._blayout, self._bstore = _tensor_store(buffers, row_width) if buffers \
            else (None, None)
        self._gstage = np.zeros_like(self._pstore.host)       # gradients as they leave
        gt = torch.from_numpy(self._gstage)
        self._gviews = [flat_view(gt, s, row_width) for s in self._playout.slots]
        self._buckets = [_Bucket(b, {s.index for s in b if self._params[s.index].requires_grad})
                         for b in self._playout.buckets(bucket_bytes)]
        self._bucket_of = {s.index: bk for bk in self._buckets for s in bk.slots}
        self._complete = sum(1 for bk in self._buckets if bk.trainable)
        self._pushed = 0                # buckets completed by hooks in this clock
        self._lock = threading.Lock()
        self._syncing = True            # False inside no_sync()
        self._mode: UpdateMode | None = None    # set by attach_optimizer
        self._table = self._btable = None
        self._hooks: list = []
        self._refresh: list = []        # pull handles of the refresh in flight
        # Reads of pushed buckets' rows for the next clock, asked for during backward
        # (bucket_refresh): (lo, hi, handle), landing in _pstage. At step()
        # _start_refresh reads the rest of the table and they become part of the
        # refresh in flight (_refresh_early), copied into the rows when it completes.
        self._bucket_refresh = bucket_refresh
        self._early: list = []
        self._refresh_early: list = []
        self._pstage: np.ndarray | None = None
        self._clock_handle = None
        self._other_handles: list = []
        # The job rolled back to a checkpoint while this iteration's batch belongs to a
        # clock that no longer exists: its gradients are not pushed and its step does
        # not clock (see _rolled_back).
        self._void = False
        self._timeline = 0      # the client's rollbacks when this iteration began
        self._pbase = self._bbase = None
        self._delta = self._bdelta = None
        self.budget = self._page_parameters(device_budget, devices.pop())
        _context.register(self)

    # ---- what users call -----------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._client.worker

    @property
    def num_workers(self) -> int:
        return self._client.num_workers

    @property
    def clock(self) -> int:
        """Clocks this worker has finished."""
        return self._client.clock_value

    # data_clock: the servers' clock when the parameters were read (every update of
    # clocks below it is in them); clock - data_clock is their staleness.
    data_clock = 0

    def forward(self, *args, **kwargs):
        self.sync()
        if self.budget is not None:
            self.budget.begin()
            with self.budget.saving():
                return self.module(*args, **kwargs)
        return self.module(*args, **kwargs)

    def _page_parameters(self, device_budget: int | None, device: torch.device):
        """Under a device budget: the pager (geeps.torch.paging) that brings each
        parameter in from its rows in host memory, into storage of its own on `device`."""
        if device_budget is None:
            return None
        if device.type == "cuda":
            _pin_in_place(self._pstore.host)
        host = [self._pstore.host_view(s) for s in self._playout.slots]
        pager = DeviceBudget(self.module, device_budget, params=self._params, host=host,
                             device=device, grad_sink=self._budget_grad)
        if self._client.metrics is not None:    # the process's transfer counters
            pager.on_move = self._client.metrics.transfer
        return pager

    def _budget_grad(self, index: int, p: torch.Tensor) -> None:
        # Before an optimizer is attached there is no table to send it to: dropped,
        # as it would never be pushed without a budget either.
        if self._mode == "grad":
            self._on_grad(index, p)

    def sync(self) -> None:
        """Block until the parameters hold the refresh the last step() started.

        If the job rolls back to a checkpoint meanwhile (a server restarted), the
        parameters are refreshed at the checkpoint's clock instead."""
        while True:
            try:
                self._sync()
                self._timeline = self._client.rollbacks
                return
            except RolledBack:
                self._rolled_back()

    def _rolled_back(self) -> None:
        """Drop what this clock sent; read the model at the clock the job is back at."""
        log.warning("%s: the job rolled back to clock %d", self.name, self.clock)
        self._clock_handle = None
        self._other_handles = []
        self._early, self._refresh_early = [], []     # reads of a clock gone by
        self._pushed = 0
        for b in self._buckets:
            b.handle = None
            b.ready.clear()
            b.pushed = False
        self._start_refresh()
        ctx = _context.current()
        # The batch in hand is still right if the loader already moved to the new clock.
        self._void = ctx is None or ctx.batch_clock != self.clock

    def _sync(self) -> None:
        if not self._refresh and not self._refresh_early and self._clock_handle is None:
            return
        refresh, self._refresh = self._refresh, []
        # A forward pass reads every row of the model's tables. It is a hit when the
        # refresh the last step() started had already landed (nothing to wait for: the
        # rows were fresh enough), a miss when it had to wait. Lag is this worker's
        # clock minus the clock of the parameters it computes with; read-wait the time
        # blocked here.
        hit = all(h.done() for _, h, _ in refresh) and all(
            h.done() for _, _, h in self._refresh_early) and (
            self._clock_handle is None or self._clock_handle.done())
        t0 = time.monotonic()
        if self._clock_handle is not None:
            self._clock_handle.wait()
            self._clock_handle = None
        clocks = []
        early, self._refresh_early = self._refresh_early, []
        for lo, hi, h in early:     # the buckets' rows read during backward
            clocks.append(h.wait()[1])
            np.copyto(self._pstore.host[lo:hi], self._pstage[lo:hi])
        for store, h, _ in refresh:
            clocks.append(h.wait()[1])
            store.upload()
        self.data_clock = min(clocks)
        metrics = self._client.metrics
        if metrics is not None and refresh:
            metrics.read_wait.observe(time.monotonic() - t0)
            metrics.clock_lag.observe(max(0, self.clock - self.data_clock))
            for store, table in {(store, table) for store, _, table in refresh}:
                rows = store.host.shape[0]
                metrics.cache_reads(table, hits=rows if hit else 0,
                                    misses=0 if hit else rows)
                if not store.zero_copy:
                    metrics.transfer("h2d", store.host.nbytes)
        if self._pbase is not None:
            np.copyto(self._pbase, self._pstore.host)
        if self._bbase is not None:
            np.copyto(self._bbase, self._bstore.host)

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally across several backward passes; the gradients
        leave at the next backward outside this block, or at step().

        Also the way to change gradients between backward and step() (clipping, say):
        outside this block each bucket leaves as soon as backward completes it, so a
        later change of `.grad` reaches no server. Inside it, step() pushes `.grad` as
        it is then (each worker's own gradient, before the servers average them):

            with model.no_sync():
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        """
        if self.budget is not None:
            raise RuntimeError("no_sync() under a device budget: gradients leave device "
                               "memory as soon as backward makes them, so they cannot "
                               "accumulate there (train without device_budget)")
        old, self._syncing = self._syncing, False
        try:
            yield
        finally:
            self._syncing = old

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The wrapped module's state with its own keys (no `module.` prefix: it loads
        into the unwrapped model), parameters and float buffers read from the servers:
        the model after every worker finished this worker's current clock (blocks until
        then). Before an optimizer is attached: this worker's values. Tensors are
        copies on the module's device. Nested in another module (a `prefix` is given),
        keys keep `module.` so the parent's load_state_dict finds them.

            if model.rank == 0: torch.save(model.state_dict(), "model.pt")
        """
        if args:
            raise TypeError("state_dict() takes keyword arguments only")
        local = self.module.state_dict(keep_vars=True)
        fetched = {}
        if self._table is not None:
            self.sync()
            need = self._client.clock_value
            sources = [(self._params, self._playout, self._table)]
            if self._btable is not None:
                sources.append((self._buffers_synced, self._blayout, self._btable))
            for tensors, layout, table in sources:
                values, _ = self._client.pull(table, need=need)
                flat = torch.from_numpy(values)
                for t, slot in zip(tensors, layout.slots):
                    fetched[id(t)] = flat_view(flat, slot, layout.row_width)
        out = OrderedDict() if destination is None else destination
        inner = prefix + "module." if prefix else ""
        for k, v in local.items():
            src = fetched.get(id(v))
            if src is None and self.budget is not None:     # paged: its value is on host
                src = self.budget.host_of(v)
            out[inner + k] = src.to(v.device, copy=True) if src is not None \
                else v.detach().clone()
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load into the wrapped module (its own keys); only before an optimizer is
        attached, since rank 0's values then initialize the servers."""
        if self._table is not None:
            raise RuntimeError("load_state_dict after the optimizer was created: the servers "
                               "already hold the model; load it before creating the optimizer")
        if assign:
            raise ValueError("assign=True would replace the parameters' storage (the table "
                             "rows); load with assign=False")
        if self.budget is not None:     # paged: the values live in host memory
            with self.budget.host_values():
                return self.module.load_state_dict(state_dict, strict=strict)
        return self.module.load_state_dict(state_dict, strict=strict)

    def close(self) -> None:
        """Wait until this model's pushes and last clock reached the servers; remove the
        hooks. Idempotent; the client stays open."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.budget is not None:
            self.budget.close()
        handles = [b.handle for b in self._buckets] + self._other_handles
        if self._clock_handle is not None:
            handles.append(self._clock_handle)
        for h in handles:
            if h is not None:
                h.wait()

    # ---- what the optimizers call (geeps.torch.optim) ----------------------------------
    def attach_optimizer(self, mode: UpdateMode, rule: str, hyper: dict) -> None:
        """Called once, by the optimizer being created: create this model's tables with
        `rule` and its `hyper` parameters (rank 0, from its values; the buffers' table
        has rule `add`) or open them (other ranks), load the servers' values (blocks
        until then), and for mode "grad" install the hooks that push gradients during
        backward. RuntimeError if the model already has an optimizer."""
        if self._mode is not None:
            raise RuntimeError(f"this model already has an optimizer ({self._mode} mode); "
                               "create one optimizer per DataParallel model")
        if mode == "delta" and self.budget is not None:
            raise ValueError("a LocalOptimizer under a device budget: its torch optimizer "
                             "would update parameters that are not in device memory; use "
                             "ServerOptimizer (the rule runs on the servers)")
        self._table = self._get_table(self.name, self._playout, self._pstore, rule, hyper)
        self._set_filters()
        if self._blayout is not None:
            self._btable = self._get_table(f"{self.name}.buffers", self._blayout,
                                           self._bstore, "add", {})
            self._bbase = self._bstore.host.copy()
            self._bdelta = np.zeros_like(self._bbase)
        self._mode = mode
        if mode == "delta":
            self._pbase = self._pstore.host.copy()
            self._delta = np.zeros_like(self._pbase)
        self._start_refresh()
        self.sync()             # every worker starts from rank 0's values
        for table, layout, store in ((self._table, self._playout, self._pstore),
                                     (self._btable, self._blayout, self._bstore)):
            if table is not None and not np.array_equal(store.host[-1], _fingerprint(layout)):
                raise ValueError(
                    f"table {table.name!r} on the servers holds another model (other tensor "
                    "names or shapes): do all workers build the same model?")
        # Only a table applied once per clock updates a bucket's rows before the clock
        # ends (its last pushes); under async a read would just see them as they are.
        if mode == "grad" and self._bucket_refresh and self._client.consistency.per_clock:
            self._pstage = np.empty_like(self._pstore.host)
        if mode == "grad" and self.budget is None:
            for slot, p in zip(self._playout.slots, self._params):
                if p.requires_grad:
                    self._hooks.append(p.register_post_accumulate_grad_hook(
                        functools.partial(self._on_grad, slot.index)))

    def _set_filters(self) -> None:
        """The client's filter spans of the model table, one per run of neighbouring
        tensors with the same filter (a bucket meets a group in one span)."""
        groups = self._group_filters
        if groups is None:
            prefix = self.name + ":"
            opts = self._client.table_options
            groups = {n[len(prefix):]: o.filter for n, o in opts.items()
                      if n.startswith(prefix)}
            if not groups:
                return          # the client's default: spec.tables' entry for the table
            if self.name in opts:       # the model's own entry: the other parameters
                groups["*"] = opts[self.name].filter
        self._client.set_filter(self._table, None)
        spans: list[list] = []
        for slot in self._playout.slots:
            spec = next((f for pat, f in groups.items() if fnmatch.fnmatchcase(slot.name, pat)),
                        None)
            if spans and spans[-1][2] == spec and spans[-1][1] == slot.lo:
                spans[-1][1] = slot.hi
            else:
                spans.append([slot.lo, slot.hi, spec])
        for lo, hi, spec in spans:
            if spec is not None:
                self._client.set_filter(self._table, spec, range(lo, hi))

    def _get_table(self, name, layout: Layout, store: Store, rule: str, hyper: dict):
        c = self._client
        n_rows = layout.n_rows + 1
        if c.worker == 0:
            store.download()
            return c.create_table(name, n_rows, layout.row_width, rule=rule,
                                  init=store.host, **hyper)
        t = c.open_table(name)
        want = (n_rows, layout.row_width, rule)
        if (t.n_rows, t.row_width, t.rule) != want:
            raise ValueError(
                f"table {name!r} on the servers has {t.n_rows} rows of {t.row_width} floats "
                f"(rule {t.rule}); this worker's model needs {want[0]} rows of {want[1]} "
                f"(rule {rule}): do all workers build the same model and optimizer?")
        return t

    def _on_grad(self, index: int, p: torch.Tensor) -> None:
        """Autograd hook: the gradient of one parameter is complete."""
        if not self._syncing or self._void:
            return
        b = self._bucket_of[index]
        with self._lock:
            if b.pushed or index in b.ready:
                raise RuntimeError(
                    f"the gradient of {self._playout.slots[index].name!r} was produced twice "
                    f"in clock {self.clock}: call opt.step() after each backward, or "
                    "accumulate over several backward passes inside `with model.no_sync():`")
            self._stage(b, index, p.grad)
            if b.ready == b.trainable and not self._void:
                # The bucket backward completes last is its end: step() follows, and
                # the push leaves in one message with the clock (see Client.batch).
                self._pushed += 1
                self._push_bucket(b, defer=self._pushed == self._complete)

    def _stage(self, b: _Bucket, index: int, grad: torch.Tensor) -> None:
        if b.handle is not None:     # the last clock's push of these rows left zero-copy
            try:
                b.handle.wait()
            except RolledBack:       # inside backward: void the iteration, don't raise
                self._void = True
            b.handle = None
        if grad.is_sparse:
            grad = grad.to_dense()
        self._gviews[index].copy_(grad)
        b.ready.add(index)

    def _push_bucket(self, b: _Bucket, defer: bool = False) -> None:
        for s in b.slots:               # untouched rows carry no stale gradient
            if s.index not in b.ready:
                self._gstage[s.lo:s.hi] = 0.0
        # timeline: if the job rolls back meanwhile, this push (of a clock that no
        # longer exists) is refused by the client instead of landing in the new one.
        # last: a bucket leaves once per clock, so the shards may update its rows as
        # soon as every worker's push of it is in, while backward goes on.
        b.handle = self._client.push_async(self._table, range(b.lo, b.hi),
                                           self._gstage[b.lo:b.hi], timeline=self._timeline,
                                           defer=defer, last=True)
        b.pushed = True
        # The bucket's rows of the next clock, asked for now (see bucket_refresh). Not
        # for the step's last push, which waits to leave with the clock and the refresh
        # (a read now would send it alone), nor when a filter decides what a push
        # sends (it ignores `last`: the rows change only when the clock ends).
        if self._pstage is not None and not defer and b.trainable \
                and not self._client.filters(self._table):
            need = self._client.consistency.need(self._client.clock_value + 1)
            self._early.append((b.lo, b.hi, self._client.pull_async(
                self._table, range(b.lo, b.hi), out=self._pstage[b.lo:b.hi], need=need)))
        if self._on_push is not None:
            self._on_push(tuple(s.name for s in b.slots), range(b.lo, b.hi))

    def end_clock(self) -> int:
        """The end of the optimizer's step() (a LocalOptimizer's, after its torch
        optimizer ran): send the gradients the hooks have not sent (mode "grad") or the
        parameters' change ("delta"), the buffers' change and the clock, and start the
        refresh; returns the new clock. Waits only as sync() does, when no forward ran
        since the last step. After a rollback that voided this iteration it sends
        nothing and returns the clock the job is back at."""
        if self._mode is None:
            raise RuntimeError("no optimizer attached: create gt.ServerOptimizer(model, ...)")
        self.sync()         # a step without a forward since the last one
        with self._lock, self._client.batch():
            try:
                for h in self._other_handles:   # the delta arrays left zero-copy
                    h.wait()
            except RolledBack:
                self._rolled_back()
                self._void = True
            self._other_handles = []
            if self._void:
                return self._skip_voided_step()
            if self._mode == "grad":
                for b in self._buckets:
                    if b.pushed:
                        continue
                    for i in b.trainable - b.ready:
                        g = self._params[i].grad
                        if g is not None:       # no_sync() accumulation, or hook skipped
                            self._stage(b, i, g)
                    if b.ready:
                        self._push_bucket(b)
                self._pushed = 0
                for b in self._buckets:
                    b.ready.clear()
                    b.pushed = False
            else:
                self._pstore.download()
                self._count_d2h(self._pstore)
                np.subtract(self._pstore.host, self._pbase, out=self._delta)
                self._delta *= np.float32(1.0 / self.num_workers)
                self._other_handles.append(self._client.push_async(
                    self._table, None, self._delta, timeline=self._timeline))
            if self._btable is not None:
                self._bstore.download()
                self._count_d2h(self._bstore)
                np.subtract(self._bstore.host, self._bbase, out=self._bdelta)
                self._bdelta *= np.float32(1.0 / self.num_workers)
                self._other_handles.append(self._client.push_async(
                    self._btable, None, self._bdelta, timeline=self._timeline))
            self._clock_handle = self._client.clock_async(timeline=self._timeline)
            self._start_refresh()
        return self._client.clock_value

    def _skip_voided_step(self) -> int:
        # No clock: the job is at the checkpoint's clock and this batch was not its.
        # The loader draws the right batch next; the refresh is already on its way
        # unless the rollback surfaced in backward.
        self._void = False
        self._pushed = 0
        for b in self._buckets:
            b.ready.clear()
            b.pushed = False
            b.handle = None
        self._early = []        # bucket reads asked for in the voided backward
        if not self._refresh:
            self._start_refresh()
        ctx = _context.current()
        if ctx is not None:
            ctx.reposition = True
        return self._client.clock_value

    def _count_d2h(self, store: Store) -> None:
        # On the CPU the rows are the tensors themselves: nothing moved.
        if self._client.metrics is not None and not store.zero_copy:
            self._client.metrics.transfer("d2h", store.host.nbytes)

    def _start_refresh(self) -> None:
        # The rows no bucket read asked for yet (all of them but for bucket_refresh),
        # in as few reads as they are runs; each lands in the rows directly: backward
        # is over, so nothing computes with them until the refresh is complete.
        asked = sorted((lo, hi) for lo, hi, _ in self._early)
        runs, at = [], 0
        for lo, hi in asked + [(self._pstore.host.shape[0],) * 2]:
            if lo > at:
                runs.append((at, lo))
            at = max(at, hi)
        self._refresh = [(self._pstore, self._client.pull_async(
            self._table, range(lo, hi), out=self._pstore.host[lo:hi]), self._table.name)
            for lo, hi in runs]
        self._refresh_early, self._early = self._early, []
        if self._btable is not None:
            self._refresh.append((self._bstore, self._client.pull_async(
                self._btable, out=self._bstore.host), self._btable.name))
