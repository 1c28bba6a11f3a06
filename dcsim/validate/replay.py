"""The device side of a validation: serve a workload on a real device, one request batch at a time, with
requests starting no earlier than their arrival times, and meter the whole window.

One process plays both client and server, as a single-replica server with a FIFO queue does: the loop
sleeps while the queue is empty (the idle gaps are real idle, the model stays loaded), takes requests
in arrival order by the batching policy the simulator models (`fcfs`: one at a time; `static`: gather up
to max_batch or wait max_wait_s once free, then run them padded to the longest prompt and output), and
records for each request its arrival, start, first token and end. Energy: one meter window over the
whole replay and a sampled power timeline; active energy is the timeline's integral over the batch runs
(`batch_energy="timeline"`, default), or one energy-counter window per batch and its prefill
(`batch_energy="counter"`). Counter reads cost the loop time between batches (a median 7.6 ms per batch on the
H200, with three reads outside the timed region and one inside it), time a server does not spend, so the default
reads none per batch. Each request's row is
appended to requests.csv as its batch completes, so a crash keeps what was measured; a replay cannot be
resumed (the idle gaps would change), so a rerun starts over.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dcsim.calibrate.backends.base import Backend
from dcsim.calibrate.meters import Meter
from dcsim.calibrate.store import RowWriter
from dcsim.errors import UserError
from dcsim.validate.window import Window

REQUEST_FIELDS = ("id", "arrival_s", "n_in", "n_out", "batch_id", "batch_size", "batch_n_in", "batch_n_out",
                  "start_s", "first_token_s", "end_s", "gen_tokens", "batch_energy_j")
BATCH_FIELDS = ("batch_id", "batch_size", "batch_n_in", "batch_n_out", "start_s", "first_token_s", "end_s",
                "energy_j", "prefill_energy_j")


@dataclass(frozen=True)
class ServePolicy:
    """The batching the replay serves with; the same fields the scenario's Batching has."""

    policy: str = "fcfs"  # fcfs | static
    max_batch: int = 1
    max_wait_s: float = 0.0

    def batch_sizes(self) -> list[int]:
        return [1] if self.policy == "fcfs" else list(range(1, self.max_batch + 1))


def cache_lengths(plan_shapes: list[tuple[int, int, int]], sizes: list[int]) -> dict[int, int]:
    """Static-cache length per batch size as calibration sized it (longest n_in + n_out of that batch size in
    the plan); a batch size the plan lacks takes the next larger planned one's length (else the largest)."""
    by_b: dict[int, int] = {}
    for n_in, n_out, b in plan_shapes:
        by_b[b] = max(by_b.get(b, 0), n_in + n_out)
    if not by_b:
        return {}
    out = {}
    for b in sizes:
        larger = sorted(x for x in by_b if x >= b)
        out[b] = by_b[larger[0]] if larger else by_b[max(by_b)]
    return out


def check_fits(wl: pd.DataFrame, lengths: dict[int, int], policy: ServePolicy, file: str | None) -> None:
    """Every request must fit the smallest cache a batch it may join would have; else the engine would
    re-size its cache (and recompile) in the middle of the window."""
    if not lengths:
        return
    need = wl["n_in"] + wl["n_out"]
    room = min(lengths[b] for b in policy.batch_sizes())
    if policy.policy == "static":  # padded: the longest prompt plus the longest output of a batch
        worst = int(wl["n_in"].max() + wl["n_out"].max())
    else:
        worst = int(need.max())
    if worst > room:
        raise UserError(f"requests need up to {worst} cache positions but the calibrated engine holds {room} "
                        f"(cache lengths by batch size {lengths}); pass --clip-in / --clip-out so that the longest "
                        "prompt plus the longest output fit", file, "--clip-in")


def warmup_prompt(batch: int, lengths: dict[int, int]) -> int:
    """The prompt length warm_up runs each batch size at (32 output tokens), inside that batch size's cache."""
    return min(128, max(8, lengths.get(batch, 160) - 32))


