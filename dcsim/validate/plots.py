"""Figures of one validation: measured and forecast power over the window, and latency CDFs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def measured_power(folder: Path, wall_start: float, window_s: float, width_s: float = 1.0) -> pd.DataFrame:
    """Sampled device power binned into width_s bins over the window (all devices summed)."""
    p = pd.read_csv(folder / "power.csv")
    p["t"] = p["t"] - wall_start
    p = p[(p["t"] >= 0) & (p["t"] <= window_s)]
    tot = p.groupby("t", as_index=False)["power_w"].sum()
    bins = np.arange(0.0, window_s + width_s, width_s)
    tot["bin"] = np.digitize(tot["t"], bins) - 1
    g = tot.groupby("bin")["power_w"].mean()
    return pd.DataFrame({"t_s": bins[g.index.to_numpy()] + width_s / 2, "power_w": g.to_numpy()})


def validation_plots(folder: Path, req: pd.DataFrame, sim_req: pd.DataFrame, sim_power: pd.DataFrame, meta: dict,
                     table: pd.DataFrame) -> list[Path]:
    """power.png (measured vs forecast over time, arrivals marked) and latency_cdf.png (e2e and wait)."""
    title = f"{folder.name} ({meta.get('device_name', 'device')})"
    files = []
    fig, ax = plt.subplots(figsize=(11.5, 4))
    if (folder / "power.csv").is_file():
        mp = measured_power(folder, float(meta["wall_start"]), float(meta["window_s"]))
        ax.plot(mp["t_s"], mp["power_w"], lw=1.0, color="C0", label="measured (NVML, 1 s means)")
    t = (sim_power["t_start_s"] + sim_power["t_end_s"]) / 2
    ax.plot(t, sim_power["replica_w"], lw=1.0, color="C3", alpha=0.8, label="forecast (dcsim)")
    ax.plot(req["arrival_s"], np.zeros(len(req)), "|", color="k", ms=8, label="arrivals")
    e = table.set_index("metric")
    ax.set_title(f"{title}: power over the window; energy measured {e.loc['energy_j', 'measured'] / 1e3:.1f} kJ, "
                 f"forecast {e.loc['energy_j', 'forecast'] / 1e3:.1f} kJ "
                 f"({e.loc['energy_j', 'rel_error'] * 100:+.1f}%)",
                 fontsize=9)
    ax.set_xlabel("time since the first arrival (s)")
    ax.set_ylabel("device power (W)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    files.append(folder / "power.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series = {
        "end-to-end latency": (req["end_s"] - req["arrival_s"], sim_req["e2e_s"]),
        "queue wait": (req["start_s"] - req["arrival_s"], sim_req["wait_s"]),
    }
    for ax, (name, (m, f)) in zip(axes, series.items()):
        for vals, lab, col in ((m, "measured", "C0"), (f, "forecast", "C3")):
            x = np.sort(np.asarray(vals, float))
            ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", color=col, label=lab)
        ax.set_xlabel(f"{name} (s)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title(name, fontsize=10)
    fig.suptitle(f"{title}: latency CDFs", fontsize=10)
    fig.tight_layout()
    files.append(folder / "latency_cdf.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files
