"""One table shape for measurements, whatever their source, so fitting is written once.

Every importer (published sweeps, leaderboard files, our own calibration runs) returns a pandas DataFrame
with these columns; `check_measurements` validates it. One row is one measured run of `batch` requests,
each with `n_in` prompt tokens and `n_out` output tokens, or one idle window (kind = idle_serving/idle_deep).

Columns
- kind: "run" | "decode" | "idle_serving" | "idle_deep"
    run: a whole request (prefill + n_out decode steps) timed end to end;
    decode: steady-state decode only (runtime_s per output token step given in tpot_s, power in avg_power_w);
- n_in, n_out, batch: ints (for idle rows: 0, 0, 0)
- runtime_s: wall time of the run or idle window
- ttft_s: time to first token where measured (NaN otherwise)
- tpot_s: mean time per output token after the first (NaN otherwise)
- energy_device_j: accelerator energy summed over the replica's devices (NaN where not measured)
- energy_host_j: CPU package + DRAM energy where measured (NaN otherwise)
- avg_power_w: device power averaged over the run, where the source gives it instead of energy
- repeat: repeat index of this shape (0 for published means)
- warmup: True for warm-up runs that fitting must skip
- first_time: True for a run that met a shape for the first time in its session (left out of the spread)
- source: short id of where the row came from (file name or run name)
- cache_len: for a static-KV-cache engine, the tokens of cache each sequence held (allocated up front and read
    whole at every decode step); NaN for a dynamic cache, whose steps read the live context only
- step rows (kind "step", a paged engine's mixed-step sweep): the same step run n_out times; batch = its decodes,
    graph_batch = their padded batch, context = the KV tokens they read, n_in = its prefill chunk's tokens after
    prefill_prefix cached ones; runtime_s and energy_device_j cover all n_out steps (NaN columns elsewhere);
    prefill_chunks k (NaN: 1): k chunks of n_in, n_in + 1, ..., n_in + k - 1 tokens, each after prefill_prefix
    cached tokens of its own sequence
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dcsim.errors import UserError

COLUMNS = {
    "kind": object, "n_in": "int64", "n_out": "int64", "batch": "int64", "runtime_s": "float64",
    "ttft_s": "float64", "tpot_s": "float64", "energy_device_j": "float64", "energy_host_j": "float64",
    "avg_power_w": "float64", "repeat": "int64", "warmup": bool, "source": object, "cache_len": "float64",
    "context": "float64", "prefill_prefix": "float64", "graph_batch": "float64", "prefill_chunks": "float64",
    "first_time": bool,
}
KINDS = ("run", "decode", "step", "idle_serving", "idle_deep")


def empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def normalise(df: pd.DataFrame, file: str | None = None) -> pd.DataFrame:
    """Fill optional columns with their defaults, order and type them, and check the values."""
    out = df.copy()
    defaults = {"ttft_s": np.nan, "tpot_s": np.nan, "energy_device_j": np.nan, "energy_host_j": np.nan,
                "avg_power_w": np.nan, "repeat": 0, "warmup": False, "source": "", "batch": 1,
                "cache_len": np.nan, "context": np.nan, "prefill_prefix": np.nan, "graph_batch": np.nan,
                "prefill_chunks": np.nan, "first_time": False}
    for c, v in defaults.items():
        if c not in out.columns:
            out[c] = v
        elif not (isinstance(v, float) and np.isnan(v)):
            out[c] = out[c].where(out[c].notna(), v)  # rows from tables that lacked the column
    missing = [c for c in COLUMNS if c not in out.columns]
    if missing:
        raise UserError(f"measurement table lacks columns {missing}", file)
    out = out[list(COLUMNS)]
    for c, t in COLUMNS.items():
        try:
            out[c] = out[c].astype(t)
        except (ValueError, TypeError) as e:
            raise UserError(f"column {c!r} cannot be read as {t}: {e}", file, c) from None
    bad = ~out["kind"].isin(KINDS)
    if bad.any():
        raise UserError(f"unknown kind {out.loc[bad, 'kind'].iloc[0]!r}; expected one of {KINDS}", file, "kind")
    out = out.reset_index(drop=True)
    _physical(out, file)
    return out


def _physical(t: pd.DataFrame, file: str | None) -> None:
    """Refuse a measurement no device can produce (a time or energy at or below zero, or not finite): fitted
    through, one such row can take a curve far from every other point. Names the first bad row and column."""
    def refuse(bad: np.ndarray, col: str) -> None:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            src = t["source"].iloc[i]
            raise UserError(f"row {i}{f' ({src})' if src else ''} measured {float(t[col].iloc[i]):g}; a measured "
                            "time or energy must be a finite number above zero", file, col)

    rt = t["runtime_s"].to_numpy(float)
    refuse(~np.isfinite(rt) | (rt <= 0), "runtime_s")
    for col in ("ttft_s", "tpot_s", "energy_device_j", "energy_host_j", "avg_power_w"):
        v = t[col].to_numpy(float)
        refuse(~np.isnan(v) & (~np.isfinite(v) | (v <= 0)), col)


def idle_power_w(table: pd.DataFrame, kind: str) -> float | None:
    """The idle power a profile takes from a table's `kind` windows (idle_serving or idle_deep): the median of
    their average powers (energy / time where no average was recorded), or None without such a window."""
    rows = table[table["kind"] == kind]
    p = rows["avg_power_w"].to_numpy(float)
    p = np.where(np.isfinite(p), p, rows["energy_device_j"].to_numpy(float) / rows["runtime_s"].to_numpy(float))
    p = p[np.isfinite(p)]
    return float(np.median(p)) if p.size else None
