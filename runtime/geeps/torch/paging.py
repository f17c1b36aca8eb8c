"""A torch model's parameters, gradients and saved activations held to one device budget.

    pager = DeviceBudget(model, budget=64 << 20)
    with pager.step():                          # one forward and backward
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    pager.peak <= pager.budget                  # asserted at every operation
    pager.moved                                 # {"h2d": bytes, "d2h": bytes}
    pager.grads[i]                              # parameter i's gradient, in host memory

GeePS's way of training models larger than the device: every tensor the step needs
lives in host memory and is brought into device memory when an operation needs it,
into a budget that covers the parameters, their gradients and the activations autograd
saves for backward -- one accounting, checked every time something enters. A module's
forward pre-hook brings its parameters in (they stay pinned until its forward
returns); when backward reaches its output (a hook on the output tensor) they come
in again, with room reserved for their gradients, which leave for host memory as
soon as autograd has accumulated them (`grad_sink`, or `grads`) and are freed; saved
activations go through autograd's saved-tensor hooks and come back when backward
unpacks them; in a step that repeats the record, the activation backward unpacks
next is brought back ahead, into free room, while the current one is used (a
side-stream copy on a GPU; `prefetched` counts them).

What leaves when room is needed is Belady's choice. The first step records the
sequence of accesses; every following step whose accesses repeat it evicts the item
whose next use in that record is furthest (one already used and dead, or a clean
parameter whose host copy is current, before a dirty activation that would have to be
copied out). The same bookkeeping (`Residency`) replays a recorded sequence without
tensors: `belady(trace, budget)` is the reference the moved bytes are measured
against. A step whose accesses differ from the record (another code path) falls back
to evicting the least recently used item and becomes the new record.

Bytes moved count every copy: a parameter's load at its first use in a step (the
parameters change at every step, so their device copies are stale at `step()`), a
gradient leaving, an activation copied out and back. Copies are exact, so a step
computes bit for bit what it computes without a budget.

On the CPU the "device" is RAM and the copies are RAM copies, held to the budget and
counted exactly as they would be on a GPU; on a GPU the host copies are pinned (page-
locked) so that copies can run asynchronously; that path needs a GPU and is not run
by the CPU-only tests. Not counted: buffers (BatchNorm statistics), tensors in flight
between two modules before anything saves them, and anything saved outside the
model's forward (the loss). Not thread-safe: one step at a time. Refused: a model
whose parameters are not a module's own (`register_parameter` of a plain tensor is
fine; a tensor captured in a closure is not paged).
"""
from __future__ import annotations

import collections
import contextlib
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

_NEVER = float("inf")
# How far ahead in the recorded step a prefetch looks for backward's next saved
# activation (events between two unpacks: a module's parameters and gradients).
PREFETCH_LOOKAHEAD = 64


class DeviceBudgetExceeded(MemoryError):
    """What one operation needs at once does not fit the budget, or the accounting
    found more bytes in device memory than the budget."""


_KINDS = {"p": "parameter", "g": "the gradient of parameter", "a": "saved activation"}


def _describe(key) -> str:
    kind = _KINDS.get(key[0]) if isinstance(key, tuple) and key else None
    return f"{kind} {key[1]}" if kind else "item"


# ---- the bookkeeping, without tensors: shared by the runtime and the reference ------------
@dataclass
class _Item:
    nbytes: int
    resident: bool = False
    host: bool = False           # host memory holds its current value (evicting it is free)
    pins: int = 0
    next_use: float = _NEVER


