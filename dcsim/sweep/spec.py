"""Scenario sweeps: expand a sweep file's axes into points, run them on a process pool or a Dask cluster,
resume interrupted sweeps, and tabulate every point plus the mean and 95% t-interval over seeds.

A point is one simulation: the base scenario with the sweep's `set` overrides, one value per axis and one seed.
Its id is a hash of those overrides and the seed, so the same point keeps its file across runs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dcsim.errors import UserError, from_validation, load_yaml

POINT_FORMAT = "dcsim-sweep-point/1"
SWEEP_FORMAT = "dcsim-sweep/1"
DEFAULT_METRICS = ("energy_j", "tokens_per_joule", "throughput_tokens_per_s", "mean_power_w", "e2e_s.p99",
                   "ttft_s.p50")
ID_COLUMNS = ("point", "config", "seed")


# ---- the sweep file --------------------------------------------------------------------------
class SweepSpec(BaseModel):
    """What a sweep file holds; `set` and `zip` are the YAML keys (Python names set_ and zip_)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    base: str = Field(description="scenario YAML, relative to the sweep file")
    name: str | None = None
    description: str | None = None
    set_: list[str] = Field(default_factory=list, alias="set", description="overrides applied to every point")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="field path -> values (cartesian)")
    zip_: dict[str, list[Any]] = Field(default_factory=dict, alias="zip",
                                       description="field path -> values, all the same length, varied together")
    seeds: list[int] | None = None
    replications: int | None = Field(default=None, gt=0, description="seeds base_seed .. base_seed+N-1")
    metrics: list[str] | None = Field(default=None, description="metrics (glob patterns) for console and report")


@dataclass(frozen=True)
class Point:
    index: int
    id: str  # hash of overrides + seed
    config: str  # hash of the axis overrides alone: points that differ only by seed share it
    values: dict[str, Any]  # axis field path -> value
    seed: int
    overrides: tuple[str, ...]  # set + axes + seed, in the order applied


@dataclass
class Sweep:
    file: Path
    spec: SweepSpec
    base: Path
    axes: list[list[str]]  # axis groups: each grid key alone, the zip keys together
    seeds: list[int]
    points: list[Point]
    metrics: list[str] | None = None

    @property
    def axis_keys(self) -> list[str]:
        return [k for g in self.axes for k in g]


def override_value(value: Any, file: Path, where: str) -> str:
    """A YAML value as the text of an override, checked to read back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].strip()
    if "\n" in text or yaml.safe_load(text) != value:
        raise UserError(f"value {value!r} cannot be passed as an override", file, where)
    return text


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file and expand its points (scenarios are checked by validate_points)."""
    from dcsim.scenario import load_scenario

    file = Path(path)
    data = load_yaml(file)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, file) from None
    base = Path(spec.base)
    if not base.is_absolute() and (file.parent / base).is_file():
        base = file.parent / base
    if not base.is_file():
        raise UserError(f"base scenario not found: {spec.base} (looked beside the sweep file and in the current "
                        "folder)", file, "base")
    base = base.resolve()
    for i, item in enumerate(spec.set_):
        if "=" not in item:
            raise UserError(f"expected KEY=VALUE, got '{item}'", file, f"set.{i}")
    for section, axes in (("grid", spec.grid), ("zip", spec.zip_)):
        for key, values in axes.items():
            if key == "seed" or key.startswith("seed."):
                raise UserError("vary the seed with 'seeds' or 'replications', not an axis", file, f"{section}.{key}")
            if not key or any(not part for part in key.split(".")):
                raise UserError(f"'{key}' is not a field path like a.b.c", file, section)
            if not values:
                raise UserError("needs at least one value", file, f"{section}.{key}")
            texts = [override_value(v, file, f"{section}.{key}") for v in values]
            if section == "grid" and len(set(texts)) != len(texts):
                raise UserError("a value is repeated", file, f"{section}.{key}")
    both = set(spec.grid) & set(spec.zip_)
    if both:
        raise UserError(f"{sorted(both)} appear in both grid and zip", file, "zip")
    lengths = {k: len(v) for k, v in spec.zip_.items()}
    if len(set(lengths.values())) > 1:
        raise UserError(f"zip lists must have the same length, got {lengths}", file, "zip")
    if spec.seeds is not None and spec.replications is not None:
        raise UserError("give seeds or replications, not both", file, "replications")
    if spec.seeds is not None:
        if not spec.seeds:
            raise UserError("needs at least one seed", file, "seeds")
        if len(set(spec.seeds)) != len(spec.seeds):
            raise UserError("a seed is repeated", file, "seeds")
        seeds = list(spec.seeds)
    else:
        try:
            base_seed = load_scenario(base, spec.set_).seed
        except UserError as e:
            raise UserError(f"with the sweep's overrides: {e.message}", file, "set") from None
        seeds = [base_seed + i for i in range(spec.replications or 1)]
    axes = [[k] for k in spec.grid] + ([list(spec.zip_)] if spec.zip_ else [])
    sweep = Sweep(file, spec, base, axes, seeds, expand(spec, seeds, file), spec.metrics)
    rows = {}
    for p in sweep.points:
        rows.setdefault(p.config, p)
    if len(rows) * len(seeds) != len(sweep.points):
        raise UserError("two points of the sweep have the same overrides (a zip row is repeated)", file, "zip")
    return sweep


