"""Figures of the studies in studies/ (one function per study) and the helpers they share: reading a sweep's
tables, derived metrics, and the energy/latency Pareto front.

Regenerate every figure and copy each sweep's results.csv beside its write-up:
    python studies/study_plots.py --results results/studies --out studies
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

# study folder -> the sweeps (folders under the results root) whose results.csv it keeps
STUDIES: dict[str, list[str]] = {
    "hybrid-threshold": ["hybrid-input-threshold", "hybrid-output-threshold", "hybrid-baseline",
                         "hybrid-poisson-threshold-gsm8k", "hybrid-poisson-threshold-alpaca",
                         "hybrid-poisson-energy-cost-gsm8k", "hybrid-poisson-energy-cost-alpaca",
                         "hybrid-poisson-fleet"],
    "power-caps": ["powercap-a100", "powercap-h100"],
    "batch-size": ["batch-size"],
    "sharding": ["sharding"],
    "fleet-mix": ["fleet-mix"],
}
OFF = 1_000_000  # a threshold past every prompt: that token_threshold condition is off


# ---- reading ----------------------------------------------------------------------------------
def read(run_dir: str | Path, table: str = "results") -> pd.DataFrame:
    """A sweep's per-point (results) or per-configuration (summary) table."""
    return pd.read_csv(Path(run_dir) / f"{table}.csv", low_memory=False).copy()


def workload(path: str) -> str:
    """Short workload name of a trace path."""
    stem = Path(str(path)).stem
    return {"gsm8k-test": "GSM8K", "alpaca-shaped": "Alpaca-shaped", "azure-conv-2023": "Azure conv",
            "azure-code-2023": "Azure code"}.get(stem, stem)


def router_label(spec: str) -> str:
    """'energy_cost(0.5)' for a router mapping written as JSON (or a Python dict repr) in a sweep table."""
    try:
        r = json.loads(spec)
    except (TypeError, json.JSONDecodeError):
        return str(spec)
    lam = r.get("lambda")
    return r["name"] + (f"({lam:g})" if lam is not None else "")


def request_energy_j(df: pd.DataFrame) -> pd.Series:
    """Device + host energy of the steps that served requests (no idle): the paper's 'CPU+GPU energy'."""
    return df["active_j"] + df["host_j"]


def busy_seconds(df: pd.DataFrame) -> pd.Series:
    """Sum over replicas of the time each spent serving: sum of pools' utilisation x replicas x makespan."""
    pools = sorted({c.split(".")[1] for c in df.columns if c.startswith("pools.") and c.endswith(".utilisation")})
    return sum(df[f"pools.{p}.utilisation"] * df[f"pools.{p}.replicas"] for p in pools) * df["makespan_s"]


def mean_ci(df: pd.DataFrame, by: list[str], col: str) -> pd.DataFrame:
    """Mean and 95% Student-t half-width of a column over seeds, per configuration."""
    from scipy import stats

    g = df.groupby(by, dropna=False)[col]
    out = g.agg(["mean", "std", "count"]).reset_index()
    t = np.where(out["count"] > 1, stats.t.ppf(0.975, np.maximum(out["count"] - 1, 1)), np.nan)
    out["half"] = t * out["std"].fillna(0) / np.sqrt(out["count"])
    return out


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats on both x and y (both minimised; ties kept)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.ones(x.size, bool)
    for i in range(x.size):
        dominated = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        keep[i] = not dominated.any()
    return keep


# ---- drawing ----------------------------------------------------------------------------------
def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lines(ax, df: pd.DataFrame, x: str, col: str, by: str, scale: float = 1.0,
           label: Callable[[object], str] = str, **kw) -> None:
    """One line per value of `by`: mean of `col` over seeds against `x`, 95% CI bars."""
    for i, (key, part) in enumerate(df.groupby(by, sort=True)):
        s = mean_ci(part, [x], col).sort_values(x)
        ax.errorbar(s[x], s["mean"] * scale, yerr=np.nan_to_num(s["half"] * scale), marker="o", ms=4, capsize=3,
                    lw=1.3, label=label(key), color=f"C{i}", **kw)
    ax.grid(alpha=0.3)


