"""Importers for published request traces: Azure LLM inference (2023 and 2024 releases) and BurstGPT.

Each row becomes one request with its recorded token counts and its arrival time in seconds after the first
kept request. Rows with 0 output tokens (failed requests: BurstGPT logs them with 0 response tokens) or 0 input
tokens cannot be served as requests; they are dropped and their number recorded in the provenance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcsim.errors import UserError
from dcsim.traces.datasets import file_sha256
from dcsim.traces.trace import Trace

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Log Type")

# Attribution that AzurePublicDataset asks for, by release year (AzureLLMInferenceDataset2023.md / ...2024.md).
AZURE_ATTRIBUTION = {
    2023: "Pratyush Patel, Esha Choukse, Chaojie Zhang, Aashaka Shah, Íñigo Goiri, Saeed Maleki, Ricardo "
    "Bianchini. 'Splitwise: Efficient generative LLM inference using phase splitting', ISCA 2024. "
    "Data: Azure LLM inference trace 2023, github.com/Azure/AzurePublicDataset",
    2024: "Jovan Stojkovic, Chaojie Zhang, Íñigo Goiri, Josep Torrellas, Esha Choukse. 'DynamoLLM: Designing LLM "
    "Inference Clusters for Performance and Energy Efficiency', arXiv:2408.00741 (HPCA 2025). "
    "Data: Azure LLM inference trace 2024, github.com/Azure/AzurePublicDataset",
}
BURSTGPT_CITATION = (
    "Yuxin Wang et al., 'BurstGPT: A Real-world Workload Dataset to Optimize LLM Serving Systems', "
    "arXiv:2401.17644, 2024. Data: github.com/HPMLL/BurstGPT"
)


def _read_csv(path: str | Path, required: tuple[str, ...]):
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError("file not found", p)
    try:
        df = pd.read_csv(p, skipinitialspace=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"cannot read CSV: {e}", p) from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in required:
        if col not in df.columns:
            raise UserError(f"missing column (have {list(df.columns)})", p, col)
    if len(df) == 0:
        raise UserError("no rows", p)
    return df


def _line(i: int) -> int:
    """File line of data row i (line 1 is the header)."""
    return int(i) + 2


def _token_counts(df, col: str, path) -> np.ndarray:
    """A token-count column as int64; empty, non-numeric, fractional or negative cells are UserErrors."""
    import pandas as pd

    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce")
    bad = num.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        val = raw.iloc[i]
        what = "empty cell" if pd.isna(val) else f"not a number: {val!r}"
        raise UserError(f"line {_line(i)}: {what}", path, col)
    vals = num.to_numpy(np.float64)
    frac = vals != np.round(vals)
    if frac.any():
        i = int(np.argmax(frac))
        raise UserError(f"line {_line(i)}: token counts must be whole numbers, got {raw.iloc[i]!r}", path, col)
    if (vals < 0).any():
        i = int(np.argmax(vals < 0))
        raise UserError(f"line {_line(i)}: token counts must be >= 0, got {raw.iloc[i]!r}", path, col)
    return vals.astype(np.int64)


def _assemble(t_s: np.ndarray, n_in: np.ndarray, n_out: np.ndarray, prov: dict) -> Trace:
    """Drop unservable rows, sort by time (stable), make arrivals relative to the first kept request."""
    drop_out = n_out == 0
    drop_in = (n_in == 0) & ~drop_out
    keep = ~(drop_out | drop_in)
    prov["rows_read"] = int(n_in.size)
    prov["rows_dropped_zero_output"] = int(drop_out.sum())
    prov["rows_dropped_zero_input"] = int(drop_in.sum())
    prov["rows_kept"] = int(keep.sum())
    if not keep.any():
        raise UserError("no request left after dropping rows with 0 tokens", prov.get("input"))
    t_s, n_in, n_out = t_s[keep], n_in[keep], n_out[keep]
    sorted_in = bool(np.all(np.diff(t_s) >= 0))
    prov["input_sorted_by_time"] = sorted_in
    if not sorted_in:
        order = np.argsort(t_s, kind="stable")
        t_s, n_in, n_out = t_s[order], n_in[order], n_out[order]
    arrival = t_s - t_s[0]
    return Trace(n_in, n_out, arrival, None, prov).validate()


def import_azure(path: str | Path) -> Trace:
    """Azure LLM inference trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens), 2023 or 2024 release.

    2023 timestamps look like '2023-11-16 18:15:46.6805900' (7 fractional digits, 100 ns); any ISO-8601 form,
    with or without a UTC offset, is read. Naive times are taken as UTC."""
    import pandas as pd

    p = Path(path)
    df = _read_csv(p, AZURE_COLUMNS)
    text = df["TIMESTAMP"].astype("string").str.strip()
    ts = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = ts.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"line {_line(i)}: cannot read timestamp {df['TIMESTAMP'].iloc[i]!r}", p, "TIMESTAMP")
    ns = ts.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
    n_in = _token_counts(df, "ContextTokens", p)
    n_out = _token_counts(df, "GeneratedTokens", p)
    first = ts.min()
    year = int(first.year)
    prov = {
        "kind": "trace",
        "format": "azure-llm-inference",
        "source": f"Azure LLM inference trace {year} (AzurePublicDataset), file {p.name}",
        "input": p.name,
        "input_sha256": file_sha256(p),
        "licence": "CC-BY-4.0",
        "citation": AZURE_ATTRIBUTION.get(year, "Azure LLM inference traces, github.com/Azure/AzurePublicDataset"),
        "trace_start_utc": first.isoformat(),
        "n_in": "ContextTokens",
        "n_out": "GeneratedTokens",
    }
    t_s = (ns - ns.min()).astype(np.float64) / 1e9
    return _assemble(t_s, n_in, n_out, prov)


def _match(df, col: str, want: str | None, path, aliases: dict[str, str] | None = None):
    """Boolean mask of rows whose `col` equals `want` (case-insensitive); no match is a UserError listing values."""
    if want is None:
        return np.ones(len(df), bool)
    key = want.strip().lower()
    key = (aliases or {}).get(key, key)
    vals = df[col].astype("string").str.strip().str.lower()
    mask = (vals == key).fillna(False).to_numpy(bool)
    if not mask.any():
        have = sorted(str(v) for v in df[col].dropna().unique())[:20]
        raise UserError(f"no row has {col} = '{want}' (values: {have})", path, col)
    return mask


def import_burstgpt(path: str | Path, model: str | None = None, log_type: str | None = None) -> Trace:
    """BurstGPT CSV (Timestamp in seconds from 0:00 of the first day, Model, Request tokens, Response tokens,
    Total tokens, Log Type; newer releases add Session ID and Elapsed time), optionally filtered by model and
    log type (case-insensitive; 'conversation' / 'api' stand for 'Conversation log' / 'API log')."""
    import pandas as pd

    p = Path(path)
    df = _read_csv(p, BURSTGPT_COLUMNS)
    t_raw = pd.to_numeric(df["Timestamp"], errors="coerce")
    bad = t_raw.isna().to_numpy() | ~np.isfinite(t_raw.to_numpy(np.float64, na_value=np.nan))
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"line {_line(i)}: not a number of seconds: {df['Timestamp'].iloc[i]!r}", p, "Timestamp")
    n_in = _token_counts(df, "Request tokens", p)
    n_out = _token_counts(df, "Response tokens", p)
    sel = _match(df, "Model", model, p) & _match(
        df, "Log Type", log_type, p, {"conversation": "conversation log", "api": "api log"}
    )
    prov = {
        "kind": "trace",
        "format": "burstgpt",
        "source": f"BurstGPT (HPMLL/BurstGPT), file {p.name}",
        "input": p.name,
        "input_sha256": file_sha256(p),
        "licence": "as published with the BurstGPT release (github.com/HPMLL/BurstGPT)",
        "citation": BURSTGPT_CITATION,
        "filter_model": model,
        "filter_log_type": log_type,
        "rows_in_file": int(len(df)),
        "rows_filtered_out": int((~sel).sum()),
        "n_in": "Request tokens",
        "n_out": "Response tokens",
    }
    if "Session ID" in df.columns:
        prov["has_session_id"] = True
    t_s = t_raw.to_numpy(np.float64)[sel]
    return _assemble(t_s, n_in[sel], n_out[sel], prov)
