"""The capacity planner's search: the smallest fleets that meet a scenario's service-level objectives, and the
cheapest of them, found by bisection on a replica count rather than a full grid.

The first varied axis is bisected: more replicas of a pool never make a latency quantile worse, so for each value
of the other axes (enumerated) the fleets that meet the objectives are those from some count up, and bisection
finds that count in about log2(range) simulations. Those minimal fleets are the frontier. Adding replicas adds idle
power and cost, so the cheapest fleet that meets the objectives is taken to lie on the frontier. The exhaustive-grid
test (tests/test_plan.py) checks both assumptions on a case it can afford to simulate whole.

A fleet that rejects requests or leaves any unfinished meets no objective, whatever its quantiles over the
requests it served. Points run through the sweep machinery (dcsim.sweep): local processes or a Dask cluster, one
file per finished point, reused when the planner is run again on the same folder."""

from __future__ import annotations

import itertools
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from dcsim.errors import UserError

OBJECTIVES = {"energy": "energy_j", "cost": "cost", "carbon": "carbon_g"}
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Objective:
    """One service-level objective on a summary metric: `metric op bound` (e.g. ttft_s.p99 <= 2)."""

    metric: str
    op: str
    bound: float

    def met(self, summary: dict[str, float]) -> bool:
        v = summary.get(self.metric)
        return v is not None and not (isinstance(v, float) and math.isnan(v)) and _OPS[self.op](v, self.bound)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


@dataclass(frozen=True)
class Axis:
    """A replica count varied over lo..hi (inclusive), by its scenario field path (fleet.h100.count)."""

    path: str
    lo: int
    hi: int

    def values(self) -> range:
        return range(self.lo, self.hi + 1)


def parse_objective(text: str) -> Objective:
    """'ttft_s.p99<=2' -> Objective; the field named on error is --slo."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*", text)
    if not m:
        raise UserError(f"expected METRIC<=VALUE (or >=, <, >), got {text!r}", None, "--slo")
    try:
        bound = float(m.group(3))
    except ValueError:
        raise UserError(f"bound {m.group(3)!r} is not a number", None, "--slo") from None
    if not math.isfinite(bound):
        raise UserError(f"bound {m.group(3)!r} is not finite", None, "--slo")
    return Objective(m.group(1), m.group(2), bound)


def parse_axis(text: str) -> Axis:
    """'fleet.h100.count=1..64' -> Axis; the field named on error is --vary."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*=\s*(\d+)\s*\.\.\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"expected FIELD=LO..HI with whole numbers, got {text!r}", None, "--vary")
    lo, hi = int(m.group(2)), int(m.group(3))
    if not m.group(1).endswith(".count"):
        raise UserError(f"{m.group(1)}: the planner varies replica counts (a pool's .count)", None, "--vary")
    if lo < 1 or hi < lo:
        raise UserError(f"{text!r}: needs 1 <= LO <= HI", None, "--vary")
    return Axis(m.group(1), lo, hi)


def meets(summary: dict[str, float], objectives: Iterable[Objective]) -> bool:
    """Every objective met, and every request served (none rejected, none unfinished)."""
    total, done = summary.get("requests_total"), summary.get("requests_completed")
    return total is not None and done == total and all(o.met(summary) for o in objectives)


@dataclass
class Search:
    """Bisection state for one value of the other axes: `lo` not yet known to fail, `hi` known (or assumed at
    the range's top, until checked) to meet the objectives."""

    rest: tuple[int, ...]
    lo: int
    hi: int
    top_checked: bool = False
    answer: int | None = None
    done: bool = False

    def next_counts(self) -> list[int]:
        """The counts this search needs next (none once done)."""
        if self.done:
            return []
        if not self.top_checked:
            return [self.lo, self.hi] if self.lo < self.hi else [self.hi]
        return [(self.lo + self.hi) // 2]


@dataclass
class Frontier:
    """What plan() returns: per value of the other axes the least count that meets the objectives (None: even
    the range's top fails), every evaluated point's summary by its counts, and the rounds it took."""

    axes: list[Axis]
    minimal: dict[tuple[int, ...], int | None]
    evaluated: dict[tuple[int, ...], dict[str, float]]
    rounds: int = 0
    feasible: dict[tuple[int, ...], bool] = field(default_factory=dict)

    def cheapest(self, metric: str) -> tuple[tuple[int, ...], dict[str, float]] | None:
        """The frontier fleet with the least `metric` (ties: fewer replicas in all), or None if none qualifies."""
        best = None
        for rest, n in self.minimal.items():
            if n is None:
                continue
            counts = (n, *rest)
            s = self.evaluated[counts]
            key = (s.get(metric, math.inf), sum(counts))
            if best is None or key < best[0]:
                best = (key, counts)
        return None if best is None else (best[1], self.evaluated[best[1]])


def plan(axes: list[Axis], objectives: list[Objective],
         evaluate: Callable[[list[tuple[int, ...]]], dict[tuple[int, ...], dict[str, float]]]) -> Frontier:
    """Bisect the first axis for every combination of the others; `evaluate` simulates a batch of fleets (each a
    tuple of counts in axis order) and returns their flattened summaries. One batch a round, every search's next
    count in it, so a pool of workers runs a round in parallel."""
    first, others = axes[0], axes[1:]
    searches = [Search(rest, first.lo, first.hi) for rest in itertools.product(*(a.values() for a in others))]
    evaluated: dict[tuple[int, ...], dict[str, float]] = {}
    feasible: dict[tuple[int, ...], bool] = {}
    rounds = 0
    while True:
        want = sorted({(n, *s.rest) for s in searches for n in s.next_counts()} - set(evaluated))
        if want:
            rounds += 1
            got = evaluate(want)
            for counts in want:
                evaluated[counts] = got[counts]
                feasible[counts] = meets(got[counts], objectives)
        moved = False
        for s in searches:
            if s.done:
                continue
            moved = True
            if not s.top_checked:
                s.top_checked = True
                if not feasible[(s.hi, *s.rest)]:
                    s.done = True  # even the most replicas fail
                    continue
                if feasible[(s.lo, *s.rest)]:
                    s.answer, s.done = s.lo, True
                    continue
            else:
                mid = (s.lo + s.hi) // 2
                if feasible[(mid, *s.rest)]:
                    s.hi = mid
                else:
                    s.lo = mid
            if s.hi - s.lo <= 1:
                s.answer, s.done = s.hi, True
        if not moved:
            break
    return Frontier(axes, {s.rest: s.answer for s in searches}, evaluated, rounds, feasible)
