"""The simulator side of a validation: simulate exactly the replayed requests and arrival times on one
replica with the profile, over the same window, and compare with what the device measured.

Targets (the validation issue's): total energy within 5%, and its active and idle parts each within 5%; p50
and p95 end-to-end latency within 10%, mean queue wait within 15%. Every forecast carries the run-to-run spread
the profile's calibration measured (coefficient of variation of one run's time and energy) as a band: the
forecast again with every active step that much slower and costlier, and that much faster and cheaper. A miss
inside the band is noise to reduce; one outside it is a model error to find.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dcsim.errors import UserError, check_input
from dcsim.profiles.profile import Profile, load_profile
from dcsim.scenario import Batching, Pool, ReplayArrivals, Scenario, Shapes, TraceRef
from dcsim.validate.intervals import covered_s

TARGETS = {"energy_j": 0.05, "e2e_p50_s": 0.10, "e2e_p95_s": 0.10, "wait_mean_s": 0.15,
           # the parts of the total (the fidelity issue): energy while the engine works, and between
           "active_j": 0.05, "idle_j": 0.05}
# a paged engine's replays are also held to its requests' first token and decode pace (the serving-engine issue)
PAGED_TARGETS = {**TARGETS, "ttft_p50_s": 0.15, "ttft_p95_s": 0.15, "tpot_p50_s": 0.10}
# the per-second power timeline, above idle: sum |forecast - measured| over sum (measured - serving idle)
TIMELINE_TARGET = 0.10
# policies whose requests share steps: prefill and decode time are taken per request, not per batch run
PER_REQUEST = ("continuous", "paged")
# the `paged` policy's parameters a paged replay records (dcsim.validate.paged_replay.PagedPolicy)
PAGED_KEYS = ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_blocks", "chunked_prefill",
              "enable_prefix_caching", "cudagraph_batch_sizes")


def measured_metrics(req: pd.DataFrame, meta: dict) -> dict[str, float]:
    """Headline numbers of a replay from its per-request rows and its window energies. Against a server
    (open loop) a request's queue wait and prefill are not observable from outside: those are left NaN."""
    req = req.rename(columns={"end_s": "done_s"})
    open_loop = bool(meta.get("open_loop"))
    def num(k: str) -> float:  # replay.json is strict JSON: a number not measured is null
        v = meta[k]
        return float("nan") if v is None else float(v)

    m = _metrics(req, num("energy_j"), num("active_j"), num("idle_j"), meta["window_s"],
                 per_request=open_loop or meta["policy"]["policy"] in PER_REQUEST)
    if open_loop:
        m["wait_mean_s"] = m["prefill_p50_s"] = float("nan")
    return m


def timeline_parts(m: dict[str, float], folder: Path, meta: dict, req: pd.DataFrame) -> dict[str, float]:
    """Active and idle energy of a replay timed by its power timeline (a paged replay, or `batch_energy:
    timeline`), both as the timeline's shares of the window in the counter's joules (window.timeline_share_j).

    Active is over the spans the engine held a request (the union of each request's first scheduling to its last
    token: the busy time measured_metrics reports), not over a paged replay's steps alone: the loop's host time
    between back-to-back steps (0.1-12 ms each, 2-5% of busy time) is the engine at work, not idle, and the
    simulator's busy time is the same span. In fcfs and static replays a request's span is its batch's run."""
    from dcsim.validate.intervals import merge
    from dcsim.validate.window import timeline_share_j

    spans = merge(zip(req["start_s"].to_numpy(float), req["end_s"].to_numpy(float)))
    if not spans:
        return m
    active = timeline_share_j(folder / "power.csv", meta["wall_start"], meta["window_s"], spans, m["energy_j"])
    busy = m["busy_s"]
    return {**m, "active_j": active, "idle_j": m["energy_j"] - active,
            "busy_power_w": active / busy if busy > 0 else float("nan")}


