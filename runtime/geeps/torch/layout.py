"""Where each tensor of a torch model lives in a geeps table, and the memory behind it.

    layout = Layout([("fc.weight", (10, 64)), ("fc.bias", (10,))], row_width=128)
    layout.slots[0].rows          # range(0, 5): fc.weight, padded to whole rows
    store = Store(layout.n_rows, 128, torch.device("cpu"))
    w = store.view(layout.slots[0])   # a torch view of the store: writes go to the rows

Each tensor occupies a contiguous range of rows, flattened and padded to the row
width, so a tensor (or a bucket of neighbouring tensors) is one contiguous slice: a
push or a pull of it is one zero-copy message per shard. Pure layout and memory; no
I/O, no threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Slot:
    """One tensor's place: rows [lo, hi) of the table, the first `numel` floats used."""
    index: int
    name: str
    shape: tuple[int, ...]
    numel: int
    lo: int
    hi: int

    @property
    def rows(self) -> range:
        return range(self.lo, self.hi)


class Layout:
    """Tensors, in the given order, packed into consecutive row ranges of one table."""

    def __init__(self, tensors: Iterable[tuple[str, Sequence[int]]], row_width: int):
        if row_width < 1:
            raise ValueError(f"row_width must be >= 1 (got {row_width})")
        self.row_width = row_width
        self.slots: list[Slot] = []
        lo = 0
        for i, (name, shape) in enumerate(tensors):
            shape = tuple(int(s) for s in shape)
            numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
            rows = -(-numel // row_width)
            self.slots.append(Slot(i, name, shape, numel, lo, lo + rows))
            lo += rows
        self.n_rows = lo
        self.by_name = {s.name: s for s in self.slots}

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.row_width * 4

    def buckets(self, bucket_bytes: int) -> list[list[Slot]]:
        """Consecutive slots grouped until a group holds at least `bucket_bytes` (0: one
        slot per group). Consecutive slots are consecutive rows, so a group is one
        row range."""
        out: list[list[Slot]] = []
        cur: list[Slot] = []
        size = 0
        for s in self.slots:
            cur.append(s)
            size += (s.hi - s.lo) * self.row_width * 4
            if size >= bucket_bytes:
                out.append(cur)
                cur, size = [], 0
        if cur:
            out.append(cur)
        return out


def flat_view(t: torch.Tensor, slot: Slot, row_width: int) -> torch.Tensor:
    """`slot`'s tensor as a view of `t`, a (n_rows, row_width) contiguous tensor."""
    start = slot.lo * row_width
    return t.view(-1)[start:start + slot.numel].view(slot.shape)


class Store:
    """A (n_rows, row_width) float32 array the client pulls into, seen by torch.

    On CPU the torch tensor is `torch.from_numpy(host)`: the pull writes straight into
    the memory the model computes with. On a GPU the rows live in a CuPy array in
    device memory, handed to torch through DLPack (no copy); pulls land in `host`
    and `upload()` copies them to the device."""

    def __init__(self, n_rows: int, row_width: int, device: torch.device):
        self.device = device
        self.host = np.zeros((n_rows, row_width), np.float32)
        if device.type == "cuda":
            # Not exercised by the CPU-only test suite: it needs CuPy and a GPU.
            try:
                import cupy
            except ImportError as e:
                raise ImportError(f"a model on {device} needs CuPy for its parameter rows "
                                  f"(pip install 'geeps[gpu]'): {e}") from None
            with cupy.cuda.Device(device.index or 0):
                self.dev = cupy.zeros((n_rows, row_width), cupy.float32)
            self.tensor = torch.from_dlpack(self.dev)
        elif device.type == "cpu":
            self.dev = self.host
            self.tensor = torch.from_numpy(self.host)
        else:
            raise ValueError(f"device {device} is not supported: geeps.torch runs models "
                             "on the CPU or on a CUDA GPU (with CuPy)")

    @property
    def zero_copy(self) -> bool:
        return self.dev is self.host

    def view(self, slot: Slot) -> torch.Tensor:
        return flat_view(self.tensor, slot, self.host.shape[1])

    def host_view(self, slot: Slot) -> torch.Tensor:
        return flat_view(torch.from_numpy(self.host), slot, self.host.shape[1])

    def upload(self) -> None:
        """Host rows -> device rows (nothing to do on CPU)."""
        if not self.zero_copy:
            self.dev.set(self.host)

    def download(self) -> None:
        """Device rows -> host rows (nothing to do on CPU)."""
        if not self.zero_copy:
            self.dev.get(out=self.host)
