"""Raw simulation results -> summary dict, per-request / per-replica tables, power over time, strict JSON text.

Pure: nothing here writes a file or draws a figure (a run's output folder is dcsim.run_outputs)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from dcsim.sim.engine import RawResults
from dcsim.sim.requests import DONE, REJECT_REASONS

if TYPE_CHECKING:
    import pandas as pd

    from dcsim.scenario import Slo

# A table without pandas (summarize needs no more, and `dcsim run` then starts without importing it): column
# name -> numpy array, every column of one length. The *_table functions turn the same columns into DataFrames.
Columns = dict[str, np.ndarray]

QUANTILES = (("p50", 50), ("p90", 90), ("p99", 99))


def cumulative(t0: np.ndarray, t1: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Amount of v spent by times x, each segment spending its v evenly over [t0, t1).

    Segments of one replica are sorted and do not overlap, so this is a search plus one partial term.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(t0) == 0:
        return np.zeros_like(x)
    cum = np.concatenate(([0.0], np.cumsum(v)))
    k = np.searchsorted(t1, x, side="right")  # segments finished by x
    out = cum[k]
    inside = k < len(t0)
    kk = np.minimum(k, len(t0) - 1)
    dur = t1[kk] - t0[kk]
    frac = np.where(dur > 0, np.clip((x - t0[kk]) / np.where(dur > 0, dur, 1.0), 0.0, 1.0), 0.0)
    return out + np.where(inside, v[kk] * frac, 0.0)


def stats(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"mean": float("nan"), **{k: float("nan") for k, _ in QUANTILES}}
    q = np.percentile(x, [p for _, p in QUANTILES])
    return {"mean": float(x.mean()), **{k: float(v) for (k, _), v in zip(QUANTILES, q)}}


def replica_energy(raw: RawResults, lo: float, hi: float) -> pd.DataFrame:
    """Per replica, over the window [lo, hi]: busy and idle seconds, device and host joules."""
    import pandas as pd

    return pd.DataFrame(_replica_rows(raw, lo, hi))


def _replica_rows(raw: RawResults, lo: float, hi: float) -> list[dict]:
    rows = []
    for i, (t0, t1, e, h) in enumerate(raw.segments):
        pool = raw.pools[int(raw.replica_pool[i])]
        evaluator = pool.evaluator
        edges = np.array([lo, hi])
        busy = np.diff(cumulative(t0, t1, t1 - t0, edges))[0]
        active = np.diff(cumulative(t0, t1, e, edges))[0]
        host_active = np.diff(cumulative(t0, t1, h, edges))[0]
        idle_s = max(0.0, (hi - lo) - busy)
        idle_w = evaluator.idle_w if pool.idle == "serving" else evaluator.deep_idle_w
        fall = np.diff(cumulative(*raw.tails[i][:3], edges))[0] if raw.tails else 0.0
        row = {
            "replica": i, "pool": pool.name, "busy_s": busy, "idle_s": idle_s,
            "active_j": active, "idle_j": idle_w * idle_s + fall,
            "host_j": host_active + evaluator.host_idle_w * idle_s,
        }
        if raw.scaling is not None:  # off and loading time leave the serving-idle time
            off_s, load_s, off_w, load_w = _off_loading(raw, i, edges)
            off_s, load_s = float(np.diff(off_s)[0]), float(np.diff(load_s)[0])
            row["idle_s"] = idle_s = max(0.0, idle_s - off_s - load_s)
            row["idle_j"] = idle_w * idle_s + fall
            row.update(off_s=off_s, loading_s=load_s, off_j=off_w * off_s, load_j=load_w * load_s)
        rows.append(row)
    return rows


def _off_loading(raw: RawResults, i: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Cumulative seconds replica i was off and loading by each time x, and its device watts in each state."""
    from dcsim.sim.autoscale import LOADING, OFF, state_device_w, state_seconds

    p = int(raw.replica_pool[i])
    off, load = state_seconds(raw.scaling, i, p, x)
    cold, evaluator = raw.scaling.pools[p].cold, raw.pools[p].evaluator
    return off, load, state_device_w(cold, evaluator, OFF), state_device_w(cold, evaluator, LOADING)


