"""Matplotlib figures (PNG) for runs: power over time per pool, latency CDFs, energy breakdown."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def run_plots(pools: list[str], summary: dict, power: pd.DataFrame, requests: pd.DataFrame, out: Path) -> list[Path]:
    """The three standard figures of one run from its tables (dcsim.results); returns the files written."""
    files = [power_plot(power, pools, out / "power.png", summary["scenario"])]
    done = requests[requests["status"] == "done"]
    files.append(latency_cdf_plot(done, pools, out / "latency_cdf.png", summary["scenario"]))
    files.append(energy_breakdown_plot(summary, out / "energy_breakdown.png"))
    return files


def power_plot(power: pd.DataFrame, pools: list[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    t = (power["t_start_s"] + power["t_end_s"]) / 2
    scale, unit = (60.0, "min") if t.max() > 1200 else (1.0, "s")
    for i, name in enumerate(pools):
        ax.plot(t / scale, power[f"{name}_w"] / 1e3, label=name, lw=1.2, color=f"C{i}")
    if len(pools) > 1:
        ax.plot(t / scale, power["fleet_w"] / 1e3, label="fleet", color="k", lw=1.5)
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("power (kW, device + host)")
    ax.set_title(f"{title}: power over time")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_cdf_plot(done: pd.DataFrame, pools: list[str], path: Path, title: str) -> Path:
    """CDFs of queue wait, TTFT and end-to-end latency per pool (pool colours as in the power plot)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, col, label in zip(axes, ("wait_s", "ttft_s", "e2e_s"), ("queue wait", "time to first token", "end-to-end")):
        top = 0.0
        for i, pool in enumerate(pools):
            x = np.sort(done.loc[done["pool"] == pool, col].dropna().to_numpy())
            if x.size:
                ax.plot(x, np.arange(1, x.size + 1) / x.size, label=pool, color=f"C{i}")
                top = max(top, float(x[-1]))
        ax.set_xlabel(f"{label} (s)")
        # log beyond 10 ms where the values reach it (waits and latencies span decades); a linear axis from 0
        # where every value is below (symlog there only labelled the data limits, e.g. a few ms of queue wait)
        if top > 1e-2:
            ax.set_xscale("symlog", linthresh=1e-2)
        else:
            ax.set_xlim(left=0)
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(f"{title}: latency CDFs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def energy_breakdown_plot(summary: dict, path: Path) -> Path:
    pools = list(summary["pools"])
    parts = (("active_j", "device active"), ("idle_j", "device idle"), ("host_j", "host"))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(pools) + 2), 4))
    bottom = np.zeros(len(pools))
    for key, label in parts:
        vals = np.array([summary["pools"][p][key] for p in pools]) / 3.6e6
        ax.bar(pools, vals, bottom=bottom, label=label)
        bottom += vals
    ax.set_ylabel("energy (kWh)")
    ax.set_title(f"{summary['scenario']}: energy by pool and state")
    ax.legend(loc="best")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
