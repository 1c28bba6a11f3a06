"""Read a paged replay's measured steps against a profile, step by step: each step's time from the profile's curves
at the step's own composition (padded decode batch and its KV tokens, the chunks' tokens, attention pairs and the
tokens before them), as the simulator's `paged` policy costs a step (a chunk beside decodes adds its prefill time;
engine.step_includes_prefill profiles are not read here). This separates a step-cost error from a scheduling one.

Replays recorded since steps.csv carried decode_context, chunk_prefix, chunk_pairs and prefixed_chunks are
read exactly. For older
ones each decode's KV tokens are reconstructed from requests.csv (its prompt plus the share of its output made by
then), a chunk's start is its admission's cached tokens (a split prompt's later chunk taken as starting at 0),
and a step has one prefixed chunk where its admissions hit the cache.

    python validation/scripts/step_costs.py validation/h200c-paged-conv60 [--profile P] [--calibration RUN]
        [--power SECONDS]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dcsim.profiles.profile import load_profile
from dcsim.validate.recover import raw_file


def step_table(folder: Path, profile_path: Path) -> pd.DataFrame:
    """steps.csv with each step's measured and curve seconds (`dur_s`, `curve_s`) and its kind (dec, mix, pf)."""
    evaluator = load_profile(profile_path).evaluator()
    s = pd.read_csv(raw_file(folder, "steps.csv"))
    s["dur_s"] = s["end_s"] - s["start_s"]
    if "decode_context" not in s:
        r = pd.read_csv(folder / "requests.csv")
        t = s["start_s"].to_numpy()
        ctx = np.zeros(len(s))
        for first, end, n_in, n_out in r[["first_token_s", "end_s", "n_in", "gen_tokens"]].itertuples(index=False):
            m = (t >= first) & (t < end)
            ctx[m] += n_in + (t[m] - first) / max(end - first, 1e-9) * n_out
        s["decode_context"] = ctx
        s["chunk_prefix"] = s["cached_tokens"]
        s["chunk_pairs"] = s["prefill_tokens"] ** 2 + 2 * s["cached_tokens"] * s["prefill_tokens"]
        s["prefixed_chunks"] = (s["cached_tokens"] > 0).astype(int)
    curve, watts = np.zeros(len(s)), np.zeros(len(s))
    for i, x in enumerate(s.itertuples(index=False)):
        t_d, w_d = evaluator.decode_step(int(x.graph_batch), float(x.decode_context),
                                         int(x.decodes)) if x.decodes else (0.0, 0.0)
        t_p, w_p, _ = evaluator.prefill(float(x.prefill_tokens), float(x.chunk_pairs), int(x.chunks),
                                        float(x.chunk_prefix), int(x.prefixed_chunks)) if x.chunks else (0.0, 0.0, 0.0)
        ov = evaluator.overlap(t_d, t_p) if x.decodes and x.chunks else 0.0
        curve[i] = t_d + t_p - ov
        watts[i] = (t_d * w_d + t_p * w_p - ov * w_d) / curve[i]  # the overlap saved at decode power
    s["curve_s"] = curve
    s["curve_w"] = watts
    s["kind"] = np.where(s["chunks"] == 0, "dec", np.where(s["decodes"] == 0, "pf", "mix"))
    return s


def summary(s: pd.DataFrame) -> pd.DataFrame:
    """Medians by kind and decode bin: measured and curve milliseconds, and the curve's median error."""
    s = s.assign(decodes_bin=pd.cut(s["decodes"], [-1, 0, 4, 8, 16, 32, 64, 128, 256, 1024]),
                 error=s["curve_s"] / s["dur_s"] - 1.0)
    g = s.groupby(["kind", "decodes_bin"], observed=True)
    return pd.DataFrame({"steps": g.size(), "measured_ms": 1e3 * g["dur_s"].median(),
                         "curve_ms": 1e3 * g["curve_s"].median(), "error": g["error"].median()})


def power_windows(folder: Path, s: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Per window of `window_s` seconds that the steps fill (95% or more): the device joules the meter measured
    (power.csv, from the replay's wall-clock start) and those the curves' power gives the measured steps at their
    measured durations, so a power error is read apart from a time one; with the window's mean decodes and KV
    tokens per decode."""
    meta = json.loads((folder / "replay.json").read_text())
    p = pd.read_csv(folder / "power.csv")
    rel = p["t"].to_numpy(float) - float(meta["wall_start"])
    dt = float(np.median(np.diff(p["t"].to_numpy(float))))
    measured = pd.Series(p["power_w"].to_numpy(float) * dt).groupby((rel // window_s).astype(int)).sum()
    s = s.assign(win=(s["start_s"] // window_s).astype(int), curve_j=s["curve_w"] * s["dur_s"],
                 dec_s=s["decodes"] * s["dur_s"], ctx_s=s["decode_context"] / s["decodes"].clip(lower=1) * s["dur_s"])
    g = s.groupby("win")
    busy = g["dur_s"].sum()
    out = pd.DataFrame({"busy_s": busy, "curve_j": g["curve_j"].sum(), "decodes": g["dec_s"].sum() / busy,
                        "kv_per_decode": g["ctx_s"].sum() / busy})
    out["measured_j"] = measured.reindex(out.index)
    out = out[out["busy_s"] >= 0.95 * window_s].dropna()
    out["error"] = out["curve_j"] / out["measured_j"] - 1.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--profile", type=Path, help="default: the one the replay's comparison used")
    ap.add_argument("--calibration", type=Path, help="a step sweep's run folder: the replay's step probe "
                                                     "(step_probe.csv) read against its medians at the same steps")
    ap.add_argument("--power", type=float, metavar="SECONDS", help="also the curves' power over the measured steps "
                    "against the meter, in windows of this many seconds")
    a = ap.parse_args()
    prof = a.profile or Path(json.loads((a.folder / "comparison.json").read_text())["profile"])
    s = step_table(a.folder, prof)
    print(summary(s).round(4).to_string())
    print(f"all steps: {s['dur_s'].sum():.1f} s measured, {s['curve_s'].sum():.1f} s from the curves "
          f"({s['curve_s'].sum() / s['dur_s'].sum() - 1:+.1%})")
    if a.power:
        w = power_windows(a.folder, s, a.power)
        print(w.round(3).to_string())
        m_j, c_j = w["measured_j"].sum(), w["curve_j"].sum()
        print(f"windows the steps fill: {m_j / 1e3:.1f} kJ measured, {c_j / 1e3:.1f} kJ from the curves' power at the "
              f"measured steps ({c_j / m_j - 1:+.1%}; median window {w['error'].median():+.1%})")
    if a.calibration and (a.folder / "step_probe.csv").is_file():
        from dcsim.validate.step_probe import read_against

        print(f"step probe against {a.calibration}:")
        print(read_against(a.folder / "step_probe.csv", a.calibration).round(3).to_string())


if __name__ == "__main__":
    main()
