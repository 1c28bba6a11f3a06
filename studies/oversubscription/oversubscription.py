"""Power oversubscription: how many H100 servers fit under a row budget sized for 10 at nameplate, on the Azure
LLM inference conversation trace (2023, its own timestamps scaled to each load), before p99 latency degrades.

For each load (requests per second per server) and each server count N, three runs of the same requests: the row
unmanaged (`none`, the uncapped reference at that N), `cap_on_threshold` and `budget_share`. Writes
oversubscription.csv and oversubscription.png beside this file. Run from the repository root:
    python studies/oversubscription/oversubscription.py            # about 3 minutes on one core
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROFILE = "h100-sxm-80gb--llama-3.1-8b--vllm-mlenergy-v3-bf16"
NAMEPLATE_W = 700.0  # the profile's power_cap.default_w: the H100 SXM's default (and maximum) limit
N0 = 10  # servers the row is built for at nameplate
BUDGET_W = N0 * NAMEPLATE_W
TRACE_RATE = 19_366 / 3501.7  # the whole trace's mean rate (traces/README.md: 5.530 req/s)
LOADS = (2.0, 6.0, 10.0)  # requests per second per server
COUNTS = tuple(range(10, 17))
POLICIES = {
    "none": {"name": "none"},
    # cap_w: the fair share of the budget, set per count in scenario() (a row of capped GPUs then fits it)
    "cap_on_threshold": {"name": "cap_on_threshold", "threshold": 0.95, "release": 0.85, "hold_s": 30.0},
    "budget_share": {"name": "budget_share", "target": 0.95, "gain": 0.5, "resolution": 0.01},
}
FIELDS = ("load_rps_per_server", "servers", "servers_over_nameplate", "policy", "e2e_p99_s", "e2e_p99_ratio",
          "ttft_p99_s", "tpot_p50_s", "energy_j", "budget_w", "peak_w", "peak_share_of_budget",
          "time_above_budget_s", "share_of_time_above_budget", "cap_events", "share_of_time_capped", "makespan_s",
          "requests_completed")


def scenario(n: int, load: float, policy: dict, limit: int) -> dict:
    """N servers (one H100 replica each, vLLM-style paged scheduler) in one rack of one row under the budget;
    cap_on_threshold caps each GPU to its fair share of the budget, budget / N (at most the nameplate)."""
    if policy["name"] == "cap_on_threshold":
        policy = {**policy, "cap_w": min(NAMEPLATE_W, float(int(BUDGET_W / n)))}
    return {"name": f"oversub-{n}-{load:g}-{policy['name']}", "seed": 1,
            "trace": {"path": "traces/azure-conv-2023.parquet", "limit": limit},
            "arrivals": {"kind": "replay", "time_scale": TRACE_RATE / (n * load)},
            "fleet": [{"name": "h100", "profile": PROFILE, "count": n,
                       "batching": {"policy": "paged", "max_num_seqs": 128}}],
            "router": {"name": "least_outstanding"},
            "facility": {"power": {"control_interval_s": 1.0, "policy": policy, "rows": [
                {"name": "row", "limit_w": BUDGET_W, "racks": [{"name": "rack", "replicas": {"h100": n}}]}]}}}


def run_point(n: int, load: float, policy: dict, limit: int) -> dict:
    from dcsim.results import summarize
    from dcsim.scenario import Scenario
    from dcsim.sim.engine import simulate

    s = summarize(simulate(Scenario.model_validate(scenario(n, load, policy, limit)), None))
    row = s["facility"]["levels"]["row"]
    return {"load_rps_per_server": load, "servers": n, "servers_over_nameplate": n / N0, "policy": policy["name"],
            "e2e_p99_s": s["e2e_s"]["p99"], "ttft_p99_s": s["ttft_s"]["p99"], "tpot_p50_s": s["tpot_s"]["p50"],
            "energy_j": s["energy_j"], "budget_w": BUDGET_W, "peak_w": row["peak_w"],
            "peak_share_of_budget": row["peak_share_of_limit"], "time_above_budget_s": row["time_above_limit_s"],
            "share_of_time_above_budget": row["share_of_time_above_limit"], "cap_events": row["cap_events"],
            "share_of_time_capped": row["share_of_time_capped"], "makespan_s": s["makespan_s"],
            "requests_completed": s["requests_completed"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=10_000, help="the trace's first N requests (about 30 minutes)")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from the CSV in --out")
    a = ap.parse_args()
    out = Path(a.out)
    if a.plot_only:
        with open(out / "oversubscription.csv", newline="") as f:
            rows = [{k: (v if k == "policy" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
        plot(rows, out / "oversubscription.png")
        return
    rows = []
    for load in LOADS:
        for n in COUNTS:
            ref = None
            for pol in POLICIES.values():
                t = time.perf_counter()
                r = run_point(n, load, pol, a.limit)
                ref = r["e2e_p99_s"] if pol["name"] == "none" else ref
                r["e2e_p99_ratio"] = r["e2e_p99_s"] / ref
                rows.append(r)
                print(f"load {load:g} N {n} {pol['name']:<17} p99 {r['e2e_p99_s']:.2f} s (x{r['e2e_p99_ratio']:.3f}) "
                      f"peak {r['peak_share_of_budget']:.2f} above {r['time_above_budget_s']:.1f} s "
                      f"({time.perf_counter() - t:.1f} s)", flush=True)
    with open(out / "oversubscription.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in FIELDS})
    plot(rows, out / "oversubscription.png")


def plot(rows: list[dict], path: Path) -> None:
    """p99 end-to-end latency against the unmanaged row, and the row's peak power and time above budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.4))
    colours = dict(zip(LOADS, ("tab:blue", "tab:orange", "tab:red")))
    marks = {"none": ("o", ":"), "cap_on_threshold": ("s", "-"), "budget_share": ("^", "--")}
    for load in LOADS:
        for pol, (m, ls) in marks.items():
            pts = [r for r in rows if r["load_rps_per_server"] == load and r["policy"] == pol]
            x = [100 * (r["servers_over_nameplate"] - 1) for r in pts]
            kw = {"color": colours[load], "marker": m, "ls": ls, "label": f"{load:g} req/s/server, {pol}"}
            if pol != "none":
                ax[0].plot(x, [r["e2e_p99_ratio"] for r in pts], **kw)
            ax[1].plot(x, [r["peak_share_of_budget"] for r in pts], **kw)
            ax[2].plot(x, [max(100 * r["share_of_time_above_budget"], 1e-3) for r in pts], **kw)
    ax[0].axhline(1.05, color="grey", lw=0.8)
    ax[0].set_yscale("log")
    ax[0].set_yticks([1, 1.05, 1.25, 1.5, 2, 3], ["1", "1.05", "1.25", "1.5", "2", "3"])
    ax[0].set(xlabel="servers beyond nameplate count (%)", ylabel="p99 end-to-end latency / unmanaged row's",
              title="latency cost of capping (bound: 1.05)")
    ax[1].axhline(1, color="grey", lw=0.8)
    ax[1].set(xlabel="servers beyond nameplate count (%)", ylabel="row peak power / budget",
              title=f"peak power (budget {BUDGET_W / 1e3:g} kW = {N0} x {NAMEPLATE_W:g} W)")
    ax[2].axhline(1, color="grey", lw=0.8)
    ax[2].set_yscale("log")
    ax[2].set(xlabel="servers beyond nameplate count (%)", ylabel="time above budget (% of run; 0 drawn at 0.001)",
              title="time above budget")
    ax[2].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
