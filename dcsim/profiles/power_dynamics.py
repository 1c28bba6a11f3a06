"""How a device's power moves between the profile's levels: it rises to a step's power over `rise_s` when work
starts after idle, and falls back to serving idle over `fall_s` after it (first order, each with its own time
constant). Fitted from a calibration run whose runs are separated by idle gaps (a plan with `cooldown_s`), and
applied to a replica's busy segments in closed form, one term per busy period."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from dcsim.errors import UserError

MIN_GAP_S = 1.0  # a run counts where the idle on its side is at least this long (ten fall constants or more)
MIN_RUN_S = 1.0  # and where it is long enough to reach its plateau
MAX_PREFILL_S = 0.1  # a rise is read only where the prefill is this short: a long one draws above the plateau
RISE_WINDOW_S = 0.6  # the rise is read over this much of a run's start, against the plateau after it
FALL_WINDOW_S = 1.0  # the fall over this much of the idle after a run, against the gap's last 0.3 s


class DynamicsFit(NamedTuple):
    rise_s: float
    fall_s: float
    rises: list[float]  # each run's rise constant, seconds
    falls: list[float]  # each run's fall constant, seconds
    idle_w: float  # the settled idle between runs, median over the gaps read


def _integral(t: np.ndarray, w: np.ndarray, a: float, b: float) -> float:
    """Joules of a sampled power timeline over [a, b], linear between samples."""
    grid = np.concatenate(([a], t[(t > a) & (t < b)], [b]))
    return float(np.trapezoid(np.interp(grid, t, w), grid))


def _mean(t: np.ndarray, w: np.ndarray, a: float, b: float) -> float:
    return _integral(t, w, a, b) / (b - a)


def read_timeline(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(time, watts) of a calibration run's power.csv, every device summed at each sample time."""
    import pandas as pd

    path = run_dir / "power.csv"
    if not path.is_file():
        raise UserError("the run has no power timeline (power.csv)", run_dir, "--dynamics-from")
    p = pd.read_csv(path)
    if p.empty or not {"t", "power_w"} <= set(p.columns):
        raise UserError("power.csv has no samples (columns t, power_w)", path, "--dynamics-from")
    s = p.groupby("t", sort=True)["power_w"].sum()
    return s.index.to_numpy(float), s.to_numpy(float)


def fit_dynamics(run_dir: Path) -> DynamicsFit:
    """Rise and fall constants from the timeline of a run with idle gaps: per run, the rise is the joules short of
    its plateau over its first RISE_WINDOW_S over (plateau - settled idle), for runs whose prefill is short
    (MAX_PREFILL_S); the fall is the joules above settled
    idle over FALL_WINDOW_S after it over (its last 0.3 s - settled idle). Medians over the runs."""
    import pandas as pd

    runs_csv = run_dir / "runs.csv"
    if not runs_csv.is_file():
        raise UserError("not a calibration run folder (no runs.csv)", run_dir, "--dynamics-from")
    r = pd.read_csv(runs_csv)
    r = r[r["status"] == "ok"].sort_values("t_start").reset_index(drop=True)
    t, w = read_timeline(run_dir)
    gap_before = r["t_start"] - r["t_end"].shift(1)
    gap_after = r["t_start"].shift(-1) - r["t_end"]
    rises, falls, idles = [], [], []
    for k, x in r.iterrows():
        if x["phase"] != "run" or x["t_end"] - x["t_start"] < MIN_RUN_S:
            continue
        s, e = float(x["t_start"]), float(x["t_end"])
        if s < t[0] or e > t[-1]:
            continue
        plateau = _mean(t, w, s + RISE_WINDOW_S, e)
        last = _mean(t, w, e - 0.3, e)
        if gap_before[k] >= MIN_GAP_S and not x["ttft_s"] > MAX_PREFILL_S:
            idle = _mean(t, w, s - 0.3, s)
            if plateau - idle > 0:
                rises.append((plateau * RISE_WINDOW_S - _integral(t, w, s, s + RISE_WINDOW_S)) / (plateau - idle))
        if gap_after[k] >= MIN_GAP_S and e + gap_after[k] <= t[-1]:
            g = float(gap_after[k])
            idle = _mean(t, w, e + g - 0.3, e + g)
            idles.append(idle)
            span = min(FALL_WINDOW_S, g - 0.3)
            if last - idle > 0:
                falls.append((_integral(t, w, e, e + span) - idle * span) / (last - idle))
    if len(rises) < 3 or len(falls) < 3:
        raise UserError(f"{len(rises)} runs with a rise and {len(falls)} with a fall to read (3 of each needed: runs "
                        f"of at least {MIN_RUN_S:g} s with {MIN_GAP_S:g} s of idle before and after, as a plan with "
                        "cooldown_s gives)", run_dir, "--dynamics-from")
    return DynamicsFit(max(0.0, float(np.median(rises))), max(0.0, float(np.median(falls))), rises, falls,
                       float(np.median(idles)))


