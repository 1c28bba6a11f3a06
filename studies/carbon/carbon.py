"""Carbon-aware dispatch: how much grid carbon deferring batch requests to cleaner hours saves, against the
release threshold, the batch deadline and the fleet's idle power, on one simulated day of the Azure LLM inference
conversation trace (2023) under a daily arrival curve.

Every point is scenarios/carbon-defer-h100-azure-conv.yaml with overrides: half the requests batch, deadline D,
`carbon_defer` at threshold X (margin 600 s), the replicas idling at serving-idle or deep-idle power. Each run
also simulates the same requests sent at arrival (dispatch `immediate`), so the carbon saved is over one window.
The carbon series is the shipped EXAMPLE daily curve (scenarios/grid/example-carbon-daily.csv), not measured
data. Writes carbon.csv and carbon.png beside this file, and the example scenario's own carbon_cost.png as
example-run.png. Run from the repository root:
    python studies/carbon/carbon.py            # about 3 minutes on one core
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCENARIO = REPO / "scenarios" / "carbon-defer-h100-azure-conv.yaml"
THRESHOLDS = (250.0, 300.0, 350.0, 400.0)  # g CO2e/kWh; the example curve spans 235-500
DEADLINES_H = (4.0, 12.0, 24.0)
IDLE = ("serving", "deep")
FIELDS = ("idle", "deadline_h", "policy", "threshold", "carbon_kg", "carbon_kg_without_deferral", "carbon_saved_kg",
          "carbon_saved_share", "cost", "cost_saved", "batch_deferred", "batch_deferral_mean_h", "deadline_misses",
          "deadline_misses_without_deferral", "interactive_ttft_p99_s", "interactive_slo_attainment",
          "batch_e2e_p99_h", "energy_kwh", "window_h", "energy_saved_kwh", "carbon_saved_by_timing_kg")
PRICE = 0.12  # the scenario's constant price per kWh: cost over a window / PRICE is its facility kWh


def split_saving(r: dict) -> dict:
    """The carbon saved in two parts: the facility energy deferral saved (kWh over the window, from the cost at a
    constant price) valued at the undeferred run's mean intensity, and the rest, what moving energy to cleaner
    hours saved (carbon_saved_by_timing_kg)."""
    kwh0 = (r["cost"] + r["cost_saved"]) / PRICE
    saved_kwh = r["cost_saved"] / PRICE
    r["energy_saved_kwh"] = saved_kwh
    r["carbon_saved_by_timing_kg"] = r["carbon_saved_kg"] - saved_kwh * r["carbon_kg_without_deferral"] / kwh0
    return r


def run_point(idle: str, deadline_h: float, threshold: float | None) -> dict:
    """One point: the example scenario at this idle state, deadline and carbon_defer threshold (None:
    carbon_cleanest instead)."""
    from dcsim.results import summarize
    from dcsim.scenario import load_scenario
    from dcsim.sim.engine import simulate

    sc = load_scenario(SCENARIO, [f"fleet.h100.idle={idle}", f"request_classes.batch.deadline_s={deadline_h * 3600}",
                                  f"dispatch.threshold={threshold}" if threshold is not None else
                                  "dispatch={name: carbon_cleanest, margin_s: 600}"])
    assert sc.facility.price_per_kwh == PRICE and sc.facility.price_series is None
    s = summarize(simulate(sc, SCENARIO))
    d, b, i = s["dispatch"], s["request_classes"]["batch"], s["request_classes"]["interactive"]
    return split_saving({
            "idle": idle, "deadline_h": deadline_h, "policy": sc.dispatch.name,
            "threshold": threshold if threshold is not None else "", "carbon_kg": d["carbon_g"] / 1e3,
            "carbon_kg_without_deferral": d["carbon_g_without_deferral"] / 1e3,
            "carbon_saved_kg": d["carbon_saved_g"] / 1e3, "carbon_saved_share": d["carbon_saved_share"],
            "cost": d["cost"], "cost_saved": d["cost_saved"], "batch_deferred": b["deferred"],
            "batch_deferral_mean_h": (b["deferral_s"]["mean"] or 0.0) / 3600, "deadline_misses": d["deadline_misses"],
            "deadline_misses_without_deferral": d["deadline_misses_without_deferral"],
            "interactive_ttft_p99_s": i["ttft_s"]["p99"], "interactive_slo_attainment": i["slo"]["attainment"],
            "batch_e2e_p99_h": b["e2e_s"]["p99"] / 3600, "energy_kwh": s["facility_j"] / 3.6e6,
            "window_h": (d["window_s"][1] - d["window_s"][0]) / 3600})


def plot(rows: list[dict], path: Path) -> None:
    """Carbon saved (share of the run sent at arrival) and the part of it that timing saved (kg) against the
    carbon_defer threshold, one line per deadline, carbon_cleanest as a dashed level; serving-idle and deep-idle
    side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.8), sharex=True)
    for col, idle in enumerate(IDLE):
        for k, dl in enumerate(DEADLINES_H):
            pts = sorted((r for r in rows if r["idle"] == idle and r["deadline_h"] == dl
                          and r["policy"] == "carbon_defer"), key=lambda r: r["threshold"])
            best = [r for r in rows if r["idle"] == idle and r["deadline_h"] == dl and r["policy"] == "carbon_cleanest"]
            x = [r["threshold"] for r in pts]
            for row, key, f in ((0, "carbon_saved_share", 100.0), (1, "carbon_saved_by_timing_kg", 1.0)):
                ax = axes[row, col]
                ax.plot(x, [f * r[key] for r in pts], "o-", color=f"C{k}", label=f"carbon_defer, deadline {dl:g} h")
                for r in best:
                    ax.axhline(f * r[key], color=f"C{k}", ls="--", lw=1, label=f"carbon_cleanest, deadline {dl:g} h")
        axes[0, col].set_title(f"replicas idle at {idle}-idle power")
        axes[0, col].set_ylabel("carbon saved (%)")
        axes[1, col].set_ylabel("of which by timing (kg CO2e)")
        axes[1, col].set_xlabel("carbon_defer release threshold (g CO2e/kWh)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        axes[1, col].axhline(0, color="k", lw=0.8)
        axes[0, col].set_ylim(bottom=0)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("batch deferral on one day of Azure conversation requests, 4 H100, half batch\n"
                 "(EXAMPLE carbon curve, not measured data)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from the CSV in --out")
    a = ap.parse_args()
    out = Path(a.out)
    if a.plot_only:
        with open(out / "carbon.csv", newline="") as f:
            rows = [{k: (v if k in ("idle", "policy") or v == "" else float(v)) for k, v in r.items()}
                    for r in csv.DictReader(f)]
        plot(rows, out / "carbon.png")
        return
    rows = []
    for idle in IDLE:
        for dl in DEADLINES_H:
            for thr in (*THRESHOLDS, None):
                t = time.perf_counter()
                r = run_point(idle, dl, thr)
                rows.append(r)
                print(f"{idle:<7} deadline {dl:>4g} h {r['policy']} {r['threshold']}: "
                      f"saved {r['carbon_saved_kg']:.3f} kg "
                      f"({100 * r['carbon_saved_share']:.1f}%), misses {r['deadline_misses']:g}, "
                      f"TTFT p99 {r['interactive_ttft_p99_s']:.3f} s ({time.perf_counter() - t:.1f} s)", flush=True)
    tmp = out / "carbon.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in FIELDS})
    tmp.replace(out / "carbon.csv")
    plot(rows, out / "carbon.png")
    from dcsim.cli import main as dcsim

    with tempfile.TemporaryDirectory() as d:
        assert dcsim(["run", str(SCENARIO), "--out", str(Path(d) / "run")]) == 0
        shutil.copy(Path(d) / "run" / "carbon_cost.png", out / "example-run.png")


if __name__ == "__main__":
    main()
