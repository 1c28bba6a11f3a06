"""Router cost against fleet size: one workload on 64 and 4,096 replicas under each router.

The fleet is bench_sim.py's three device kinds in the same proportions (1:2:1), the Poisson rate scaled with the
fleet so utilisation stays the same, the same lognormal trace. Each run is its own process, timing the simulation
alone; the repeats are interleaved (every router once, then again) so drift on a shared machine falls on all of
them. Usage:
    python benchmarks/bench_routers.py [--sizes 64 4096] [--requests 10000] [--policy fcfs|continuous|paged]
                                       [--repeats 3] [--no-replay]
Prints per fleet size and router the median wall seconds and CPU seconds (the CPU time is less disturbed by other
work on a shared machine), each with its ratio to round_robin's in the same run; the ratio to a replay of the
router's own choices (`Replay`: the same simulation, every request sent where the router sent it, no routing work,
so the ratio is what routing costs apart from the different queues it makes); and a digest of the per-request log
(replica, start, first token, done, energy), which must not change with how a router finds its replica. The
benchmark stops if a case's runs, or a router and its replay, disagree on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from dcsim.sim.replica import Replica
from dcsim.sim.requests import Request
from dcsim.sim.routers import Fleet, Params, Router

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

ROUTERS = ["round_robin", "least_outstanding", "least_work", "energy_cost"]
BATCHING = {"fcfs": {"policy": "fcfs"}, "continuous": {"policy": "continuous", "max_batch": 16},
            "paged": {"policy": "paged", "max_num_seqs": 16, "max_num_batched_tokens": 2048}}
RATE_PER_64 = {"fcfs": 14.0, "continuous": 100.0, "paged": 100.0}  # requests/s on 64 replicas (bench_sim.py's)


class ReplayParams(Params):
    choices: str  # a .npy file: the replica of every request, in trace order


class Replay(Router):
    """Sends each request where a recorded run sent it: that run's simulation without its routing work."""

    Params = ReplayParams

    def __init__(self, params: ReplayParams, fleet: Fleet, rng: np.random.Generator) -> None:
        super().__init__(params, fleet, rng)
        self.to = np.load(params.choices).tolist()

    def choose(self, r: Request) -> Replica:
        return self.fleet.replicas[self.to[r.rid]]


def make_case(d: Path, replicas: int, n: int, policy: str, router: str | dict) -> Path:
    """bench_sim.py's fleet scaled to `replicas` (a multiple of 4) and a trace of n requests."""
    from bench_sim import fleet_profiles, lengths
    from simkit import write_trace

    profs = fleet_profiles(d)
    _, n_in, n_out = lengths(n)
    tr = write_trace(d, n_in, n_out, name="trace.parquet")
    b = BATCHING[policy]
    q = replicas // 4
    spec = router if isinstance(router, dict) else {"name": router}
    tag = spec.get("tag", spec["name"])
    spec = {k: v for k, v in spec.items() if k != "tag"}
    sc = {"name": f"bench-routers-{replicas}-{tag}", "seed": 1, "trace": {"path": str(tr)},
          "arrivals": {"kind": "poisson", "rate_per_s": RATE_PER_64[policy] * replicas / 64},
          "fleet": [{"name": "small", "profile": str(profs["small"]), "count": q, "batching": b},
                    {"name": "mid", "profile": str(profs["mid"]), "count": 2 * q, "batching": b},
                    {"name": "big", "profile": str(profs["big"]), "count": q, "batching": b}],
          "router": spec}
    p = d / f"scenario-{tag}.yaml"
    p.write_text(yaml.safe_dump(sc))
    return p


def child(scenario: str, save: str | None) -> None:
    """Time the simulation alone (inputs read first) and digest what it decided for every request; `save`: write
    the replica of every request there (for a replay)."""
    from dcsim.scenario import load_scenario
    from dcsim.sim.engine import load_inputs, simulate

    sc = load_scenario(scenario)
    import dcsim.traces.arrivals  # noqa: F401  (import cost out of the timing)

    load_inputs(sc, scenario)  # the parquet reader's first import (about 0.6 s) out of the timing

    t0, c0 = time.perf_counter(), time.process_time()
    raw = simulate(sc, scenario)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    h = hashlib.sha256()
    for k in ("replica", "start_s", "first_token_s", "done_s", "energy_j", "status"):
        h.update(raw.log[k].tobytes())
    if save:
        np.save(save, raw.log["replica"])
    print(json.dumps({"seconds": dt, "cpu": cpu, "digest": h.hexdigest()[:16]}))


def run(scenario: Path, save: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(scenario)] + (["--save", str(save)] if save else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 4096])
    ap.add_argument("--routers", nargs="+", default=ROUTERS)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--policy", choices=sorted(BATCHING), default="fcfs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-replay", action="store_true", help="skip the replays of each router's choices")
    ap.add_argument("--child")
    ap.add_argument("--save")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.save)
        return
    print(f"policy {a.policy}, {a.requests} requests, median of {a.repeats}")
    print(f"{'replicas':>8}  {'router':<26}{'wall s':>7}{'x rr':>6}{'cpu s':>7}{'x rr':>6}{'x replay':>9}  "
          "digest            wall s of each run")
    for size in a.sizes:
        with tempfile.TemporaryDirectory() as d:
            dd = Path(d)
            cases = {rt: make_case(dd, size, a.requests, a.policy, rt) for rt in a.routers}
            replayed = [] if a.no_replay else [rt for rt in a.routers if rt != "round_robin"]
            runs: dict[str, list[dict]] = {rt: [] for rt in a.routers + [f"replay {rt}" for rt in replayed]}
            for i in range(a.repeats):
                for rt in a.routers:
                    runs[rt].append(run(cases[rt], dd / f"{rt}.npy" if i == 0 and rt in replayed else None))
                for rt in replayed:
                    if i == 0:
                        spec = {"name": f"{Path(__file__).resolve()}:Replay", "choices": str(dd / f"{rt}.npy"),
                                "tag": f"replay-{rt}"}
                        cases[f"replay {rt}"] = make_case(dd, size, a.requests, a.policy, spec)
                    runs[f"replay {rt}"].append(run(cases[f"replay {rt}"]))
            digest = {k: {r["digest"] for r in v} for k, v in runs.items()}
            for k, v in digest.items():
                if len(v) > 1 or v != digest[k.removeprefix("replay ")]:
                    raise SystemExit(f"{size} replicas, {k}: the per-request log differs between runs: {v}")
            wall = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
            cpu = {k: statistics.median(r["cpu"] for r in v) for k, v in runs.items()}
            first = "round_robin" if "round_robin" in wall else a.routers[0]
            for k, v in runs.items():
                rep = f"{wall[k] / wall[f'replay {k}']:>9.2f}" if f"replay {k}" in wall else f"{'':>9}"
                each = " ".join(f"{r['seconds']:.2f}" for r in v)
                print(f"{size:>8}  {k:<26}{wall[k]:>7.2f}{wall[k] / wall[first]:>6.2f}{cpu[k]:>7.2f}"
                      f"{cpu[k] / cpu[first]:>6.2f}{rep}  {v[0]['digest']}  {each}", flush=True)


if __name__ == "__main__":
    main()
