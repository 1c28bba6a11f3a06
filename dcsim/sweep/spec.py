"""The sweep file's model and its expansion into points.

A point is one simulation: the base scenario with the sweep's `set` overrides, one value per axis and one seed.
Its id is a hash of those overrides and the seed, so the same point keeps its file across runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dcsim.errors import UserError, from_validation, load_yaml


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
    """One simulation of the sweep: its axis values and seed, and the overrides that make its scenario."""

    index: int
    id: str  # hash of overrides + seed
    config: str  # hash of the axis overrides alone: points that differ only by seed share it
    values: dict[str, Any]  # axis field path -> value
    seed: int
    overrides: tuple[str, ...]  # set + axes + seed, in the order applied


@dataclass
class Sweep:
    """A sweep file read and expanded: its base scenario, axis groups, seeds and points."""

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


def stable_hash(obj: Any) -> str:
    """12 hex digits of the SHA-256 of obj as sorted JSON: point ids, configurations and fingerprints."""
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
            config = stable_hash({"overrides": list(spec.set_) + axis_over})
            for seed in seeds:
                overrides = tuple(list(spec.set_) + axis_over + [f"seed={seed}"])
                pid = stable_hash({"overrides": list(overrides), "seed": seed})
                points.append(Point(len(points), pid, config, values, seed, overrides))
    return points
