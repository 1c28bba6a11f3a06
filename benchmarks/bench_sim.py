"""Simulator speed: requests simulated per second and peak memory on a 64-replica heterogeneous fleet.

Each (policy, size) case runs in its own process so peak RSS is its own. Usage:
    python benchmarks/bench_sim.py [--sizes 100000 1000000] [--policies fcfs static continuous paged] [--repeats 3]
        [--facility POLICY] [--autoscaling reactive|scheduled] [--max-batch N] [--rate R]
Prints one row per case: median wall seconds over repeats, requests/s, peak RSS growth per request, and SimPy
events scheduled per request; with fcfs, first a row for bench_skeleton.py (SimPy's own floor for that case).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def fleet_profiles(d: Path) -> dict[str, Path]:
    """The benchmark's three device kinds (small, mid, big), written as toy profiles into d."""
    from simkit import write_profile

    return {
        "small": write_profile(d, name="small", prefill=(0.08, 0.002), decode=(0.06, 0.001), prefill_w=30,
                               decode_w=(25, 0.2), idle_w=5, deep_w=2, kv_tokens=40_000),
        "mid": write_profile(d, name="mid", prefill=(0.02, 0.0002), decode=(0.02, 0.0002), prefill_w=350,
                             decode_w=(250, 1.0), idle_w=80, deep_w=40, kv_tokens=200_000),
        "big": write_profile(d, name="big", prefill=(0.01, 0.0001), decode=(0.012, 0.0001), prefill_w=600,
                             decode_w=(400, 1.5), idle_w=120, deep_w=60, kv_tokens=500_000),
    }


