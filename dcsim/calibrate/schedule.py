"""Run order and the stopping rule: which (point, repeat) runs next, given what has been measured.

Rounds: round r runs repeat r of every point that still wants one, in an order shuffled with a seed
that depends only on (plan seed, round, group), so a resumed sweep makes the same decisions as an
uninterrupted one. A point wants repeat r while r < min repeats, or while r < max repeats and the
confidence interval of one of its metrics is still wider than the plan allows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from scipy import stats

from dcsim.calibrate.plan import Plan, Point, Repeats


def half_width(values: list[float], confidence: float = 0.95) -> float:
    """Half-width of the two-sided Student-t confidence interval of the mean; inf below two values."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n < 2:
        return math.inf
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def converged(metrics: dict[str, list[float]], rule: Repeats) -> bool:
    """True when every metric that has finite values has a CI half-width <= rel_half_width * |mean|."""
    checked = 0
    for name in rule.metrics:
        xs = [v for v in metrics.get(name, []) if v is not None and math.isfinite(v)]
        if not xs:
            continue  # metric not measured here (e.g. energy in --latency-only)
        checked += 1
        mean = sum(xs) / len(xs)
        if half_width(xs, rule.confidence) > rule.rel_half_width * abs(mean):
            return False
    return checked > 0


def wants(history: list[dict[str, float]], repeat: int, rule: Repeats) -> bool:
    """Does a point whose repeats 0..repeat-1 gave `history` want repeat number `repeat`?
    A point with a failed run (history entry with "failed") wants no more."""
    if any(h.get("failed") for h in history):
        return False
    if repeat < rule.min:
        return True
    metrics: dict[str, list[float]] = {}
    for h in history:
        for k, v in h.items():
            metrics.setdefault(k, []).append(v)
    return repeat < rule.max and not converged(metrics, rule)


class Schedule:
    """Yields (point, repeat) entries not yet done; the runner calls `record` after each run.

    Decisions for round r use only repeats < r, so a sweep resumed in the middle of a round takes the
    same decisions, in the same order, as one that never stopped."""

    def __init__(self, plan: Plan, points: list[Point]) -> None:
        self.plan = plan
        self.points = points
        self.results: dict[str, dict[int, dict[str, float]]] = {p.id: {} for p in points}

    def record(self, point_id: str, repeat: int, metrics: dict[str, float]) -> None:
        self.results.setdefault(point_id, {})[repeat] = dict(metrics)

    def is_done(self, point_id: str, repeat: int) -> bool:
        return repeat in self.results.get(point_id, {})

    def history(self, point_id: str, before: int | None = None) -> list[dict[str, float]]:
        res = self.results.get(point_id, {})
        return [res[r] for r in sorted(res) if before is None or r < before]

    def remaining_by_point(self) -> dict[str, int]:
        """Entries each point still expects: up to min repeats, plus one while it wants another."""
        rule = self.plan.repeats
        out = {}
        for p in self.points:
            hist = self.history(p.id)
            n = len(hist)
            if any(h.get("failed") for h in hist):
                out[p.id] = 0
            elif n < rule.min:
                out[p.id] = rule.min - n
            else:
                out[p.id] = 1 if wants(hist, n, rule) else 0
        return out

    def remaining(self) -> int:
        return sum(self.remaining_by_point().values())

    def _groups(self) -> list[list[Point]]:
        if self.plan.order == "random":
            return [self.points]
        batches = sorted({p.batch for p in self.points})
        random.Random(f"{self.plan.seed}:batches").shuffle(batches)
        return [[p for p in self.points if p.batch == b] for b in batches]

    def __iter__(self) -> Iterator[tuple[Point, int]]:
        rule = self.plan.repeats
        for gi, group in enumerate(self._groups()):
            for r in range(rule.max):
                todo = [p for p in group if wants(self.history(p.id, before=r), r, rule)]
                if not todo:
                    break
                random.Random(f"{self.plan.seed}:{gi}:{r}").shuffle(todo)
                for p in todo:
                    if not self.is_done(p.id, r):
                        yield p, r
