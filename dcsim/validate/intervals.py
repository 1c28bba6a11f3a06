"""Unions of time intervals: the busy time of a replica whose requests overlap (a batch, a server)."""

from __future__ import annotations

from typing import Iterable


def merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of intervals, as disjoint sorted intervals."""
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def covered_s(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of intervals."""
    return float(sum(b - a for a, b in merge(intervals)))
