"""First-time costs of new shapes, fitted from the runs a calibration kept: its warm-ups and the first repeat of
each point pay them, the later repeats of the same point do not.

Each session's runs are walked in the order they ran, counting with dcsim.sim.shapes what each met for the first
time: its prefill's (batch, prompt length) and the (batch, KV length)s of its decode steps. A run's extra time is
its time less the median of the same point's runs that met nothing new (same power cap and locked clock). Two
least-squares fits without intercept: the extra time to first token on "new prompt" (0/1), and the extra decode
time (run time less time to first token) on the count of new KV lengths. The joules likewise: the extra energy to
the first token on "new prompt", the extra energy after it on new KV lengths, over the runs both time fits kept. A
run more than 5 scaled median deviations off its fit, and off by more than the cost fitted for it, is left out once
(a compile, say) and named. A session's first run is left out (it also starts the engine)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from dcsim.sim.shapes import ShapeMemory

OUTLIER_MADS = 5.0  # a run this many scaled median deviations off its fit is left out once
MIN_NEW = 2  # runs that met something new, at least, for a cost to be fitted
SCALE_FLOOR_S = 1e-3  # the deviation scale's floor, seconds (a fit of near-identical runs)


class ColdFit(NamedTuple):
    prompt_s: float
    prompt_j: float
    kv_length_s: float
    kv_length_j: float
    n_runs: int  # runs with a warm reference
    n_new_prompt: int  # of those, how many met a new (batch, prompt length)
    n_new_kv: int  # and how many met new KV lengths
    r2_prompt: float
    r2_kv: float
    left_out: list[str]  # runs left out as outliers, with their extra seconds
    ape_without: float  # median |error| of the cold runs' run time against their warm reference, %
    ape_with: float  # the same with the fitted costs added, %
    ape_with_max: float
    n_cold: int  # cold runs those two are over


def read_runs(run_dirs: list[Path]) -> pd.DataFrame:
    """Every run and warm-up of the folders (runs.csv), with the folder as part of the session key."""
    tables = []
    for d in run_dirs:
        path = Path(d) / "runs.csv"
        if path.is_file():
            t = pd.read_csv(path)
            tables.append(t.assign(folder=str(d)))
    if not tables:
        return pd.DataFrame()
    t = pd.concat(tables, ignore_index=True)
    return t[t["phase"].isin(["run", "warmup"]) & (t["status"] == "ok")]


def new_shapes(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs in the order each session ran them, with what each met first: new_prompt (0/1), new_kv (KV
    lengths), first (the session's first run)."""
    runs = runs.sort_values(["folder", "session", "t_start"], kind="stable")
    rows = []
    for _, g in runs.groupby(["folder", "session"], sort=False):
        mem = ShapeMemory()
        for i, (n_in, n_out, b) in enumerate(zip(g["n_in"], g["n_out"], g["batch"])):
            new = mem.meet(int(b), int(n_in), int(n_in) + 1, int(n_out) - 1)
            rows.append((int(new.prompt), new.kv_lengths, i == 0))
    f = pd.DataFrame(rows, columns=["new_prompt", "new_kv", "first"], index=runs.index)
    return runs.join(f)


def _fit_one(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """y ~ c x (c >= 0) by least squares; then once more without the points more than OUTLIER_MADS scaled median
    deviations off. Returns (c, kept mask)."""
    keep = np.ones(len(x), dtype=bool)
    c = 0.0
    for _ in range(2):
        xx, yy = x[keep], y[keep]
        den = float(xx @ xx)
        c = max(0.0, float(xx @ yy) / den) if den > 0 else 0.0
        r = y - c * x
        scale = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), SCALE_FLOOR_S)
        keep = (np.abs(r) <= OUTLIER_MADS * scale) | (np.abs(r) <= c * x)  # off by more than its own cost
    return c, keep


def _r2(x: np.ndarray, y: np.ndarray, c: float) -> float:
    tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - c * x) ** 2).sum()) / tot if tot > 0 else 1.0