def expand(spec: SweepSpec, seeds: list[int], file: Path) -> list[Point]:
    """Cartesian product of the grid, times the zip rows, times the seeds, in file order."""
    grid_keys = list(spec.grid)
    zip_keys = list(spec.zip_)
    n_zip = len(next(iter(spec.zip_.values()))) if spec.zip_ else 1
    points = []
    for combo in itertools.product(*(spec.grid[k] for k in grid_keys)):
        for z in range(n_zip):
            values = dict(zip(grid_keys, combo))
            values.update({k: spec.zip_[k][z] for k in zip_keys})
            axis_over = [f"{k}={override_value(v, file, k)}" for k, v in values.items()]
            config = _hash({"overrides": list(spec.set_) + axis_over})
            for seed in seeds:
                overrides = tuple(list(spec.set_) + axis_over + [f"seed={seed}"])
                pid = _hash({"overrides": list(overrides), "seed": seed})
                points.append(Point(len(points), pid, config, values, seed, overrides))
    return points


def _load_checked(base: Path, overrides: list[str], cache: dict | None = None):
    """load_scenario plus what simulate checks first: trace and profiles exist, profiles and power caps are
    valid, the router and its parameters are known (the trace itself is not read: it can be large)."""
    from dcsim.profiles.profile import load_profile
    from dcsim.scenario import load_scenario, resolve_input
    from dcsim.sim.routers import Fleet, make_router

    cache = {} if cache is None else cache
    sc = load_scenario(base, overrides)
    resolve_input(sc.trace.path, base, "traces", "trace.path", "trace file")
    for i, pool in enumerate(sc.fleet):
        path = resolve_input(pool.profile, base, "profiles", f"fleet.{i}.profile", "profile")
        if (path, pool.power_cap_w) not in cache:
            prof = cache.get(path) or load_profile(path)
            cache[path] = prof
            try:
                prof.evaluator(pool.power_cap_w, str(path))
            except UserError as e:
                raise UserError(f"{e.reason} (profile {path.name})", base, f"fleet.{i}.power_cap_w") from None
            cache[(path, pool.power_cap_w)] = True
    # routers check their parameters and pool names when built; an empty fleet of the same pools suffices
    make_router(sc.router.model_dump(), Fleet([], [p.name for p in sc.fleet], []), np.random.default_rng(0),
                str(base))
    return sc


def validate_points(sweep: Sweep) -> dict[str, str]:
    """Load every point's scenario before anything runs; return each point's scenario fingerprint.

    A bad axis is blamed on its own field: each axis value is first tried alone on the base.
    """
    cache: dict = {}
    try:
        _load_checked(sweep.base, sweep.spec.set_, cache)
    except UserError as e:
        raise UserError(f"with the sweep's overrides: {e.message}", sweep.file, "set") from None
    for section, axes in (("grid", sweep.spec.grid), ("zip", sweep.spec.zip_)):
        for key, values in axes.items():
            for v in values:
                over = f"{key}={override_value(v, sweep.file, f'{section}.{key}')}"
                try:
                    _load_checked(sweep.base, list(sweep.spec.set_) + [over], cache)
                except UserError as e:
                    raise UserError(f"value {v!r} makes an invalid scenario: {e.message}", sweep.file,
                                    f"{section}.{key}") from None
    from dcsim.scenario import resolve_path

    file_hashes: dict[Path, str] = {}

    def content(ref: str, shipped: str) -> str:
        path = resolve_path(ref, sweep.base, shipped).resolve()
        if path not in file_hashes:
            file_hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return file_hashes[path]

    fingerprints: dict[str, str] = {}
    for p in sweep.points:
        try:
            sc = _load_checked(sweep.base, list(p.overrides), cache)
        except UserError as e:
            raise UserError(f"point {p.values} makes an invalid scenario: {e.message}", sweep.file, None) from None
        # the scenario as validated plus the bytes of its trace and profiles: a changed input is rerun on resume
        inputs = [content(sc.trace.path, "traces")] + [content(pool.profile, "profiles") for pool in sc.fleet]
        fingerprints[p.id] = _hash({"scenario": sc.model_dump(mode="json"), "inputs": inputs,
                                    "model_code": model_code_hash()})
    return fingerprints


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


