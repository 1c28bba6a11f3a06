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
    # prefix caching: requests with one prefix_id (int64 codes, -1 for none) share their first prefix_len tokens,
    # and a request's whole sequence may be the prefix of later ones with its id (conversation turns)
    prefix_id: np.ndarray | None = None
    prefix_len: np.ndarray | None = None
    # request classes: seconds after arrival by which a batch request is due (NaN: an interactive request)
    deadline_s: np.ndarray | None = None
    # routing domains: the name of each request's domain (object str), for a scenario's domains_from_trace
    domain: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.n_in.shape[0])

    def take(self, idx: np.ndarray | slice) -> "Trace":
        """The requests at `idx` (an index array or a slice), every column kept."""
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return Trace(self.n_in[idx], self.n_out[idx], cut(self.arrival_s), cut(self.source), dict(self.provenance),
                     cut(self.prefix_id), cut(self.prefix_len), cut(self.deadline_s), cut(self.domain))

    def head(self, n: int) -> "Trace":
        return self.take(slice(0, n))

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
        self._validate_prefix(file)
        return self

    def _validate_prefix(self, file: str | Path | None) -> None:
        if self.prefix_len is None and self.prefix_id is None:
            return
        if self.prefix_len is None or self.prefix_id is None:
            raise UserError("prefix_id and prefix_len come together", file,
                            "prefix_len" if self.prefix_len is None else "prefix_id")
        pl = np.asarray(self.prefix_len)
        if pl.dtype.kind == "f" and (not np.all(np.isfinite(pl)) or np.any(pl != np.round(pl))):
            raise UserError("prefix lengths must be whole numbers of tokens", file, "prefix_len")
        if pl.dtype.kind not in "iuf":
            raise UserError(f"prefix lengths must be integers, got {pl.dtype}", file, "prefix_len")
        pl = pl.astype(np.int64)
        bad = np.flatnonzero((pl < 0) | (pl > self.n_in))
        if bad.size:
            i = int(bad[0])
            raise UserError(f"a prefix must lie within its prompt: row {i} has prefix_len {pl[i]} and n_in "
                            f"{self.n_in[i]}", file, "prefix_len")
        pid = np.asarray(self.prefix_id).astype(np.int64)
        if np.any((pid < 0) & (pl > 0)):
            i = int(np.argmax((pid < 0) & (pl > 0)))
            raise UserError(f"row {i} has a prefix length but no prefix_id", file, "prefix_id")
        self.prefix_id, self.prefix_len = pid, pl

    # ---- I/O ----------------------------------------------------------------------------------
    def to_parquet(self, path: str | Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {"n_in": pa.array(self.n_in, pa.int64()), "n_out": pa.array(self.n_out, pa.int64())}
        if self.arrival_s is not None:
            cols["arrival_s"] = pa.array(self.arrival_s, pa.float64())
        if self.source is not None:
            cols["source"] = pa.array([str(s) for s in self.source], pa.string())
        if self.prefix_id is not None:
            cols["prefix_id"] = pa.array(self.prefix_id, pa.int64())
            cols["prefix_len"] = pa.array(self.prefix_len, pa.int64())
        if self.deadline_s is not None:
            cols["deadline_s"] = pa.array(self.deadline_s, pa.float64())
        if self.domain is not None:
            cols["domain"] = pa.array([str(s) for s in self.domain], pa.string())
        table = pa.table(cols)
        meta = dict(table.schema.metadata or {})
        meta[PROVENANCE_KEY] = json.dumps(self.provenance, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
        from dcsim.outputs import write_file

        write_file(Path(path), lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def load_trace(path: str | Path) -> Trace:
    """Read a trace from Parquet or CSV and validate it; errors name the file and column."""
    from dcsim.errors import check_input

    p = check_input(path, what="trace file")
    csv = p.suffix.lower() == ".csv"
    if csv:
        import pandas as pd

        try:
            df = pd.read_csv(p)
        except UnicodeDecodeError as e:
            raise UserError(f"not UTF-8 text (byte {e.start}); is it a binary file, or saved in another "
                            "encoding?", p) from None
        except pd.errors.EmptyDataError:
            raise UserError("the file is empty (expected a header n_in,n_out[,arrival_s] and one row per "
                            "request)", p) from None
        except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
            raise UserError(f"cannot read CSV: {e}", p) from None
        prov = {"source_file": p.name}
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(p).read()  # one file; read_table would import pyarrow.dataset, and pandas
        except Exception:  # noqa: BLE001 - read_table below says what is wrong
            try:
                table = pq.read_table(p)
            except Exception as e:  # noqa: BLE001
                raise UserError(f"cannot read Parquet: {e}", p) from None
        meta = table.schema.metadata or {}
        try:
            prov = json.loads(meta.get(PROVENANCE_KEY, b"{}"))
        except ValueError:
            raise UserError("its provenance metadata is not valid JSON", p, PROVENANCE_KEY.decode()) from None
        if not isinstance(prov, dict):
            raise UserError("its provenance metadata is not a JSON object", p, PROVENANCE_KEY.decode())
        plain = _plain_columns(table)
        if plain is not None:
            return _plain_trace(plain, prov, p)
        df = table.to_pandas()
    for col in ("n_in", "n_out"):
        if col not in df.columns:
            raise UserError(f"missing column (have {list(df.columns)})", p, col)
    if len(df) == 0:
        raise UserError("the trace holds no requests", p)
    for col in ("n_in", "n_out", "arrival_s"):
        if col in df.columns:
            df[col] = _numbers(df[col], p, col, csv)
    arr = df["arrival_s"].to_numpy(np.float64) if "arrival_s" in df.columns else None
    src = df["source"].astype(str).to_numpy(object) if "source" in df.columns else None
    tr = Trace(df["n_in"].to_numpy(), df["n_out"].to_numpy(), arr, src, prov).validate(p)
    # prefixes after the token counts are known good: a session's prefixes add them up
    pid, plen = prefix_columns(df.assign(n_in=tr.n_in, n_out=tr.n_out), p)
    tr.prefix_id, tr.prefix_len = pid, plen
    if "deadline_s" in df.columns:
        tr.deadline_s = deadline_column(_numbers(df["deadline_s"], p, "deadline_s", csv), p, csv)
    if "domain" in df.columns:
        tr.domain = domain_column(df["domain"])
    return tr.validate(p)


def domain_column(col) -> np.ndarray:  # a pandas Series in
    """A trace's `domain` column (each request's routing domain, by name) as str, None for an empty cell; it is
    checked against the scenario's domains where a scenario reads it (domains_from_trace), not here."""
    out = col.astype(str).to_numpy(object)
    out[col.isna().to_numpy()] = None
    return out


def deadline_column(col, path: Path, csv: bool) -> np.ndarray:
    """A trace's `deadline_s` column (seconds after arrival by which a batch request is due; empty for an
    interactive one) as float64 with NaN for empty cells; a deadline that is not positive and finite is a
    UserError naming the row."""
    d = np.asarray(col, dtype=np.float64)
    bad = np.flatnonzero(~np.isnan(d) & ~(np.isfinite(d) & (d > 0)))
    if len(bad):
        i = int(bad[0])
        where = f"row {i} (line {i + 2})" if csv else f"row {i}"
        raise UserError(f"{where} holds {d[i]:g}: a deadline is a positive number of seconds after arrival (empty "
                        "for an interactive request)", path, "deadline_s")
    return d


def _plain_columns(table) -> dict[str, np.ndarray] | None:
    """A Parquet table's trace columns as numpy arrays, where they need none of the pandas path's conversions
    or checks: rows present, n_in and n_out, numbers without gaps, text source ids and domain names,
    prefix_id and prefix_len together, no session_id. None otherwise (load_trace then takes the pandas path and its
    messages)."""
    import pyarrow as pa

    names = set(table.column_names)
    if (table.num_rows == 0 or not {"n_in", "n_out"} <= names or "session_id" in names or "deadline_s" in names
            or ("prefix_len" in names) != ("prefix_id" in names)):
        return None
    out = {}
    for name in ("n_in", "n_out", "arrival_s", "prefix_id", "prefix_len", "source", "domain"):
        if name not in names:
            continue
        col = table.column(name)
        t = col.type
        if col.null_count:
            return None
        if name in ("source", "domain") and (pa.types.is_string(t) or pa.types.is_large_string(t)):
            out[name] = np.array(col.to_pylist(), dtype=object)
        elif name not in ("source", "domain") and (pa.types.is_integer(t)
                                                   or pa.types.is_floating(t) and t != pa.float16()):
            # the values buffer of each chunk (pyarrow's to_numpy would import pandas)
            dt = np.dtype({"float": "float32", "double": "float64"}.get(str(t), str(t)))
            out[name] = np.concatenate([np.frombuffer(c.buffers()[1], dt)[c.offset:c.offset + len(c)]
                                        for c in col.chunks if len(c)])
        else:
            return None
    return out


def _plain_trace(cols: dict[str, np.ndarray], prov: dict, p: Path) -> Trace:
    """load_trace's pandas path on _plain_columns: the same Trace."""
    arr = cols["arrival_s"].astype(np.float64) if "arrival_s" in cols else None
    src = cols["source"] if "source" in cols else None
    tr = Trace(cols["n_in"], cols["n_out"], arr, src, prov).validate(p)
    if "prefix_id" in cols:  # codes in order of first appearance, as pandas.factorize numbers them
        _, first, inverse = np.unique(cols["prefix_id"], return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(first))
        tr.prefix_id, tr.prefix_len = rank[inverse.reshape(-1)], cols["prefix_len"]
    if "domain" in cols:
        tr.domain = cols["domain"]
    return tr.validate(p)


def _numbers(col, path: Path, name: str, csv: bool):  # a pandas Series in, numbers out
    """A column that must hold numbers, as numbers; text in it (a word, a stray quote) is a UserError naming the
    row (and, in a CSV, its line) and what it holds. Empty cells stay missing (NaN) for validate to judge."""
    import pandas as pd

    if col.dtype.kind in "iufb":
        return col
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna() & (col.astype(str).str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        where = f"row {i} (line {i + 2})" if csv else f"row {i}"
        raise UserError(f"must hold numbers; {where} holds {str(col.iloc[i])[:40]!r}", path, name)
    return num


def prefix_columns(df, path: str | Path | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Prefix identities from a trace table: `prefix_id` (any labels; empty for none) with `prefix_len`, or
    `session_id`, whose turns (in row order) each have the whole earlier conversation as their prefix."""
    import pandas as pd

    if "prefix_id" in df.columns:
        codes, _ = pd.factorize(df["prefix_id"], use_na_sentinel=True)
        plen = df["prefix_len"].fillna(0).to_numpy() if "prefix_len" in df.columns else None
        if plen is not None and plen.dtype.kind not in "iuf":
            raise UserError(f"prefix lengths must be integers, got {plen.dtype}", path, "prefix_len")
        return codes.astype(np.int64), plen
    if "prefix_len" in df.columns:
        raise UserError("prefix_len needs a prefix_id column beside it", path, "prefix_id")
    if "session_id" in df.columns:
        codes, _ = pd.factorize(df["session_id"], use_na_sentinel=True)
        return session_prefixes(codes.astype(np.int64), df["n_in"].to_numpy(), df["n_out"].to_numpy())
    return None, None


def session_prefixes(session: np.ndarray, n_in: np.ndarray, n_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each turn of a session shares the whole earlier conversation (the previous turn's prompt and output) as
    its prefix, capped at its own prompt (a trace whose prompts do not carry the history shares less)."""
    session = np.asarray(session, dtype=np.int64)
    plen = np.where(session >= 0, np.asarray(n_in, dtype=np.int64), 0)
    return session, cap_by_earlier(session, plen, n_in, n_out, first=0)


def cap_by_earlier(pid: np.ndarray, plen: np.ndarray, n_in: np.ndarray, n_out: np.ndarray,
                   first: int | None = None) -> np.ndarray:
    """`plen` (changed in place and returned) capped, for each request with an id, at the prompt plus output of
    the latest earlier request with that id; the first request of an id gets `first` where it is given."""
    last: dict[int, int] = {}
    for i, p in enumerate(np.asarray(pid).tolist()):
        if p < 0:
            continue
        j = last.get(p)
        if j is not None:
            plen[i] = min(int(plen[i]), int(n_in[j]) + int(n_out[j]))
        elif first is not None:
            plen[i] = first
        last[p] = i
    return plen