def lengths(n: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """n lognormal prompt and output lengths (seed 0), and the generator, for draws that follow them."""
    rng = np.random.default_rng(0)
    n_in = np.clip(rng.lognormal(5.5, 1.0, n), 1, 4000).astype(np.int64)
    n_out = np.clip(rng.lognormal(4.5, 0.9, n), 1, 2000).astype(np.int64)
    return rng, n_in, n_out


def make_case(d: Path, n: int, policy: str, max_batch: int = 64, rate: float | None = None) -> Path:
    """A 64-replica fleet of three device kinds and a trace of n requests with lognormal lengths (`max_batch`:
    the continuous policy's batch limit; `rate`: arrivals per second, default the policy's own)."""
    from simkit import write_trace

    profs = fleet_profiles(d)
    rng, n_in, n_out = lengths(n)
    if policy == "paged":  # half the requests share one of 200 system prompts of up to 256 tokens
        from dcsim.traces.trace import Trace

        pid = np.where(rng.random(n) < 0.5, rng.integers(0, 200, n), -1)
        plen = np.where(pid >= 0, np.minimum(n_in, 256), 0)
        tr = d / "trace.parquet"
        Trace(n_in, n_out, None, None, {"source": "benchmark"}, pid, plen).validate().to_parquet(tr)
    else:
        tr = write_trace(d, n_in, n_out, name="trace.parquet")
    b = {"fcfs": {"policy": "fcfs"}, "static": {"policy": "static", "max_batch": 8, "max_wait_s": 0.2},
         "continuous": {"policy": "continuous", "max_batch": max_batch},
         "paged": {"policy": "paged", "max_num_seqs": 64, "max_num_batched_tokens": 2048, "chunked_prefill": True,
                   "enable_prefix_caching": True}}[policy]
    # fcfs service ~ 0.1 + 90 * 0.02 s on mid: ~ 2 s; batched policies serve several at a time
    rate = rate or {"fcfs": 14.0, "static": 40.0, "continuous": 100.0, "paged": 100.0}[policy]
    sc = {"name": f"bench-{policy}", "seed": 1, "trace": {"path": str(tr)},
          "arrivals": {"kind": "poisson", "rate_per_s": rate},
          "fleet": [{"name": "small", "profile": str(profs["small"]), "count": 16, "batching": b},
                    {"name": "mid", "profile": str(profs["mid"]), "count": 32, "batching": b},
                    {"name": "big", "profile": str(profs["big"]), "count": 16, "batching": b}],
          "router": {"name": "least_outstanding"}}
    p = d / "scenario.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


# a power-cap model per device kind for --facility (default = highest limit; static floor at a fifth of it)
CAP_W = {"small": 40.0, "mid": 350.0, "big": 600.0}


def with_facility(scenario: Path, policy: str) -> Path:
    """The case with a power hierarchy: each pool's profile given a power-cap model, two rows of four racks of 8
    (row 1: 16 small and 16 mid, row 2: 16 mid and 16 big), each row limited to 75% of its GPUs' nameplate, and
    the named power policy (cap_on_threshold caps to 60% of each device's limit)."""
    sc = yaml.safe_load(scenario.read_text())
    for pool in sc["fleet"]:
        prof = yaml.safe_load(Path(pool["profile"]).read_text())
        w = CAP_W[pool["name"]]
        prof["power_cap"] = {"min_w": 0.3 * w, "max_w": w, "default_w": w, "static_w": 0.2 * w, "exponent": 3.0}
        path = scenario.parent / f"{pool['name']}-capped.yaml"
        path.write_text(yaml.safe_dump(prof))
        pool["profile"] = str(path)
    pol = {"name": policy, **({"cap_fraction": 0.6} if policy == "cap_on_threshold" else {})}
    racks = [[("small", 8), ("small", 8), ("mid", 8), ("mid", 8)], [("mid", 8), ("mid", 8), ("big", 8), ("big", 8)]]
    rows = [{"name": f"row-{i + 1}", "limit_w": 0.75 * sum(CAP_W[k] * n for k, n in row),
             "racks": [{"name": f"rack-{i + 1}{j + 1}", "replicas": {k: n}} for j, (k, n) in enumerate(row)]}
            for i, row in enumerate(racks)]
    sc["facility"] = {"power": {"control_interval_s": 1.0, "policy": pol, "rows": rows}}
    out = scenario.parent / f"scenario-{policy}.yaml"
    out.write_text(yaml.safe_dump(sc))
    return out


def with_autoscaling(scenario: Path, policy: str) -> Path:
    """The case with an autoscaler: every pool loads in 20 s and 2,000 J (toy figures), `reactive` aims at 4
    outstanding requests per replica from zero (scale-down after 60 s), `scheduled` holds half the replicas for
    12 of every 24 simulated minutes and all of them otherwise; decisions every 5 s."""
    sc = yaml.safe_load(scenario.read_text())
    for pool in sc["fleet"]:
        pool["cold_start"] = {"load_s": 20.0, "load_j": 2000.0}
    sc["autoscaling"] = ({"name": "reactive", "interval_s": 5, "target_outstanding": 4, "scale_down_delay_s": 60,
                          "min_replicas": 0} if policy == "reactive" else
                         {"name": "scheduled", "interval_s": 5, "day_s": 1440, "hourly": [8] * 12 + [32] * 12})
    out = scenario.parent / f"scenario-as-{policy}.yaml"
    out.write_text(yaml.safe_dump(sc))
    return out


def child(scenario: str) -> None:
    """Time the simulation alone (inputs loaded first) and report peak RSS growth."""
    import resource

    from dcsim.results import summarize
    from dcsim.scenario import load_scenario
    from dcsim.sim.engine import simulate

    sc = load_scenario(scenario)
    import dcsim.traces.arrivals  # noqa: F401  (import cost out of the timing)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    raw = simulate(sc, scenario)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = summarize(raw)
    print(json.dumps({"seconds": dt, "rss_growth_kb": peak - base, "completed": s["requests_completed"],
                      "events": raw.events,
                      "utilisation": {k: v["utilisation"] for k, v in s["pools"].items()}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--policies", nargs="+", default=["fcfs", "static", "continuous", "paged"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--facility", choices=["none", "cap_on_threshold", "budget_share"],
                    help="add a power hierarchy managed by this policy (with_facility)")
    ap.add_argument("--autoscaling", choices=["reactive", "scheduled"],
                    help="add an autoscaler with this policy (with_autoscaling)")
    ap.add_argument("--max-batch", type=int, default=64, help="the continuous policy's max_batch")
    ap.add_argument("--rate", type=float, help="arrivals per second (default: the policy's own)")
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    print(f"{'policy':<11}{'requests':>10}{'median s':>10}{'req/s':>10}{'bytes/req':>11}{'events/req':>11}"
          "  utilisation")
    for n in a.sizes:
        if "fcfs" in a.policies:  # SimPy's own floor for the fcfs case, in the same run (bench_skeleton.py)
            runs = [json.loads(subprocess.run([sys.executable, str(HERE / "bench_skeleton.py"), "--child", str(n)],
                                              capture_output=True, text=True, check=True).stdout.strip()
                               .splitlines()[-1]) for _ in range(a.repeats)]
            med = statistics.median(r["seconds"] for r in runs)
            print(f"{'skeleton':<11}{n:>10}{med:>10.2f}{n / med:>10.0f}{'':>11}{runs[0]['events'] / n:>11.2f}"
                  "  (bare SimPy, the fcfs case's floor)", flush=True)
        for pol in a.policies:
            with tempfile.TemporaryDirectory() as d:
                sc = make_case(Path(d), n, pol, a.max_batch, a.rate)
                if a.facility:
                    sc = with_facility(sc, a.facility)
                if a.autoscaling:
                    sc = with_autoscaling(sc, a.autoscaling)
                runs = []
                for _ in range(a.repeats):
                    out = subprocess.run([sys.executable, __file__, "--child", str(sc)], capture_output=True,
                                         text=True, check=True)
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                med = statistics.median(r["seconds"] for r in runs)
                mem = statistics.median(r["rss_growth_kb"] for r in runs) * 1024 / n
                util = ", ".join(f"{k} {v:.0%}" for k, v in runs[0]["utilisation"].items())
                ev = runs[0]["events"] / n
                print(f"{pol:<11}{n:>10}{med:>10.2f}{n / med:>10.0f}{mem:>11.0f}{ev:>11.2f}  {util}", flush=True)


if __name__ == "__main__":
    main()
