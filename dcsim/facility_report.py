"""The power hierarchy's figures from a run: each level's power over time (exact, from the replicas' logged
steps), its peak against its limit, time above the limit, and what the power manager did (cap events and time
capped). Pure: results.py puts the summary block in summary.json, run_outputs.py writes the tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dcsim.sim.engine import RawResults
    from dcsim.sim.facility import Level


def _idle_w(raw: "RawResults", i: int) -> float:
    pool = raw.pools[int(raw.replica_pool[i])]
    evaluator = pool.evaluator
    return (evaluator.idle_w if pool.idle == "serving" else evaluator.deep_idle_w) + evaluator.host_idle_w


def level_power(raw: "RawResults", replicas: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The replicas' summed device and host power as a step function over [0, end]: (times, watts), watts[k]
    holding from times[k] to times[k + 1] (times ends with the run's end). Each step draws its mean power over
    its span, a replica between steps its idle power: the integral is the run's energy of these replicas."""
    end = float(raw.end_s)
    base = 0.0
    ts, ds = [np.array([0.0, end])], [np.zeros(2)]
    for i in replicas:
        idle = _idle_w(raw, i)
        base += idle
        if raw.scaling is not None:  # spans off or loading draw that instead of idle
            from dcsim.sim.autoscale import state_device_w, state_spans

            p = int(raw.replica_pool[i])
            cold = raw.scaling.pools[p].cold
            ev_p = raw.pools[p].evaluator
            device_idle = idle - ev_p.host_idle_w  # the host idles in every state; the device's draw changes
            for a, b, st in state_spans(raw.scaling, i, p, end):
                lift = state_device_w(cold, ev_p, st) - device_idle
                ts += [np.array([a]), np.array([b])]
                ds += [np.array([lift]), np.array([-lift])]
        t0, t1, e, h = raw.segments[i]
        dur = t1 - t0
        keep = dur > 0
        if not keep.any():
            continue
        t0, t1, dur = t0[keep], t1[keep], dur[keep]
        lift = (e[keep] + h[keep]) / dur - idle
        ts += [t0, t1]
        ds += [lift, -lift]
    t = np.concatenate(ts)
    d = np.concatenate(ds)
    order = np.argsort(t, kind="stable")
    t, d = t[order], d[order]
    level = base + np.cumsum(d)
    last = np.r_[t[1:] != t[:-1], True]  # the power after all changes at one instant
    t, level = t[last], level[last]
    inside = t < end
    return np.r_[t[inside], end], level[inside]


def _window(t: np.ndarray, w: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Durations and watts of the step function's pieces inside [lo, hi]."""
    a = np.clip(t[:-1], lo, hi)
    b = np.clip(t[1:], lo, hi)
    return b - a, w


def _capped_s(lv: "Level", lo: float, hi: float) -> float:
    return float(sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in lv.capped if e is not None))


def facility_summary(raw: "RawResults", lo: float, hi: float) -> dict:
    """summary.json's `facility` block over the window [lo, hi]: per level, its limit, peak power (and when,
    and as a share of the limit), time above the limit, energy and mean power, cap events and time capped."""
    fac = raw.facility
    levels = {}
    span = max(hi - lo, 1e-12)
    for lv in fac.levels:
        t, w = level_power(raw, lv.replicas)
        dur, w = _window(t, w, lo, hi)
        on = dur > 0
        peak = float(w[on].max()) if on.any() else float("nan")
        peak_at = float(max(t[:-1][on][int(np.argmax(w[on]))], lo)) if on.any() else float("nan")
        energy = float(np.sum(dur * w))
        # above by more than float rounding: GPUs held at a cap that sums to the limit draw the limit, not more
        over = float(np.sum(dur[w > lv.limit_w * (1 + 1e-9)])) if lv.limit_w is not None else 0.0
        ev = [e for e in fac.events if e[1] == lv.name and lo <= e[0] <= hi]
        levels[lv.name] = {
            "kind": lv.kind,
            "replicas": len(lv.replicas),
            "limit_w": lv.limit_w,
            "peak_w": peak,
            "peak_at_s": peak_at,
            "peak_share_of_limit": peak / lv.limit_w if lv.limit_w else None,
            "time_above_limit_s": over,
            "share_of_time_above_limit": over / span if lv.limit_w is not None else None,
            "mean_w": energy / span,
            "energy_j": energy,
            "cap_events": sum(1 for e in ev if e[2] == "cap"),
            "cap_adjustments": sum(1 for e in ev if e[2] == "adjust"),
            "releases": sum(1 for e in ev if e[2] == "release"),
            "time_capped_s": _capped_s(lv, lo, hi),
            "share_of_time_capped": _capped_s(lv, lo, hi) / span,
            "first_cap_s": next((e[0] for e in ev if e[2] == "cap"), None),
        }
    return {"policy": fac.policy, "control_interval_s": fac.control_interval_s, "control_ticks": fac.ticks,
            "power_counted": "device and host watts of each level's replicas (no PUE overhead)", "levels": levels}


def events_columns(raw: "RawResults") -> dict[str, list]:
    """The manager's events as columns (power_events.csv): time, level, action (cap, adjust, release), the
    level's sampled power and limit, and the cap asked for (watts per device, or share of the default limit)."""
    fac = raw.facility
    limit = {lv.name: lv.limit_w for lv in fac.levels}
    ev = fac.events
    return {"t_s": [e[0] for e in ev], "level": [e[1] for e in ev], "action": [e[2] for e in ev],
            "power_w": [e[3] for e in ev], "limit_w": [limit[e[1]] for e in ev],
            "cap_w": [e[4] for e in ev], "cap_fraction": [e[5] for e in ev]}


def levels_timeline(raw: "RawResults", bins: int = 400) -> dict[str, np.ndarray]:
    """Mean power of every level in equal time bins over [0, end] (power_levels.csv), beside power.csv's pools."""
    end = max(float(raw.end_s), 1e-9)
    edges = np.linspace(0.0, end, bins + 1)
    cols: dict[str, np.ndarray] = {"t_start_s": edges[:-1], "t_end_s": edges[1:]}
    for lv in raw.facility.levels:
        t, w = level_power(raw, lv.replicas)
        cum = np.r_[0.0, np.cumsum(np.diff(t) * w)]
        at = np.interp(edges, t, cum)
        cols[f"{lv.name}_w"] = np.diff(at) / np.diff(edges)
    return cols