def requests_table(raw: RawResults) -> pd.DataFrame:
    """One row per request (requests.parquet)."""
    import pandas as pd

    return pd.DataFrame(request_columns(raw))


def request_columns(raw: RawResults) -> Columns:
    """requests_table's columns, as numpy arrays."""
    lg = raw.log
    status = lg["status"]
    names = np.array(["unfinished", "done", "rejected", "unfinished"], dtype=object)
    reasons = np.array(REJECT_REASONS, dtype=object)
    pool_names = np.array([p.name for p in raw.pools], dtype=object)
    n_out = raw.n_out
    done = status == DONE
    tpot = np.where(done & (n_out > 1), (lg["done_s"] - lg["first_token_s"]) / np.maximum(n_out - 1, 1), np.nan)
    cols = {
        "id": np.arange(len(raw.n_in)),
        "n_in": raw.n_in, "n_out": n_out, "arrival_s": raw.arrival_s,
        "pool": pool_names[raw.replica_pool[lg["replica"]]], "replica": lg["replica"],
        "status": names[status], "reason": reasons[lg["reason"]],
        "start_s": np.where(done, lg["start_s"], np.nan),
        "first_token_s": np.where(done, lg["first_token_s"], np.nan),
        "done_s": np.where(done, lg["done_s"], np.nan),
        "wait_s": np.where(done, lg["start_s"] - raw.arrival_s, np.nan),
        "ttft_s": np.where(done, lg["first_token_s"] - raw.arrival_s, np.nan),
        "tpot_s": tpot,
        "e2e_s": np.where(done, lg["done_s"] - raw.arrival_s, np.nan),
        "energy_j": np.where(done, lg["energy_j"], np.nan),
        "host_j": np.where(done, lg["host_j"], np.nan),
    }
    if raw.classes is not None:  # request classes: batch requests' deadlines and when they went to the router
        c = raw.classes
        cols["request_class"] = np.where(c.batch, "batch", "interactive").astype(object)
        cols["due_s"] = c.deadline_s
        cols["released_s"] = c.release_s
        cols["deadline_met"] = np.where(c.batch, done & (lg["done_s"] <= c.deadline_s), False)
    if raw.scaling is not None:  # an autoscaler: how long each request waited for a model load (extra TTFT)
        cols["cold_wait_s"] = np.asarray(raw.scaling.cold_wait, dtype=np.float64)
    if any("preemptions" in s for s in raw.policy_stats):  # a paged engine: what its scheduler did to each request
        cols["preemptions"] = lg["preemptions"]
        cols["cached_tokens"] = lg["cached_tokens"]
    return cols


def _rows(t: Columns, keep: np.ndarray) -> Columns:
    """The rows of t where keep holds (t itself where it keeps them all: a large run's table is not copied)."""
    if keep.all():
        return t
    return {k: v[keep] for k, v in t.items()}


def _len(t: Columns) -> int:
    return len(next(iter(t.values()))) if t else 0


def _sum(x: np.ndarray) -> float:
    """A column's sum as pandas takes it (NaN left out)."""
    return float(np.nansum(x))


def slo_met(req: pd.DataFrame | Columns, slo: "Slo") -> np.ndarray:
    """Which requests completed within every target the SLO sets (a one-token output has no TPOT to miss)."""
    ok = np.array(req["status"] == "done", dtype=bool)
    for col, target in (("ttft_s", slo.ttft_s), ("tpot_s", slo.tpot_s), ("e2e_s", slo.e2e_s)):
        if target is not None:
            v = np.asarray(req[col], dtype=float)
            within = v <= target
            if col == "tpot_s":
                within |= np.isnan(v)
            ok &= within
    return ok


def _slo_block(counted: Columns, slo: "Slo | None", span: float) -> dict:
    """SLO attainment (share of counted requests, rejected and unfinished ones included, that met every target)
    and goodput (those requests per second of the window); empty without an SLO."""
    if slo is None:
        return {}
    met = int(slo_met(counted, slo).sum())
    return {"slo": {"targets": slo.model_dump(exclude_none=True), "met": met,
                    "attainment": met / _len(counted) if _len(counted) else float("nan"), "goodput_rps": met / span}}


