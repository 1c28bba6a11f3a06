"""Clock per phase against power caps at equal p99 latency, on H200 replicas of Llama-3.1-8B (vLLM-style paged
scheduler) replaying the Azure LLM inference conversation trace (2023) at its own timestamps scaled to two loads.

Three knobs, each swept over its whole range on the same requests:
- `cap`: a per-GPU power limit (the profile's power-cap model, fitted to Samsi et al. 2023);
- `clock`: one locked SM clock for every step;
- `governor`: prefill at the full 1980 MHz, decode at a locked clock (the profile's clock model, fitted to Ma et
  al. 2026 and Maliakel et al. 2025).
For each knob and load it takes the least device energy among settings whose end-to-end p99 stays within 5% of
the unmanaged run's (equal p99 latency). Writes clocks.csv and clocks.png beside this file. Run from the
repository root:
    python studies/clocks/clocks.py            # about 5 minutes on one core
    python studies/clocks/clocks.py --profile profiles/h200--llama-2-7b--paged-fused-model-bf16.yaml \
        --name clocks-measured                 # the same on the profile measured on our H200 (Llama-2-7B shapes)
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROFILE = "profiles/derived/h200--llama-3.1-8b--vllm-mlenergy-v3-bf16--from-h100-sxm-80gb.yaml"
TRACE_RATE = 19_366 / 3501.7  # the whole conversation trace's mean rate (traces/README.md: 5.530 req/s)
SERVERS = 4
LOADS = (2.0, 6.0)  # requests per second per server
CAPS = (700, 650, 600, 550, 500, 450, 400, 350)  # the cap model describes nothing at or below its 331.8 W floor
CLOCKS = (1980, 1710, 1410, 1200, 990, 750, 510, 345)
BOUND = 1.05  # "equal p99": within 5% of the unmanaged run's end-to-end p99
FIELDS = ("load_rps_per_server", "knob", "setting", "energy_j", "e2e_p99_s", "e2e_p99_ratio", "ttft_p99_s",
          "tpot_p50_s", "tpot_p99_s", "mean_power_w", "requests_completed")


def scenario(load: float, knob: str, setting: float | None, limit: int, profile: str = PROFILE) -> dict:
    """SERVERS H200 replicas under one knob at one setting (None: unmanaged)."""
    pool = {"name": "h200", "profile": profile, "count": SERVERS, "batching": {"policy": "paged",
                                                                                "max_num_seqs": 128}}
    if knob == "cap" and setting is not None:
        pool["power_cap_w"] = float(setting)
    elif knob == "clock" and setting is not None:
        pool["clock_mhz"] = float(setting)
    elif knob == "governor" and setting is not None:
        pool["clock_mhz"] = {"prefill_mhz": 1980.0, "decode_mhz": float(setting)}
    return {"name": f"clocks-{load:g}-{knob}-{setting}", "seed": 1,
            "trace": {"path": "traces/azure-conv-2023.parquet", "limit": limit},
            "arrivals": {"kind": "replay", "time_scale": TRACE_RATE / (SERVERS * load)},
            "fleet": [pool], "router": {"name": "least_outstanding"}}


def run_point(load: float, knob: str, setting: float | None, limit: int, profile: str = PROFILE) -> dict:
    from dcsim.results import summarize
    from dcsim.scenario import Scenario
    from dcsim.sim.engine import simulate

    s = summarize(simulate(Scenario.model_validate(scenario(load, knob, setting, limit, profile)), None))
    return {"load_rps_per_server": load, "knob": knob, "setting": "" if setting is None else setting,
            "energy_j": s["energy_j"], "e2e_p99_s": s["e2e_s"]["p99"], "ttft_p99_s": s["ttft_s"]["p99"],
            "tpot_p50_s": s["tpot_s"]["p50"], "tpot_p99_s": s["tpot_s"]["p99"],
            "mean_power_w": s["pools"]["h200"]["mean_power_w"], "requests_completed": s["requests_completed"]}


def best_at_equal_p99(rows: list[dict], load: float, knob: str) -> dict | None:
    """The least-energy setting of `knob` whose e2e p99 is within BOUND of the unmanaged run's."""
    ok = [r for r in rows if r["load_rps_per_server"] == load and r["knob"] == knob and r["e2e_p99_ratio"] <= BOUND]
    return min(ok, key=lambda r: r["energy_j"]) if ok else None


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(2, len(LOADS), figsize=(6 * len(LOADS), 8.4))
    styles = {"cap": ("tab:red", "s", "power cap (W)"), "clock": ("tab:blue", "o", "one clock, both phases (MHz)"),
              "governor": ("tab:green", "^", "prefill 1980 MHz, decode clock (MHz)")}
    for col, load in enumerate(LOADS):
        base = next(r for r in rows if r["load_rps_per_server"] == load and r["knob"] == "none")
        for row_i, (metric, what) in enumerate((("e2e_p99_s", "end-to-end p99"), ("ttft_p99_s", "TTFT p99"))):
            ax = axes[row_i][col]
            for knob, (color, marker, label) in styles.items():
                pts = [r for r in rows if r["load_rps_per_server"] == load and r["knob"] == knob]
                xs = [r[metric] / base[metric] for r in pts]
                ys = [r["energy_j"] / base["energy_j"] for r in pts]
                ax.plot(xs, ys, marker=marker, color=color, label=label)
                for x, y, r in zip(xs, ys, pts):
                    ax.annotate(f"{r['setting']:g}", (x, y), fontsize=6, color=color, xytext=(3, 3),
                                textcoords="offset points")
            if row_i == 0:
                ax.axvline(BOUND, color="grey", ls="--", lw=0.8, label=f"equal p99 bound (x {BOUND:g})")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_xlabel(f"{what} / unmanaged (log scale)")
            ax.set_ylabel("device energy / unmanaged")
            ax.set_title(f"{SERVERS} x H200, Azure conv, {load:g} req/s per server: {what}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    tmp = path.with_name("." + path.name)
    fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=3000, help="requests of the trace replayed at each point")
    ap.add_argument("--profile", default=PROFILE, help="the H200 profile (with power_cap and clock sections)")
    ap.add_argument("--name", default="clocks", help="stem of the CSV and PNG written beside this file")
    args = ap.parse_args()
    t0 = time.time()
    rows = []
    for load in LOADS:
        base = run_point(load, "none", None, args.limit, args.profile)
        base["e2e_p99_ratio"] = 1.0
        rows.append(base)
        for knob, settings in (("cap", CAPS), ("clock", CLOCKS), ("governor", CLOCKS)):
            for v in settings:
                r = run_point(load, knob, v, args.limit, args.profile)
                r["e2e_p99_ratio"] = r["e2e_p99_s"] / base["e2e_p99_s"]
                rows.append(r)
        print(f"load {load:g}: {len(rows)} points, {time.time() - t0:.0f} s")
    tmp = HERE / f".{args.name}.csv"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*FIELDS])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in FIELDS})
    tmp.replace(HERE / f"{args.name}.csv")
    plot(rows, HERE / f"{args.name}.png")
    for load in LOADS:
        base = next(r for r in rows if r["load_rps_per_server"] == load and r["knob"] == "none")
        for knob in ("cap", "clock", "governor"):
            b = best_at_equal_p99(rows, load, knob)
            if b is None:
                print(f"load {load:g} {knob}: no setting within {BOUND:g} x p99")
                continue
            print(f"load {load:g} {knob}: best {b['setting']:g}, energy {b['energy_j'] / base['energy_j'] - 1:+.1%}, "
                  f"e2e p99 x {b['e2e_p99_ratio']:.3f}, ttft p99 {b['ttft_p99_s']:.3f} s "
                  f"(unmanaged {base['ttft_p99_s']:.3f} s)")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
