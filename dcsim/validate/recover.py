"""Recover an in-process replay whose window was measured in full but whose process ended before it wrote
replay.json (killed during the probe, a lost session): the raw files in OUT.partial hold every request and batch,
and the power timeline covers the window, so the window's facts are rebuilt from them. The window's total energy
then comes from integrating the sampled power, not from the energy counter, whose closing reading was lost; active
energy is the batches' counter readings where batches.csv has them (--batch-energy counter), else the timeline's
integral over the runs: the replay takes the counter's window joules by the timeline's share of the window, and with
the counter lost that share of the timeline's own total is its integral. The recovered replay.json says which.

Both in-process replays are recoverable: `fcfs`/`static` write batches.csv (samples labelled `b<id>`), the paged
engine writes steps.csv (samples labelled `s<step>`, active energy always from the timeline, over the steps'
union); the raw file present says which."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dcsim.calibrate.timeline import frame_energy_j
from dcsim.errors import UserError
from dcsim.validate.intervals import covered_s, merge

_WINDOW = ("window energy integrated from the sampled power timeline (power.csv); the counter's closing reading was "
           "lost with the process. ")
SOURCE = _WINDOW + "Batch energies (active_j) are the counter's; idle_j is the difference"
SOURCE_TIMELINE = (_WINDOW + "Active energy is the timeline's integral over the batch runs (--batch-energy "
                   "timeline); idle_j is the difference")


def window_start(power: pd.DataFrame, runs: pd.DataFrame, file: Path | None = None, tag: str = "b",
                 id_col: str = "batch_id") -> tuple[float, float]:
    """(wall-clock time the window opened, width of the interval it is known to lie in). The timeline labels
    each sample with the run (batch `b<id>` or step `s<id>`) that was going on, and a run went from start_s to
    end_s after the window opened, so every labelled sample at wall time t bounds the opening to
    [t - end_s, t - start_s]."""
    what = "batch" if tag == "b" else "step"
    lab = power[power["label"].fillna("").astype(str).str.match(rf"^{tag}\d+$")]
    if lab.empty:
        raise UserError(f"no power sample is labelled with a {what}; cannot place the window in time",
                        file, "label")
    ids = lab["label"].str[1:].astype(int).to_numpy()
    by_id = runs.set_index(id_col)
    known = np.isin(ids, by_id.index.to_numpy())
    if not known.all():
        raise UserError(f"power samples name {what} {tag}{ids[~known][0]}, which the {what}s' file does not hold",
                        file, "label")
    t = lab["t"].to_numpy(float)
    lo = float(np.max(t - by_id.loc[ids, "end_s"].to_numpy(float)))
    hi = float(np.min(t - by_id.loc[ids, "start_s"].to_numpy(float)))
    return (lo + hi) / 2.0, hi - lo


def raw_file(folder: Path, name: str) -> Path:
    """A replay's raw file `name`, or its gzipped copy (`name`.gz, as committed cases keep their large tables)
    where only that exists."""
    p = Path(folder) / name
    gz = p.with_name(p.name + ".gz")
    return gz if not p.is_file() and gz.is_file() else p


def window_facts(folder: Path, n_requests: int, tail_s: float, settle_s: float) -> dict:
    """The facts Window.facts would have written, rebuilt from OUT.partial's raw files (checked complete)."""
    folder = Path(folder)
    paged = raw_file(folder, "steps.csv").is_file() and not (folder / "batches.csv").is_file()
    runs_name = raw_file(folder, "steps.csv").name if paged else "batches.csv"
    for name in ("requests.csv", runs_name, "power.csv", "workload.csv"):
        if not (folder / name).is_file():
            raise UserError(f"cannot recover without {name}", folder / name)
    req = pd.read_csv(folder / "requests.csv")
    if len(req) != n_requests or req["id"].nunique() != n_requests:
        raise UserError(f"holds {req['id'].nunique()} of the workload's {n_requests} requests: the window did not "
                        "finish, so there is nothing to recover (run the replay again)", folder / "requests.csv")
    runs = pd.read_csv(folder / runs_name)
    power = pd.read_csv(folder / "power.csv")
    wall0, uncertainty = window_start(power, runs, folder / "power.csv", tag="s" if paged else "b",
                                      id_col="step" if paged else "batch_id")
    last_end = float(runs["end_s"].max())
    window_s = last_end + tail_s
    if float(power["t"].max()) < wall0 + window_s - 1.0:
        raise UserError(f"the power timeline ends {wall0 + window_s - float(power['t'].max()):.1f} s before the "
                        "window's tail does", folder / "power.csv", "t")
    by_dev = {d: float(e[0]) for d, e in frame_energy_j(power, np.array([wall0]),
                                                         np.array([wall0 + window_s])).items()}
    total = sum(by_dev.values())
    per_batch = not paged and bool(runs["energy_j"].notna().all())  # --batch-energy counter; else the timeline's
    busy = merge(zip(runs["start_s"].to_numpy(float), runs["end_s"].to_numpy(float)))
    if per_batch:
        active = float(runs["energy_j"].sum())
    else:  # the timeline's share of the window in its own total (the counter's reading is lost): its integral
        a, b = np.array(busy, float).reshape(-1, 2).T
        active = float(sum(e.sum() for e in frame_energy_j(power, wall0 + a, wall0 + b).values()))
    facts = {"window_s": window_s, "last_end_s": last_end, "tail_s": tail_s, "settle_s": settle_s,
             "wall_start": wall0, "wall_start_uncertainty_s": uncertainty}
    if paged:  # what the steps hold of the serve loop's own totals (the query total and evictions died with it)
        facts |= {"steps": int(len(runs)), "preemptions": int(runs["preemptions"].sum()),
                  "busy_s": covered_s(busy),
                  "prefix_hit_tokens": int(runs["cached_tokens"].sum())}
    else:
        facts["batches"] = int(len(runs))
    return facts | {"energy_j": total, "active_j": active, "idle_j": total - active, "energy_by_device": by_dev,
                    "host_j": None, "batch_energy": "counter" if per_batch else "timeline",
                    "energy_source": SOURCE if per_batch else SOURCE_TIMELINE}
