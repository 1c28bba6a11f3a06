"""The paged engine against real vLLM runs: the ML.ENERGY leaderboard v3, one configuration left out at a time.

For each model and GPU, every published configuration (a `max_num_seqs`) is simulated with a profile fitted to
the others (`dcsim fit --from mlenergy --exclude max_num_seqs=B`), the way the ML.ENERGY benchmark ran it
(github.com/ml-energy/benchmark, `mlenergy/llm/benchmark.py`): N requests sent at once to one vLLM server started
with `--max-num-seqs B --gpu-memory-utilization 0.95`; energy, power and throughput over the steady state, from
the moment B requests have their first token to the moment N - B have; inter-token latency over every gap of
every request. N and the output lengths come from the configuration's published output-length histogram.

Assumed where the data is silent (each a parameter, reported with the result):
- prompt lengths: not published; lognormal with median `input_median` tokens and log-sd `input_sigma`
  (LMArena conversation turns, each turn's prompt the earlier turns' text);
- the token budget: vLLM's OpenAI-server default on GPUs of 70 GB or more, 8192;
- the window where N = 2B (their window would be empty): from the B-th first token to the last one, when the
  queue empties;
- KV memory: 0.95 of the replica's memory, less the weights and `reserve_gb` per GPU for activations, graphs
  and libraries;
- CUDA-graph sizes: vLLM's default list; prefix caching on (requests share no prefix here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dcsim.errors import UserError
from dcsim.profiles.fit import fit_profile, meta_from_dict
from dcsim.profiles.importers import mlenergy
from dcsim.profiles.profile import Profile
from dcsim.results import itl_stats, replica_energy
from dcsim.scenario import AllAtOnceArrivals, Batching, Pool, Scenario, TraceRef
from dcsim.traces.trace import Trace

GROUPS = (  # (model id in the data, --gpu, GPUs per replica)
    ("meta-llama/Llama-3.1-8B-Instruct", "H100", 1),
    ("meta-llama/Llama-3.1-8B-Instruct", "B200", 1),
    ("meta-llama/Llama-3.1-70B-Instruct", "H100", 4),
    ("meta-llama/Llama-3.1-70B-Instruct", "B200", 2),
)
TASK = "lm-arena-chat"
METRICS = ("energy_per_token_j", "avg_power_w", "throughput_tok_s", "itl_p50_s", "itl_p90_s", "itl_p99_s")


@dataclass
class Assumptions:
    input_median: float = 100.0
    input_sigma: float = 1.0
    max_num_batched_tokens: int = 8192
    mem_util: float = 0.95
    reserve_gb: float = 2.0
    seed: int = 0
    policy: str = "paged"


@dataclass
class Published:
    """One ML.ENERGY configuration as published."""

    model: str
    gpu: str
    gpus: int
    max_num_seqs: int
    avg_batch: float
    avg_output_len: float
    bins: np.ndarray
    counts: np.ndarray
    measured: dict[str, float]


def published(data_dir: str | Path) -> list[Published]:
    """The configurations of GROUPS in the v3 data, with their histograms and measured metrics."""
    d = Path(data_dir)
    out = []
    for model, gpu, gpus in GROUPS:
        f = d / "models" / f"{model.replace('/', '__')}__{TASK}.json"
        if not f.is_file():
            raise UserError("ML.ENERGY v3 model file not found", f)
        j = json.loads(f.read_text())
        for c in j["configurations"]:
            if gpu.lower() not in c["gpu_model"].lower() or int(c["num_gpus"]) != gpus:
                continue
            h = c["output_length_distribution"]
            out.append(Published(
                model=model, gpu=gpu, gpus=gpus, max_num_seqs=int(c["max_num_seqs"]),
                avg_batch=float(c["avg_batch_size"]), avg_output_len=float(c["avg_output_len"]),
                bins=np.asarray(h["bins"], float), counts=np.asarray(h["counts"], float),
                measured={"energy_per_token_j": c["energy_per_token_joules"], "avg_power_w": c["avg_power_watts"],
                          "throughput_tok_s": c["output_throughput_tokens_per_sec"],
                          "itl_p50_s": c["median_itl_ms"] / 1e3, "itl_p90_s": c["p90_itl_ms"] / 1e3,
                          "itl_p99_s": c["p99_itl_ms"] / 1e3}))
    return out


def loo_profile(data_dir: str | Path, c: Published) -> Profile:
    """The profile fitted to the other configurations of c's model and GPU."""
    table, meta = mlenergy.load(Path(data_dir), c.gpu, c.model, task=TASK, gpus=c.gpus,
                                exclude={"max_num_seqs": {float(c.max_num_seqs)}})
    meta["name"] = f"loo-{c.gpu}-{c.model.split('/')[-1]}-{c.max_num_seqs}"
    return fit_profile(table, meta_from_dict(meta)).profile


def workload(c: Published, a: Assumptions) -> Trace:
    """N requests (N = the histogram's count) whose output lengths follow c's histogram, uniform within a bin
    and scaled to its published mean; prompt lengths as assumed. In a shuffled order, all at time 0."""
    n = int(round(c.counts.sum()))
    cdf = np.concatenate(([0.0], np.cumsum(c.counts))) / c.counts.sum()
    q = (np.arange(n) + 0.5) / n
    out = np.interp(q, cdf, c.bins)
    out *= c.avg_output_len / out.mean()
    rng = np.random.default_rng(a.seed)
    n_out = np.maximum(1, np.rint(out)).astype(np.int64)
    rng.shuffle(n_out)
    n_in = np.clip(np.rint(rng.lognormal(np.log(a.input_median), a.input_sigma, n)), 1, 8192).astype(np.int64)
    return Trace(n_in, n_out, None, None, {"source": f"ML.ENERGY v3 {TASK} output lengths (assumed prompts)"})