def _latency_block(req: Columns) -> dict:
    return {k: stats(req[k][~np.isnan(req[k])]) for k in ("wait_s", "ttft_s", "tpot_s", "e2e_s")}


UNATTRIBUTED_NOTE = ("active energy of the window that no counted request carries: steps of requests unfinished "
                     "at the horizon (the step cut there prorated), and what requests that arrived during the "
                     "warm-up drew after it, less, where the profile has power dynamics, what the rise after idle "
                     "saves (requests carry their steps' joules); counted requests' energy_j plus this is active_j")


def _energy_block(rep: Columns, pue: float, attributed_j: float) -> dict:
    """Energies of a set of replicas over the window; `attributed_j` is what its counted requests carry."""
    active = _sum(rep["active_j"])
    idle = _sum(rep["idle_j"])
    host = _sum(rep["host_j"])
    scaled = "off_j" in rep
    off, load = (_sum(rep["off_j"]), _sum(rep["load_j"])) if scaled else (0.0, 0.0)
    total = active + idle + host + off + load
    un = active - attributed_j
    if abs(un) <= 1e-10 * abs(active):  # float rounding of two sums of the same joules, not energy
        un = 0.0
    out = {"energy_j": total, "active_j": active, "unattributed_active_j": un,
           "idle_j": idle, "host_j": host, "facility_j": total * pue}
    if scaled:
        out.update(off_j=off, load_j=load)
    return out


def energy_by(raw: RawResults, replicas: list[int], x: np.ndarray) -> np.ndarray:
    """Cumulative joules (device active and idle, and host) the replicas drew by each of the times x."""
    x = np.asarray(x, dtype=np.float64)
    total = np.zeros_like(x)
    for i in replicas:
        pool = raw.pools[int(raw.replica_pool[i])]
        evaluator = pool.evaluator
        t0, t1, e, h = raw.segments[i]
        idle_w = (evaluator.idle_w if pool.idle == "serving" else evaluator.deep_idle_w) + evaluator.host_idle_w
        busy = cumulative(t0, t1, t1 - t0, x)
        total += cumulative(t0, t1, e + h, x) + idle_w * np.maximum(x - busy, 0.0)
        if raw.tails:  # the fall after each busy period (power dynamics)
            total += cumulative(*raw.tails[i][:3], x)
        if raw.scaling is not None:  # off and loading replace serving-idle power (the host idles throughout)
            off, load, off_w, load_w = _off_loading(raw, i, x)
            dev_idle = idle_w - evaluator.host_idle_w
            total += (off_w - dev_idle) * off + (load_w - dev_idle) * load
    return total


def _carbon_cost(raw: RawResults, replicas: list[int], kwh: float, lo: float, hi: float,
                 pool: int | None = None) -> dict:
    """Carbon (g CO2e) and cost of a set of replicas' facility energy: at the facility's constants, or integrated
    against its carbon and price series over the window. A pool with its own carbon series (`pool`, or for the
    fleet, `pool` None, any pool) is integrated against that one."""
    from dcsim.grid import weighted_kwh

    f = raw.scenario.facility
    out = {}
    for key, series, const in (("carbon_g", "carbon", f.carbon_g_per_kwh), ("cost", "price", f.price_per_kwh)):
        if any(s is not None for s in pool_series(raw, series)):
            pools = [pool] if pool is not None else range(len(raw.pools))
            out[key] = sum(float(cumulative_grid(raw, _pool_replicas(raw, k), series, np.array([lo, hi]),
                                                 k)[-1]) for k in pools)
        elif series in raw.grid:
            out[key] = f.pue * weighted_kwh(raw.grid[series], lambda x: energy_by(raw, replicas, x), lo, hi)
        else:
            out[key] = kwh * const
    return out


def pool_series(raw: RawResults, kind: str) -> list:
    """The pools' own series of `kind` ("carbon" or "price"), None for a pool without one."""
    return raw.pool_carbon if kind == "carbon" else raw.pool_price


def _pool_replicas(raw: RawResults, pool: int) -> list[int]:
    return np.flatnonzero(raw.replica_pool == pool).tolist()