def _metrics(req: pd.DataFrame, energy: float, active: float, idle: float, window: float,
             per_request: bool = False) -> dict[str, float]:
    """Totals, latency statistics and the parts of a request's service, so a miss can be traced to the part of
    the model that is wrong: busy time and the power drawn while busy; prefill (start to first token) and
    decode per output token, per batch run (fcfs, static) or per request (continuous batching, where requests
    share steps). `req` has arrival_s, start_s, first_token_s, done_s, n_out."""
    wait = req["start_s"] - req["arrival_s"]
    e2e = req["done_s"] - req["arrival_s"]
    ttft = req["first_token_s"] - req["arrival_s"]
    q = np.percentile(e2e, [50, 90, 95, 99])
    if per_request:
        runs = req.rename(columns={"first_token_s": "first", "done_s": "done"})
    else:
        runs = req.groupby("start_s").agg(first=("first_token_s", "first"), done=("done_s", "first"),
                                          n_out=("n_out", "max")).reset_index()
    busy = covered_s(zip(req["start_s"].to_numpy(float), req["done_s"].to_numpy(float)))
    steps = float((runs["n_out"] - 1).clip(lower=0).sum())
    return {
        "energy_j": energy, "active_j": active, "idle_j": idle, "mean_power_w": energy / window,
        "busy_s": busy, "busy_power_w": active / busy if busy > 0 else float("nan"),
        "prefill_p50_s": float(np.median(runs["first"] - runs["start_s"])),
        "decode_per_token_s": float((runs["done"] - runs["first"]).sum() / steps) if steps else float("nan"),
        "wait_mean_s": float(wait.mean()), "ttft_p50_s": float(np.median(ttft)),
        "e2e_mean_s": float(e2e.mean()), "e2e_p50_s": float(q[0]), "e2e_p90_s": float(q[1]),
        "e2e_p95_s": float(q[2]), "e2e_p99_s": float(q[3]),
    } | (_paged_metrics(req, ttft) if "preemptions" in req else {})


def _paged_metrics(req: pd.DataFrame, ttft: pd.Series) -> dict[str, float]:
    """What a paged engine is judged on besides: TTFT p95, each request's decode pace (TPOT) at the median, and
    how many times it preempted (the replay's and the simulation's per-request counts)."""
    many = req["n_out"] > 1
    tpot = (req["done_s"] - req["first_token_s"])[many] / (req["n_out"][many] - 1)
    out = {"ttft_p95_s": float(np.percentile(ttft, 95)),
           "tpot_p50_s": float(np.median(tpot)) if len(tpot) else float("nan"),
           "preemptions": float(req["preemptions"].sum())}
    if "cached_tokens" in req:  # prompt tokens the prefix cache served, over all prompt tokens
        out["prefix_hit_rate"] = float(req["cached_tokens"].sum() / max(int(req["n_in"].sum()), 1))
    return out


def scenario_for(folder: Path, meta: dict, profile_path: Path) -> Scenario:
    """One replica, the replayed batching, the workload's own arrivals; run to completion (forecast() then
    accounts idle up to the end of the measured window)."""
    pol = meta["policy"]
    if pol["policy"] == "paged":
        batching = Batching(policy="paged", **{k: pol[k] for k in PAGED_KEYS if pol.get(k) is not None})
    else:
        batching = Batching(policy=pol["policy"], max_batch=pol["max_batch"], max_wait_s=pol["max_wait_s"])
    # a static-cache profile is simulated with the caches the replay's engine held (replay.json), not its own
    prof = load_profile(profile_path)
    static = prof.engine.cache_lengths and meta.get("cache_lengths")
    lengths = {int(b): int(n) for b, n in meta["cache_lengths"].items()} if static else None
    return Scenario(
        name=f"validate-{folder.name}", seed=0,
        trace=TraceRef(path=str((folder / "workload.csv").resolve())),
        arrivals=ReplayArrivals(time_scale=1.0),
        fleet=[Pool(name="replica", profile=str(profile_path.resolve()), count=1, batching=batching,
                    cache_lengths=lengths, shapes=replay_shapes(folder, meta) if prof.cold_shapes else "warm")],
    )


def replay_shapes(folder: Path, meta: dict) -> Shapes | str:
    """A one-at-a-time or static replay's engine starts having run only its warm-up's shapes (and, with the
    length warm-up, every prompt length of the window): the forecast starts cold with those (dcsim/sim/shapes.py),
    so the first time the window meets another shape it pays the profile's cold_shapes, as the engine did."""
    from dcsim.scenario import WarmedShapes
    from dcsim.validate.replay import ServePolicy, warmed_shapes

    pol = meta["policy"]
    if pol["policy"] not in ("fcfs", "static"):
        return "warm"
    if meta.get("warmed_shapes"):  # recorded by the replay (replays before 2026-12-05: the same rule, below)
        w = meta["warmed_shapes"]
        return Shapes(start="cold", warmed=WarmedShapes(prompts=w["prompts"], kv_lengths=w["kv_lengths"]))
    sizes = ServePolicy(pol["policy"], int(pol["max_batch"])).batch_sizes()
    lengths = {int(b): int(n) for b, n in (meta.get("cache_lengths") or {}).items()}
    prompts = pd.read_csv(folder / "workload.csv")["n_in"].tolist() if meta.get("length_warmup") else None
    p, kv = warmed_shapes(sizes, lengths, prompts)
    return Shapes(start="cold", warmed=WarmedShapes(prompts=p, kv_lengths=kv))


