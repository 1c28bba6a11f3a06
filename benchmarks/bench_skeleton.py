"""The floor SimPy itself sets for bench_sim.py's fcfs case: the same 64 replicas, the same requests, arrival rate
and service times, simulated by the least a SimPy model can do (a source process; per replica a queue and a server
process; one timeout per request, the completion time recorded), with none of dcsim's routing, energy or
bookkeeping. bench_sim.py's fcfs requests/s over this one's, measured in the same run, is the simulator's share of
SimPy's own speed (its events per request: about 3, the floor for this case). Usage:
    python benchmarks/bench_skeleton.py [--sizes 100000 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# bench_sim.py's toy device kinds: (replicas, prefill intercept s, per prompt token s, decode step s, per batch s)
KINDS = [(16, 0.08, 0.002, 0.06, 0.001), (32, 0.02, 0.0002, 0.02, 0.0002), (16, 0.01, 0.0001, 0.012, 0.0001)]
RATE = 14.0  # bench_sim.py's fcfs arrival rate (requests/s)


def inputs(n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Arrival times (Poisson at RATE, seed 1) and, per replica kind, each request's service seconds alone: its
    prefill, then n_out - 1 decode steps at batch 1 (bench_sim.py's lengths, the toy profiles' curves)."""
    from bench_sim import lengths

    _, n_in, n_out = lengths(n)
    arrivals = np.cumsum(np.random.default_rng(1).exponential(1.0 / RATE, n))
    service = [p0 + pp * n_in + (n_out - 1) * (d0 + db) for _, p0, pp, d0, db in KINDS]
    return arrivals, service


def skeleton(arrivals: np.ndarray, service: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Simulate: requests go round-robin to the replicas, each serves its queue first come first served. A
    replica's queue is a deque and its server a process that sleeps on one event while the queue is empty, so a
    request costs SimPy its arrival timeout, its service timeout and, when it finds its replica idle, the wake-up:
    the fewest events a SimPy model of this case schedules. Returns the completion times and the events."""
    from collections import deque

    import simpy

    env = simpy.Environment()
    kind_of = [k for k, (count, *_) in enumerate(KINDS) for _ in range(count)]
    queues = [deque() for _ in kind_of]
    wake: list[simpy.Event | None] = [None] * len(kind_of)
    done = np.zeros(len(arrivals))

    def server(j: int, times: np.ndarray):
        q = queues[j]
        while True:
            if not q:
                wake[j] = env.event()
                yield wake[j]
            i = q.popleft()
            yield env.timeout(times[i])
            done[i] = env.now

    for j, k in enumerate(kind_of):
        env.process(server(j, service[k]))

    def source():
        now, m = 0.0, len(queues)
        for i, t in enumerate(arrivals.tolist()):
            yield env.timeout(t - now)
            now = t
            j = i % m
            queues[j].append(i)
            w = wake[j]
            if w is not None:
                wake[j] = None
                w.succeed()

    env.process(source())
    env.run()
    return done, next(env._eid)  # SimPy numbers every event it schedules from 0 (Environment.schedule)


def child(n: int) -> None:
    arrivals, service = inputs(n)
    t0 = time.perf_counter()
    done, events = skeleton(arrivals, service)
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "events": events, "completed": int((done > 0).sum())}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", type=int)
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return
    print(f"{'case':<11}{'requests':>10}{'median s':>10}{'req/s':>10}{'events/req':>11}")
    for n in a.sizes:
        runs = []
        for _ in range(a.repeats):
            out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True,
                                 check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = statistics.median(r["seconds"] for r in runs)
        assert all(r["completed"] == n for r in runs), runs
        print(f"{'skeleton':<11}{n:>10}{med:>10.2f}{n / med:>10.0f}{runs[0]['events'] / n:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
