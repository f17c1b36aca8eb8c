"""Server checkpoints: one file per shard per clock, written so a crash never damages
the previous one.

Layout: MAGIC, 8-byte header length, JSON header, raw arrays (the header gives each
one's name, dtype, shape, offset), then the SHA-256 of everything before it. A write
goes to a temporary file in the same directory, is fsynced, renamed into place, and
the directory is fsynced: a crash at any point leaves either the old set of
checkpoints or the old set plus the new one, never a half-written file under a
checkpoint's name. A reader checks the length and checksum and skips (with a warning
naming the file) one that fails.

    write(dir, rank, clock, header, arrays)       # arrays: {name: ndarray}
    found = newest(dir, rank)                      # (clock, header, arrays) or None
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from typing import Callable

import numpy as np

log = logging.getLogger("geeps.server.checkpoint")
MAGIC = b"GEEPSCK1"
KEEP = 3                   # checkpoints kept per shard: a rollback may need an older one
_NAME = re.compile(r"^shard-(\d+)-clock-(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names it."""


def path_for(directory: str, rank: int, clock: int) -> str:
    return os.path.join(directory, f"shard-{rank}-clock-{clock:09d}.ckpt")


def write(directory: str, rank: int, clock: int, header: dict, arrays: dict[str, np.ndarray],
          before_rename: Callable[[str], None] | None = None) -> str:
    """Write one checkpoint durably; returns its path. Keeps the newest KEEP."""
    os.makedirs(directory, exist_ok=True)
    layout, offset = [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        layout.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape),
                       "offset": offset, "nbytes": a.nbytes})
        offset += a.nbytes
    head = json.dumps(dict(header, rank=rank, clock=clock, arrays=layout)).encode()
    final = path_for(directory, rank, clock)
    tmp = os.path.join(directory, f".tmp-{os.path.basename(final)}-{os.getpid()}")
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        for chunk in (MAGIC, struct.pack("<Q", len(head)), head):
            f.write(chunk)
            digest.update(chunk)
        for a in arrays.values():
            buf = memoryview(np.ascontiguousarray(a)).cast("B")
            f.write(buf)
            digest.update(buf)
        f.write(digest.digest())
        f.flush()
        os.fsync(f.fileno())
    if before_rename is not None:
        before_rename(tmp)          # fault injection in tests: a crash right here
    os.replace(tmp, final)
    _fsync_dir(directory)
    prune(directory, rank, KEEP)
    return final


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clocks(directory: str, rank: int) -> list[int]:
    """Clocks of this shard's checkpoint files, newest first (not yet verified)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        m = _NAME.match(n)
        if m and int(m.group(1)) == rank:
            out.append(int(m.group(2)))
    return sorted(out, reverse=True)


def prune(directory: str, rank: int, keep: int) -> None:
    for c in clocks(directory, rank)[keep:]:
        try:
            os.remove(path_for(directory, rank, c))
        except FileNotFoundError:
            pass


def drop_after(directory: str, rank: int, clock: int) -> None:
    """Remove checkpoints newer than `clock`: after a rollback they describe a timeline
    that no longer exists, and must never be restored."""
    for c in clocks(directory, rank):
        if c > clock:
            os.remove(path_for(directory, rank, c))


def read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Header and arrays of one checkpoint; CheckpointError naming the file if bad."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) < len(MAGIC) + 8 + 32 or not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a geeps checkpoint (bad magic or truncated)")
    body, tail = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != tail:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupt)")
    (n,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    try:
        header = json.loads(data[start:start + n])
    except ValueError:
        raise CheckpointError(f"{path}: header is not JSON") from None
    base = start + n
    arrays = {}
    # A valid checksum says the bytes are what was written, not that a writer (another
    # version, a bug) wrote a header this reader understands: any parse failure is a
    # damaged checkpoint like a checksum mismatch.
    try:
        if not isinstance(header, dict):
            raise TypeError("header is not a JSON object")
        for key in ("num_workers", "tables"):
            if key not in header:
                raise KeyError(key)
        for a in header["arrays"]:
            lo = base + a["offset"]
            count = int(np.prod(a["shape"]))
            if lo < base or lo + count * np.dtype(a["dtype"]).itemsize > len(body):
                raise ValueError(f"array {a['name']!r} lies outside the file")
            arrays[a["name"]] = np.frombuffer(data, dtype=a["dtype"], count=count,
                                              offset=lo).reshape(a["shape"]).copy()
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as e:
        raise CheckpointError(f"{path}: malformed header ({type(e).__name__}: {e})") from None
    return header, arrays


def load(directory: str, rank: int, clock: int) -> tuple[dict, dict[str, np.ndarray]]:
    return read(path_for(directory, rank, clock))


def newest(directory: str, rank: int, use: Callable[[int, dict, dict], None] | None = None):
    """(clock, header, arrays) of the newest valid checkpoint, or None. Invalid newer
    files are skipped with a warning naming them. `use(clock, header, arrays)`, when
    given, is tried on each candidate: one it refuses with CheckpointError, KeyError,
    TypeError or ValueError (a header it cannot load) is skipped the same way."""
    for c in clocks(directory, rank):
        path = path_for(directory, rank, c)
        try:
            header, arrays = read(path)
            if use is not None:
                try:
                    use(c, header, arrays)
                except (KeyError, TypeError, ValueError) as e:
                    if isinstance(e, CheckpointError):
                        raise
                    raise CheckpointError(f"{path}: malformed header "
                                          f"({type(e).__name__}: {e})") from None
        except CheckpointError as e:
            log.warning("skipping checkpoint %s", e)
            continue
        return c, header, arrays
    return None


def valid_clocks(directory: str, rank: int) -> list[int]:
    """Clocks whose checkpoint file passes its checksum, newest first."""
    out = []
    for c in clocks(directory, rank):
        try:
            read(path_for(directory, rank, c))
        except CheckpointError as e:
            log.warning("skipping checkpoint %s", e)
            continue
        out.append(c)
    return out
