"""Keep glibc from handing freed message buffers back to the kernel.

ZeroMQ receives each message into a buffer it mallocs and frees once the message is
dropped. By default glibc returns memory at the top of its heap to the kernel when more
than 128 KiB is free there (and adjusts that threshold as it goes), so every clock's
pushes and pulls land in pages the kernel must map and zero-fill again: at a few GB/s
of loopback traffic that page-faulting costs as much as the copy itself. With fixed
thresholds the buffers of one clock are reused by the next.

    keep_freed_memory()       # once per process; a no-op off glibc

The price is memory the process keeps after a burst of traffic instead of returning
it: at most TRIM_THRESHOLD above what it uses.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1           # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20       # bytes: glibc's maximum; larger blocks are mapped
TRIM_THRESHOLD = 1 << 30        # bytes of free heap kept before glibc trims

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True if set."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _done = ok
    return ok