def cumulative_grid(raw: RawResults, replicas: list[int], kind: str, x: np.ndarray, pool: int | None = None
                    ) -> np.ndarray:
    """Grams (kind "carbon") or cost ("price") of the replicas' facility energy from x[0] to each of the sorted
    times x: energy in each piece of the series times its value (a pool's own series where `pool` has one,
    else the facility's series, else its constant)."""
    f = raw.scenario.facility
    x = np.asarray(x, dtype=np.float64)
    own = pool_series(raw, kind)
    series = own[pool] if pool is not None and own else None
    if series is None:
        series = raw.grid.get(kind)
    if series is None:
        const = f.carbon_g_per_kwh if kind == "carbon" else f.price_per_kwh
        e = energy_by(raw, replicas, x)
        return f.pue * const * (e - e[0]) / 3.6e6
    edges, _ = series.breakpoints(float(x[0]), float(x[-1]))
    u = np.union1d(edges, x)
    vals = series.at(0.5 * (u[:-1] + u[1:]))
    cum = np.concatenate(([0.0], np.cumsum(vals * np.diff(energy_by(raw, replicas, u)))))
    return f.pue * cum[np.searchsorted(u, x)] / 3.6e6


def fleet_grid(raw: RawResults, kind: str, x: np.ndarray) -> np.ndarray:
    """cumulative_grid for the whole fleet, each pool at its own series where it has one."""
    if any(s is not None for s in pool_series(raw, kind)):
        return sum(cumulative_grid(raw, _pool_replicas(raw, k), kind, x, k) for k in range(len(raw.pools)))
    return cumulative_grid(raw, list(range(len(raw.segments))), kind, x)


def grid_timeline(raw: RawResults, bins: int = 400) -> Columns:
    """Carbon (g) and cost of the fleet's facility energy in equal time bins over [0, end], with the carbon
    intensity and price at each bin's middle and, where the run deferred batch requests, the carbon of the same
    requests sent at arrival (over the same bins, its fleet idle once done)."""
    end = max(raw.end_s, raw.baseline.end_s if raw.baseline is not None else 0.0, 1e-9)
    edges = np.linspace(0.0, end, bins + 1)
    mid = 0.5 * (edges[:-1] + edges[1:])
    f = raw.scenario.facility
    cols: Columns = {"t_start_s": edges[:-1], "t_end_s": edges[1:]}
    for kind, const in (("carbon", f.carbon_g_per_kwh), ("price", f.price_per_kwh)):
        s = raw.grid.get(kind)
        cols[f"{kind}_per_kwh"] = s.at(mid) if s is not None else np.full(bins, float(const))
    e = energy_by(raw, list(range(len(raw.segments))), edges)
    cols["facility_kwh"] = f.pue * np.diff(e) / 3.6e6
    cols["carbon_g"] = np.diff(fleet_grid(raw, "carbon", edges))
    cols["cost"] = np.diff(fleet_grid(raw, "price", edges))
    if raw.baseline is not None:
        cols["carbon_g_without_deferral"] = np.diff(fleet_grid(raw.baseline, "carbon", edges))
        cols["cost_without_deferral"] = np.diff(fleet_grid(raw.baseline, "price", edges))
    return cols


def has_grid(raw: RawResults) -> bool:
    """Whether the run's carbon or price varies over time (a series, or pools in different grid regions)."""
    return bool(raw.grid) or any(s is not None for s in pool_series(raw, "carbon") + pool_series(raw, "price"))


