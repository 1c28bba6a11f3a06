"""Scale-to-zero with cold starts: what turning replicas off saves once model loading costs time and energy, on
the Azure LLM inference code trace (2023) at its own timestamps and stretched 4x (longer quiet periods), and on a
diurnal day (compressed to 8,640 s) of the conversation trace's requests.

Four H100 replicas of Llama-3.1-8B (paged scheduler, least_outstanding router) per case; each policy's energy is
set against a run of always_on on the same requests. Model loads: the Wilkins et al. (e-Energy 2024) 'model load'
phases of Llama-2 7B (dcsim/cold_start.py): Palmetto Intel+A100 (17.13 s, 570 J) and, as the slow case, Swing
AMD+A100 (53.95 s, 3,143 J). Writes autoscaling.csv and autoscaling.png beside this file. From the repository root:
    python studies/autoscaling/autoscaling.py            # about 2 minutes on one core
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROFILE = "h100-sxm-80gb--llama-3.1-8b--vllm-mlenergy-v3-bf16"
N = 4
FAST = "Palmetto Intel+A100 / Llama-2 (7B)"
SLOW = "Swing AMD+A100 / Llama-2 (7B)"
# a day compressed to 8,640 s (one "hour" = 360 s) at 2 req/s on average: 17,280 of the trace's 19,366 requests,
# from 0.2 req/s at night (hour 2) to 3.8 req/s at the peak (hour 14)
DAY_S = 8640.0
DIURNAL = {"kind": "diurnal", "mean_rate_per_s": 2.0, "amplitude": 0.9, "peak_hour": 14.0, "day_s": DAY_S}
PER_REPLICA_RPS = 1.0  # the scheduled curve: one replica per 1 req/s of the hour's expected rate, at least 1
FIELDS = ("workload", "policy", "cold_start", "energy_j", "always_on_j", "saved_share", "loads", "ttft_p50_s",
          "ttft_p99_s", "slo_ttft2_attainment", "share_waited_for_load", "extra_ttft_p99_s", "off_replica_h",
          "makespan_s", "requests_completed")


def hourly_curve() -> list[int]:
    """Replicas per hour for `scheduled`: the diurnal rate at the hour's middle over PER_REPLICA_RPS, rounded up."""
    out = []
    for h in range(24):
        rate = DIURNAL["mean_rate_per_s"] * (1 + DIURNAL["amplitude"] * math.cos(2 * math.pi * (h + 0.5 - 14) / 24))
        out.append(max(1, min(N, math.ceil(rate / PER_REPLICA_RPS))))
    return out


POLICIES = {
    "always_on": {"name": "always_on"},
    "reactive_zero": {"name": "reactive", "interval_s": 5, "target_outstanding": 8, "scale_down_delay_s": 60,
                      "min_replicas": 0},
    "reactive_zero_600s": {"name": "reactive", "interval_s": 5, "target_outstanding": 8, "scale_down_delay_s": 600,
                           "min_replicas": 0},
    "reactive_one_warm": {"name": "reactive", "interval_s": 5, "target_outstanding": 8, "scale_down_delay_s": 60,
                          "min_replicas": 1},
    "scheduled": {"name": "scheduled", "interval_s": 10, "hourly": hourly_curve(), "day_s": DAY_S, "lead_s": 20},
}
WORKLOADS = {
    "code, own timestamps": ({"path": "traces/azure-code-2023.parquet"}, {"kind": "replay"}),
    "code, stretched 4x": ({"path": "traces/azure-code-2023.parquet"}, {"kind": "replay", "time_scale": 4.0}),
    "diurnal day (conversation)": ({"path": "traces/azure-conv-2023.parquet", "limit": 17_280}, DIURNAL),
}


