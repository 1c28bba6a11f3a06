"""A sweep's tables: every point's flattened summary (results), the mean and 95% t-interval over seeds of each
configuration (summary), and the metric columns a sweep's `metrics` patterns choose."""

from __future__ import annotations

import fnmatch
import json
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from dcsim.errors import UserError
from dcsim.sweep.spec import Sweep

DEFAULT_METRICS = ("energy_j", "tokens_per_joule", "throughput_tokens_per_s", "mean_power_w", "e2e_s.p99",
                   "ttft_s.p50")
ID_COLUMNS = ("point", "config", "seed")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested summary -> {dotted.key: number}; lists and text are left out (they are not metrics)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif v is None:
            out[key] = float("nan")
        elif isinstance(v, (bool, int, float)):
            out[key] = v
    return out



def check_metrics(sweep: Sweep, columns: Iterable[str]) -> list[str]:
    """The metric columns the sweep's `metrics` patterns name; a pattern matching nothing is an error."""
    columns = list(columns)
    if not sweep.metrics:
        return [m for m in DEFAULT_METRICS if m in columns]
    chosen: list[str] = []
    for i, pat in enumerate(sweep.metrics):
        hits = [c for c in columns if fnmatch.fnmatchcase(c, pat)]
        if not hits and not pat.startswith("rejections."):
            near = [c for c in columns if pat.split(".")[-1] in c][:5]
            hint = f" (similar: {', '.join(near)})" if near else ""
            raise UserError(f"no metric matches '{pat}'{hint}", sweep.file, f"metrics.{i}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def probe_metrics(sweep: Sweep) -> list[str]:
    """Metric names of the base scenario, from a one-request run (to check `metrics` before the sweep)."""
    from dcsim.results import summarize
    from dcsim.scenario import load_scenario
    from dcsim.sim.engine import simulate

    sc = load_scenario(sweep.base, list(sweep.points[0].overrides) + ["trace.limit=1", "warmup_s=0"])
    return list(flatten(summarize(simulate(sc, sweep.base))))



def _axis_column(values: list[Any]) -> list[Any]:
    """Numbers stay numbers; anything else (text, lists, mappings, mixed) becomes text so parquet can hold it."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values
    if all(isinstance(v, bool) for v in values) or all(isinstance(v, str) for v in values):
        return values
    return [v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in values]


def results_table(sweep: Sweep, records: list[dict]) -> pd.DataFrame:
    """One row per point: ids, seed, the swept values, every flattened summary metric."""
    cols: dict[str, list[Any]] = {"point": [r["id"] for r in records], "config": [r["config"] for r in records],
                                  "seed": [r["seed"] for r in records]}
    for k in sweep.axis_keys:
        cols[k] = _axis_column([r["values"][k] for r in records])
    flat = [flatten(r["summary"]) for r in records]
    names: list[str] = []
    for f in flat:
        names += [k for k in f if k not in names and k != "seed"]
    clash = [k for k in names if k in cols]
    if clash:
        raise UserError(f"axis names clash with summary metrics: {clash}", sweep.file, "grid")
    df = pd.DataFrame(cols)
    metrics = pd.DataFrame([{k: f.get(k, np.nan) for k in names} for f in flat], columns=names, dtype="float64")
    rej = [c for c in names if c.startswith("rejections.")]
    metrics[rej] = metrics[rej].fillna(0.0)  # a reason absent from a summary means none rejected for it
    return pd.concat([df, metrics], axis=1)


def t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and Student-t confidence interval of the non-NaN values: (mean, lo, hi, n)."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    m = float(x.mean())
    if n == 1:
        return m, float("nan"), float("nan"), 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half, n


def summary_table(sweep: Sweep, results: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per configuration (points equal but for the seed): mean, ci95_lo, ci95_hi per metric."""
    from scipy import stats

    g = results.groupby("config", sort=False)
    first = g.head(1).set_index("config")
    out = first[sweep.axis_keys].copy()
    out.insert(0, "n_seeds", g.size())
    vals = results[metrics]
    mean = vals.groupby(results["config"], sort=False).mean()
    std = vals.groupby(results["config"], sort=False).std(ddof=1)
    n = vals.groupby(results["config"], sort=False).count()
    with np.errstate(invalid="ignore", divide="ignore"):
        tq = stats.t.ppf(0.975, np.where(n.to_numpy() > 1, n.to_numpy() - 1, np.nan))
        half = tq * std.to_numpy() / np.sqrt(n.to_numpy())
    blocks = {}
    for j, m in enumerate(metrics):
        blocks[f"{m}.mean"] = mean[m].to_numpy()
        blocks[f"{m}.ci95_lo"] = mean[m].to_numpy() - half[:, j]
        blocks[f"{m}.ci95_hi"] = mean[m].to_numpy() + half[:, j]
    out = pd.concat([out, pd.DataFrame(blocks, index=mean.index)], axis=1)
    return out.reset_index()