def summarize(raw: RawResults) -> dict:
    """The run's headline numbers; statistics leave out requests that arrived during warm-up."""
    sc = raw.scenario
    lo, hi = float(sc.warmup_s), float(raw.end_s)
    req = request_columns(raw)
    counted = _rows(req, req["arrival_s"] >= lo)
    done = _rows(counted, counted["status"] == "done")
    rows = _replica_rows(raw, lo, hi)
    rep = {k: np.array([r[k] for r in rows]) for k in (rows[0] if rows else ())}
    span = max(hi - lo, 1e-12)
    en = _energy_block(rep, sc.facility.pue, _sum(done["energy_j"]))
    tokens_out = int(done["n_out"].sum())
    kwh = en["facility_j"] / 3.6e6
    out = {
        "scenario": sc.name,
        "seed": sc.seed,
        "requests_total": _len(counted),
        "requests_completed": _len(done),
        "requests_rejected": int((counted["status"] == "rejected").sum()),
        "requests_unfinished": int((counted["status"] == "unfinished").sum()),
        "tokens_in": int(done["n_in"].sum()),
        "tokens_out": tokens_out,
        "makespan_s": span,
        **en,
        "unattributed_active_note": UNATTRIBUTED_NOTE,
        **_carbon_cost(raw, list(range(len(raw.segments))), kwh, lo, hi),
        "currency": sc.facility.currency,
        "energy_per_request_j": en["energy_j"] / max(_len(done), 1),
        "energy_per_output_token_j": en["energy_j"] / max(tokens_out, 1),
        "tokens_per_joule": tokens_out / en["energy_j"] if en["energy_j"] > 0 else float("nan"),
        "mean_power_w": en["energy_j"] / span,
        "throughput_tokens_per_s": tokens_out / span,
        "throughput_requests_per_s": _len(done) / span,
        **_latency_block(done),
        **_slo_block(counted if raw.classes is None else _rows(counted, counted["request_class"] == "interactive"),
                     sc.slo, span),
        "rejections": value_counts(counted["reason"][counted["status"] == "rejected"]),
        "pools": {},
        "warnings": list(raw.warnings),
    }
    if not _len(done):
        out["warnings"].append(f"no request completed in the measured window ({_len(counted)} counted: "
                               f"{out['requests_rejected']} rejected, {out['requests_unfinished']} unfinished): "
                               "latency and per-token figures are undefined (null in summary.json)")
    for p in raw.pools:
        pr = _rows(rep, rep["pool"] == p.name)
        pd_ = _rows(done, done["pool"] == p.name)
        pen = _energy_block(pr, sc.facility.pue, _sum(pd_["energy_j"]))
        ptok = int(pd_["n_out"].sum())
        out["pools"][p.name] = {
            "profile": p.profile.name,
            "replicas": p.count,
            "power_cap_w": p.cap_w,
            "requests_completed": _len(pd_),
            "tokens_out": ptok,
            **pen,
            "tokens_per_joule": ptok / pen["energy_j"] if pen["energy_j"] > 0 else float("nan"),
            **_carbon_cost(raw, [i for i, k in enumerate(raw.replica_pool.tolist()) if raw.pools[k] is p],
                           pen["facility_j"] / 3.6e6, lo, hi, raw.pools.index(p)),
            "mean_power_w": pen["energy_j"] / span,
            "utilisation": _sum(pr["busy_s"]) / (span * max(_len(pr), 1)),
            **_latency_block(pd_),
            **_slo_block(_rows(counted, (counted["pool"] == p.name) & (
                True if raw.classes is None else counted["request_class"] == "interactive")), sc.slo, span),
        }
        if p.clocks is not None:  # only where set: a run without a locked clock reads as it always has
            out["pools"][p.name]["clock_mhz"] = {"prefill": p.clocks[0], "decode": p.clocks[1]}
        engine = _engine_block(raw, [i for i, k in enumerate(raw.replica_pool.tolist()) if raw.pools[k] is p])
        if engine:
            out["pools"][p.name]["engine"] = engine
    if raw.classes is not None:
        out["request_classes"] = classes_block(raw, counted, span)
    if raw.baseline is not None:
        out["dispatch"] = dispatch_block(raw, counted, lo)
    if raw.facility is not None:  # the power hierarchy: peaks against limits, cap events (dcsim/facility_report.py)
        from dcsim.facility_report import facility_summary

        out["facility"] = facility_summary(raw, lo, hi)
    if raw.scaling is not None:  # states over time, energy against always-on, cold starts (dcsim/scaling_report.py)
        from dcsim.scaling_report import scaling_summary

        out["autoscaling"] = scaling_summary(raw, rep, counted, lo, hi)
    return out


