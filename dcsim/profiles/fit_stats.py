"""Fit statistics shared by the run and step fits: NNLS on relative errors, robust cost, fit errors, spread."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import lsq_linear

from dcsim.profiles.profile import FitError


def nnls_rel(a: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Non-negative x minimising sum (w * (a@x - y) / y)^2; columns scaled for conditioning."""
    rows = a * (w / y)[:, None]
    scale = np.abs(rows).max(axis=0)
    scale[scale == 0] = 1.0
    res = lsq_linear(rows / scale, w, bounds=(0.0, np.inf), method="bvls", lsmr_tol="auto")
    return res.x / scale


# The refinement stage uses a soft-L1 loss on relative residuals with a 5% scale, so one anomalous published
# configuration cannot bend a curve that the other points agree on; the linear start is plain least squares.
ROBUST = {"loss": "soft_l1", "f_scale": 0.05}


def robust_cost(r: np.ndarray) -> float:
    z = (np.asarray(r) / ROBUST["f_scale"]) ** 2
    return float(np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)))


# an energy component that fits its own source points worse than this (median) is flagged in the profile's notes
ENERGY_FLAG_PCT = 10.0


def energy_flags(errors: dict[str, FitError]) -> list[str]:
    """Notes flagging each energy component whose median error on its source points exceeds ENERGY_FLAG_PCT."""
    return [f"Flag: {k} fits its source points with a {e.median_ape_pct:.1f}% median error (max {e.max_ape_pct:.1f}%), "
            f"above {ENERGY_FLAG_PCT:g}%: forecasts of that component carry an error of that size"
            for k, e in errors.items() if k.startswith("energy.") and e.median_ape_pct > ENERGY_FLAG_PCT]


def ape(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return 100.0 * np.abs(pred - meas) / np.abs(meas)


def fit_error(pred: np.ndarray, meas: np.ndarray) -> FitError:
    e = ape(np.asarray(pred, float), np.asarray(meas, float))
    return FitError(median_ape_pct=round(float(np.median(e)), 2), max_ape_pct=round(float(np.max(e)), 2),
                    n_points=int(e.size))


def shape_mean_error(df: pd.DataFrame, pred: str, meas: str) -> FitError:
    """APE of the shape means (repeats of a shape averaged), so a shape measured 100 times counts once."""
    g = df.groupby(["kind", "batch", "source"], sort=False)[[pred, meas]].mean()
    g = g[np.isfinite(g[meas]) & (g[meas] != 0)]
    return fit_error(g[pred].to_numpy(), g[meas].to_numpy())


POOLED_SPREAD_DF = 6  # the fewest degrees of freedom (repeats beyond the first, over all shapes) a pooled spread takes


def spread_cv(t: pd.DataFrame) -> dict[str, float]:
    """Run-to-run coefficient of variation per term (_spread) over the runs that met no shape for the first time
    (`first_time`): what those pay is the engine's first-time cost (cold_shapes), not spread. Where the warm runs
    alone give no figure for a term, over every run, as before."""
    every = _spread(t)
    warm = _spread(t[~t["first_time"]]) if "first_time" in t and t["first_time"].any() else every
    return {k: warm.get(k, v) for k, v in every.items()}


def _spread(t: pd.DataFrame) -> dict[str, float]:
    """Run-to-run coefficient of variation per term: the median over shapes repeated at least 3 times; where no
    shape was, the CV pooled over the shapes repeated twice (root of the df-weighted mean of their squared CVs),
    given at least POOLED_SPREAD_DF degrees of freedom, so a two-repeat calibration still lends the comparison a
    band; otherwise none."""
    out = {}
    for col, key in (("runtime_s", "latency.run_s"), ("energy_device_j", "energy.run_device_j"),
                     ("energy_host_j", "energy.run_host_j")):
        sub = t[(t["kind"] == "run") & t[col].notna()]
        if sub.empty:
            continue
        g = sub.groupby(["batch", "source", "n_in"])[col]
        n, cv_all = g.count(), g.std(ddof=1) / g.mean()
        cv = cv_all.where(n >= 3).dropna()
        if len(cv):
            out[key] = round(float(cv.median()), 4)
            continue
        df = (n - 1).where(n >= 2).dropna()
        if df.sum() >= POOLED_SPREAD_DF:
            out[key] = round(float(np.sqrt((df * cv_all[df.index] ** 2).sum() / df.sum())), 4)
    return out
