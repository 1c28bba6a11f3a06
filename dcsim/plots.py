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


def grid_plot(grid: pd.DataFrame, requests: pd.DataFrame, path: Path, summary: dict) -> Path:
    """Carbon and cost over time: the grid's carbon intensity (and price), the fleet's carbon and cost per bin
    (against the same requests sent at arrival, where batch requests were deferred), and when batch requests
    arrived and were released."""
    t = (grid["t_start_s"] + grid["t_end_s"]) / 2
    scale, unit = (3600.0, "h") if t.max() > 4 * 3600 else (60.0, "min") if t.max() > 1200 else (1.0, "s")
    width = (grid["t_end_s"] - grid["t_start_s"]).to_numpy() / 3600.0
    batch = "request_class" in requests.columns
    fig, axes = plt.subplots(3 if batch else 2, 1, figsize=(9, 8 if batch else 5.8), sharex=True)
    ax = axes[0]
    ax.step(t / scale, grid["carbon_per_kwh"], where="mid", color="C2", label="carbon intensity")
    ax.set_ylabel("g CO2e / kWh")
    thr = (summary.get("dispatch") or {}).get("params", {}).get("threshold")
    if thr is not None:
        ax.axhline(thr, color="C2", ls=":", lw=1, label=f"release threshold ({thr:g})")
    if grid["price_per_kwh"].nunique() > 1:
        ax2 = ax.twinx()
        ax2.step(t / scale, grid["price_per_kwh"], where="mid", color="C1", label="price")
        ax2.set_ylabel(f"price per kWh ({summary.get('currency', '')})")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(t / scale, grid["carbon_g"] / width / 1e3, color="k", lw=1.3, label="carbon")
    if "carbon_g_without_deferral" in grid.columns:
        ax.plot(t / scale, grid["carbon_g_without_deferral"] / width / 1e3, color="C3", lw=1, alpha=0.8,
                label="carbon, batch sent at arrival")
    ax.set_ylabel("kg CO2e per hour")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    if grid["cost"].abs().sum() > 0:
        ax2 = ax.twinx()
        ax2.plot(t / scale, grid["cost"] / width, color="C1", lw=1, ls="--", label="cost (right axis)")
        ax2.set_ylabel(f"cost per hour ({summary.get('currency', '')})")
        ax2.set_ylim(bottom=0)
        ax2.legend(loc="upper right")
    if batch:
        ax = axes[2]
        b = requests[requests["request_class"] == "batch"]
        edges = np.concatenate((grid["t_start_s"].to_numpy()[::8], [grid["t_end_s"].iloc[-1]]))
        ax.hist(b["arrival_s"] / scale, bins=edges / scale, histtype="step", color="C0", label="batch arrivals")
        ax.hist(b["released_s"].dropna() / scale, bins=edges / scale, histtype="step", color="C4",
                label="batch released to the router")
        ax.set_ylabel("requests per bin")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    axes[-1].set_xlabel(f"time ({unit})")
    fig.suptitle(f"{summary['scenario']}: carbon and cost over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