def forecast(folder: Path, meta: dict, profile_path: Path) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame,
                                                                     list[str]]:
    """(forecast metrics, simulated requests, simulated power timeline, warnings). Energy is over the measured
    window, idle included, or up to the forecast's last request where that runs past the window's end (a
    forecast slower than the device must still finish its work: its energy then covers a longer span)."""
    from dcsim.results import power_timeline, requests_table, summarize
    from dcsim.sim.engine import simulate

    sc = scenario_for(folder, meta, profile_path)
    raw = simulate(sc, None)
    raw.end_s = max(raw.end_s, float(meta["window_s"]))
    s = summarize(raw)
    req = requests_table(raw)
    if (req["status"] != "done").any():
        bad = req["status"].value_counts().to_dict()
        raise UserError(f"the simulation did not finish every request: {bad}", folder)
    m = _metrics(req, s["energy_j"], s["active_j"], s["idle_j"], raw.end_s,
                 per_request=meta["policy"]["policy"] in PER_REQUEST)
    return m, req, power_timeline(raw, bins=max(50, int(raw.end_s))), list(raw.warnings)


def spread_band(folder: Path, meta: dict, profile: Profile, sp: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Per metric, the forecasts with the engine one calibration spread slower and costlier, and one faster and
    cheaper (every active step's time x (1 -/+ time CV), its energy x (1 -/+ energy CV)): how far run-to-run noise
    of the size calibration saw moves each forecast. A measurement outside this band is a model error."""
    import tempfile

    runs = []
    with tempfile.TemporaryDirectory() as d:
        for sign in (-1.0, 1.0):
            path = Path(d) / f"drift{int(sign)}.yaml"
            profile.drifted(1.0 + sign * sp["time"], 1.0 + sign * sp["energy"]).to_yaml(path)
            runs.append(forecast(folder, meta, path)[0])
    return {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in runs[0]}


def spread(profile: Profile) -> dict[str, float]:
    """Run-to-run CV of one run's time and energy measured during calibration (0 where not stored)."""
    cv = profile.spread_cv
    return {"time": float(cv.get("latency.run_s", cv.get("latency.step_s", 0.0))),
            "energy": float(cv.get("energy.run_device_j", cv.get("energy.step_device_j", 0.0)))}


def compare(folder: Path, profile_path: Path | None = None) -> dict:
    """Rerun the simulator on a replay folder and tabulate measured vs forecast; writes comparison.csv,
    comparison.json, sim_requests.csv and plots into the folder."""
    folder = Path(folder)
    meta_path = folder / "replay.json"
    if not meta_path.is_file():
        raise UserError("not a replay folder (no replay.json)", folder)
    meta = json.loads(meta_path.read_text())
    profile_path = check_input(profile_path or meta["profile"], "--profile", "profile")
    req = pd.read_csv(folder / "requests.csv").sort_values("id").reset_index(drop=True)
    if len(req) != meta["workload"]["requests"]:
        raise UserError(f"requests.csv holds {len(req)} rows, the workload {meta['workload']['requests']}",
                        folder / "requests.csv")
    meas = measured_metrics(req, meta)
    timed = meta["policy"]["policy"] == "paged" or meta.get("batch_energy") == "timeline"
    if timed and not meta.get("open_loop") and (folder / "power.csv").is_file():
        meas = timeline_parts(meas, folder, meta, req)
    fc, sim_req, sim_power, warnings = forecast(folder, meta, profile_path)
    profile = load_profile(profile_path)
    sp = spread(profile)
    bands = spread_band(folder, meta, profile, sp)
    rows = []
    for k in meas:
        m, f = meas[k], fc[k]
        seen = bool(np.isfinite(m))  # not every metric is observable from outside a server
        err = (f - m) / m if seen and m else float("nan")
        lo, hi = min(bands[k][0], f), max(bands[k][1], f)
        tgt = (PAGED_TARGETS if meta["policy"]["policy"] == "paged" else TARGETS).get(k)
        rows.append({"metric": k, "measured": m, "forecast": f, "rel_error": err, "target": tgt,
                     "band_lo": lo, "band_hi": hi, "in_band": bool(lo <= m <= hi) if seen else None,
                     "pass": None if tgt is None or not seen else bool(abs(err) <= tgt)})
    table = pd.DataFrame(rows)
    table.to_csv(folder / "comparison.csv", index=False)
    sim_req.to_csv(folder / "sim_requests.csv", index=False)
    sim_power.to_csv(folder / "sim_power.csv", index=False)
    out = {"case": folder.name, "profile": str(profile_path), "device": meta.get("device_name"),
           "policy": meta["policy"], "workload": meta["workload"], "window_s": meta["window_s"],
           "metrics": {r["metric"]: {k: r[k] for k in ("measured", "forecast", "rel_error", "target", "pass",
                                                         "band_lo", "band_hi", "in_band")}
                       for r in rows},
           "calibration_cv": sp, "warnings": warnings,
           "timeline": timeline_error(folder, meta, sim_power, profile.evaluator().idle_w)}
    from dcsim.results import strict_json

    (folder / "comparison.json").write_text(strict_json(out, indent=2) + "\n")  # an unseen metric is null
    from dcsim.validate.plots import validation_plots

    validation_plots(folder, req, sim_req, sim_power, meta, table)
    return out


def timeline_error(folder: Path, meta: dict, sim_power: pd.DataFrame, idle_w: float) -> dict | None:
    """The forecast power timeline against the measured one over the simulated run, in the simulation's bins
    (about a second): the absolute error summed over the bins, over the measured energy above serving idle
    (a weighted error: seconds near idle count by how much there is to get wrong). None without power.csv."""
    path = folder / "power.csv"
    if not path.is_file() or sim_power.empty:
        return None
    p = pd.read_csv(path)
    tot = p.assign(t=p["t"] - meta["wall_start"]).groupby("t", as_index=False)["power_w"].sum()
    edges = np.r_[sim_power["t_start_s"].to_numpy(float), sim_power["t_end_s"].to_numpy(float)[-1]]
    k = np.digitize(tot["t"].to_numpy(float), edges) - 1
    inside = (k >= 0) & (k < len(edges) - 1)
    meas = pd.Series(tot["power_w"].to_numpy(float)[inside]).groupby(k[inside]).mean()
    if meas.empty:
        return None
    fc = sim_power["fleet_w"].to_numpy(float)[meas.index.to_numpy()]
    width = np.diff(edges)[meas.index.to_numpy()]
    m = meas.to_numpy()
    above = float((np.maximum(m - idle_w, 0.0) * width).sum())
    err = float((np.abs(fc - m) * width).sum()) / above if above > 0 else float("nan")
    return {"bins": int(len(m)), "bin_s": float(np.median(width)), "idle_w": idle_w, "wape_above_idle": err,
            "target": TIMELINE_TARGET, "pass": bool(err <= TIMELINE_TARGET) if np.isfinite(err) else None}


def format_timeline(tl: dict | None) -> str:
    """The timeline row under the table."""
    if tl is None:
        return "power timeline: no power.csv"
    verdict = "" if tl["pass"] is None else ("ok" if tl["pass"] else "MISS")
    return (f"power timeline: {tl['wape_above_idle'] * 100:.1f}% of the energy above serving idle "
            f"({tl['bins']} bins of {tl['bin_s']:.2f} s; target {tl['target'] * 100:.0f}%) {verdict}")


def format_table(table: pd.DataFrame) -> str:
    """Console rendering of comparison.csv: the band is the forecast moved by calibration's run-to-run spread."""
    lines = [f"{'metric':<18} {'measured':>11} {'forecast':>11} {'error':>7} {'target':>6}  "
             f"{'spread band':>23}  verdict"]
    for r in table.to_dict("records"):
        tgt = "" if pd.isna(r["target"]) else f"{r['target'] * 100:.0f}%"
        verdict = "" if pd.isna(r["target"]) or pd.isna(r["pass"]) else ("ok" if r["pass"] else "MISS")
        where = "not observable" if pd.isna(r["in_band"]) else ("in band" if r["in_band"] else "outside band")
        lines.append(f"{r['metric']:<18} {r['measured']:>11.3f} {r['forecast']:>11.3f} {r['rel_error'] * 100:>6.1f}% "
                     f"{tgt:>6}  [{r['band_lo']:>10.3f}, {r['band_hi']:>10.3f}]  {verdict} {where}")
    return "\n".join(lines)
