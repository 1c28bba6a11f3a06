"""A run's output folder (`dcsim run --out`): summary.json, requests.parquet, replicas.csv, power.csv and the
figures, written all or nothing through dcsim.outputs."""

from __future__ import annotations

import json
from pathlib import Path

from dcsim.results import grid_timeline, has_grid, power_timeline, replicas_table, requests_table, strict_json
from dcsim.sim.engine import RawResults


def is_run_folder(folder: Path) -> bool:
    """A folder `dcsim run --out` wrote before folders carried a marker: its summary.json and requests.parquet."""
    try:
        s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(s, dict) and {"scenario", "pools"} <= set(s) and (folder / "requests.parquet").is_file()


def write_outputs(raw: RawResults, summary: dict, out_dir: str | Path, plots: bool = True,
                  force: bool = False) -> Path:
    """Write summary.json, requests.parquet, replicas.csv, power.csv (and, with a power hierarchy,
    power_levels.csv and power_events.csv; with carbon or price over time, grid.csv; with an autoscaler,
    replica_states.csv) and plots; all or nothing, and never over a folder of something else (dcsim.outputs)."""
    from dcsim.outputs import staged_folder

    out = Path(out_dir)
    with staged_folder(out, "run", force, signature=is_run_folder) as tmp:
        (tmp / "summary.json").write_text(strict_json(summary, indent=2) + "\n")
        req = requests_table(raw)
        req.to_parquet(tmp / "requests.parquet", index=False)
        replicas_table(raw).to_csv(tmp / "replicas.csv", index=False)
        power = power_timeline(raw)
        power.to_csv(tmp / "power.csv", index=False)
        if raw.facility is not None:  # the power hierarchy: each level's power, and the manager's cap events
            import pandas as pd

            from dcsim.facility_report import events_columns, levels_timeline

            pd.DataFrame(levels_timeline(raw)).to_csv(tmp / "power_levels.csv", index=False)
            pd.DataFrame(events_columns(raw)).to_csv(tmp / "power_events.csv", index=False)
        grid = None
        if has_grid(raw) or raw.baseline is not None:  # carbon and cost over time
            import pandas as pd

            grid = pd.DataFrame(grid_timeline(raw))
            grid.to_csv(tmp / "grid.csv", index=False)

        if raw.scaling is not None:  # the autoscaler: replicas in each state over time
            from dcsim.scaling_report import states_plot, states_timeline

            states = states_timeline(raw)
            states.to_csv(tmp / "replica_states.csv", index=False)
        if plots:
            from dcsim import plots as P

            P.run_plots([p.name for p in raw.pools], summary, power, req, tmp)
            if grid is not None:
                P.grid_plot(grid, req, tmp / "carbon_cost.png", summary)
            if raw.scaling is not None:
                states_plot(states, [p.name for p in raw.pools], tmp / "replica_states.png",
                            f"{raw.scenario.name}: replicas by state ({raw.scenario.autoscaling.name})")
    return out
