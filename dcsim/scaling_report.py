"""What an autoscaler did: replicas in each state over time, energy against always-on, and cold starts' latency."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from dcsim.sim.engine import RawResults

STATES = ("off", "loading", "idle", "busy")


def cold_wait(raw: "RawResults") -> np.ndarray:
    """Seconds each request waited for a replica's model load to end (0 for the rest): its extra TTFT."""
    return np.asarray(raw.scaling.cold_wait, dtype=np.float64)


def scaling_summary(raw: "RawResults", rep: dict, counted: dict, lo: float, hi: float) -> dict:
    """The summary's autoscaling block over the window [lo, hi]."""
    from dcsim.results import _sum, stats

    sc = raw.scaling
    off_s, load_s = _sum(rep["off_s"]), _sum(rep["loading_s"])
    energy = _sum(rep["active_j"]) + _sum(rep["idle_j"]) + _sum(rep["host_j"]) + _sum(rep["off_j"]) + \
        _sum(rep["load_j"])
    # the same busy segments with every replica serving-idle, never off or loading (see the docstring of
    # dcsim/sim/autoscale.py); a run of always_on is the measured comparison
    always = energy - _sum(rep["off_j"]) - _sum(rep["load_j"])
    for i in range(len(raw.segments)):
        p = raw.pools[int(raw.replica_pool[i])]
        w = p.evaluator.idle_w if p.idle == "serving" else p.evaluator.deep_idle_w
        always += w * (float(rep["off_s"][i]) + float(rep["loading_s"][i]))
    ids = np.asarray(counted["id"])
    waits = cold_wait(raw)[ids]
    waited = waits[waits > 0]
    done = np.asarray(counted["status"]) == "done"
    return {
        "policy": raw.scenario.autoscaling.name,
        "params": raw.scenario.autoscaling.params.model_dump(),
        "cold_starts": {raw.pools[p.index].name: {"load_s": p.cold.load_s, "load_j": p.cold.load_j,
                                                  "source": p.cold.source} for p in sc.pools},
        "loads": int(sc.loads),
        "off_replica_s": off_s, "loading_replica_s": load_s,
        "energy_j": energy,
        "always_on_same_work_j": always,
        "saved_vs_always_on_j": always - energy,
        "saved_vs_always_on_share": (always - energy) / always if always > 0 else float("nan"),
        "requests_waited_for_load": int(waited.size),
        "share_waited_for_load": waited.size / max(len(ids), 1),
        "requests_completed_after_load": int(((waits > 0) & done).sum()),
        "extra_ttft_s": stats(waited),
    }


def states_timeline(raw: "RawResults", bins: int = 400) -> "pd.DataFrame":
    """Mean replicas off, loading, serving-idle and busy per pool in equal time bins over [0, end]."""
    import pandas as pd

    from dcsim.results import _off_loading, cumulative

    end = max(raw.end_s, 1e-9)
    edges = np.linspace(0.0, end, bins + 1)
    width = np.diff(edges)
    cols: dict[str, np.ndarray] = {"t_start_s": edges[:-1], "t_end_s": edges[1:]}
    for p_idx, p in enumerate(raw.pools):
        acc = {k: np.zeros(bins) for k in STATES}
        for i in np.flatnonzero(raw.replica_pool == p_idx):
            t0, t1, _, _ = raw.segments[i]
            busy = np.diff(cumulative(t0, t1, t1 - t0, edges))
            off, load, _, _ = _off_loading(raw, int(i), edges)
            off, load = np.diff(off), np.diff(load)
            acc["busy"] += busy
            acc["off"] += off
            acc["loading"] += load
            acc["idle"] += np.maximum(width - busy - off - load, 0.0)
        for k in STATES:
            cols[f"{p.name}_{k}"] = acc[k] / width
    return pd.DataFrame(cols)


def states_plot(timeline: "pd.DataFrame", pools: list[str], path, title: str):
    """Stacked replicas in each state over time, one panel per pool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pools), 1, figsize=(9.5, 2.6 * len(pools) + 0.6), squeeze=False, sharex=True)
    t = 0.5 * (timeline["t_start_s"] + timeline["t_end_s"]) / 3600.0
    colours = {"off": "#bbbbbb", "loading": "#e6a23c", "idle": "#7fb3d5", "busy": "#1f5f8b"}
    for ax, name in zip(axes[:, 0], pools):
        ax.stackplot(t, *[timeline[f"{name}_{k}"] for k in STATES], labels=[
            "off", "loading", "serving-idle", "busy"], colors=[colours[k] for k in STATES], step=None)
        ax.set_ylabel(f"{name}: replicas")
        ax.set_ylim(0, None)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes[-1, 0].set_xlabel("time (h)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
