"""Kubernetes-style quantities ("4Gi", "512Mi", "1.5G", "100"), parsed to bytes.

One parser serves the manifest (`spec.cache.deviceMemory`) and the environment
(`GEEPS_DEVICE_MEMORY`), so a value that passes one passes the other.
"""
from __future__ import annotations

import re

_SUFFIX = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
# The subset of Kubernetes' quantity grammar that names a byte count.
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
_RE = re.compile(QUANTITY_PATTERN)


def parse_bytes(text: str | int) -> int:
    """Return the byte count of a quantity; raise ValueError saying what is accepted."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a quantity")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is negative")
        return text
    m = _RE.match(str(text).strip())
    if not m:
        raise ValueError(
            f"{text!r} is not a quantity (accepted: a number with an optional suffix "
            "Ki, Mi, Gi, Ti, k, M, G, T; e.g. 4Gi)")
    return int(float(m.group(1)) * _SUFFIX[m.group(3) or ""])


def format_bytes(n: float) -> str:
    """Human-readable binary size, for error messages and logs."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
