"""The paged replay loop's own host time between engine steps (`dcsim.validate.paged_replay.serve`), measured on
the CPU with the tiny random-weight model: every request arrives at once, so the running set fills to
`max_num_seqs` and the gap from one step's end to the next one's start is the loop's scheduling and bookkeeping.
On a GPU that gap is time the device idles between steps, which no calibrated step holds.

    python benchmarks/bench_replay_loop.py [--requests 160] [--max-num-seqs 64]

Prints the median gap and step time per band of running requests (milliseconds), and the gap as a share of the
steps' time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from dcsim.calibrate.backends.paged import PagedBackend
from dcsim.calibrate.meters.registry import select_meter
from dcsim.validate import paged_replay as PR


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    n = a.requests
    wl = pd.DataFrame({"n_in": rng.integers(100, 400, n), "n_out": rng.integers(80, 200, n),
                       "arrival_s": np.zeros(n)})
    be = PagedBackend("cpu", arch="tiny-llama", dtype="fp32")
    be.load()
    pol = PR.PagedPolicy(max_num_seqs=a.max_num_seqs, max_num_batched_tokens=2048, kv_blocks=4000)
    be.kv_blocks, be.graph_sizes = pol.kv_blocks, PR.capture_sizes(a.max_num_seqs)
    be.engine(pol.kv_blocks, a.max_num_seqs, 700)
    PR.warm_up(be, pol, 700, lambda m: None)
    with tempfile.TemporaryDirectory() as d:
        meter = select_meter("cpu", latency_only=True)  # times only: the loop, not the device's energy
        PR.serve(wl, be, meter, pol, Path(d), tail_s=0.0, settle_s=0.0, log=lambda m: None)
        s = pd.read_csv(Path(d) / "steps.csv")
    s = s.assign(gap_ms=(s["start_s"].shift(-1) - s["end_s"]) * 1e3, step_ms=(s["end_s"] - s["start_s"]) * 1e3)
    s = s.iloc[:-1]
    q = a.max_num_seqs // 4
    s["running_band"] = pd.cut(s["running"], [0, q, 2 * q, 3 * q, 4 * q])
    print(s.groupby("running_band", observed=True)[["gap_ms", "step_ms"]].median().round(3).to_string())
    print(f"gap share of step time: {s['gap_ms'].sum() / s['step_ms'].sum():.1%} over {len(s)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
