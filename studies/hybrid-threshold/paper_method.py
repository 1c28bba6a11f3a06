"""The hybrid study's thresholds the paper's way (Wilkins et al., e-Energy 2024): outputs fixed at 32 tokens, energy
per output token of one request served alone at each input length, M1 Pro against A100, and the input threshold
below which the M1 is the cheaper; from the profiles (device + host energy, as the simulator charges them) and,
where the published sweeps are at hand, from the measurements themselves (CPU + GPU energy of the inference
rows, mean over iterations).

    python studies/hybrid-threshold/paper_method.py [--data DATA/wilkins2024-energy-inference] [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dcsim.profiles.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILES = {"M1-Pro": "m1-pro--llama-2-7b--hf-fp16", "Swing AMD+A100": "a100-sxm4-40gb--llama-2-7b--hf-bf16"}
INPUTS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
N_OUT = 32


def profile_j_per_token(name: str, n_in: int, n_out: int = N_OUT) -> float:
    """Device + host joules per output token of one request served alone: its prefill, then n_out - 1 decode
    steps at batch 1, as the simulator charges them (host power x time and the per-step host energy)."""
    evaluator = load_profile(ROOT / "profiles" / f"{name}.yaml").evaluator()
    t_pf, w_pf, hw_pf = evaluator.prefill(n_in, float(n_in) * n_in, 1)
    t_dc, e_dc, h_dc = evaluator.decode_run(1, n_in + 1, n_out - 1)
    return (t_pf * (w_pf + hw_pf) + e_dc + h_dc) / n_out


def measured_j_per_token(data: Path, system: str, n_in: int) -> float:
    """Mean CPU + GPU joules per output token of the paper's inference rows at this input length (32 out)."""
    d = pd.read_csv(data / "all-input-stats.csv")
    d = d[(d["System"] == system) & (d["Model"] == "Llama-2 (7B)") & d["Phase"].str.contains("inference")
          & (d["Number of Input Tokens"] == n_in)]
    if d.empty:
        return float("nan")
    return float(((d["CPU Energy (J)"] + d["GPU Energy (J)"]) / d["Output Token Limit"]).mean())


def table(data: Path | None) -> pd.DataFrame:
    rows = []
    for n in INPUTS:
        row = {"n_in": n}
        for system, prof in PROFILES.items():
            key = "m1" if system == "M1-Pro" else "a100"
            row[f"{key}_profile_j_per_tok"] = profile_j_per_token(prof, n)
            if data is not None:
                row[f"{key}_measured_j_per_tok"] = measured_j_per_token(data, system, n)
        rows.append(row)
    t = pd.DataFrame(rows)
    t["m1_cheaper_profile"] = t["m1_profile_j_per_tok"] < t["a100_profile_j_per_tok"]
    if data is not None:
        t["m1_cheaper_measured"] = t["m1_measured_j_per_tok"] < t["a100_measured_j_per_tok"]
    return t


def threshold(t: pd.DataFrame, col: str) -> int | None:
    """The largest input length up to which the M1 is the cheaper at every length (None: never)."""
    best = None
    for n, cheaper in zip(t["n_in"], t[col]):
        if not cheaper:
            break
        best = int(n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="the published sweeps' folder (all-input-stats.csv)")
    ap.add_argument("--csv", type=Path, help="write the table here")
    a = ap.parse_args()
    t = table(a.data)
    print(t.round(3).to_string(index=False))
    print(f"threshold from the profiles: n_in <= {threshold(t, 'm1_cheaper_profile')}")
    if a.data is not None:
        print(f"threshold from the measurements: n_in <= {threshold(t, 'm1_cheaper_measured')}")
    if a.csv:
        t.to_csv(a.csv, index=False)


if __name__ == "__main__":
    main()
