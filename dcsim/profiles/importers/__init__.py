"""One module per external source, each turning its files into the one measurement table.

Each module registers an `Importer` (base.py) under the name `dcsim fit --from NAME` chooses it by, so adding a
source touches one file. Contract: `load(...) -> (table, metadata)`. The table has the columns of
dcsim.profiles.measurements (normalise() checks it); `source` names a shape, the same for every repeat of it, and
`repeat`/`warmup` mark repeats. The metadata is the dict that dcsim.profiles.fit.meta_from_dict reads: device
(catalogue key in devices.py, or a DeviceInfo mapping), model (key or ModelInfo mapping), engine {name, version,
precision}, gpus_per_replica, citation, path (relative to the data folder's parent), command, licence, notes,
not_covered, and optionally serving_idle_w / deep_idle_w / host_idle_w, kv_capacity_tokens, activation_reserve_frac,
tie_prefill_to_decode, source_kind.

- wilkins2024: Wilkins, Keshav, Mortier 2024 token sweeps (kind "run", batch 1).
- mlenergy: ML.ENERGY leaderboard v2 and v3 (kind "decode").
- calibrate_runs (registered as "run", written with `dcsim calibrate`): `load(run_dir)` for a calibration run
  folder, `load_many(run_dirs)` for several of one device, model and engine fitted together; `dcsim fit RUN_DIR...`
  reads them. Its rows may be kind "run" with batch > 1 and ttft_s / tpot_s, and
  "idle_serving" / "idle_deep" windows, which the fit turns into the idle powers.
"""

import importlib
import pkgutil

from dcsim.profiles.importers.base import IMPORTERS, Importer

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["IMPORTERS", "Importer"]