def classes_block(raw: RawResults, counted: Columns, span: float) -> dict:
    """Per request class over the counted requests: interactive ones' latencies (and SLO, where the scenario
    sets one), batch ones' deadline misses (done late, rejected, or unfinished) and deferrals."""
    sc = raw.scenario
    out = {}
    for name in ("interactive", "batch"):
        rows = _rows(counted, counted["request_class"] == name)
        done = _rows(rows, rows["status"] == "done")
        b = {"requests": _len(rows), "completed": _len(done), **{k: stats(done[k][~np.isnan(done[k])])
                                                                  for k in ("ttft_s", "e2e_s")}}
        if name == "interactive":
            b.update(_slo_block(rows, sc.slo, span))
        else:
            held = rows["released_s"] - rows["arrival_s"]
            deferred = held[np.isfinite(held) & (held > 0)]
            met = int(np.sum(rows["deadline_met"]))
            rcb = sc.request_classes.batch
            b.update({"deadline_s": rcb.deadline_s if rcb is not None else None, "deadline_met": met,
                      "deadline_misses": _len(rows) - met,
                      "late": int(np.sum(done["done_s"] > done["due_s"])),
                      "deferred": int(deferred.size), "deferral_s": stats(deferred)})
        out[name] = b
    return out


def dispatch_block(raw: RawResults, counted: Columns, lo: float) -> dict:
    """What deferring batch requests did against sending them at arrival (the same run with dispatch
    `immediate`): carbon and cost of both over one window, from the warm-up to the later run's end (the earlier
    run's fleet idle until then), and deadline misses of both."""
    base = raw.baseline
    hi = max(raw.end_s, base.end_s)
    x = np.array([lo, hi])
    c, c0 = float(fleet_grid(raw, "carbon", x)[-1]), float(fleet_grid(base, "carbon", x)[-1])
    m, m0 = float(fleet_grid(raw, "price", x)[-1]), float(fleet_grid(base, "price", x)[-1])
    bc = request_columns(base)
    bcount = _rows(bc, bc["arrival_s"] >= lo)
    bb = bcount["request_class"] == "batch"
    return {"name": raw.scenario.dispatch.name, "params": raw.scenario.dispatch.params.model_dump(),
            "window_s": [lo, hi], "carbon_g": c, "carbon_g_without_deferral": c0, "carbon_saved_g": c0 - c,
            "carbon_saved_share": (c0 - c) / c0 if c0 > 0 else float("nan"),
            "cost": m, "cost_without_deferral": m0, "cost_saved": m0 - m,
            "deadline_misses": int(np.sum(counted["request_class"] == "batch") - np.sum(counted["deadline_met"])),
            "deadline_misses_without_deferral": int(bb.sum() - np.sum(bcount["deadline_met"]))}


def value_counts(x: np.ndarray) -> dict[str, int]:
    """How often each value occurs, the most frequent first, ties in order of first occurrence (as pandas'
    value_counts)."""
    values, first, counts = np.unique(x, return_index=True, return_counts=True)
    order = sorted(range(len(values)), key=lambda i: (-counts[i], first[i]))
    return {str(values[i]): int(counts[i]) for i in order}


def _engine_block(raw: RawResults, replicas: list[int]) -> dict:
    """What a pool's scheduler counted (paged: preemptions, prefix-cache hit rate, graph padding) and its
    inter-token latencies over every gap; empty for policies that count nothing."""
    stats = [raw.policy_stats[i] for i in replicas if i < len(raw.policy_stats) and raw.policy_stats[i]]
    if not stats:
        return {}
    tot = {k: sum(s[k] for s in stats) for k in stats[0]}
    if "prefix_query_tokens" in tot:
        q = tot["prefix_query_tokens"]
        tot["prefix_hit_rate"] = tot.get("prefix_hit_tokens", 0) / q if q else 0.0
    runs = [raw.itl[i] for i in replicas if i < len(raw.itl) and len(raw.itl[i][0])]
    if runs:
        tot["itl_s"] = itl_stats(*(np.concatenate(c) for c in list(zip(*runs))[1:]))
    return tot


