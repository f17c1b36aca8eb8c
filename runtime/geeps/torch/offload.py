"""Saved activations held to a device-memory budget (autograd's saved-tensor hooks).

    budget = ActivationBudget(64 << 20)
    with budget:                        # forward and backward of one step
        loss = model(x).sum()
        loss.backward()
    budget.peak <= budget.budget        # asserted at every save and every use
    budget.moved                        # {"d2h": bytes offloaded, "h2d": bytes brought back}

geeps.torch.paging's DeviceBudget with no parameters to page: the activations autograd
saves for backward live in device memory up to the budget; past it one goes to host
memory (Belady's choice on the accesses recorded in the first step: backward uses
saved tensors in reverse order, so the one saved earliest) and comes back when
backward unpacks it. Copies are exact, so a step computes bit for bit what it computes
without a budget. A saved parameter passes through untouched (paging parameters, with
their gradients, under the same budget: DeviceBudget, or DataParallel(device_budget=)).
On the CPU the device is RAM and the copies are RAM copies, counted and held to the
budget the same way; on a GPU the host copies are pinned. Not thread-safe.
"""
from __future__ import annotations

from geeps.torch.paging import DeviceBudget, DeviceBudgetExceeded, belady

ActivationBudgetExceeded = DeviceBudgetExceeded


class ActivationBudget(DeviceBudget):
    """Keeps the bytes of saved activations in device memory within `budget`; one
    `with` block per step."""

    def __init__(self, budget: int):
        super().__init__(None, budget)
        self._hooks_ctx = None

    def __enter__(self) -> "ActivationBudget":
        self.begin()
        self._hooks_ctx = self.saving()
        self._hooks_ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks_ctx.__exit__(*exc)
        self._hooks_ctx = None

    @property
    def trace(self) -> list:
        """This step's accesses (geeps.torch.paging's events), for belady_bytes."""
        return self._trace


def belady_bytes(trace: list, budget: int) -> int:
    """Bytes Belady's MIN moves over a recorded trace (ActivationBudget.trace) with
    `budget` bytes: the reference the offloading is measured against."""
    return sum(belady(trace, budget).values())
