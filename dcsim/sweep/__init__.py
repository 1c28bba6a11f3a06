"""Scenario sweeps: expand a sweep file's axes into points, run them on a process pool or a Dask cluster,
resume interrupted sweeps, and tabulate every point plus the mean and 95% t-interval over seeds.

spec: the sweep file and its points; check: every point's scenario checked, and its fingerprint; executors: where
points run; folder: the output folder a resumed sweep reads back; tables: results and summary tables; run:
run_sweep, which ties these together; plots: figures of a sweep's summary (imported on its own: matplotlib).
"""

from dcsim.sweep.check import check_point, model_code_hash, validate_points
from dcsim.sweep.executors import OnDone, connect_dask, local_cores, run_point, run_points
from dcsim.sweep.folder import (
    POINT_FORMAT,
    SWEEP_FORMAT,
    atomic_write,
    finished_points,
    is_sweep_folder,
    own_files,
    point_path,
    point_record,
    sweep_info,
    write_json,
    write_table,
)
from dcsim.sweep.run import SweepRun, run_sweep
from dcsim.sweep.spec import Point, Sweep, SweepSpec, expand, load_sweep, override_value, stable_hash
from dcsim.sweep.tables import (
    DEFAULT_METRICS,
    ID_COLUMNS,
    check_metrics,
    flatten,
    probe_metrics,
    results_table,
    summary_table,
    t_interval,
)

__all__ = [
    "DEFAULT_METRICS", "ID_COLUMNS", "POINT_FORMAT", "SWEEP_FORMAT", "OnDone", "Point", "Sweep", "SweepRun",
    "SweepSpec", "atomic_write", "check_metrics", "check_point", "connect_dask", "expand", "finished_points",
    "flatten", "is_sweep_folder", "load_sweep", "local_cores", "model_code_hash", "override_value", "own_files",
    "point_path", "point_record", "probe_metrics", "results_table", "run_point", "run_points", "run_sweep",
    "stable_hash", "summary_table", "sweep_info", "t_interval", "validate_points", "write_json", "write_table",
]
