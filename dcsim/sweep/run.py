"""Running a sweep: check its points, run those its folder does not already hold, write each as it ends, then
the result tables."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dcsim.errors import UserError
from dcsim.sweep.check import validate_points
from dcsim.sweep.executors import connect_dask, run_points
from dcsim.sweep.folder import (
    finished_points,
    is_sweep_folder,
    own_files,
    point_path,
    point_record,
    sweep_info,
    write_json,
    write_table,
)
from dcsim.sweep.spec import Point, Sweep
from dcsim.sweep.tables import ID_COLUMNS, check_metrics, probe_metrics, results_table, summary_table


@dataclass
class SweepRun:
    """What run_sweep returns: both tables, the chosen metrics, points run and reused, wall seconds."""

    results: pd.DataFrame
    summary: pd.DataFrame
    metrics: list[str]
    ran: int
    reused: int
    seconds: float
    failures: list[tuple[Point, str]] = field(default_factory=list)


def run_sweep(sweep: Sweep, out_dir: str | Path, workers: int | None = None, scheduler: str | None = None,
              progress: bool = True, force: bool = False) -> SweepRun:
    """Run the points not already finished in out_dir, write each as it ends, then the result tables.

    workers: local processes (None = every core; 0 = in this process). scheduler: a Dask scheduler address.
    out_dir must be new, empty, or a sweep folder (unless force: then only the sweep's own files are written
    there); a lock in it stops a second sweep writing the same folder (dcsim.outputs).
    """
    from dcsim.outputs import check_folder, locked, write_marker

    t_start = time.perf_counter()
    out = check_folder(out_dir, "sweep", force, signature=is_sweep_folder)
    fingerprints = validate_points(sweep)
    chosen = check_metrics(sweep, probe_metrics(sweep)) if sweep.metrics else None
    client = connect_dask(scheduler) if scheduler else None  # before writing anything
    try:
        with locked(out, "dcsim sweep"):
            files = own_files(out, sweep)
            write_marker(out, "sweep", files, complete=False)
            res = _run_and_collect(sweep, out, fingerprints, chosen, workers, client, progress, t_start)
            write_marker(out, "sweep", files, complete=True)
            return res
    finally:
        if client is not None:
            client.close()


def _run_and_collect(sweep: Sweep, out: Path, fingerprints: dict[str, str], chosen: list[str] | None,
                     workers: int | None, client, progress: bool, t_start: float) -> SweepRun:
    (out / "points").mkdir(parents=True, exist_ok=True)
    for p in sweep.points:  # temporaries a killed run left half-written (outputs.write_file's names): ours to drop
        f = point_path(out, p)
        for tmp in f.parent.glob(f".{f.name}.*.tmp{f.suffix}"):
            tmp.unlink(missing_ok=True)
    write_json(out / "sweep.json", sweep_info(sweep))
    done = finished_points(out, sweep, fingerprints)
    reused = len(done)
    todo = [p for p in sweep.points if p.id not in done]
    failures: list[tuple[Point, str]] = []

    from tqdm import tqdm

    bar = tqdm(total=len(sweep.points), initial=reused, unit="point", desc="sweep", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def on_done(p: Point, res: dict | BaseException) -> None:
        if isinstance(res, BaseException):
            msg = res.message if isinstance(res, UserError) else f"{type(res).__name__}: {res}"
            failures.append((p, msg))
            bar.write(f"point {p.id} {p.values} seed {p.seed} failed: {msg}", file=sys.stderr)
        else:
            rec = point_record(p, fingerprints[p.id], res)
            write_json(point_path(out, p), rec)
            done[p.id] = rec
        bar.update(1)

    try:
        if todo:
            run_points(str(sweep.base), todo, workers, client, on_done)
    finally:
        bar.close()
    if failures:
        p, msg = failures[0]
        raise UserError(f"{len(failures)} of {len(sweep.points)} points failed (finished ones are kept; run the "
                        f"sweep again to retry): first, point {p.id} {p.values} seed {p.seed}: {msg}", sweep.file)
    results = results_table(sweep, [done[p.id] for p in sweep.points])
    metrics = [c for c in results.columns if c not in ID_COLUMNS and c not in sweep.axis_keys]
    summary = summary_table(sweep, results, metrics)
    write_table(results, out / "results")
    write_table(summary, out / "summary")
    if chosen is None:
        chosen = check_metrics(sweep, metrics)
    return SweepRun(results, summary, chosen, len(todo), reused, time.perf_counter() - t_start, failures)

