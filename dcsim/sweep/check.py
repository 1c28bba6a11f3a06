"""Every point's scenario checked before anything runs, and each point's fingerprint (scenario, input bytes,
model code), by which a resumed sweep knows which of its finished points still hold."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dcsim.errors import UserError
from dcsim.sweep.spec import Sweep, override_value, stable_hash

if TYPE_CHECKING:
    from dcsim.scenario import Scenario


def check_point(base: Path, overrides: list[str], profiles: dict | None = None) -> Scenario:
    """load_scenario plus what simulate checks first (dcsim.sim.engine.load_pools: profiles, power caps, batching
    policies), the trace file's existence and the router with its parameters; the trace itself is not read (it
    can be large). `profiles` keeps the profiles read across calls."""
    from dcsim.scenario import load_scenario, resolve_input
    from dcsim.sim.engine import load_pools
    from dcsim.sim.routers import Fleet, make_router

    sc = load_scenario(base, overrides)
    resolve_input(sc.trace.path, base, "traces", "trace.path", "trace file")
    load_pools(sc, base, profiles)
    # routers check their parameters and pool names when built; an empty fleet of the same pools suffices
    make_router(sc.router.model_dump(), Fleet([], [p.name for p in sc.fleet], []), np.random.default_rng(0),
                str(base))
    return sc


def validate_points(sweep: Sweep) -> dict[str, str]:
    """Load every point's scenario before anything runs; return each point's scenario fingerprint.

    A bad axis is blamed on its own field: each axis value is first tried alone on the base.
    """
    profiles: dict = {}  # path -> profile, read once for all points
    try:
        check_point(sweep.base, sweep.spec.set_, profiles)
    except UserError as e:
        raise UserError(f"with the sweep's overrides: {e.message}", sweep.file, "set") from None
    for section, axes in (("grid", sweep.spec.grid), ("zip", sweep.spec.zip_)):
        for key, values in axes.items():
            for v in values:
                over = f"{key}={override_value(v, sweep.file, f'{section}.{key}')}"
                try:
                    check_point(sweep.base, list(sweep.spec.set_) + [over], profiles)
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
            sc = check_point(sweep.base, list(p.overrides), profiles)
        except UserError as e:
            raise UserError(f"point {p.values} makes an invalid scenario: {e.message}", sweep.file, None) from None
        # the scenario as validated plus the bytes of its trace, profiles, grid series and the user's own policy
        # files: a changed input is rerun on resume
        inputs = [content(sc.trace.path, "traces")] + [content(pool.profile, "profiles") for pool in sc.fleet]
        inputs += [content(ref.path, "scenarios") for ref in (sc.facility.carbon_series, sc.facility.price_series)
                   if ref is not None]
        inputs += [hashlib.sha256(f.read_bytes()).hexdigest() for f in _user_code(sc, sweep.base)]
        fingerprints[p.id] = stable_hash({"scenario": sc.model_dump(mode="json"), "inputs": inputs,
                                          "model_code": model_code_hash()})
    return fingerprints


def _user_code(sc: "Scenario", base: Path) -> list[Path]:
    """Source files of the router and batching policies the scenario names that live outside dcsim itself."""
    import inspect

    from dcsim.sim.batching import POLICIES
    from dcsim.sim.routers import ROUTERS

    classes = [ROUTERS.get(sc.router.name, base, "router.name", relative_to=base.parent)]
    classes += [POLICIES.get(pool.batching.policy, base, f"fleet.{i}.batching.policy", relative_to=base.parent)
                for i, pool in enumerate(sc.fleet)]
    package = Path(__file__).resolve().parents[1]
    out = []
    for cls in classes:
        src = inspect.getsourcefile(cls)
        f = Path(src).resolve() if src else None
        if f is not None and f.is_file() and package not in f.parents and f not in out:
            out.append(f)
    return out


_MODEL_CODE: str | None = None


def model_code_hash() -> str:
    """Hash of the source files that decide a point's numbers (simulator, results, profile evaluation), so a
    resumed sweep reruns its points after the model changes."""
    global _MODEL_CODE
    if _MODEL_CODE is None:
        root = Path(__file__).resolve().parents[1]
        files = sorted((root / "sim").glob("*.py")) + [root / "results.py", root / "profiles" / "profile.py",
                                                        root / "scenario.py", root / "traces" / "arrivals.py"]
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        _MODEL_CODE = h.hexdigest()[:16]
    return _MODEL_CODE
