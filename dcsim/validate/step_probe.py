"""Serving steps timed on the replay's own engine, before and after its window (`dcsim validate --step-probe`).

A paged replay's steps can run longer than the calibration's at the same composition for three reasons that the
replay alone cannot tell apart: this machine is slower than the calibration's (its host paces the eager prefill's
kernel launches), the machine drifted during the session, or the replay loop costs more than the calibration's
served loop. The probe runs chosen steps as the calibration's served loop does (`run_step(served=True)`, one
device sync a step) on the same loaded engine, once before the window and once after, into step_probe.csv: set
against the calibration's medians at those shapes it gives this machine's offset, and before against after its
drift.

A shape is DECODES:CONTEXT:CHUNK[:PREFIX[:CHUNKS]] (e.g. 32:1024:64 is 32 decodes of 1,024 KV tokens each beside
one 64-token chunk; 0:0:256 a 256-token chunk alone), the calibration plan's step fields in that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dcsim.calibrate.store import RowWriter

STEP_PROBE_FIELDS = ("when", "decode_batch", "context", "prefill_tokens", "prefill_prefix", "prefill_chunks",
                     "repeat", "steps", "runtime_s", "ms_per_step", "energy_j", "avg_power_w")
# four kinds of step, each under 0.1 s at 96 steps on an H200 for Llama-2-7B: decodes alone, a short chunk
# beside few and many decodes, a chunk alone (the launch-bound prefill)
DEFAULT_SHAPES = "16:1024:0,4:1024:64,32:1024:64,0:0:256"


@dataclass(frozen=True)
class StepShape:
    """One probe step, in the calibration plan's terms."""

    decode_batch: int
    context: int
    prefill_tokens: int
    prefix: int = 0
    chunks: int = 1

    def label(self) -> str:
        return f"{self.decode_batch}:{self.context}:{self.prefill_tokens}:{self.prefix}:{self.chunks}"

    def point(self) -> str:
        """The calibration's name for this step (runs.csv `point`)."""
        ctx = self.context if self.decode_batch else 0
        return (f"s-b{self.decode_batch}-l{ctx}-p{self.prefill_tokens}-h{self.prefix}"
                + (f"-k{self.chunks}" if self.chunks > 1 else ""))


def parse_shapes(text: str) -> list[StepShape]:
    """'16:1024:0,0:0:256' -> shapes; ValueError naming the part that is wrong."""
    shapes = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            nums = [int(x) for x in part.split(":")]
        except ValueError:
            raise ValueError(f"bad step shape {part!r}: expected DECODES:CONTEXT:CHUNK[:PREFIX[:CHUNKS]] "
                             "in whole numbers") from None
        if not 3 <= len(nums) <= 5:
            raise ValueError(f"bad step shape {part!r}: expected DECODES:CONTEXT:CHUNK[:PREFIX[:CHUNKS]]")
        s = StepShape(*nums)
        if min(nums) < 0 or s.chunks < 1 or (s.decode_batch == 0 and s.prefill_tokens == 0) \
                or (s.decode_batch > 0 and s.context < 1):
            raise ValueError(f"bad step shape {part!r}: a step needs decodes (with a context of at least 1) or a "
                             "chunk, no negative numbers, and at least one chunk")
        shapes.append(s)
    if not shapes:
        raise ValueError("no step shape given")
    return shapes


def run(backend, meter, shapes: list[StepShape], repeats: int, step_repeats: int, out: Path, when: str) -> None:
    """Run every shape `repeats` times (round-robin, so drift spreads over all), each repeat `step_repeats`
    served steps in one meter window, appending rows to out/step_probe.csv."""
    w = RowWriter(out / "step_probe.csv", STEP_PROBE_FIELDS, durable=False)
    try:
        for rep in range(repeats):
            for s in shapes:
                tm = backend.run_step(s.decode_batch, s.context, s.prefill_tokens, s.prefix, step_repeats,
                                      seed=60_000 + rep, on_start=lambda: meter.begin("step-probe"),
                                      chunks=s.chunks, served=True)
                r = meter.end("step-probe")
                e = r.device_total if r.device_total is not None and math.isfinite(r.device_total) else None
                w.write({"when": when, "decode_batch": s.decode_batch, "context": s.context,
                         "prefill_tokens": s.prefill_tokens, "prefill_prefix": s.prefix, "prefill_chunks": s.chunks,
                         "repeat": rep, "steps": step_repeats, "runtime_s": round(tm.runtime_s, 6),
                         "ms_per_step": round(1e3 * tm.runtime_s / step_repeats, 4),
                         "energy_j": None if e is None else round(e, 3),
                         "avg_power_w": None if e is None or tm.runtime_s <= 0 else round(e / tm.runtime_s, 2)})
    finally:
        w.close()


def read_against(probe_csv: Path, run_dir: Path):
    """Each probe shape's median ms a step and power, before and after the window, beside the calibration run's
    medians for the same step (runs.csv `point`; NaN where the run has no such step) and their ratios."""
    import pandas as pd

    p = pd.read_csv(probe_csv)
    p["point"] = [StepShape(*t).point() for t in zip(p.decode_batch, p.context, p.prefill_tokens, p.prefill_prefix,
                                                       p.prefill_chunks)]
    got = p.pivot_table(index="point", columns="when", values=["ms_per_step", "avg_power_w"], aggfunc="median")
    got.columns = [f"{a}_{b}" for a, b in got.columns]
    runs = pd.read_csv(run_dir / "runs.csv")
    runs = runs[(runs["phase"] == "step") & (runs["status"] == "ok")]
    cal = runs.assign(ms=1e3 * runs["runtime_s"] / runs["n_out"]).groupby("point").agg(
        ms_calibration=("ms", "median"), avg_power_w_calibration=("avg_power_w", "median"))
    t = got.join(cal, how="left")
    for when in ("before", "after"):
        if f"ms_per_step_{when}" in t:
            t[f"ms_{when}_x"] = t[f"ms_per_step_{when}"] / t["ms_calibration"]
    return t