class Applied(NamedTuple):
    e: np.ndarray  # the segments' device joules with each busy period's rise taken off
    tail_t0: np.ndarray  # each busy period's fall: where it starts (the period's end), s
    tail_t1: np.ndarray  # and where it is counted to (the next period's start or the run's end, at most 10 falls)
    tail_e: np.ndarray  # device joules above idle it draws there


def apply_dynamics(t0: np.ndarray, t1: np.ndarray, e: np.ndarray, idle_w: float, rise_s: float, fall_s: float,
                   end_s: float) -> Applied:
    """A replica's busy segments (sorted, not overlapping) under the power state: a busy period (segments with no
    gap between them) starts from the state the last fall left, s = idle + (P_prev - idle) exp(-gap / fall_s)
    (idle before the first), and each of its segments of power P over [a, b] draws (P - s) rise_s (exp(-(a - T)
    / rise_s) - exp(-(b - T) / rise_s)) less, T the period's start; after it the device draws (P_last - idle)
    fall_s (1 - exp(-gap / fall_s)) above idle over the gap that follows. Within a period no term: the curves
    were measured on back-to-back work and hold its transitions."""
    n = len(t0)
    if n == 0:
        z = np.zeros(0)
        return Applied(e, z, z, z)
    dur = t1 - t0
    p = np.divide(e, dur, out=np.full(n, idle_w), where=dur > 0)
    starts = np.flatnonzero(np.r_[True, t0[1:] > t1[:-1]])
    ends = np.r_[starts[1:] - 1, n - 1]
    gap_next = np.r_[t0[starts[1:]] - t1[ends[:-1]], max(0.0, end_s - t1[ends[-1]])]
    p_last = p[ends]
    decay = np.exp(-gap_next / fall_s) if fall_s > 0 else np.zeros(len(ends))
    tail_e = (p_last - idle_w) * (fall_s * (1.0 - decay) if fall_s > 0 else 0.0)
    state = np.r_[idle_w, idle_w + (p_last[:-1] - idle_w) * decay[:-1]]  # each period's start state
    out = e
    if rise_s > 0:
        period = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
        T = t0[starts][period]
        lost = (p - state[period]) * rise_s * (np.exp(-(t0 - T) / rise_s) - np.exp(-(t1 - T) / rise_s))
        out = e - lost
    span = np.minimum(gap_next, 10.0 * fall_s) if fall_s > 0 else np.zeros(len(ends))
    return Applied(out, t1[ends], t1[ends] + span, tail_e)


def described(fit: DynamicsFit) -> str:
    """One line of what the fit read, for the profile's provenance."""
    def q(x: list[float]) -> str:
        a, b = np.percentile(x, [25, 75])
        return f"IQR {a:.3f}-{b:.3f} s over {len(x)} runs"

    return (f"rise {fit.rise_s:.3f} s ({q(fit.rises)}), fall {fit.fall_s:.3f} s ({q(fit.falls)}); settled idle "
            f"between runs {fit.idle_w:.1f} W; read from the 20 Hz power timeline: the rise as the joules short of "
            f"each run's plateau over its first {RISE_WINDOW_S:g} s, the fall as the joules above settled idle over "
            f"the {FALL_WINDOW_S:g} s after it, each over the step between the levels")


__all__ = ["Applied", "DynamicsFit", "apply_dynamics", "described", "fit_dynamics", "read_timeline"]