class Residency:
    """Which items are in device memory, within `budget` bytes, and what that moved.

    Events (`trace` entries are (op, key, nbytes)):
      need   the item must be in device memory now (a load if it is not); pinned
      born   the item appears in device memory (an activation saved, a gradient's room);
             `pin`: pinned
      unpin  one pin fewer
      out    the item leaves for host memory (a gradient: a copy) and is freed
      free   the item is gone, nothing copied
    `next_use(key)` is the caller's estimate of when an item is needed next (larger:
    later); eviction takes the unpinned resident item needed latest. Subclasses move
    the actual bytes in `_load` / `_evict`."""

    def __init__(self, budget: int | None):
        if budget is not None and (isinstance(budget, bool) or budget < 0):
            raise ValueError(f"device_budget must be a byte count >= 0 or None (got {budget!r})")
        self.budget = budget
        self.items: dict = {}
        self.resident = 0
        self.peak = 0
        self.moved = {"h2d": 0, "d2h": 0}

    # -- accounting ---------------------------------------------------------------
    on_move: Callable[[str, int], None] | None = None     # (direction, bytes) per copy

    def _moved(self, direction: str, nbytes: int) -> None:
        self.moved[direction] += nbytes
        if self.on_move is not None:
            self.on_move(direction, nbytes)

    def _check(self) -> None:
        self.peak = max(self.peak, self.resident)
        if self.budget is not None and self.resident > self.budget:
            raise DeviceBudgetExceeded(
                f"{self.resident} bytes of parameters, gradients and saved activations in "
                f"device memory, over the budget of {self.budget}")

    def _make_room(self, key, nbytes: int) -> None:
        if self.budget is None:
            return
        while self.resident + nbytes > self.budget:
            victims = [(it.next_use, it.host, k) for k, it in self.items.items()
                       if it.resident and it.pins == 0 and k != key]
            if not victims:
                pinned = sum(it.nbytes for it in self.items.values()
                             if it.resident and it.pins)
                raise DeviceBudgetExceeded(
                    f"{_describe(key)} {key!r} needs {nbytes} bytes while {pinned} bytes "
                    f"are pinned by the running operation: the budget of {self.budget} "
                    "bytes is too small for this module (raise device_budget, or split "
                    "the module)")
            _nu, _clean, victim = max(victims, key=lambda v: (v[0], v[1]))
            self._evict_item(victim)

    def _evict_item(self, key) -> None:
        it = self.items[key]
        if not it.host:
            self._moved("d2h", it.nbytes)
        self._evict(key, copy=not it.host)
        it.host = True
        it.resident = False
        self.resident -= it.nbytes

    def _enter(self, key, it: _Item) -> None:
        it.resident = True
        self.resident += it.nbytes
        self._check()

    # -- events -------------------------------------------------------------------
    def need(self, key, nbytes: int, next_use: float) -> None:
        it = self.items.get(key)
        if it is None:          # a parameter at its first use: its value is in host memory
            it = self.items[key] = _Item(nbytes, host=True)
        if not it.resident:
            self._make_room(key, it.nbytes)
            self._moved("h2d", it.nbytes)
            self._load(key)
            self._enter(key, it)
        it.pins += 1
        it.next_use = next_use

    def born(self, key, nbytes: int, next_use: float, pin: bool = False) -> None:
        self._make_room(key, nbytes)
        it = self.items[key] = _Item(nbytes, pins=int(pin), next_use=next_use)
        self._enter(key, it)

    def unpin(self, key, next_use: float) -> None:
        it = self.items.get(key)
        if it is not None and it.pins:
            it.pins -= 1
            it.next_use = next_use

    def out(self, key) -> None:
        it = self.items.pop(key, None)
        if it is not None and it.resident:
            self._moved("d2h", it.nbytes)
            self.resident -= it.nbytes

    def free(self, key) -> None:
        it = self.items.pop(key, None)
        if it is not None and it.resident:
            self.resident -= it.nbytes

    def drop_clean(self, keys) -> None:
        """Forget device copies whose host values changed (the parameters, at a step)."""
        for k in keys:
            it = self.items.pop(k, None)
            if it is not None:
                if it.resident:
                    self.resident -= it.nbytes
                    self._evict(k, copy=False)

    # -- what moves the bytes (nothing here: the reference) ---------------------------
    def _load(self, key) -> None:
        pass

    def _evict(self, key, copy: bool) -> None:
        pass


