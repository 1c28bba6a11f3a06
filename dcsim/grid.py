"""Grid carbon intensity and electricity price over time: step series read from CSV files a scenario names, and
their integral against a fleet's power, so a run's carbon and cost follow when its energy was drawn.

A series file has a time column (seconds of simulated time at which a value starts; default `t_s`) and a value
column (default `value`: g CO2e per kWh, or price per kWh). Each value holds until the next row; the last holds
to the end of the run, or, with `period_s`, the series repeats (e.g. 86400 for a daily profile).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dcsim.errors import UserError


@dataclass(frozen=True)
class StepSeries:
    """A piecewise-constant series: value v[i] from t[i] to t[i + 1] (the last onwards), repeating every period."""

    t: np.ndarray
    v: np.ndarray
    period_s: float | None = None

    def breakpoints(self, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
        """Edges lo = x0 < ... < xn = hi where the value changes, and the value on each of the n pieces."""
        if self.period_s is None:
            inner = self.t[(self.t > lo) & (self.t < hi)]
        else:
            first = np.floor(lo / self.period_s)
            reps = np.arange(first, np.floor(hi / self.period_s) + 1)
            starts = (reps[:, None] * self.period_s + self.t[None, :]).ravel()
            inner = starts[(starts > lo) & (starts < hi)]
        edges = np.concatenate(([lo], np.unique(inner), [hi]))
        mids = 0.5 * (edges[:-1] + edges[1:])
        return edges, self.at(mids)

    def at(self, x: np.ndarray) -> np.ndarray:
        """The value in force at times x (before the first row: the first row's)."""
        x = np.asarray(x, dtype=np.float64)
        if self.period_s is not None:
            x = np.mod(x, self.period_s)
        i = np.searchsorted(self.t, x, side="right") - 1
        return self.v[np.clip(i, 0, len(self.v) - 1)]


def load_series(path: Path, time_column: str, value_column: str, period_s: float | None,
                scenario_file: str | Path | None, field: str) -> StepSeries:
    """Read and check one series file; errors name the series file (or the scenario) and the field."""
    import pandas as pd

    try:
        df = pd.read_csv(path, comment="#")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the series {path}: {e}", scenario_file, field) from None
    for col in (time_column, value_column):
        if col not in df.columns:
            raise UserError(f"no column {col!r} (columns: {list(df.columns)})", path, col)
    t = pd.to_numeric(df[time_column], errors="coerce").to_numpy(np.float64)
    v = pd.to_numeric(df[value_column], errors="coerce").to_numpy(np.float64)
    if len(t) == 0:
        raise UserError("the series holds no rows", path)
    for name, x in ((time_column, t), (value_column, v)):
        bad = np.flatnonzero(~np.isfinite(x))
        if len(bad):
            raise UserError(f"row {bad[0] + 1} (line {bad[0] + 2}) is not a finite number", path, name)
    if (v < 0).any():
        i = int(np.flatnonzero(v < 0)[0])
        raise UserError(f"row {i + 1} (line {i + 2}) is negative ({v[i]:g})", path, value_column)
    if (np.diff(t) <= 0).any():
        i = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 1
        raise UserError(f"row {i + 1} (line {i + 2}) does not come after the row before ({t[i]:g} s after "
                        f"{t[i - 1]:g} s): times must increase", path, time_column)
    if period_s is not None and (t[0] < 0 or t[-1] >= period_s):
        raise UserError(f"with period_s {period_s:g} the times must lie in [0, {period_s:g}) s (they run from "
                        f"{t[0]:g} to {t[-1]:g} s)", path, time_column)
    return StepSeries(t, v, period_s)


def weighted_kwh(series: StepSeries, energy_by: Callable[[np.ndarray], np.ndarray], lo: float, hi: float) -> float:
    """Sum over the series' pieces of value x kWh drawn in that piece, over the window [lo, hi]; `energy_by(x)`
    gives the cumulative joules drawn by each of the times x, so a piece's energy is a difference of two."""
    edges, values = series.breakpoints(lo, hi)
    joules = np.diff(energy_by(edges))
    return float(np.dot(values, joules) / 3.6e6)