def warmed_shapes(batch_sizes: list[int], lengths: dict[int, int],
                  prompt_lengths: list[int] | None) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """The shapes warm_up leaves the engine having run: (batch, prompt length) prefills and (batch, first, last)
    KV lengths decoded, for a forecast whose replica starts as the replay's did (dcsim/sim/shapes.py)."""
    prompts, kv = [], []
    for b in batch_sizes:
        n = warmup_prompt(b, lengths)
        prompts.append((b, n))
        kv.append((b, n + 1, n + 31))
        for length in sorted(set(prompt_lengths or [])):
            prompts.append((b, int(length)))
            kv.append((b, int(length) + 1, int(length) + 1))
    return prompts, kv


def warm_up(backend: Backend, policy: ServePolicy, lengths: dict[int, int], log,
            prompt_lengths: list[int] | None = None) -> float:
    """Run every batch size the replay may use until the backend has nothing left to compile, then once
    more; then, where given, one short run (2 output tokens) per prompt length and batch size. Returns
    seconds spent; none of it is part of the window.

    Why prompt lengths: the compiled static-cache engine pays about 90 ms extra the first time it sees a
    prompt length (H100, Llama-2-7B shapes: time to first token 140 ms for a new length against 52 ms for
    a repeated one, in the first replays), a one-off that calibration's repeats leave out of its medians
    and that a serving engine with length-independent prefill kernels does not pay at all."""
    t0 = time.perf_counter()
    for b in policy.batch_sizes():
        n_in = warmup_prompt(b, lengths)
        for _ in range(3):
            backend.run(n_in, 32, b, seed=b, on_start=lambda: None, on_first_token=lambda: None)
            if not backend.needs_warmup(n_in, 32, b):
                break
        backend.run(n_in, 32, b, seed=100 + b, on_start=lambda: None, on_first_token=lambda: None)
        log(f"warm-up batch {b}: done at {time.perf_counter() - t0:.1f} s")
    for b in policy.batch_sizes() if prompt_lengths else []:
        for n_in in sorted(set(prompt_lengths)):
            backend.run(int(n_in), 2, b, seed=200 + b, on_start=lambda: None, on_first_token=lambda: None)
        log(f"warm-up of {len(set(prompt_lengths))} prompt lengths at batch {b}: done at "
            f"{time.perf_counter() - t0:.1f} s")
    return time.perf_counter() - t0


BATCH_ENERGY = ("timeline", "counter")


