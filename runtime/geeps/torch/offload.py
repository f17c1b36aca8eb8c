"""Saved activations held to a device-memory budget (autograd's saved-tensor hooks).

    budget = ActivationBudget(64 << 20)
    with budget:                        # forward and backward of one step
        loss = model(x).sum()
        loss.backward()
    budget.peak <= budget.budget        # asserted at every pack and unpack
    budget.moved                        # {"d2h": bytes offloaded, "h2d": bytes brought back}

Part of running geeps.torch under a device budget (GeePS's larger-than-device
models): the activations autograd saves for backward live in device memory up to the
budget; past it, the one saved earliest goes to host memory -- backward uses saved
tensors in reverse order, so that is the one needed last, Belady's choice for a stack
-- and comes back when backward unpacks it, after the one saved just before it is
brought back ahead (the next backward needs). Copies are exact, so a step computes
bit for bit what it computes without a budget. Parameters are not activations: a
saved parameter passes through untouched (paging parameters is the cache's job, not
done here). On the CPU the device is RAM and the copies are RAM copies, counted and
held to the budget the same way (as the operation API's NumPy backend does); on a GPU
the host copies are pinned. Not thread-safe: one step at a time.
"""
from __future__ import annotations

import heapq
import weakref

import torch


class ActivationBudgetExceeded(MemoryError):
    """The accounting found more saved-activation bytes in device memory than the budget."""


class _Saved:
    """One saved tensor: in device memory (`dev`) or in host memory (`host`)."""
    __slots__ = ("dev", "host", "nbytes", "seq", "device", "__weakref__")

    def __init__(self, t: torch.Tensor, seq: int):
        self.dev, self.host = t, None
        self.nbytes = t.numel() * t.element_size()
        self.seq = seq
        self.device = t.device


class ActivationBudget:
    """Keeps the bytes of saved activations in device memory within `budget`."""

    def __init__(self, budget: int):
        if budget < 0:
            raise ValueError(f"budget must be >= 0 bytes (got {budget})")
        self.budget = int(budget)
        self.resident = 0                       # saved-activation bytes in device memory
        self.peak = 0
        self.moved = {"d2h": 0, "h2d": 0}
        self._live: dict[int, weakref.ref] = {}     # seq -> entry autograd still holds
        self._resident: dict[int, int] = {}         # seq -> bytes, of those in device memory
        self._seq = 0
        self._hooks = None
        self.trace: list[tuple[str, int, int]] = []     # ("save" | "use", seq, bytes)

    def __enter__(self) -> "ActivationBudget":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None

    # ---- accounting ----------------------------------------------------------------------
    def _check(self) -> None:
        self.peak = max(self.peak, self.resident)
        if self.resident > self.budget:
            raise ActivationBudgetExceeded(
                f"{self.resident} bytes of saved activations in device memory, over the "
                f"budget of {self.budget}")

    def _entries(self):
        """Entries autograd still holds, in the order they were saved."""
        for seq in sorted(self._live):
            e = self._live[seq]()
            if e is not None:
                yield e

    def _in(self, e: _Saved) -> None:
        self._resident[e.seq] = e.nbytes
        self.resident += e.nbytes
        self._check()

    def _out(self, e: _Saved) -> None:
        self.resident -= self._resident.pop(e.seq, 0)

    def _gone(self, seq: int) -> None:
        """autograd dropped an entry (its node ran, or the graph was freed)."""
        self._live.pop(seq, None)
        self.resident -= self._resident.pop(seq, 0)

    def _offload(self, e: _Saved) -> None:
        host = torch.empty(e.dev.shape, dtype=e.dev.dtype, device="cpu",
                           pin_memory=e.device.type == "cuda")
        host.copy_(e.dev)
        e.host, e.dev = host, None
        self._out(e)
        self.moved["d2h"] += e.nbytes

    def _bring_back(self, e: _Saved) -> None:
        self._make_room(e.nbytes, keep=e)
        e.dev = e.host.to(e.device, copy=True)
        e.host = None
        self.moved["h2d"] += e.nbytes
        self._in(e)

    def _make_room(self, nbytes: int, keep: _Saved | None = None) -> None:
        """Offload the resident entries saved earliest (needed last) until nbytes fit."""
        for e in self._entries():
            if self.resident + nbytes <= self.budget:
                return
            if e is not keep and e.dev is not None:
                self._offload(e)

    # ---- the hooks ---------------------------------------------------------------------
    def _pack(self, t: torch.Tensor):
        base = t if t._base is None else t._base
        if isinstance(base, torch.nn.Parameter) or (base.is_leaf and base.requires_grad):
            return t                    # a parameter or a view of one: not an activation
        e = _Saved(t, self._seq)
        self._seq += 1
        self.trace.append(("save", e.seq, e.nbytes))
        self._live[e.seq] = weakref.ref(e, lambda _r, s=e.seq: self._gone(s))
        if e.nbytes > self.budget:              # never fits: straight to host memory
            e.host, e.dev = t.detach().to("cpu", copy=True), None
            self.moved["d2h"] += e.nbytes
            return e
        self._make_room(e.nbytes)
        self._in(e)
        return e

    def _unpack(self, e):
        if not isinstance(e, _Saved):
            return e
        self.trace.append(("use", e.seq, e.nbytes))
        if e.dev is None:
            if e.nbytes > self.budget:
                raise ActivationBudgetExceeded(
                    f"a saved activation of {e.nbytes} bytes cannot come back within the "
                    f"budget of {self.budget}")
            self._bring_back(e)
        # Ahead of time, the one backward needs next (saved just before), if it fits.
        prev = None
        for x in self._entries():
            if x.seq >= e.seq:
                break
            prev = x
        if prev is not None and prev.dev is None and \
                self.resident + prev.nbytes <= self.budget:
            self._bring_back(prev)
        return e.dev


def belady_bytes(trace: list, budget: int) -> int:
    """Bytes Belady's MIN moves over a recorded trace (ActivationBudget.trace) with
    `budget` bytes: a saved tensor is born in device memory; evicting one that is used
    again copies it out (and back at its use); one never used again leaves for free.
    The reference the offloading policy is measured against."""
    nxt: list[float] = [float("inf")] * len(trace)
    last: dict = {}
    for i in range(len(trace) - 1, -1, -1):
        nxt[i] = last.get(trace[i][1], float("inf"))
        last[trace[i][1]] = i
    resident: dict = {}             # seq -> [bytes, next use]
    heap: list = []
    used = moved = 0
    for i, (kind, seq, nbytes) in enumerate(trace):
        if seq not in resident:
            if kind == "use":
                moved += nbytes     # back in
            while used + nbytes > budget and heap:
                neg, victim = heapq.heappop(heap)
                ent = resident.get(victim)
                if ent is None or victim == seq or -neg != ent[1]:
                    continue
                if ent[1] != float("inf"):
                    moved += ent[0]     # out, to come back
                used -= ent[0]
                del resident[victim]
            resident[seq] = [nbytes, nxt[i]]
            used += nbytes
        resident[seq][1] = nxt[i]
        heapq.heappush(heap, (-nxt[i], seq))
    return moved