def fit_cold_shapes(run_dirs: list[Path]) -> ColdFit | None:
    """The first-time costs the runs of these calibration folders show, or None where fewer than MIN_NEW runs with
    a warm reference met a new shape."""
    runs = read_runs(run_dirs)
    if runs.empty:
        return None
    t = new_shapes(runs)
    setting = [t[c].fillna(0.0) if c in t else pd.Series(0.0, index=t.index) for c in ("power_cap_w", "sm_clock_mhz")]
    t = t.assign(key=list(zip(t["n_in"], t["n_out"], t["batch"], *setting)))
    warm = t[(t["phase"] == "run") & (t["new_prompt"] == 0) & (t["new_kv"] == 0) & ~t["first"]]
    ref = warm.groupby("key")[["runtime_s", "ttft_s", "energy_device_j", "energy_prefill_device_j"]].median()
    obs = t[~t["first"] & t["key"].isin(ref.index)]
    if len(obs) == 0 or int(((obs["new_prompt"] > 0) | (obs["new_kv"] > 0)).sum()) < MIN_NEW:
        return None
    r = ref.loc[obs["key"]].to_numpy()
    d_run = obs["runtime_s"].to_numpy(float) - r[:, 0]
    d_ttft = obs["ttft_s"].to_numpy(float) - r[:, 1]
    d_e = obs["energy_device_j"].to_numpy(float) - r[:, 2]
    d_pe = obs["energy_prefill_device_j"].to_numpy(float) - r[:, 3]
    xp = obs["new_prompt"].to_numpy(float)
    xk = obs["new_kv"].to_numpy(float)
    ps, keep_p = _fit_one(xp, d_ttft) if (xp > 0).sum() >= MIN_NEW else (0.0, np.ones(len(xp), dtype=bool))
    ks, keep_k = _fit_one(xk, d_run - d_ttft) if (xk > 0).sum() >= MIN_NEW else (0.0, np.ones(len(xk), dtype=bool))
    ok = keep_p & keep_k & np.isfinite(d_e) & np.isfinite(d_pe)
    pj = _fit_one(xp[ok], d_pe[ok])[0] if (xp[ok] > 0).sum() >= MIN_NEW else 0.0
    kj = _fit_one(xk[ok], (d_e - d_pe)[ok])[0] if (xk[ok] > 0).sum() >= MIN_NEW else 0.0
    names = obs["entry"].to_numpy()
    left = [f"{names[i]} ({d_run[i]:+.2f} s)" for i in np.flatnonzero(~(keep_p & keep_k))]
    cold = (xp > 0) | (xk > 0)
    sel = cold & keep_p & keep_k
    meas = obs["runtime_s"].to_numpy(float)[sel]
    base = r[sel, 0]
    without = np.abs(base / meas - 1.0) * 100
    with_ = np.abs((base + ps * xp[sel] + ks * xk[sel]) / meas - 1.0) * 100
    return ColdFit(
        prompt_s=ps, prompt_j=float(pj), kv_length_s=ks, kv_length_j=float(kj), n_runs=len(obs),
        n_new_prompt=int((xp > 0).sum()), n_new_kv=int((xk > 0).sum()),
        r2_prompt=_r2(xp[keep_p], d_ttft[keep_p], ps), r2_kv=_r2(xk[keep_k], (d_run - d_ttft)[keep_k], ks),
        left_out=left,
        ape_without=float(np.median(without)) if len(meas) else 0.0,
        ape_with=float(np.median(with_)) if len(meas) else 0.0,
        ape_with_max=float(np.max(with_)) if len(meas) else 0.0, n_cold=int(sel.sum()))


def described(fit: ColdFit) -> str:
    """The fit in a sentence or two, for the profile's provenance."""
    text = (f"{fit.prompt_s * 1e3:.1f} ms and {fit.prompt_j:.1f} J for a prefill at a new (batch, prompt length) "
            f"(R^2 {fit.r2_prompt:.2f} of the extra time to first token, {fit.n_new_prompt} runs met one); "
            f"{fit.kv_length_s * 1e3:.2f} ms and {fit.kv_length_j:.2f} J for a decode step at a new (batch, KV "
            f"length) (R^2 {fit.r2_kv:.2f} of the extra decode time, {fit.n_new_kv} runs met some); least squares "
            f"over {fit.n_runs} runs and warm-ups against the median of the same point's runs that met nothing new. "
            f"The cold runs' run time against that median: {fit.ape_without:.1f}% median error without these costs, "
            f"{fit.ape_with:.1f}% with them")
    if fit.left_out:
        text += "; left out as outliers: " + ", ".join(fit.left_out)
    return text