def kv_blocks(p: Profile, a: Assumptions, block: int = 16) -> int:
    """KV blocks as vLLM sizes them at the run's memory utilisation (assumed reserve per GPU)."""
    g = p.gpus_per_replica
    free_gb = a.mem_util * p.device.memory_gb * g - p.memory.weights_gb - a.reserve_gb * g
    return max(1, int(free_gb * 1e9 // (p.model.kv_bytes_per_token * block)))


def simulate(c: Published, p: Profile, a: Assumptions, folder: Path) -> dict[str, float]:
    """Simulate one configuration and measure it the way ML.ENERGY did."""
    from dcsim.sim.engine import simulate as run_sim

    folder.mkdir(parents=True, exist_ok=True)
    prof = folder / "profile.yaml"
    p.to_yaml(prof)
    tr = folder / "trace.parquet"
    trace = workload(c, a)
    trace.to_parquet(tr)
    if a.policy == "continuous":  # the 2023 model, for comparison: whole-prompt prefills, full KV reserved
        batching = Batching(policy="continuous", max_batch=c.max_num_seqs)
    else:
        batching = Batching(policy="paged", max_num_seqs=c.max_num_seqs,
                            max_num_batched_tokens=max(a.max_num_batched_tokens, c.max_num_seqs),
                            kv_blocks=kv_blocks(p, a))
    sc = Scenario(name=folder.name, seed=a.seed, trace=TraceRef(path=str(tr)), arrivals=AllAtOnceArrivals(),
                  fleet=[Pool(name="vllm", profile=str(prof), count=1, batching=batching)])
    raw = run_sim(sc)
    lg = raw.log
    n = len(trace)
    b = c.max_num_seqs
    first = np.sort(lg["first_token_s"])
    t0, t1 = first[b - 1], first[n - b - 1]
    if n - b <= b:  # N = 2B leaves the published window empty: measure until the queue empties instead
        t1 = first[n - 1]
    rep = replica_energy(raw, t0, t1).iloc[0]
    energy = float(rep["active_j"] + rep["idle_j"])
    f = lg["first_token_s"]
    first_tokens = int(np.sum((f >= t0) & (f < t1)))
    out = {"requests": n, "steady_s": t1 - t0}
    if a.policy == "continuous":  # no step record: each request's decode tokens spread from its first to its end
        tokens = float(np.sum((raw.n_out - 1) * _share(f, lg["done_s"], t0, t1))) + first_tokens
        out |= {f"itl_p{q}_s": float("nan") for q in (50, 90, 99)}
        out |= {"avg_batch": float("nan"), "preemptions": 0, "kv_blocks": 0}
    else:  # decode runs: each spreads its steps x decodes evenly over its time
        start, t_first, t_last, k, dec = raw.itl[0]
        end = start + k * (t_first + t_last) / 2.0
        share = _share(start, end, t0, t1)
        tokens = float(np.sum(dec * k * share)) + first_tokens
        itl = itl_stats(t_first, t_last, k, dec)
        out |= {f"itl_{q}_s": itl[q] for q in ("p50", "p90", "p99")}
        out |= {"avg_batch": float(np.sum(dec * share * (end - start)) / max(t1 - t0, 1e-12)),
                "preemptions": raw.policy_stats[0]["preemptions"], "kv_blocks": batching.params.kv_blocks}
    return out | {"energy_per_token_j": energy / tokens, "avg_power_w": energy / (t1 - t0),
                  "throughput_tok_s": tokens / (t1 - t0)}


def _share(start: np.ndarray, end: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """The part of each interval [start, end) that lies inside the window [t0, t1) (0 for an empty interval)."""
    span = end - start
    overlap = np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0.0, None)
    return np.where(span > 0, overlap / np.where(span > 0, span, 1.0), 0.0)


def run(data_dir: str | Path, out: Path, a: Assumptions | None = None,
        only: list[tuple[str, int]] | None = None) -> pd.DataFrame:
    """Every configuration (or `only` (gpu, max_num_seqs) pairs), one row each: measured, simulated, error."""
    a = a or Assumptions()
    rows = []
    for c in published(data_dir):
        if only is not None and (c.gpu, c.max_num_seqs) not in only:
            continue
        p = loo_profile(data_dir, c)
        tag = f"{c.model.split('/')[-1]}-{c.gpu}x{c.gpus}-b{c.max_num_seqs}"
        sim = simulate(c, p, a, out / "work" / tag)
        row = {"model": c.model.split("/")[-1], "gpu": c.gpu, "gpus": c.gpus, "max_num_seqs": c.max_num_seqs,
               "avg_batch_measured": c.avg_batch, "avg_batch_sim": sim["avg_batch"],
               "requests": sim["requests"], "preemptions_sim": sim["preemptions"]}
        for m in METRICS:
            row[f"{m}_measured"] = c.measured[m]
            row[f"{m}_sim"] = sim[m]
            row[f"{m}_err"] = sim[m] / c.measured[m] - 1.0
        rows.append(row)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Median and max absolute error per metric."""
    return {m: {"median_abs_err": float(df[f"{m}_err"].abs().median()),
                "max_abs_err": float(df[f"{m}_err"].abs().max())} for m in METRICS}
