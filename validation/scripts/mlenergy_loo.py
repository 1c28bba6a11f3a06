"""The paged engine against the ML.ENERGY leaderboard v3 (vLLM), one configuration left out at a time.

Usage: python validation/scripts/mlenergy_loo.py DATA/mlenergy-leaderboard-v3 validation/mlenergy-v3-loo
Writes loo.csv (one row per configuration: measured, simulated, error), sensitivity.csv (the medians and maxima
under other assumed prompt lengths, token budgets and KV reserves, and with the 2023 `continuous` policy) and
summary.json. The assumptions are dcsim/validate/mlenergy_loo.py's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from dcsim.validate import mlenergy_loo as M

VARIANTS = {  # name -> changes to the default assumptions
    "default": {},
    "prompts median 50": {"input_median": 50.0},
    "prompts median 200": {"input_median": 200.0},
    "prompts median 400": {"input_median": 400.0},
    "prompts log-sd 0.5": {"input_sigma": 0.5},
    "token budget 2048": {"max_num_batched_tokens": 2048},
    "token budget 16384": {"max_num_batched_tokens": 16384},
    "KV reserve 0 GB": {"reserve_gb": 0.0},
    "KV reserve 8 GB per GPU": {"reserve_gb": 8.0},
    "policy continuous (2023)": {"policy": "continuous"},
}


def main(data: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, change in VARIANTS.items():
            a = dataclasses.replace(M.Assumptions(), **change)
            df = M.run(data, Path(tmp), a)
            if name == "default":
                df.to_csv(out_dir / "loo.csv.tmp", index=False, float_format="%.6g")
                (out_dir / "loo.csv.tmp").replace(out_dir / "loo.csv")
                summary = {"assumptions": dataclasses.asdict(a), "configurations": len(df), "errors": M.summary(df)}
            s = M.summary(df)
            rows.append({"variant": name, **{f"{m}_{k}": v[k] for m, v in s.items() for k in v}})
            print(name, {m: f"{100 * v['median_abs_err']:.1f}/{100 * v['max_abs_err']:.1f}%" for m, v in s.items()},
                  flush=True)
    pd.DataFrame(rows).to_csv(out_dir / "sensitivity.csv", index=False, float_format="%.4f")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