# ---- one point -------------------------------------------------------------------------------
def run_point(base: str, overrides: list[str]) -> dict:
    """Simulate one point (in a worker process or on a Dask worker); returns the summary and wall seconds."""
    from dcsim.results import strict_json, summarize
    from dcsim.scenario import load_scenario
    from dcsim.sim.engine import simulate

    t0 = time.perf_counter()
    sc = load_scenario(base, overrides)
    summary = summarize(simulate(sc, base))
    # strict: an undefined statistic is None (null) here as in the point file, whether run now or resumed
    return {"summary": json.loads(strict_json(summary, indent=None)), "seconds": time.perf_counter() - t0}


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


# ---- files -----------------------------------------------------------------------------------
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
    return out / "points" / f"{p.id}.json"


_MODEL_CODE: str | None = None


def model_code_hash() -> str:
    """Hash of the source files that decide a point's numbers (simulator, results, profile evaluation), so a
    resumed sweep reruns its points after the model changes."""
    global _MODEL_CODE
    if _MODEL_CODE is None:
        import hashlib

        root = Path(__file__).resolve().parent
        files = sorted((root / "sim").glob("*.py")) + [root / "results.py", root / "profiles" / "profile.py",
                                                        root / "scenario.py", root / "traces" / "arrivals.py"]
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        _MODEL_CODE = h.hexdigest()[:16]
    return _MODEL_CODE


def point_record(p: Point, fingerprint: str, result: dict) -> dict:
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


# ---- execution -------------------------------------------------------------------------------
OnDone = Callable[[Point, "dict | BaseException"], None]


def local_cores() -> int:
    """Cores this process may run on (the default number of local workers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _run_here(base: str, todo: list[Point], on_done: OnDone) -> None:
    for p in todo:
        try:
            res: dict | BaseException = run_point(base, list(p.overrides))
        except Exception as e:  # noqa: BLE001 - reported with the point, the sweep goes on
            res = e
        on_done(p, res)


def _run_pool(base: str, todo: list[Point], workers: int, on_done: OnDone) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: workers start clean (no copied threads or locks from the parent)
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {ex.submit(run_point, base, list(p.overrides)): p for p in todo}
        for fut in as_completed(futures):
            exc = fut.exception()
            on_done(futures[fut], exc if exc is not None else fut.result())
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def connect_dask(scheduler: str):
    """A dask.distributed Client of that scheduler; a missing package or an unreachable address is a UserError."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise UserError("--scheduler needs dask.distributed: pip install 'dcsim[dask]'", None, "--scheduler") from None
    try:
        return Client(scheduler, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {e}", None, "--scheduler") from None


def _run_dask(base: str, todo: list[Point], client, on_done: OnDone) -> None:
    from dask.distributed import as_completed

    futures = []
    try:
        by_key = {}
        for p in todo:
            fut = client.submit(run_point, base, list(p.overrides), key=f"dcsim-point-{p.id}", pure=False)
            by_key[fut.key] = p
            futures.append(fut)
        for fut in as_completed(futures, loop=client.loop):
            p = by_key[fut.key]
            if fut.status == "finished":
                on_done(p, fut.result())
            else:
                exc = fut.exception()
                on_done(p, exc if isinstance(exc, BaseException) else RuntimeError(f"task {fut.status}"))
            fut.release()
    except BaseException:
        client.cancel(futures)
        raise


@dataclass
class SweepRun:
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
            base = str(sweep.base)
            if client is not None:
                _run_dask(base, todo, client, on_done)
            elif workers == 0:
                _run_here(base, todo, on_done)
            else:
                n = workers or local_cores()
                _run_pool(base, todo, max(1, min(n, len(todo))), on_done)
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


def sweep_info(sweep: Sweep) -> dict:
    """DIR/sweep.json: what the report needs to know about the sweep."""
    return {"format": SWEEP_FORMAT, "sweep_file": str(sweep.file), "name": sweep.spec.name or sweep.file.stem,
            "description": sweep.spec.description, "base": str(sweep.base), "set": list(sweep.spec.set_),
            "axes": sweep.axes, "seeds": sweep.seeds, "metrics": sweep.metrics,
            "points": [p.id for p in sweep.points]}


# ---- tables ----------------------------------------------------------------------------------
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


def write_table(df: pd.DataFrame, stem: Path) -> None:
    atomic_write(stem.with_suffix(".parquet"), lambda p: df.to_parquet(p, index=False))
    atomic_write(stem.with_suffix(".csv"), lambda p: df.to_csv(p, index=False))