def serve(wl: pd.DataFrame, backend: Backend, meter: Meter, policy: ServePolicy, out: Path,
          tail_s: float = 10.0, settle_s: float = 10.0, timeline_hz: float = 20.0, batch_energy: str = "timeline",
          log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Replay the workload; writes requests.csv, batches.csv and power.csv into `out` and returns the
    window's facts (length, measured energies, timing of the window in wall-clock seconds). With
    batch_energy="timeline" the per-batch energy columns stay empty and active_j is the counter's joules over
    the batch runs by the timeline's share of the window (window.timeline_share_j);
    where the meter cannot sample power, the counter is read per batch instead."""
    if batch_energy not in BATCH_ENERGY:
        raise ValueError(f"batch_energy must be one of {BATCH_ENERGY}, not {batch_energy!r}")
    arrival = wl["arrival_s"].to_numpy(float)
    n_in = wl["n_in"].to_numpy(int)
    n_out = wl["n_out"].to_numpy(int)
    n = len(wl)
    reqs = RowWriter(out / "requests.csv", REQUEST_FIELDS, durable=False)
    batches = RowWriter(out / "batches.csv", BATCH_FIELDS, durable=False)
    q: deque[int] = deque()
    nxt = 0
    done = 0
    active_j = 0.0
    bid = 0
    last_report = 0.0
    runs: list[tuple[float, float]] = []
    try:
        with Window(meter, out, tail_s, settle_s, timeline_hz) as w:
            now, timeline = w.now, w.timeline
            if batch_energy == "timeline" and not timeline.active:
                log("the meter cannot sample power: reading the energy counter per batch instead")
                batch_energy = "counter"
            per_batch = batch_energy == "counter"

            def admit() -> None:
                nonlocal nxt
                t = now()
                while nxt < n and arrival[nxt] <= t:
                    q.append(nxt)
                    nxt += 1

            while done < n:
                admit()
                if not q:
                    time.sleep(max(0.0, arrival[nxt] - now()))
                    continue
                if policy.policy == "static" and len(q) < policy.max_batch and policy.max_wait_s > 0:
                    deadline = now() + policy.max_wait_s
                    while len(q) < policy.max_batch and now() < deadline:
                        wake = deadline if nxt >= n else min(deadline, arrival[nxt])
                        time.sleep(max(0.0, wake - now()))
                        admit()
                take = 1 if policy.policy == "fcfs" else policy.max_batch
                batch = [q.popleft() for _ in range(min(take, len(q)))]
                b_in = int(max(n_in[i] for i in batch))
                b_out = int(max(n_out[i] for i in batch))
                st: dict = {}
                key = f"b{bid}"

                def on_start() -> None:
                    if per_batch:
                        meter.begin(key)
                        meter.begin(key + "/prefill")
                    st["start"] = now()
                    timeline.label = key

                def on_first() -> None:
                    st["first"] = now()
                    if per_batch:
                        st["prefill"] = meter.end(key + "/prefill", sync=False).device_total

                tm = backend.run(b_in, b_out, len(batch), seed=10_000 + bid, on_start=on_start,
                                 on_first_token=on_first)
                if "first" not in st:
                    st["first"] = now()
                    if per_batch:
                        st["prefill"] = meter.end(key + "/prefill", sync=False).device_total
                e = meter.end(key).device_total if per_batch else math.nan
                end = now()
                timeline.label = ""
                runs.append((st["start"], end))
                if per_batch:
                    active_j += e
                batches.write({"batch_id": bid, "batch_size": len(batch), "batch_n_in": b_in, "batch_n_out": b_out,
                               "start_s": round(st["start"], 6), "first_token_s": round(st["first"], 6),
                               "end_s": round(end, 6), "energy_j": e, "prefill_energy_j": st.get("prefill", math.nan)})
                for i in batch:
                    reqs.write({"id": i, "arrival_s": arrival[i], "n_in": int(n_in[i]), "n_out": int(n_out[i]),
                                "batch_id": bid, "batch_size": len(batch), "batch_n_in": b_in, "batch_n_out": b_out,
                                "start_s": round(st["start"], 6), "first_token_s": round(st["first"], 6),
                                "end_s": round(end, 6), "gen_tokens": tm.gen_tokens, "batch_energy_j": e})
                if tm.gen_tokens != b_out:
                    raise RuntimeError(f"batch {bid} generated {tm.gen_tokens} tokens, expected {b_out}")
                done += len(batch)
                bid += 1
                if end - last_report > 15 or done == n:
                    last_report = end
                    log(f"replay: {done}/{n} requests at {end:.1f} s (arrivals span {arrival[-1]:.1f} s), "
                        f"queue {len(q)}")
            w.close(now())
    finally:
        reqs.close()
        batches.close()
    if not per_batch:  # the counter's joules over the runs, by the timeline's share of the window
        active_j = w.timeline_share_j(runs)
    return w.facts(active_j, batches=bid, batch_energy=batch_energy)


def write_json(path: Path, data: dict) -> None:
    """Strict JSON (no NaN or Infinity: an unmeasured number is null); anything else that is not JSON as text."""
    from dcsim.results import strict_json

    path.write_text(strict_json(data, indent=2, default=str) + "\n")


PROBE_FIELDS = ("n_in", "n_out", "batch", "repeat", "runtime_s", "ttft_s", "energy_j")


def probe(backend: Backend, meter: Meter, shapes: list[tuple[int, int, int]], repeats: int, out: Path) -> None:
    """After the window: run calibration-plan shapes on the same loaded engine and write probe.csv, so the
    engine's speed on this machine, today, can be set against the calibration's medians for those shapes
    (tells a slower machine from a slower replay)."""
    w = RowWriter(out / "probe.csv", PROBE_FIELDS, durable=False)
    try:
        for rep in range(repeats):
            for n_in, n_out, b in shapes:
                meter.begin("probe")
                tm = backend.run(n_in, n_out, b, seed=50_000 + rep, on_start=lambda: None,
                                 on_first_token=lambda: None)
                r = meter.end("probe")
                w.write({"n_in": n_in, "n_out": n_out, "batch": b, "repeat": rep, "runtime_s": tm.runtime_s,
                         "ttft_s": tm.ttft_s, "energy_j": r.device_total})
    finally:
        w.close()
