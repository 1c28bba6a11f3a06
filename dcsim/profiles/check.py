"""How well a profile predicts a calibration run it was not fitted to: run time and device energy per shape.

Each run row (warm-ups dropped, shapes past the model's context window dropped, as the fit does) is predicted the
way the simulator computes it (ProfileEvaluator, no power cap): one prefill of batch x n_in tokens, then
n_out - 1 decode steps. Repeats of a shape are averaged first and each shape counts once, so the figures are
comparable with a fitted profile's fit_error on the same run (energy only where the run was long enough for
the NVML counter; see importers/calibrate_runs.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dcsim.errors import UserError
from dcsim.profiles.fit import held_cache_lengths
from dcsim.profiles.fit_stats import shape_mean_error
from dcsim.profiles.measurements import normalise
from dcsim.profiles.profile import FitError, Profile

METRICS = ("latency.run_s", "energy.run_device_j")


def load_run_rows(run_dir: str | Path) -> pd.DataFrame:
    """The measured run rows of a calibration run folder (warm-ups left out)."""
    from dcsim.profiles.importers import calibrate_runs

    if not Path(run_dir).is_dir():
        raise UserError("calibration run folder not found", run_dir, "check")
    table, _ = calibrate_runs.load(run_dir)
    t = normalise(table)
    return t[(t["kind"] == "run") & ~t["warmup"]].reset_index(drop=True)


def predict_runs(profile: Profile, runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with pred_runtime_s and pred_energy_device_j as the simulator would compute them; a static-cache
    profile is evaluated with the caches the checked runs held (their longest per batch size), not its own."""
    held = held_cache_lengths(runs) if profile.engine.cache_lengths and len(runs) else None
    if held:
        profile = profile.model_copy(update={"engine": profile.engine.model_copy(update={"cache_lengths": held})})
    evaluator = profile.evaluator()
    t_out, e_out = [], []
    for b, n_in, n_out in runs[["batch", "n_in", "n_out"]].itertuples(index=False):
        b, n_in, n_out = int(b), float(n_in), int(n_out)
        t_pf, w_pf, _ = evaluator.prefill(b * n_in, b * n_in * n_in, b)
        t_dc, e_dc, _ = evaluator.decode_run(b, b * (n_in + 1), max(n_out - 1, 0))
        t_out.append(t_pf + t_dc)
        e_out.append(t_pf * w_pf + e_dc)
    return runs.assign(pred_runtime_s=t_out, pred_energy_device_j=e_out)


def run_errors(profile: Profile, runs: pd.DataFrame) -> dict[str, FitError]:
    """Median and max absolute % error of shape means: run time and device energy."""
    inside = runs[runs["n_in"] + runs["n_out"] <= profile.model.max_context]
    p = predict_runs(profile, inside)
    out = {}
    for key, pred, meas in (("latency.run_s", "pred_runtime_s", "runtime_s"),
                            ("energy.run_device_j", "pred_energy_device_j", "energy_device_j")):
        sub = p.dropna(subset=[meas])  # as the fit does: energy only where the run was long enough
        if len(sub):
            out[key] = shape_mean_error(sub, pred, meas)
    return out


def error_table(rows: dict[str, dict[str, FitError]]) -> str:
    """Markdown table: one line per profile, median / max APE of run time and energy."""
    lines = ["| profile | run time median / max APE % | energy median / max APE % | shapes (time, energy) |",
             "|---|---|---|---|"]
    for label, errs in rows.items():
        t, e = errs.get("latency.run_s"), errs.get("energy.run_device_j")

        def fmt(x: FitError | None) -> str:
            return f"{x.median_ape_pct:.1f} / {x.max_ape_pct:.1f}" if x else "-"

        lines.append(f"| {label} | {fmt(t)} | {fmt(e)} | {t.n_points if t else 0}, {e.n_points if e else 0} |")
    return "\n".join(lines)