# ---- study 1: hybrid M1 Pro + A100 ------------------------------------------------------------
def hybrid_figures(res: Path, out: Path) -> list[Path]:
    files = []
    base = read(res / "hybrid-baseline")
    base["workload"] = base["trace.path"].map(workload)
    kinds = {"input": read(res / "hybrid-input-threshold"), "output": read(res / "hybrid-output-threshold")}
    for k, d in kinds.items():
        d["workload"] = d["trace.path"].map(workload)
        d["threshold"] = d[f"router.{k}_threshold"]
    wl = ["GSM8K", "Alpaca-shaped"]
    for metric, fname, ylab in (
        ("energy", "hybrid-closed-energy.png", "energy (MJ)"),
        ("runtime", "hybrid-closed-runtime.png", "seconds (x1000)"),
    ):
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), squeeze=False)
        for r, w in enumerate(wl):
            b = base[base["workload"] == w].iloc[0]
            pairs = ((request_energy_j, "request energy (CPU+GPU, no idle)", 1e-6),
                     (lambda d: d["energy_j"], "fleet energy (with idle until the last request ends)", 1e-6)) \
                if metric == "energy" else \
                ((busy_seconds, "busy time summed over replicas", 1e-3),
                 (lambda d: d["makespan_s"], "makespan (time until the last request ends)", 1e-3))
            for c, (fn, title, sc) in enumerate(pairs):
                ax = axes[r][c]
                for i, (k, d) in enumerate(kinds.items()):
                    dd = d[d["workload"] == w].sort_values("threshold")
                    ax.plot(np.maximum(dd["threshold"], 1), fn(dd) * sc, marker="o", ms=4, color=f"C{i}",
                            label=f"{k}-token threshold")
                ax.axhline(float(fn(b.to_frame().T).iloc[0]) * sc, color="k", ls="--", lw=1,
                           label="A100-only baseline")
                ax.set_xscale("log", base=2)
                ax.set_xlabel("threshold (tokens; 0 drawn at 1)")
                ax.set_ylabel(ylab)
                ax.set_title(f"{w}: {title}", fontsize=9)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        fig.suptitle("Hybrid 4 x M1 Pro + 2 x A100, all requests at t=0 (Llama-2-7B, HF, one request per replica)")
        files.append(_save(fig, out / fname))

    # Poisson: thresholds and energy_cost lambda
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), squeeze=False)
    for r, (w, wname) in enumerate((("gsm8k", "GSM8K"), ("alpaca", "Alpaca-shaped"))):
        d = read(res / f"hybrid-poisson-threshold-{w}")
        inp = d["router.input_threshold"]
        outp = d["router.output_threshold"]
        d["policy"] = np.where(inp >= OFF, "out<=" + outp.fillna(0).astype(int).astype(str),
                               np.where(inp == 0, "A100 only", "in<=" + inp.astype(str)))
        order = list(dict.fromkeys(d.sort_values(["router.input_threshold", "router.output_threshold"])["policy"]))
        d["pos"] = d["policy"].map({p: i for i, p in enumerate(order)})
        for c, (col, ylab, sc, log) in enumerate((("e2e_s.p99", "p99 end-to-end latency (s)", 1, True),
                                                  ("energy_j", "fleet energy, with idle (MJ)", 1e-6, False))):
            ax = axes[r][c]
            _lines(ax, d, "pos", col, "arrivals.rate_per_s", sc, lambda k: f"{k:g} req/s")
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(order, rotation=30, fontsize=8)
            ax.set_ylabel(ylab)
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{wname}: token_threshold", fontsize=9)
            ax.legend(fontsize=7)
        e = read(res / f"hybrid-poisson-energy-cost-{w}")
        ax = axes[r][2]
        _lines(ax, e, "router.lambda", "e2e_s.p99", "arrivals.rate_per_s", 1, lambda k: f"{k:g} req/s")
        ax.set_yscale("log")
        ax.set_xlabel("energy_cost lambda (0 = time only, 1 = energy only)")
        ax.set_ylabel("p99 end-to-end latency (s)")
        ax2 = ax.twinx()
        for i, (k, part) in enumerate(e.groupby("arrivals.rate_per_s")):
            s = part.groupby("router.lambda")["pools.m1.requests_completed"].mean()
            ax2.plot(s.index, s.to_numpy() / part["requests_total"].iloc[0], ls=":", color=f"C{i}")
        ax2.set_ylabel("share of requests on the M1s (dotted)")
        ax2.set_ylim(0, 1)
        ax.set_title(f"{wname}: energy_cost router", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Hybrid fleet under Poisson arrivals (mean and 95% CI over 3 seeds)")
    files.append(_save(fig, out / "hybrid-poisson.png"))

    d = read(res / "hybrid-poisson-fleet")
    d["workload"] = d["trace.path"].map(workload)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for c, w in enumerate(wl):
        ax = axes[0][c]
        _lines(ax, d[d["workload"] == w], "router.output_threshold", "energy_j", "fleet.a100.count", 1e-6,
               lambda k: f"4 x M1 + {k} x A100")
        ax.set_xlabel("output-token threshold (0 = all on the A100s)")
        ax.set_ylabel("fleet energy (MJ, with idle)")
        ax.set_title(f"{w}, {d[d['workload'] == w]['arrivals.rate_per_s'].iloc[0]:g} req/s Poisson", fontsize=9)
        ax.legend(fontsize=7)
    files.append(_save(fig, out / "hybrid-fleet-size.png"))
    return files


# ---- study 2: power caps ----------------------------------------------------------------------
POWERCAP_SLO = {"powercap-a100": 60.0, "powercap-h100": 5.0}  # p99 e2e SLO (s) drawn on the plots


def energy_change_pct(d: pd.DataFrame, cap: str, pair: list[str]) -> pd.Series:
    """Energy change (%) of each run against the run at the highest cap with the same rate and seed (paired:
    same arrivals), so that rates whose energies differ 5x share one axis."""
    ref = d.loc[d.groupby(pair)[cap].idxmax(), pair + ["energy_j"]].rename(columns={"energy_j": "_ref"})
    m = d[pair].merge(ref, on=pair, how="left")
    return pd.Series(100.0 * (d["energy_j"].to_numpy() / m["_ref"].to_numpy() - 1.0), index=d.index)


def _rate_label(k: float) -> str:
    return f"{k:g} req/s"


def powercap_figures(res: Path, out: Path) -> list[Path]:
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), squeeze=False)
    for r, (sweep, dev) in enumerate((("powercap-a100", "a100"), ("powercap-h100", "h100"))):
        d = read(res / sweep)
        cap = f"fleet.{dev}.power_cap_w"
        d["energy_change_pct"] = energy_change_pct(d, cap, ["arrivals.rate_per_s", "seed"])
        for c, (col, ylab, sc, log) in enumerate((("energy_change_pct", "fleet energy vs the default limit (%)",
                                                   1, False),
                                                  ("e2e_s.p99", "p99 end-to-end latency (s)", 1, True),
                                                  ("tokens_per_joule", "output tokens per joule", 1, False))):
            ax = axes[r][c]
            _lines(ax, d, cap, col, "arrivals.rate_per_s", sc, _rate_label)
            ax.set_xlabel("power cap per GPU (W)")
            ax.set_ylabel(ylab)
            if log:
                ax.set_yscale("log")
                ax.axhline(POWERCAP_SLO[sweep], color="k", ls="--", lw=1, label=f"SLO {POWERCAP_SLO[sweep]:g} s")
            ax.set_title({"a100": "A100-SXM4, Llama-2-7B, HF, one request at a time",
                          "h100": "H100 SXM, Llama-3.1-8B, vLLM, continuous batching"}[dev], fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle("Power caps: GSM8K test, Poisson arrivals (mean and 95% CI over 3 seeds)")
    return [_save(fig, out / "power-caps.png")]


# ---- study 3: batch size ----------------------------------------------------------------------
def batch_figures(res: Path, out: Path) -> list[Path]:
    d = read(res / "batch-size")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), squeeze=False)
    for c, dev in enumerate(("h100", "b200")):
        part = d[d["name"] == dev]
        for r, (col, ylab, log) in enumerate((("tokens_per_joule", "output tokens per joule", False),
                                              ("e2e_s.p99", "p99 end-to-end latency (s)", True))):
            ax = axes[r][c]
            _lines(ax, part, "fleet.gpu.batching.max_batch", col, "arrivals.rate_per_s", 1, lambda k: f"{k:g} req/s")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("max_batch (continuous batching)")
            ax.set_ylabel(ylab)
            if log:
                ax.set_yscale("log")
            ax.set_title(f"one {dev.upper()}, Llama-3.1-8B (ML.ENERGY v3 profile)", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle("Batch limit and load: Azure conversation token counts, Poisson arrivals (3 seeds)")
    return [_save(fig, out / "batch-size.png")]


# ---- study 4: sharding ------------------------------------------------------------------------
GPUS = {"x1": 1, "x2": 2, "x4": 4, "x8": 8}


def gpus_of(label: str) -> int:
    """GPUs per replica from a label such as '70b-h100x4-v3'."""
    for k, v in GPUS.items():
        if k in label:
            return v
    raise ValueError(label)


def sharding_figures(res: Path, out: Path) -> list[Path]:
    d = read(res / "sharding")
    d["label"] = d["name"]
    d["gpus"] = d["label"].map(gpus_of)
    d["w_per_gpu"] = d["mean_power_w"] / d["gpus"]
    d["j_per_tok"] = d["energy_per_output_token_j"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), squeeze=False)
    labels = sorted(d["label"].unique(), key=lambda s: (gpus_of(s), s))
    for c, (col, ylab, log) in enumerate((("j_per_tok", "energy per output token (J, whole replica)", True),
                                          ("w_per_gpu", "mean power per GPU (W)", False),
                                          ("e2e_s.p99", "p99 end-to-end latency (s)", True))):
        ax = axes[0][c]
        for i, lab in enumerate(labels):
            s = mean_ci(d[d["label"] == lab], ["arrivals.rate_per_s"], col)
            ax.errorbar(s["arrivals.rate_per_s"], s["mean"], yerr=np.nan_to_num(s["half"]), marker="o", ms=4,
                        capsize=3, color=f"C{i}", ls="-" if lab.startswith("8b") else "--",
                        label=f"{lab} ({gpus_of(lab)} GPU{'s' if gpus_of(lab) > 1 else ''})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("Poisson rate (req/s)")
        ax.set_ylabel(ylab)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.suptitle("One replica of 1 GPU (Llama-3.1-8B, solid) or 2/4/8 GPUs (Llama-3.1-70B, dashed): "
                 "Azure conversation token counts (3 seeds)")
    return [_save(fig, out / "sharding.png")]


# ---- study 5: fleet mix -----------------------------------------------------------------------
def fleet_table(res: Path) -> pd.DataFrame:
    """Per (trace, fleet, router): mean energy and p99 over seeds, and whether it is on the Pareto front."""
    d = read(res / "fleet-mix")
    d["workload"] = d["trace.path"].map(workload)
    d["fleet"] = d["name"]
    d["router_label"] = d["router"].map(router_label)
    g = d.groupby(["workload", "fleet", "router_label"], as_index=False).agg(
        energy_mj=("energy_j", lambda s: s.mean() / 1e6), p99_s=("e2e_s.p99", "mean"),
        tokens_per_j=("tokens_per_joule", "mean"), seeds=("seed", "count"))
    g["pareto"] = False
    for w, part in g.groupby("workload"):
        g.loc[part.index, "pareto"] = pareto_front(part["energy_mj"].to_numpy(), part["p99_s"].to_numpy())
    return g


def fleet_figures(res: Path, out: Path) -> list[Path]:
    g = fleet_table(res)
    fleets = sorted(g["fleet"].unique())
    routers = sorted(g["router_label"].unique())
    markers = dict(zip(routers, "os^vDP*X"))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), squeeze=False)
    for c, w in enumerate(("Azure conv", "Azure code")):
        ax = axes[0][c]
        part = g[g["workload"] == w]
        for i, f in enumerate(fleets):
            for r in routers:
                p = part[(part["fleet"] == f) & (part["router_label"] == r)]
                ax.scatter(p["p99_s"], p["energy_mj"], color=f"C{i}", marker=markers[r], s=40, alpha=0.85,
                           edgecolor="k" if bool(p["pareto"].any()) else "none")
        front = part[part["pareto"]].sort_values("p99_s")
        ax.step(front["p99_s"], front["energy_mj"], where="post", color="k", lw=1.2)
        ax.set_xscale("log")
        ax.set_xlabel("p99 end-to-end latency (s)")
        ax.set_ylabel("fleet energy over the hour (MJ)")
        ax.set_title(f"{w} trace (2023), replayed: Pareto front (black line, outlined points)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], color=f"C{i}", marker="o", ls="", label=f) for i, f in enumerate(fleets)]
    handles += [plt.Line2D([], [], color="grey", marker=markers[r], ls="", label=r) for r in routers]
    axes[0][1].legend(handles=handles, fontsize=7, loc="upper right")
    fig.suptitle("Fleet mix x router, Llama-3.1-8B, continuous batching (max_batch 128)")
    return [_save(fig, out / "fleet-mix-pareto.png")]


FIGURES = {"hybrid-threshold": hybrid_figures, "power-caps": powercap_figures, "batch-size": batch_figures,
           "sharding": sharding_figures, "fleet-mix": fleet_figures}


def build(results: Path, studies: Path, only: list[str] | None = None) -> list[Path]:
    """Draw each study's figures into studies/<study>/ and copy its sweeps' results.csv there."""
    files = []
    for name, sweeps in STUDIES.items():
        if only and name not in only:
            continue
        out = studies / name
        out.mkdir(parents=True, exist_ok=True)
        for s in sweeps:
            dst = out / f"{s}.csv"
            shutil.copyfile(results / s / "results.csv", dst)
            files.append(dst)
        files += FIGURES[name](results, out)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="draw the studies' figures from their sweeps' output folders")
    ap.add_argument("--results", default="results/studies", help="folder holding one sweep output folder each")
    ap.add_argument("--out", default="studies", help="studies folder (one subfolder per study)")
    ap.add_argument("--only", nargs="*", help="study names (default: all)")
    a = ap.parse_args(argv)
    for f in build(Path(a.results), Path(a.out), a.only):
        print(f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
