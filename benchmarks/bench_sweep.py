"""Sweep throughput: the simulator benchmark's case (bench_sim.make_case, 64 replicas, 1M requests) as a
32-point sweep on 1 and 2 local worker processes and on a Dask LocalCluster of 2 worker processes.

Usage:
    python benchmarks/bench_sweep.py [--size 1000000] [--points 32] [--policy fcfs] [--modes local1 local2 dask2]
    python benchmarks/bench_sweep.py --size 20000 --points 8      # quick run
Prints one row per mode: wall seconds, points per minute, and the summed per-point simulation seconds
(their ratio to wall time shows how well the workers were kept busy). Each mode starts from an empty folder;
the local modes' time includes starting the worker processes, the Dask mode's excludes starting the cluster
(reported on its own line).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def write_sweep(d: Path, scenario: Path, points: int) -> Path:
    """2 fleet sizes x 2 arrival rates x points/4 seeds, all around the benchmark's operating point."""
    if points % 4:
        raise SystemExit("--points must be a multiple of 4 (2 fleet sizes x 2 rates x seeds)")
    rate = yaml.safe_load(scenario.read_text())["arrivals"]["rate_per_s"]
    body = {"name": "bench-sweep", "base": str(scenario),
            "grid": {"fleet.mid.count": [28, 32], "arrivals.rate_per_s": [round(0.9 * rate, 6), rate]},
            "seeds": list(range(1, points // 4 + 1))}
    p = d / "sweep.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def timed(sweep_file: Path, out: Path, **kw) -> tuple[float, float]:
    from dcsim.sweep import load_sweep, run_sweep

    sw = load_sweep(sweep_file)
    t0 = time.perf_counter()
    run_sweep(sw, out, progress=True, **kw)
    wall = time.perf_counter() - t0
    busy = sum(json.loads(f.read_text())["seconds"] for f in (out / "points").glob("*.json"))
    return wall, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000, help="requests per point")
    ap.add_argument("--points", type=int, default=32)
    ap.add_argument("--policy", default="fcfs", choices=["fcfs", "static", "continuous"])
    ap.add_argument("--modes", nargs="+", default=["local1", "local2", "dask2"],
                    choices=["local1", "local2", "dask2"])
    a = ap.parse_args()

    from bench_sim import make_case

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sweep_file = write_sweep(d, make_case(d, a.size, a.policy), a.points)
        print(f"{a.points} points of {a.size} requests ({a.policy}, 64 replicas)", flush=True)
        for mode in a.modes:
            out = d / f"out-{mode}"
            if mode.startswith("local"):
                wall, busy = timed(sweep_file, out, workers=int(mode[-1]))
            else:
                from dask.distributed import LocalCluster

                t0 = time.perf_counter()
                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
                    start = time.perf_counter() - t0
                    print(f"  (LocalCluster of 2 worker processes started in {start:.1f} s)", flush=True)
                    wall, busy = timed(sweep_file, out, scheduler=cluster.scheduler_address)
            rows.append((mode, wall, busy))
            print(f"{mode:<8} {wall:8.1f} s wall  {a.points / wall * 60:7.2f} points/min  "
                  f"{busy:8.1f} s simulating ({busy / wall:.2f} busy workers on average)", flush=True)
    print(f"\n{'mode':<8}{'wall s':>9}{'points/min':>12}{'busy/wall':>11}")
    for mode, wall, busy in rows:
        print(f"{mode:<8}{wall:>9.1f}{a.points / wall * 60:>12.2f}{busy / wall:>11.2f}")


if __name__ == "__main__":
    main()