def next_uses(trace: list) -> list[float]:
    """Per event of a step's trace: the index of the next `need` of its item (_NEVER if
    none), which is what Belady's choice looks at."""
    out = [_NEVER] * len(trace)
    nxt: dict = {}
    for i in range(len(trace) - 1, -1, -1):
        op, key, _ = trace[i]
        out[i] = nxt.get(key, _NEVER)
        if op == "need":
            nxt[key] = i
    return out


def replay(res: Residency, trace: list, nxt: list[float]) -> None:
    for (op, key, nbytes), nu in zip(trace, nxt):
        if op == "need":
            res.need(key, nbytes, nu)
        elif op == "born":
            res.born(key, nbytes, nu, pin=key[0] == "g")
        elif op == "unpin":
            res.unpin(key, nu)
        elif op == "out":
            res.out(key)
        elif op == "free":
            res.free(key)


def belady(trace: list, budget: int | None) -> dict:
    """Bytes moved ({"h2d", "d2h"}) over one step's recorded trace (DeviceBudget.traces[k])
    when every eviction is Belady's choice on that trace: the reference. Parameters
    start the step in host memory (the refresh landed there), as they do at run time."""
    res = Residency(budget)
    replay(res, trace, next_uses(trace))
    return dict(res.moved)


def working_set(trace: list) -> int:
    """Bytes of every item one step touches: all it would hold with no budget."""
    sizes: dict = {}
    for op, key, nbytes in trace:
        if op in ("need", "born"):
            sizes[key] = nbytes
    return sum(sizes.values())


# ---- the runtime: tensors --------------------------------------------------------------
class _Saved:
    """One saved activation: its device tensor (`dev`, None while out), its host copy,
    and, when it was prefetched on a GPU, the event its copy completes at (`ready`)."""
    __slots__ = ("key", "dev", "host", "device", "ready", "__weakref__")

    def __init__(self, key, t: torch.Tensor):
        self.key, self.dev, self.host, self.device = key, t, None, t.device
        self.ready = None


