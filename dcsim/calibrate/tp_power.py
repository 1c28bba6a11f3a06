"""Per-device power of a tensor-parallel run folder, for the profile's notes: each GPU of the replica draws its own
share, and the share need not be even (rank 0 also runs the sweep)."""

from __future__ import annotations

import json
import math

import pandas as pd


def per_device_power_w(raw: pd.DataFrame) -> dict[str, float]:
    """Mean power per device label over the measured runs (phase run, status ok): the joules of each label in
    energy_by_device summed, over the runs' summed time; empty where no run recorded per-device joules."""
    runs = raw[(raw["phase"] == "run") & (raw["status"] == "ok")]
    joules: dict[str, float] = {}
    seconds = 0.0
    for cell, rt in zip(runs["energy_by_device"], runs["runtime_s"]):
        try:
            by = json.loads(cell) if isinstance(cell, str) and cell else {}
            rt = float(rt)
        except (ValueError, TypeError):
            continue
        if not by or not math.isfinite(rt):
            continue
        seconds += rt
        for k, v in by.items():
            joules[k] = joules.get(k, 0.0) + float(v)
    return {k: round(v / seconds, 2) for k, v in sorted(joules.items())} if seconds > 0 else {}


def note(raw: pd.DataFrame, gpus: int, cuda: bool) -> str | None:
    """The profile note on a replica of `gpus` devices: its per-device mean power during the runs (on CUDA the
    GPUs' labels, gpuN, not the host's)."""
    p = {k: v for k, v in per_device_power_w(raw).items() if not cuda or k.startswith("gpu")}
    if gpus <= 1 or not p:
        return None
    return (f"Tensor parallel across {gpus} devices (one process each); mean power per device over the measured "
            "runs: " + ", ".join(f"{k} {v:g} W" for k, v in p.items()) + ". Device energy is their sum.")
