"""A sweep's output folder: one file per finished point (what a resumed sweep reuses), sweep.json, the result
tables, and the files its marker lists; every file written whole or not at all (dcsim.outputs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from dcsim.sweep.spec import Point, Sweep

POINT_FORMAT = "dcsim-sweep-point/1"
SWEEP_FORMAT = "dcsim-sweep/1"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    from dcsim.outputs import write_file

    write_file(path, write)


def is_sweep_folder(folder: Path) -> bool:
    """A folder `dcsim sweep --out` wrote before folders carried a marker: its sweep.json."""
    try:
        info = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == SWEEP_FORMAT


def own_files(out: Path, sweep: Sweep) -> list[str]:
    """The files of this sweep in out (for the folder's marker): what an earlier run of it wrote, plus its own."""
    from dcsim.outputs import read_marker

    m = read_marker(out) or {}
    mine = {"sweep.json", "results.parquet", "results.csv", "summary.parquet", "summary.csv"}
    mine |= {point_path(out, p).relative_to(out).as_posix() for p in sweep.points}
    return sorted((set(m.get("files", [])) | mine) if m.get("command") == "sweep" else mine)


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (dcsim.results.strict_json: no NaN or Infinity), written whole or not at all."""
    from dcsim.results import strict_json

    atomic_write(path, lambda p: p.write_text(strict_json(obj, indent=1) + "\n"))


def point_path(out: Path, p: Point) -> Path:
    """DIR/points/ID.json: the file of one finished point."""
    return out / "points" / f"{p.id}.json"


def point_record(p: Point, fingerprint: str, result: dict) -> dict:
    """What a point's file holds: the point, the fingerprint it ran under, its wall seconds and summary."""
    return {"format": POINT_FORMAT, "id": p.id, "config": p.config, "index": p.index, "values": p.values,
            "seed": p.seed, "overrides": list(p.overrides), "fingerprint": fingerprint,
            "seconds": result["seconds"], "summary": result["summary"]}


def finished_points(out: Path, sweep: Sweep, fingerprints: dict[str, str]) -> dict[str, dict]:
    """Point files already in DIR/points that belong to this sweep and whose scenario is unchanged."""
    done = {}
    for p in sweep.points:
        f = point_path(out, p)
        if not f.is_file():
            continue
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # unreadable: run it again
        if (rec.get("format") == POINT_FORMAT and rec.get("id") == p.id
                and rec.get("fingerprint") == fingerprints[p.id] and isinstance(rec.get("summary"), dict)):
            done[p.id] = rec
    return done


def sweep_info(sweep: Sweep) -> dict:
    """DIR/sweep.json: what the report needs to know about the sweep."""
    return {"format": SWEEP_FORMAT, "sweep_file": str(sweep.file), "name": sweep.spec.name or sweep.file.stem,
            "description": sweep.spec.description, "base": str(sweep.base), "set": list(sweep.spec.set_),
            "axes": sweep.axes, "seeds": sweep.seeds, "metrics": sweep.metrics,
            "points": [p.id for p in sweep.points]}


def write_table(df: pd.DataFrame, stem: Path) -> None:
    """A table as STEM.parquet and STEM.csv."""
    atomic_write(stem.with_suffix(".parquet"), lambda p: df.to_parquet(p, index=False))
    atomic_write(stem.with_suffix(".csv"), lambda p: df.to_csv(p, index=False))