def _tensors(out):
    """The tensors of a module's output (a tensor, or nested tuples, lists, dicts)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class DeviceBudget(Residency):
    """Pages `module`'s parameters, gradients and saved activations through `budget`
    bytes of device memory (None: no limit, still counted). See the module docstring.
    `module` None: saved activations only (geeps.torch.offload.ActivationBudget).

    `host`: per parameter (in `params` order, default the module's), the host tensor
    holding its value, read at each load (DataParallel passes views of the rows the
    servers' refresh lands in, page-locked on a GPU); default: copies made here.
    `grad_sink(index, param)` receives each gradient as soon as it is accumulated
    (param.grad), before it is freed; default: accumulated into `grads[index]` in host
    memory. `device`: where the parameters compute (default: where they are).
    `keep_traces`: how many finished steps' traces `traces` keeps (the newest)."""

    def __init__(self, module: torch.nn.Module | None, budget: int | None, *,
                 params: list[torch.Tensor] | None = None,
                 host: list[torch.Tensor] | None = None,
                 device: torch.device | None = None,
                 grad_sink: Callable[[int, torch.Tensor], None] | None = None,
                 keep_traces: int = 64):
        super().__init__(budget)
        self.module = module
        modules = [] if module is None else list(module.modules())
        self.params = list(module.parameters()) if params is None and module is not None \
            else list(params or ())
        index = self._index = {id(p): i for i, p in enumerate(self.params)}
        owned = {id(p) for m in modules for p in m.parameters(recurse=False)}
        stray = [i for i, p in enumerate(self.params) if id(p) not in owned]
        if stray:
            raise ValueError(f"parameters {stray} belong to no module of the model: a "
                             "module's hooks are what bring parameters in")
        if device is None:
            device = self.params[0].device if self.params else torch.device("cpu")
        self.device = torch.device(device)
        if host is None:
            # On a GPU page-locked, so that copies can overlap compute (needs a GPU:
            # not run by the CPU-only tests). Given host tensors are the caller's to
            # pin: a copy would no longer see what the caller writes there.
            host = [p.detach().to("cpu", copy=True) for p in self.params]
            if self.device.type == "cuda":
                host = [h.pin_memory() for h in host]
        self.host = host
        self.grads: list[torch.Tensor | None] = [None] * len(self.params)
        # Bytes the tensor copies below actually moved: the accounting (`moved`) is
        # checked against them by the tests.
        self.copied = {"h2d": 0, "d2h": 0}
        self._sink = grad_sink
        # Each parameter gets device storage of its own, which leaving frees
        # (storage resized to 0: the tensor, its shape and the views autograd saved of
        # it stay valid and see the data again when it comes back). Between steps a
        # parameter is its host copy instead (see _home), so reading it is safe.
        self._stepping = False
        self._dev = []
        for p in self.params:
            d = torch.empty(p.shape, dtype=p.dtype, device=self.device)
            d.untyped_storage().resize_(0)
            self._dev.append(d)
        self._home()
        self._hooks: list = []
        for m in modules:
            idx = [index[id(p)] for p in m.parameters(recurse=False) if id(p) in index]
            if not idx:
                continue
            self._hooks.append(m.register_forward_pre_hook(
                lambda _m, _a, idx=idx: self._params_in(idx)))
            self._hooks.append(m.register_forward_hook(
                lambda _m, _a, out, idx=idx: self._params_done(idx, out)))
        # A forward without autograd (evaluation) has no backward to end the step.
        if module is not None:
            self._hooks.append(module.register_forward_hook(
                lambda _m, _a, _o: None if torch.is_grad_enabled() else self._home()))
        for i, p in enumerate(self.params):
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(
                    lambda p, i=i: self._grad_out(i, p)))
        self._seq = 0
        self._trace: list = []          # this step's events
        # The last finished steps' traces (bounded: a long run must not grow with them).
        self.traces: collections.deque = collections.deque(maxlen=keep_traces)
        self._plan: list | None = None  # the recorded step, and its next uses
        self._plan_next: list[float] = []
        self._planned = False           # this step repeats the record so far
        self._backward_pins: set[int] = set()
        self._queued = False
        self._copy_stream = None        # a GPU's side stream for prefetches, made at first
        self.prefetched = 0             # saved activations brought in ahead of their use
        # The saved activations still held, by key, weakly: autograd owns them.
        self._live: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()

    # ---- steps -----------------------------------------------------------------------
    def begin(self) -> None:
        """A new step: the parameters' host values may have changed, so their device
        copies are dropped; the last step's accesses become the record to plan from."""
        if self._trace:
            self.traces.append(self._trace)
            if not self._planned or self._plan is None or \
                    len(self._trace) != len(self._plan):
                self._plan = self._trace
                self._plan_next = next_uses(self._plan)
        self._trace = []
        self._planned = self._plan is not None
        self._seq = 0
        self.drop_clean([("p", i) for i in range(len(self.params))])
        self._away()

    def _away(self) -> None:
        """Every parameter onto its device tensor (its storage empty until loaded)."""
        for p, d in zip(self.params, self._dev):
            p.data = d
        self._stepping = True

    def _home(self) -> None:
        """Out of a step (after backward, after a forward without autograd, before the
        first): every parameter leaves device memory and is its host copy, so that
        reading it (printing, a checkpoint, a norm) sees its value and costs no device
        memory. On a GPU it is then an empty tensor on the device instead (a host
        tensor would tell code that asks a parameter's device the wrong one); read the
        values with DataParallel.state_dict() there."""
        self.drop_clean([("p", i) for i in range(len(self.params))])
        self._stepping = False
        with torch.no_grad():
            for p, h in zip(self.params, self.host):
                p.data = h if self.device.type == "cpu" else \
                    torch.empty(0, dtype=p.dtype, device=self.device)

    def host_of(self, t: torch.Tensor) -> torch.Tensor | None:
        """The host copy of parameter `t` (its value), None if `t` is not paged here."""
        i = self._index.get(id(t))
        return None if i is None else self.host[i]

    @contextlib.contextmanager
    def host_values(self):
        """Between steps, the parameters as their host copies for the block (on a GPU
        they are otherwise empty): load_state_dict writes where the values live."""
        if self._stepping:
            raise RuntimeError("host_values() inside a step: the parameters are paged")
        saved = [p.data for p in self.params]
        for p, h in zip(self.params, self.host):
            p.data = h
        try:
            yield
        finally:
            for p, d in zip(self.params, saved):
                p.data = d

    def finish(self) -> None:
        """End of the last step: its trace joins `traces`."""
        if self._trace:
            self.traces.append(self._trace)
            self._trace = []

    @contextlib.contextmanager
    def saving(self):
        """The saved-tensor hooks: wrap the model's forward in it (its backward needs
        nothing: what is saved carries its hooks)."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

    @contextlib.contextmanager
    def step(self):
        """One step outside DataParallel: begin(), and the saved-tensor hooks."""
        self.begin()
        with self.saving():
            yield self

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._home()
        self.finish()

    # ---- one event: recorded, planned --------------------------------------------------
    def _event(self, op: str, key, nbytes: int) -> float:
        """Record the event; the next use of its item: from the record while this step
        repeats it, else a least-recently-used guess (backward runs forward's accesses
        in reverse, so the item touched longest ago is needed last)."""
        pos = len(self._trace)
        ev = (op, key, nbytes)
        self._trace.append(ev)
        if self._planned and (pos >= len(self._plan) or self._plan[pos] != ev):
            self._planned = False
            # What is resident was estimated from the record: re-estimate it by age
            # (the items entered earliest, needed last, first out).
            for rank, it in enumerate(self.items.values()):
                it.next_use = 1e18 - rank
        if self._planned:
            return self._plan_next[pos]
        return 1e18 - pos

    # ---- parameters ------------------------------------------------------------------
    def _params_in(self, idx: list[int]) -> None:
        if not self._stepping:      # the first forward since the last step ended
            self.begin()
        # Each is pinned as it comes in: none of this module's evicts another of its own.
        for i in idx:
            self.need(("p", i), _nbytes(self.host[i]),
                      self._event("need", ("p", i), _nbytes(self.host[i])))

    def _params_done(self, idx: list[int], out) -> None:
        for i in idx:
            self.unpin(("p", i), self._event("unpin", ("p", i), 0))
        # Backward reaches this module when the gradient of its output is computed: a
        # hook on the output tensor says so, before the module's own nodes run. (Not a
        # full backward pre-hook: it wraps the output in a custom Function, which then
        # refuses in-place ops on it, ReLU(inplace=True) after a BatchNorm.)
        fired = []

        def arrived(grad):
            if not fired:
                fired.append(True)
                self._backward_in(idx)
            return grad
        for t in _tensors(out):
            if t.requires_grad:
                t.register_hook(arrived)

    def _backward_in(self, idx: list[int]) -> None:
        idx = [i for i in idx if i not in self._backward_pins]     # a module called twice
        self._params_in(idx)
        for i in idx:
            self._backward_pins.add(i)
            if self.params[i].requires_grad and ("g", i) not in self.items:
                nb = _nbytes(self.host[i])
                self.born(("g", i), nb, self._event("born", ("g", i), nb), pin=True)
        if not self._queued:
            # Unpin what backward pinned when it ends (a module whose parameters are
            # all frozen has no gradient to say it is done).
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)

    def _backward_done(self) -> None:
        self._queued = False
        for i in sorted(self._backward_pins):
            self.unpin(("p", i), self._event("unpin", ("p", i), 0))
        self._backward_pins.clear()
        self._home()

    def _grad_out(self, i: int, p: torch.Tensor) -> None:
        """Autograd accumulated parameter i's gradient: it leaves, and so does the
        parameter's backward pin once this module's gradients are all out."""
        self.copied["d2h"] += _nbytes(p.grad)
        if self._sink is not None:
            self._sink(i, p)
        elif self.grads[i] is None:
            self.grads[i] = p.grad.detach().to("cpu", copy=True)
        else:
            self.grads[i] += p.grad.detach().to("cpu")
        p.grad = None
        self._event("out", ("g", i), 0)
        self.out(("g", i))
        if i in self._backward_pins:
            self._backward_pins.discard(i)
            self.unpin(("p", i), self._event("unpin", ("p", i), 0))

    # ---- saved activations -------------------------------------------------------------
    def _pack(self, t: torch.Tensor):
        base = t if t._base is None else t._base
        if isinstance(base, torch.nn.Parameter) or (base.is_leaf and base.requires_grad):
            return t            # a parameter or a view of one: paged as a parameter
        key = ("a", self._seq)
        self._seq += 1
        e = _Saved(key, t)
        nb = _nbytes(t)
        self.born(key, nb, self._event("born", key, nb))
        self._live[key] = e
        weakref.finalize(e, self._gone, key)
        return e

    def _unpack(self, e):
        if not isinstance(e, _Saved):
            return e
        nb = self.items[e.key].nbytes
        self.need(e.key, nb, self._event("need", e.key, nb))
        if e.ready is not None:         # prefetched on the copy stream: wait for it here
            stream = torch.cuda.current_stream(e.device)
            stream.wait_event(e.ready)
            e.dev.record_stream(stream)
            e.ready = None
        self._prefetch()
        return e.dev

    def _prefetch(self) -> None:
        """Bring in the saved activation backward unpacks next (the record says which:
        backward uses them in reverse order of saving), into room that is free now,
        so that on a GPU its copy runs on a side stream while this node computes. Only
        free room: a prefetch never evicts, so it moves no byte the step would not move
        anyway. On the CPU the copy is made at once (there is nothing to overlap)."""
        if not self._planned or self.budget is None:
            return
        pos = len(self._trace)
        for j in range(pos, min(len(self._plan), pos + PREFETCH_LOOKAHEAD)):
            op, key, _nb = self._plan[j]
            if op != "need" or key[0] != "a":
                continue
            it, e = self.items.get(key), self._live.get(key)
            if it is None or it.resident or e is None or e.host is None:
                return          # the next one is here already (or gone): nothing to do
            if self.resident + it.nbytes > self.budget:
                return
            self._moved("h2d", it.nbytes)
            if e.device.type == "cuda":
                if self._copy_stream is None:
                    self._copy_stream = torch.cuda.Stream(e.device)
                with torch.cuda.stream(self._copy_stream):
                    e.dev = e.host.to(e.device, non_blocking=True)
                    e.ready = torch.cuda.Event()
                    e.ready.record(self._copy_stream)
                self.copied["h2d"] += _nbytes(e.dev)
            else:
                self._load(key)
            self._enter(key, it)
            it.next_use = j
            self.prefetched += 1
            return

    def _gone(self, key) -> None:
        """autograd released a saved activation (its node ran, or the graph was freed)."""
        self._live.pop(key, None)
        if key in self.items:
            self._event("free", key, 0)
            self.free(key)

    # ---- the copies ----------------------------------------------------------------
    def _load(self, key) -> None:
        kind, i = key
        if kind == "p":
            d = self._dev[i]            # the parameter's storage while in a step
            d.untyped_storage().resize_(_nbytes(self.host[i]))
            with torch.no_grad():
                d.copy_(self.host[i])
            self.copied["h2d"] += _nbytes(d)
        elif kind == "a":
            e = self._live.get(key)
            if e is not None and e.dev is None:
                e.dev = e.host.to(e.device, copy=True)
                self.copied["h2d"] += _nbytes(e.dev)

    def _evict(self, key, copy: bool) -> None:
        kind, i = key
        if kind == "p":
            self._dev[i].untyped_storage().resize_(0)
        elif kind == "a":
            e = self._live.get(key)
            if e is not None and e.dev is not None:
                if copy or e.host is None:
                    host = torch.empty(e.dev.shape, dtype=e.dev.dtype, device="cpu",
                                       pin_memory=e.device.type == "cuda")
                    host.copy_(e.dev)
                    e.host = host
                    self.copied["d2h"] += _nbytes(host)
                e.dev = None
