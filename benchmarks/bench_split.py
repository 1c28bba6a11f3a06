"""A split run's speed and memory: a synthetic week of requests on a fleet in routing domains, run on 1 and 2
worker processes (`dcsim run --workers`), each configuration in a process of its own.

    python benchmarks/bench_split.py [--requests 20000000] [--replicas 4096] [--domains 16] [--workers 1 2]
        [--policy continuous|fcfs] [--days 7]

The fleet: each domain holds the same share of bench_sim.py's three device kinds (a quarter small, a half mid,
a quarter big), behind a least-outstanding router of its own, and an equal share of the requests. Arrivals follow
a daily curve (sine, amplitude 0.5) whose mean spreads the requests over `--days` days; lengths are bench_sim.py's
lognormal ones. Per configuration it prints the wall seconds of the run (the parent drawing the inputs, the
workers simulating, the parent merging as each domain ends) and of the summary, the peak RSS of each worker, and
the parent's peak RSS after the merge and after the summary. `--workers 0` runs the domains in the parent itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

KINDS = (("small", 0.25), ("mid", 0.5), ("big", 0.25))


def make_case(d: Path, n: int, replicas: int, domains: int, policy: str, days: float) -> Path:
    """The trace (n requests) and the scenario (replicas in `domains` domains of three pools each) in d."""
    from bench_sim import fleet_profiles, lengths
    from simkit import write_trace

    if replicas % (4 * domains):
        raise SystemExit(f"--replicas must be a multiple of 4 x --domains ({4 * domains})")
    profs = fleet_profiles(d)
    _, n_in, n_out = lengths(n)
    tr = write_trace(d, n_in, n_out, name="trace.parquet")
    del n_in, n_out
    per = replicas // domains
    batching = {"policy": "fcfs"} if policy == "fcfs" else {"policy": "continuous", "max_batch": 64}
    fleet, doms = [], []
    for k in range(domains):
        names = []
        for kind, share in KINDS:
            name = f"d{k:02d}-{kind}"
            fleet.append({"name": name, "profile": str(profs[kind]), "count": int(per * share), "batching": batching})
            names.append(name)
        doms.append({"name": f"d{k:02d}", "pools": names, "share": 1.0})
    sc = {"name": f"bench-split-{policy}", "seed": 1, "trace": {"path": str(tr)},
          "arrivals": {"kind": "diurnal", "mean_rate_per_s": n / (days * 86400.0), "amplitude": 0.5},
          "fleet": fleet, "router": {"name": "least_outstanding"}, "domains": doms}
    p = d / "scenario.yaml"
    p.write_text(yaml.safe_dump(sc, sort_keys=False))
    return p


def _children_hwm(pid: int) -> dict[int, int]:
    """Peak RSS (kB, VmHWM) of each living child process of pid (the workers), multiprocessing's resource tracker
    left out."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            if b"resource_tracker" in Path(f"/proc/{entry}/cmdline").read_bytes():  # multiprocessing's own helper
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[int(entry)] = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _own_hwm_mb() -> float:
    """This process's peak RSS so far (VmHWM: its own, where ru_maxrss would carry the forking parent's over)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(scenario: str, workers: int) -> None:
    """One configuration: the split run timed, its workers' and this process's peak RSS watched."""
    from dcsim.results import summarize
    from dcsim.scenario import load_scenario
    from dcsim.sim.domains import simulate_split
    from dcsim.sim.engine import simulate

    sc = load_scenario(scenario)
    import dcsim.traces.arrivals  # noqa: F401  (import cost out of the timing)

    peaks: dict[int, int] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            for p, kb in _children_hwm(os.getpid()).items():
                peaks[p] = max(peaks.get(p, 0), kb)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    base = _own_hwm_mb()
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        print(line, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    raw = simulate(sc, scenario, progress) if workers == 0 else simulate_split(sc, scenario, [], workers, None,
                                                                               progress)
    run_s = time.perf_counter() - t0
    stop.set()
    w.join()
    after_run = _own_hwm_mb()
    t1 = time.perf_counter()
    s = summarize(raw)
    sum_s = time.perf_counter() - t1
    after_sum = _own_hwm_mb()
    print(json.dumps({
        "workers": workers, "run_s": run_s, "summary_s": sum_s, "requests": int(len(raw.n_in)),
        "completed": s["requests_completed"], "events": raw.events, "makespan_s": s["makespan_s"],
        "segments": int(sum(len(x.t0) for x in raw.segments)),
        "worker_peak_rss_mb": sorted(kb / 1024 for kb in peaks.values()),
        "parent_base_rss_mb": base, "parent_peak_rss_after_run_mb": after_run,
        "parent_peak_rss_after_summary_mb": after_sum,
        "utilisation": {k: v["utilisation"] for k, v in list(s["pools"].items())[:3]},
        "e2e_p99_s": s["e2e_s"]["p99"], "energy_j": s["energy_j"], "domain_lines": lines}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20_000_000)
    ap.add_argument("--replicas", type=int, default=4096)
    ap.add_argument("--domains", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--policy", choices=["continuous", "fcfs"], default="continuous")
    ap.add_argument("--days", type=float, default=7.0, help="the arrivals' span, days")
    ap.add_argument("--keep", help="write the case into this folder (kept) instead of a temporary one")
    ap.add_argument("--child", nargs=2, metavar=("SCENARIO", "WORKERS"))
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(a.keep) if a.keep else Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        sc = make_case(d, a.requests, a.replicas, a.domains, a.policy, a.days)
        print(f"case: {a.requests:,} requests over {a.days:g} days, {a.replicas:,} replicas in {a.domains} domains, "
              f"{a.policy}; written in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()}", flush=True)
        results = []
        for w in a.workers:
            out = subprocess.run([sys.executable, __file__, "--child", str(sc), str(w)], capture_output=True,
                                 text=True)
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                raise SystemExit(out.returncode)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.pop("domain_lines")
            results.append(r)
            print(json.dumps(r), flush=True)
            print(f"  after: load average {os.getloadavg()}", flush=True)
        energies = {r["energy_j"] for r in results}
        print(f"same results on every worker count: {len(energies) == 1}")


if __name__ == "__main__":
    main()
