"""The serving loop's host time between steps, measured in calibration: the paged replay's own loop
(dcsim.validate.paged_replay.serve) runs small all-at-once workloads, N short requests and a few long prompts, so
that its steps.csv gives the gap between one step's end and the next one's start at each number of running
sequences, with and without prefill chunks. Each workload's raw files are kept under host-loop/running-N/ of the
run folder; `dcsim fit` reads them into latency.host_step_s."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from dcsim.calibrate.plan import HostLoop

FOLDER = "host-loop"
GAP_FEATURES = ("running", "prefill_tokens")  # of the step after the gap: what the loop schedules in it


def workload(spec: HostLoop, running: int):
    """`running` short requests (spec.prompt_tokens in, spec.steps out) then spec.long_prompts long prompts, all at
    time 0: the short ones decode together while the long ones are prefilled in chunks beside them."""
    import pandas as pd

    n_in = [spec.prompt_tokens] * running + [spec.long_prompt_tokens] * spec.long_prompts
    n_out = [spec.steps] * running + [max(2, spec.steps // 4)] * spec.long_prompts
    return pd.DataFrame({"id": np.arange(len(n_in)), "arrival_s": 0.0, "n_in": n_in, "n_out": n_out})


def run_host_loop(backend, meter, out_dir: Path, spec: HostLoop, log: Callable[[str], None]) -> list[Path]:
    """Each of spec.running's workloads through the replay's loop on the loaded paged backend, written aside and
    renamed into place; a workload whose folder is there already is skipped (the same command resumes)."""
    from dcsim.validate import paged_replay as PR

    done = []
    for n in spec.running:
        dest = out_dir / FOLDER / f"running-{n}"
        if (dest / "steps.csv").is_file():
            done.append(dest)
            continue
        tmp = dest.with_name(dest.name + ".partial")  # ours: a killed session's leftover is written again
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        wl = workload(spec, n)
        pol = PR.PagedPolicy(max_num_seqs=n + spec.long_prompts,
                             max_num_batched_tokens=max(spec.max_num_batched_tokens, n + spec.long_prompts, 16))
        need = (wl["n_in"] + wl["n_out"]).astype(int).tolist()
        backend.kv_blocks = PR.default_blocks(backend, pol, need)
        backend.graph_sizes = PR.capture_sizes(pol.max_num_seqs)
        backend.engine(backend.kv_blocks, pol.max_num_seqs, max(need))
        PR.warm_up(backend, pol, max(need), log)
        wl.to_csv(tmp / "workload.csv", index=False)
        facts = PR.serve(wl, backend, meter, pol, tmp, tail_s=spec.settle_s, settle_s=spec.settle_s, log=log)
        (tmp / "loop.json").write_text(json.dumps({"running": n, "policy": pol.params(), "steps": facts["steps"],
                                                   "window_s": facts["window_s"]}, indent=2) + "\n")
        tmp.rename(dest)
        log(f"host loop: {n} running, {facts['steps']} steps in {facts['window_s']:.1f} s")
        done.append(dest)
    backend.kv_blocks = None
    return done


def read_gaps(run_dir: Path):
    """Every gap of every host-loop workload of a run folder: the seconds from one step's end to the next one's
    start, with the next step's running sequences and prefill tokens (an empty table where there are none)."""
    import pandas as pd

    frames = []
    for d in sorted((run_dir / FOLDER).glob("running-*")):
        s = pd.read_csv(d / "steps.csv")
        gap = s["start_s"].to_numpy(float)[1:] - s["end_s"].to_numpy(float)[:-1]
        frames.append(pd.DataFrame({"workload": d.name, "gap_s": gap,
                                    **{k: s[k].to_numpy(float)[1:] for k in GAP_FEATURES}}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["workload", "gap_s",
                                                                                      *GAP_FEATURES])


def fit_gaps(gaps) -> tuple[float, dict[str, float], float, int]:
    """Least squares of gap on (1, running, prefill_tokens), fitted again without the gaps more than 5 scaled
    median deviations off the first fit (a collection pause, the OS): (intercept, coefficients, median absolute
    percentage error, gaps kept)."""
    x = np.column_stack([np.ones(len(gaps))] + [gaps[k].to_numpy(float) for k in GAP_FEATURES])
    y = gaps["gap_s"].to_numpy(float)
    keep = np.ones(len(y), bool)
    for _ in range(2):
        beta, *_ = np.linalg.lstsq(x[keep], y[keep], rcond=None)
        r = y - x @ beta
        mad = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))
        keep = np.abs(r) <= max(5 * mad, 1e-3 * float(np.median(np.abs(y))))  # a floor: exact data has no spread
    beta, *_ = np.linalg.lstsq(x[keep], y[keep], rcond=None)
    pred = x[keep] @ beta
    ape = float(np.median(np.abs(pred - y[keep]) / np.maximum(y[keep], 1e-9))) * 100
    return float(beta[0]), {k: float(b) for k, b in zip(GAP_FEATURES, beta[1:])}, ape, int(keep.sum())


__all__ = ["FOLDER", "GAP_FEATURES", "fit_gaps", "read_gaps", "run_host_loop", "workload"]
