"""Model-load (cold start) time and energy: the published figures and the profile and scenario fields that carry
them.

The Wilkins et al. 2024 sweeps ("Hybrid Heterogeneous Clusters Can Lower the Energy Consumption of LLM Inference
Workloads", ACM e-Energy 2024; data: github.com/grantwilkins/energy-inference) time and meter each job's start-up:
rows whose Phase is `model load` hold the wall time of loading the model onto the GPU (Hugging Face
`from_pretrained`, read from the system's storage) and its GPU energy (NVML counter). `PUBLISHED_LOADS` holds their
medians per system and model over both sweep files (2 or 3 loads each); `published_loads` recomputes them from the
data. The load time includes reading the weights from storage: the two A100 systems differ by up to 3x.
"""

from __future__ import annotations

from pathlib import Path

CITATION = ("Wilkins, Keshav, Mortier, 'Hybrid Heterogeneous Clusters Can Lower the Energy Consumption of LLM "
            "Inference Workloads', ACM e-Energy 2024 (data: github.com/grantwilkins/energy-inference), "
            "'model load' phases")

# (system, model) -> (median load seconds, median GPU joules), from all-input-stats.csv and all-output-stats.csv
PUBLISHED_LOADS: dict[tuple[str, str], tuple[float, float]] = {
    ("Palmetto Intel+A100", "Falcon (7B)"): (26.36, 851.09),
    ("Palmetto Intel+A100", "Llama-2 (7B)"): (17.13, 570.33),
    ("Palmetto Intel+A100", "Mistral (7B)"): (31.32, 1063.93),
    ("Palmetto Intel+V100", "Falcon (7B)"): (32.52, 1137.62),
    ("Palmetto Intel+V100", "Llama-2 (7B)"): (17.31, 610.90),
    ("Palmetto Intel+V100", "Mistral (7B)"): (27.42, 979.41),
    ("Swing AMD+A100", "Falcon (7B)"): (57.86, 3271.80),
    ("Swing AMD+A100", "Llama-2 (7B)"): (53.95, 3143.24),
    ("Swing AMD+A100", "Mistral (7B)"): (22.23, 1268.06),
}


def published_name(system: str, model: str) -> str:
    """How a scenario names a published load: 'SYSTEM / MODEL'."""
    return f"{system} / {model}"


def published_load(name: str) -> tuple[float, float] | None:
    """The published (load_s, load_j) a scenario names as 'SYSTEM / MODEL', or None."""
    for (system, model), v in PUBLISHED_LOADS.items():
        if published_name(system, model) == name:
            return v
    return None


def published_loads(data_dir: str | Path) -> dict[tuple[str, str], tuple[float, float]]:
    """The medians of PUBLISHED_LOADS recomputed from the Wilkins et al. sweep files in `data_dir`."""
    import pandas as pd

    d = Path(data_dir)
    rows = pd.concat([pd.read_csv(d / f) for f in ("all-input-stats.csv", "all-output-stats.csv")])
    m = rows[rows["Phase"] == "model load"]
    g = m.groupby(["System", "Model"])[["Runtime (s)", "GPU Energy (J)"]].median()
    return {k: (float(v["Runtime (s)"]), float(v["GPU Energy (J)"])) for k, v in g.iterrows()}
