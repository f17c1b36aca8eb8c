"""How evenly the ring spreads rows over servers, and how much a change moves.

    python bench/bench_ring.py

Tables of the examples' shapes (the MLP of examples/01 and 02, the linear models of
03-05 at their generated sizes, a 5M-feature sparse-LR weight vector). For S = 3, 5, 8
servers, each row prints the largest server's primary bytes over the mean (target:
at most 1.10x), for geeps' ring (geeps.job.membership: TOKENS equal arcs, TOKENS/S per
server) against the baseline of classic consistent hashing with V hashed virtual nodes
per server (V = 16, 64, 256), measured on the same tables; and for a join (S -> S+1)
the fraction of rows that move (ideal 1/(S+1)) and the most row ranges a table splits
into (each range is one slice of a push).
"""
from __future__ import annotations

import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "runtime"))

from geeps.job import membership as ms   # noqa: E402

TABLES = [(64 * 64, 1), (64, 1), (64 * 10, 1), (10, 1),         # examples/01-02 MLP
          (5_000_000, 1),                                       # sparse LR weights
          (784 * 256, 1), (256, 1), (256 * 10, 1), (10, 1)]     # a 784-256-10 MLP


def hashed_largest(s: int, v: int) -> float:
    """Largest/mean of classic consistent hashing: V tokens per server at hashed
    positions on a ring of 2^32, each table's rows spread over it evenly."""
    points = sorted((int.from_bytes(hashlib.sha256(f"{sid}/{i}".encode()).digest()[:4],
                                    "little"), sid) for sid in range(s) for i in range(v))
    total = [0] * s
    for n, width in TABLES:
        for (a, b), sid in _arcs(points):
            rows = (b * n >> 32) - (a * n >> 32)
            total[sid] += rows * width * 4
    return max(total) / (sum(total) / s)


def _arcs(points):
    # an arc (prev point, point] belongs to the point's server; the first wraps
    out = []
    prev = 0
    for p, sid in points:
        out.append(((prev, p), sid))
        prev = p
    out.append(((prev, 1 << 32), points[0][1]))
    return out


def ring_largest(s: int) -> float:
    per = ms.bytes_per_server(ms.initial([f"s{i}" for i in range(s)]), TABLES)
    sizes = [v["primary"] for v in per.values()]
    return max(sizes) / (sum(sizes) / s)


def join_moves(s: int) -> tuple[float, int]:
    m = ms.initial([f"s{i}" for i in range(s)])
    m2 = ms.join(m, "new")
    total = sum(n for n, _ in TABLES)
    moved = sum(c.hi - c.lo for n, _ in TABLES for c in ms.copies(m, m2, n))
    m3 = ms.promote(m2)
    return moved / total, max(len(m3.segments(n)) for n, _ in TABLES)


def main() -> None:
    print("| S | geeps ring: largest / mean | hashed V=16 | V=64 | V=256 | "
          "join S->S+1: rows moved (ideal) | ranges per table after |")
    print("|---|---|---|---|---|---|---|")
    for s in (3, 5, 8):
        moved, ranges = join_moves(s)
        print(f"| {s} | {ring_largest(s):.3f} | {hashed_largest(s, 16):.3f} | "
              f"{hashed_largest(s, 64):.3f} | {hashed_largest(s, 256):.3f} | "
              f"{moved:.3f} ({1 / (s + 1):.3f}) | {ranges} |")


if __name__ == "__main__":
    main()
