"""Raw files of a calibration run folder (format documented in calibrate/README.md):

- runs.csv      one row per finished run, mixed-step run or idle window, appended and fsync'd as each completes
- manifest.json plan, identity of the sweep, and one entry per session (environment, command, status)
- power.csv     power timeline (t, device, power_w, label), where the meter can sample power
- plan.yaml     the plan file as given
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from dcsim.errors import UserError

RUNS = "runs.csv"
MANIFEST = "manifest.json"
POWER = "power.csv"
PLAN = "plan.yaml"

COLUMNS = (
    "entry", "phase", "point", "n_in", "n_out", "batch", "repeat", "power_cap_w", "session",
    "t_start", "t_end", "runtime_s", "ttft_s", "tpot_s", "gen_tokens",
    "energy_device_j", "energy_host_j", "energy_prefill_device_j", "energy_timeline_j",
    "avg_power_w", "peak_power_w", "tail_s", "tail_power_w", "energy_by_device",
    "backend", "meter", "extra", "status", "error", "context", "prefill_prefix", "graph_batch", "prefill_chunks",
    "sm_clock_mhz",
)
# runs.csv of folders written before the mixed-step columns, or before prefill_chunks: read, and appended to, as
# they are
LEGACY_COLUMNS = COLUMNS[:-5]
STEP_V1_COLUMNS = COLUMNS[:-2]
CLOCKLESS_COLUMNS = COLUMNS[:-1]  # before locked-clock sweeps
PHASES = ("run", "warmup", "idle_deep", "idle_serving", "step")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so no reader sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_rows(path: Path, repair: bool = False) -> list[dict[str, str]]:
    """Rows of runs.csv. A last line cut short by a crash is dropped (and, with repair=True, removed from
    the file so appending can go on)."""
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        if repair:
            write_atomic(path, text)
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and list(rows[0].keys()) not in (list(COLUMNS), list(LEGACY_COLUMNS), list(STEP_V1_COLUMNS),
                                          list(CLOCKLESS_COLUMNS)):
        raise UserError(f"columns differ from this dcsim version's {list(COLUMNS)}", path)
    return rows


def columns_of(path: Path) -> tuple[str, ...]:
    """The columns to append to runs.csv with: its own header's (an older folder's lacks the mixed-step
    columns), or this version's for a new file."""
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as f:
            head = next(csv.reader(f), None)
        for cols in (LEGACY_COLUMNS, STEP_V1_COLUMNS, CLOCKLESS_COLUMNS):
            if head == list(cols):
                return cols
    return COLUMNS


class RowWriter:
    """Appends rows to a CSV (runs.csv by default), each written out before the call returns: fsync'd where
    `durable` (a crash loses no finished measurement), flushed only where not (a replay's per-request rows,
    whose loop should not wait on the disk). `fmt` renders each value (None: as csv writes it)."""

    def __init__(self, path: Path, fields: tuple[str, ...] = COLUMNS, fmt=None, durable: bool = True) -> None:
        new = not path.exists() or path.stat().st_size == 0
        self.fields, self.fmt, self.durable = fields, fmt, durable
        self.f = path.open("a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=fields, extrasaction="raise")
        if new:
            self.w.writeheader()
            self._sync()

    def _sync(self) -> None:
        self.f.flush()
        if self.durable:
            os.fsync(self.f.fileno())

    def write(self, row: dict) -> None:
        fmt = self.fmt
        self.w.writerow({k: fmt(row.get(k)) if fmt else row.get(k) for k in self.fields})
        self._sync()

    def close(self) -> None:
        self.f.close()


def format_value(v: object) -> str:
    """One runs.csv cell: empty for None and NaN, floats to 6 significant digits, dicts as compact JSON."""
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:  # NaN
            return ""
        return f"{v:.6g}" if abs(v) < 1e5 else f"{v:.3f}"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def read_manifest(folder: Path) -> dict | None:
    p = folder / MANIFEST
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise UserError(f"not valid JSON: {e}", p) from None


def write_manifest(folder: Path, manifest: dict) -> None:
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False, default=str) + "\n")