def scenario(workload: str, policy: str, cold: str) -> dict:
    trace, arrivals = WORKLOADS[workload]
    return {"name": f"autoscaling-{policy}", "seed": 1, "trace": trace, "arrivals": arrivals,
            "fleet": [{"name": "h100", "profile": PROFILE, "count": N,
                       "batching": {"policy": "paged", "max_num_seqs": 128}, "cold_start": {"published": cold}}],
            "router": {"name": "least_outstanding"}, "autoscaling": POLICIES[policy], "slo": {"ttft_s": 2.0}}


def day_hours(t):
    """Simulated seconds of the diurnal case as hours of its compressed day."""
    return t / DAY_S * 24.0


def cases() -> list[tuple[str, str, str]]:
    out = []
    for w in WORKLOADS:
        pols = [p for p in POLICIES if p != "scheduled" or w.startswith("diurnal")]
        for p in pols:
            out.append((w, p, FAST))
        out.append((w, "reactive_zero", SLOW))
    return out


def run_all() -> tuple[list[dict], dict]:
    from dcsim.results import summarize
    from dcsim.scaling_report import states_timeline
    from dcsim.scenario import Scenario
    from dcsim.sim.engine import simulate

    rows, timelines, base = [], {}, {}
    for w, p, cold in cases():
        t = time.time()
        raw = simulate(Scenario.model_validate(scenario(w, p, cold)))
        s = summarize(raw)
        if p == "always_on":
            base[w] = s["energy_j"]
        a = s.get("autoscaling", {})
        rows.append({
            "workload": w, "policy": p, "cold_start": cold, "energy_j": s["energy_j"], "always_on_j": base[w],
            "saved_share": 1 - s["energy_j"] / base[w], "loads": a.get("loads", 0),
            "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p99_s": s["ttft_s"]["p99"],
            "slo_ttft2_attainment": s["slo"]["attainment"],
            "share_waited_for_load": a.get("share_waited_for_load", 0.0),
            "extra_ttft_p99_s": (a.get("extra_ttft_s") or {}).get("p99") or 0.0,
            "off_replica_h": a.get("off_replica_s", 0.0) / 3600, "makespan_s": s["makespan_s"],
            "requests_completed": s["requests_completed"]})
        if raw.scaling is not None and cold == FAST and p in ("reactive_zero", "scheduled"):
            timelines[(w, p)] = states_timeline(raw, bins=300)
        print(f"{w:28s} {p:20s} {cold[:8]:8s} saved {rows[-1]['saved_share']:6.1%} ttft p99 "
              f"{rows[-1]['ttft_p99_s']:6.2f} s  ({time.time() - t:.1f} s)", flush=True)
    return rows, timelines


def plot(timelines: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("code, own timestamps", "reactive_zero"), ("diurnal day (conversation)", "reactive_zero"),
            ("diurnal day (conversation)", "scheduled")]
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 8.5))
    colours = ["#bbbbbb", "#e6a23c", "#7fb3d5", "#1f5f8b"]
    for ax, k in zip(axes, keys):
        tl = timelines[k]
        mid = 0.5 * (tl["t_start_s"] + tl["t_end_s"])
        t = mid / 60 if k[0].startswith("code") else day_hours(mid)
        ax.stackplot(t, *[tl[f"h100_{s}"] for s in ("off", "loading", "idle", "busy")], colors=colours,
                     labels=["off", "loading", "serving-idle", "busy"])
        ax.set_xlim(t.min(), t.max())
        ax.set_ylim(0, N)
        ax.set_ylabel("replicas (mean per bin)")
        ax.set_xlabel("time (min)" if k[0].startswith("code") else "hour of the compressed day (360 s each)")
        ax.set_title(f"{k[0]}: {k[1]}", fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle("4 H100 replicas (Llama-3.1-8B), loads of 17.1 s / 570 J: replicas by state")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    rows, timelines = run_all()
    tmp = HERE / "autoscaling.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp.replace(HERE / "autoscaling.csv")
    plot(timelines, HERE / "autoscaling.png.tmp.png")
    (HERE / "autoscaling.png.tmp.png").replace(HERE / "autoscaling.png")


if __name__ == "__main__":
    main()
