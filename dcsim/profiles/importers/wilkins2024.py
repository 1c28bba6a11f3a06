"""Wilkins, Keshav, Mortier 2024 token sweeps -> the measurement table.

Source: "Hybrid Heterogeneous Clusters Can Lower the Energy Consumption of LLM Inference Workloads" (E-Energy
2024), data and scripts at github.com/grantwilkins/energy-inference. Two files:
- all-input-stats.csv: prompts A..I of about 8..2048 tokens, 32 output tokens (max_new_tokens=32);
- all-output-stats.csv: one prompt (about 32-38 tokens), output limits 8..4096 (min_new_tokens = 0.9 x limit).
What a row is (read from the authors' scripts cuda/cuda.py, cuda/cuda-output-tokens-test.py, mps/mps.py):
one repeat ("Iteration") of one Hugging Face text-generation pipeline call on one prompt (batch 1: the
pipeline's batch_size=32 has nothing to batch), with use_cache=False, so every decode step recomputes the
whole sequence. Repeats stop once the 95% half-width of the mean runtime is under 0.5 s; the authors leave
iteration 0 out of that statistic, and we mark it as warm-up. Rows whose Phase is not an inference call
(tokenizer, model load) are start-up costs and are skipped.
Columns:
- Runtime (s): wall time of the call. On M1-Pro (mps scripts) the timed window also holds a sleep(2) before
  the call, so 2 s are subtracted (the output sweep's runtime extrapolates to about 2.2 s at zero tokens).
- GPU Energy (J): CUDA systems: NVML energy counter of the GPU (pyJoules NvidiaGPUDomain). M1-Pro: the sum of
  powermetrics 'GPU Power' samples x sample interval (200 ms): the whole integrated GPU of the SoC, all
  processes, not CPU cores or DRAM; the 2 s sleep adds about 0.06 J at the M1's idle GPU power.
- CPU Energy (J): Palmetto (Intel): RAPL energy of both packages minus 37.5 W x runtime per package (the authors'
  idle figure), so it can be negative (negative values become NaN here); Swing (AMD): the average power of the two
  cores used over the whole job (AMD uProf) x runtime; M1-Pro: CPU power x the Python process's share of energy
  impact. Host idle is therefore 0 W by construction in all three.
- Number of Input Tokens: the nominal size label in the input sweep (8..2048), the real prompt token count in
  the output sweep. Total Number of Tokens: the token count of prompt + generated text re-encoded. Hence
  input sweep: n_out = 32 (the limit) and n_in = total - 32; output sweep: n_in as given, n_out = total - n_in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dcsim.errors import UserError
from dcsim.profiles.importers.base import IMPORTERS, Importer
from dcsim.profiles.measurements import normalise

CITATION = ("Wilkins, Keshav, Mortier 2024, 'Hybrid Heterogeneous Clusters Can Lower the Energy Consumption of "
            "LLM Inference Workloads', ACM e-Energy 2024 (data: github.com/grantwilkins/energy-inference)")
LICENCE = "no licence stated by the source; used as published measurements with citation"
FILES = ("all-input-stats.csv", "all-output-stats.csv")

# System -> (device catalogue key, precision of the authors' script, runtime offset in seconds, host meter)
SYSTEMS = {
    "M1-Pro": ("m1-pro", "fp16", 2.0, "CPU power x the process's share (powermetrics)"),
    "Palmetto Intel+V100": ("v100-16gb", "bf16", 0.0, "RAPL of 2 packages minus 2 x 37.5 W"),
    "Palmetto Intel+A100": ("a100-pcie-40gb", "bf16", 0.0, "RAPL of 2 packages minus 2 x 37.5 W"),
    "Swing AMD+A100": ("a100-sxm4-40gb", "bf16", 0.0, "AMD uProf: the two busy cores' mean power over the whole job "
                                                     "x runtime, one constant per job (e.g. 3.04 W in the input "
                                                     "sweep, 7.64 W in the output sweep for Mistral), so it carries "
                                                     "no per-run information"),
}
MODELS = {"Llama-2 (7B)": "llama-2-7b", "Mistral (7B)": "mistral-7b", "Falcon (7B)": "falcon-7b"}
DEVICE_NOTES = {
    "a100-pcie-40gb": "Palmetto's A100 form factor is not stated by the source; PCIe 40 GB is inferred from the "
                      "measured draw levelling off at 247-250 W (the PCIe card's 250 W limit) on long outputs.",
    "a100-sxm4-40gb": "Swing's A100 40 GB: SXM4 is inferred from measured averages up to 395 W, above the PCIe "
                      "card's 250 W limit.",
    "v100-16gb": "Palmetto's V100 16 GB: form factor not stated; the script loads bfloat16, which the V100 has no "
                 "tensor-core support for, a likely reason for its slow runs.",
    "m1-pro": "M1-Pro device energy is the GPU of the SoC only (powermetrics 'GPU Power'); CPU and DRAM are not in it.",
}


def read(data_dir: str | Path) -> pd.DataFrame:
    """Both CSVs with a 'file' column; inference rows only."""
    d = Path(data_dir)
    frames = []
    for name in FILES:
        p = d / name
        if not p.is_file():
            raise UserError("file not found (expected the Wilkins 2024 sweep CSVs in this folder)", p)
        try:
            df = pd.read_csv(p)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise UserError(f"not a readable CSV: {e}", p) from None
        need = {"Phase", "Runtime (s)", "CPU Energy (J)", "GPU Energy (J)", "Number of Input Tokens", "Iteration",
                "Model", "System", "Total Number of Tokens"}
        missing = need - set(df.columns)
        if missing:
            raise UserError(f"missing columns {sorted(missing)}", p)
        df["file"] = name
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    return df[df["Phase"].astype(str).str.contains("inference")].reset_index(drop=True)


def load(data_dir: str | Path, system: str, model: str) -> tuple[pd.DataFrame, dict]:
    """The measurement table and fit metadata for one system and model."""
    raw = read(data_dir)
    if system not in SYSTEMS:
        raise UserError(f"unknown system {system!r}; choose one of {sorted(SYSTEMS)}", field="system")
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; choose one of {sorted(MODELS)}", field="model")
    sub = raw[(raw["System"] == system) & (raw["Model"] == model)]
    if sub.empty:
        have = sorted(set(zip(raw["System"], raw["Model"])))
        raise UserError(f"no rows for {system!r} / {model!r}; the data has {have}", data_dir)
    dev, precision, offset, host = SYSTEMS[system]
    table = to_table(sub, offset)
    n_neg = int(((sub["CPU Energy (J)"] < 0)).sum())
    notes = [
        "Hugging Face transformers pipeline, one prompt per call (batch 1), use_cache=False: each decode step "
        "recomputes the whole sequence, so step time grows with context faster than linearly, which the profile's "
        "linear decode curve can only approximate.",
        f"Host energy: {host}.",
        DEVICE_NOTES[dev],
    ]
    if offset:
        notes.append(f"{offset:g} s subtracted from every runtime: the authors' M1 script sleeps 2 s inside the timed "
                     "window before each call.")
    if n_neg:
        notes.append(f"{n_neg} rows with negative CPU energy (RAPL minus the authors' idle figure) left out of the "
                     "host fit.")
    meta = {
        "device": dev,
        "model": MODELS[model],
        "engine": {"name": "hf", "precision": precision,
                   "version": "transformers text-generation pipeline, use_cache=False (version not stated)"},
        "gpus_per_replica": 1,
        "citation": CITATION,
        "path": "wilkins2024-energy-inference/" + " + ".join(FILES),
        "command": f"dcsim fit --from wilkins2024 DATA/wilkins2024-energy-inference --system '{system}' "
                   f"--model '{model}'",
        "licence": LICENCE,
        "source_kind": "published",
        "notes": notes,
        "host_idle_w": 0.0,
        "host_note": "the source's CPU energy excludes idle by construction (see notes), so host idle is 0 W",
        "activation_reserve_frac": 0.05,
        "tie_prefill_to_decode": True,
    }
    return table, meta


def to_table(sub: pd.DataFrame, runtime_offset_s: float = 0.0) -> pd.DataFrame:
    """Rows of one system/model -> normalised measurement rows (kind 'run', batch 1)."""
    is_in = sub["file"] == FILES[0]
    total = sub["Total Number of Tokens"].to_numpy(float)
    limit_in = sub.get("Output Token Limit", pd.Series(32, index=sub.index)).fillna(32).to_numpy(float)
    n_in = np.where(is_in, total - limit_in, sub["Number of Input Tokens"].to_numpy(float))
    n_out = np.where(is_in, limit_in, total - sub["Number of Input Tokens"].to_numpy(float))
    nominal_out = sub.get("Number of Output Tokens", pd.Series(np.nan, index=sub.index)).to_numpy(float)
    label = np.where(is_in, "in=" + sub["Number of Input Tokens"].astype(str),
                     "out=" + pd.Series(nominal_out, index=sub.index).fillna(0).astype(int).astype(str))
    cpu = sub["CPU Energy (J)"].to_numpy(float)
    df = pd.DataFrame({
        "kind": "run",
        "n_in": np.maximum(np.round(n_in), 1).astype(int),
        "n_out": np.maximum(np.round(n_out), 1).astype(int),
        "batch": 1,
        "runtime_s": sub["Runtime (s)"].to_numpy(float) - runtime_offset_s,
        "energy_device_j": sub["GPU Energy (J)"].to_numpy(float),
        "energy_host_j": np.where(cpu >= 0, cpu, np.nan),
        "repeat": sub["Iteration"].astype(int).to_numpy(),
        "warmup": sub["Iteration"].astype(int).to_numpy() == 0,
        "source": sub["file"].to_numpy() + ":" + label,
    })
    bad = df["runtime_s"] <= 0
    if bad.any():
        raise UserError(f"{int(bad.sum())} rows have no time left after the {runtime_offset_s:g} s offset",
                        field="Runtime (s)")
    return normalise(df)


@IMPORTERS.register("wilkins2024")
class Wilkins2024(Importer):
    """`dcsim fit --from wilkins2024 DATA_DIR --system S --model M`."""

    help = "Wilkins, Keshav, Mortier 2024 token sweeps (one system and model)"
    needs = ("system", "model")

    def load(self, paths: list[Path], opts: dict) -> tuple[pd.DataFrame, dict]:
        return load(paths[0], opts["system"], opts["model"])