def itl_samples(t0: np.ndarray, t1: np.ndarray, k: np.ndarray, n: np.ndarray,
                per_run: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Inter-token gaps as (duration, weight) from decode runs: a run of k steps whose step time goes linearly
    from t0 to t1, each step a gap for each of its n decodes; long runs are represented by `per_run` evenly
    spaced steps carrying their share of the weight."""
    m = np.minimum(k, per_run).astype(np.int64)
    idx = np.repeat(np.arange(len(k)), m)
    start = np.cumsum(m) - m
    j = np.arange(int(m.sum())) - np.repeat(start, m)  # 0..m-1 within each run
    frac = np.where(np.repeat(m, m) > 1, j / np.maximum(np.repeat(m, m) - 1, 1), 0.0)
    dur = t0[idx] + (t1[idx] - t0[idx]) * frac
    w = (n[idx] * k[idx] / m[idx]).astype(np.float64)
    return dur, w


def itl_stats(t0: np.ndarray, t1: np.ndarray, k: np.ndarray, n: np.ndarray) -> dict[str, float]:
    """Mean and percentiles of the inter-token latency over every gap of every request."""
    dur, w = itl_samples(t0, t1, k, n)
    order = np.argsort(dur)
    dur, w = dur[order], w[order]
    cw = np.cumsum(w)
    out = {"mean": float(np.sum(dur * w) / cw[-1])}
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99)):
        out[name] = float(dur[min(np.searchsorted(cw, p / 100 * cw[-1]), len(dur) - 1)])
    return out


def replicas_table(raw: RawResults) -> pd.DataFrame:
    df = replica_energy(raw, float(raw.scenario.warmup_s), float(raw.end_s))
    span = max(raw.end_s - raw.scenario.warmup_s, 1e-12)
    df["utilisation"] = df["busy_s"] / span
    lg = raw.log
    done = lg["status"] == DONE
    df["requests_completed"] = np.bincount(lg["replica"][done], minlength=len(df))
    return df


def power_timeline(raw: RawResults, bins: int = 400) -> pd.DataFrame:
    """Mean power per pool and for the fleet in equal time bins over [0, end]: device active + idle + host."""
    import pandas as pd

    end = max(raw.end_s, 1e-9)
    edges = np.linspace(0.0, end, bins + 1)
    width = np.diff(edges)
    cols: dict[str, np.ndarray] = {"t_start_s": edges[:-1], "t_end_s": edges[1:]}
    fleet = np.zeros(bins)
    for p_idx, p in enumerate(raw.pools):
        total = np.zeros(bins)
        evaluator = p.evaluator
        idle_w = evaluator.idle_w if p.idle == "serving" else evaluator.deep_idle_w
        for i in np.flatnonzero(raw.replica_pool == p_idx):
            t0, t1, e, h = raw.segments[i]
            busy = np.diff(cumulative(t0, t1, t1 - t0, edges))
            act = np.diff(cumulative(t0, t1, e + h, edges))
            total += act + (idle_w + evaluator.host_idle_w) * np.maximum(width - busy, 0.0)
            if raw.tails:  # the fall after each busy period (power dynamics)
                total += np.diff(cumulative(*raw.tails[i][:3], edges))
            if raw.scaling is not None:  # off and loading replace serving-idle power
                off, load, off_w, load_w = _off_loading(raw, int(i), edges)
                total += (off_w - idle_w) * np.diff(off) + (load_w - idle_w) * np.diff(load)
        cols[f"{p.name}_w"] = total / width
        fleet += total
    cols["fleet_w"] = fleet / width
    return pd.DataFrame(cols)


def strict_json(obj: object, indent: int | None = 2, default=None) -> str:
    """JSON as the standard has it: NaN and infinities become null (json.dumps would write NaN/Infinity, which
    strict readers refuse). numpy scalars and arrays are written as numbers and lists; `default` (e.g. str)
    serialises anything else, which is otherwise a TypeError."""
    def fallback(o: object) -> object:
        if isinstance(o, np.ndarray):
            return _finite(o.tolist())
        if default is not None and not isinstance(o, (np.integer, np.floating)):
            return _finite(default(o))
        return _json_default(o)

    return json.dumps(_finite(obj), indent=indent, default=fallback, allow_nan=False)


def _finite(o: object) -> object:
    if isinstance(o, float | np.floating):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))
