"""Trace: a table of requests (n_in, n_out, optional arrival time, optional source id) with provenance.

Stored as Parquet with the provenance in the file's key-value metadata (key b"dcsim.provenance", JSON);
CSV is accepted on input (columns n_in, n_out and optionally arrival_s, source).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcsim.errors import UserError

PROVENANCE_KEY = b"dcsim.provenance"


@dataclass
class Trace:
    n_in: np.ndarray  # int64, >= 1
    n_out: np.ndarray  # int64, >= 1
    arrival_s: np.ndarray | None = None  # float64 seconds from the trace's start, non-decreasing
    source: np.ndarray | None = None  # object (str) ids
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.n_in.shape[0])

    def head(self, n: int) -> "Trace":
        return Trace(
            self.n_in[:n], self.n_out[:n],
            None if self.arrival_s is None else self.arrival_s[:n],
            None if self.source is None else self.source[:n],
            dict(self.provenance),
        )

    def validate(self, file: str | Path | None = None) -> "Trace":
        """Check token counts are positive integers and arrivals are finite and sorted."""
        for name in ("n_in", "n_out"):
            col = np.asarray(getattr(self, name))
            if col.dtype.kind == "f":
                if not np.all(np.isfinite(col)):
                    raise UserError("token counts must be finite", file, name)
                if np.any(col != np.round(col)):
                    i = int(np.argmax(col != np.round(col)))
                    raise UserError(f"token counts must be integers (row {i}: {col[i]})", file, name)
            elif col.dtype.kind not in "iu":
                raise UserError(f"token counts must be integers, got {col.dtype}", file, name)
            if col.size and col.min() < 1:
                i = int(np.argmin(col))
                raise UserError(f"token counts must be >= 1 (row {i}: {col[i]})", file, name)
            setattr(self, name, col.astype(np.int64))
        if self.arrival_s is not None:
            a = np.asarray(self.arrival_s, dtype=np.float64)
            if not np.all(np.isfinite(a)):
                raise UserError("arrival times must be finite", file, "arrival_s")
            if a.size and (a.min() < 0 or np.any(np.diff(a) < 0)):
                raise UserError("arrival times must be >= 0 and non-decreasing", file, "arrival_s")
            self.arrival_s = a
        return self

    # ---- I/O ----------------------------------------------------------------------------------
    def to_parquet(self, path: str | Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {"n_in": pa.array(self.n_in, pa.int64()), "n_out": pa.array(self.n_out, pa.int64())}
        if self.arrival_s is not None:
            cols["arrival_s"] = pa.array(self.arrival_s, pa.float64())
        if self.source is not None:
            cols["source"] = pa.array([str(s) for s in self.source], pa.string())
        table = pa.table(cols)
        meta = dict(table.schema.metadata or {})
        meta[PROVENANCE_KEY] = json.dumps(self.provenance, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)


def load_trace(path: str | Path) -> Trace:
    """Read a trace from Parquet or CSV and validate it; errors name the file and column."""
    p = Path(path)
    if not p.is_file():
        raise UserError("trace file not found", p)
    if p.suffix.lower() == ".csv":
        import pandas as pd

        try:
            df = pd.read_csv(p)
        except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
            raise UserError(f"cannot read CSV: {e}", p) from None
        prov = {"source_file": p.name}
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"cannot read Parquet: {e}", p) from None
        meta = table.schema.metadata or {}
        prov = json.loads(meta.get(PROVENANCE_KEY, b"{}"))
        df = table.to_pandas()
    for col in ("n_in", "n_out"):
        if col not in df.columns:
            raise UserError(f"missing column (have {list(df.columns)})", p, col)
    arr = df["arrival_s"].to_numpy(np.float64) if "arrival_s" in df.columns else None
    src = df["source"].astype(str).to_numpy(object) if "source" in df.columns else None
    return Trace(df["n_in"].to_numpy(), df["n_out"].to_numpy(), arr, src, prov).validate(p)
