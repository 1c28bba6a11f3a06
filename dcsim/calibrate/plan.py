"""Calibration plans: which (input, output, batch) points to measure, how often, in which order.

A plan YAML lists sweeps (each a cartesian product of n_in x n_out x batch lists) and off-axis points,
the repeat/stopping rule, warm-ups and idle windows; and, for engines that serve step by step (`paged`), mixed
steps (`steps`: decode batch x per-sequence context x prefill chunk tokens x the chunk's cached prefix), each run
`step_repeats` times in a row. `expand` turns it into the unique points; the schedule (which point runs in which
round) lives in `schedule.py`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from dcsim.errors import UserError, load_model


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _axis(v: object) -> list[int]:
    """An axis is a list of positive ints or {pow2: [lo, hi]} (every power of two from lo to hi)."""
    if isinstance(v, int):
        v = [v]
    if isinstance(v, dict):
        if set(v) != {"pow2"} or not isinstance(v["pow2"], (list, tuple)) or len(v["pow2"]) != 2:
            raise ValueError("expected a list of ints or {pow2: [lo, hi]}")
        lo, hi = (int(x) for x in v["pow2"])
        if lo <= 0 or hi < lo or lo & (lo - 1) or hi & (hi - 1):
            raise ValueError(f"pow2 bounds must be powers of two with lo <= hi, got [{lo}, {hi}]")
        out, x = [], lo
        while x <= hi:
            out.append(x)
            x *= 2
        return out
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError("expected a non-empty list of ints or {pow2: [lo, hi]}")
    out = [int(x) for x in v]
    if any(x <= 0 for x in out):
        raise ValueError("values must be positive")
    return out


def _axis0(v: object) -> list[int]:
    """A step axis: like `_axis`, but a list may hold 0 (no decodes, no prefill chunk, no cached prefix)."""
    if isinstance(v, int):
        v = [v]
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, int) for x in v):
        if any(x < 0 for x in v):
            raise ValueError("values must be >= 0")
        return [int(x) for x in v]
    return _axis(v)


class StepSweep(Strict):
    """Every combination of a mixed step's four axes: `decode_batch` sequences decoding one token each, every one
    reading `decode_context` KV tokens (its new one included), and one prefill chunk of `prefill_tokens` tokens
    after `prefill_prefix` tokens of its sequence already cached; with `prefill_chunks` k > 1, k chunks of
    distinct lengths (prefill_tokens, +1, ..., +k-1), each after its own cached prefix, as a step admitting
    several requests runs them. With `decode_context_spread` s > 0 the decodes' contexts spread evenly over
    L (1 - s) .. L (1 + s), the same total, as a running batch's sequences differ in length. A step with neither
    decodes nor a chunk is left out; without decodes the context axes are moot (recorded as 0)."""

    name: str
    decode_batch: list[int]
    decode_context: list[int] = Field(default_factory=lambda: [1])
    prefill_tokens: list[int] = Field(default_factory=lambda: [0])
    prefill_prefix: list[int] = Field(default_factory=lambda: [0])
    prefill_chunks: list[int] = Field(default_factory=lambda: [1])
    decode_context_spread: list[float] = Field(default_factory=lambda: [0.0])

    @field_validator("decode_batch", "prefill_tokens", "prefill_prefix", mode="before")
    @classmethod
    def _parse_axis0(cls, v: object) -> list[int]:
        return _axis0(v)

    @field_validator("decode_context", "prefill_chunks", mode="before")
    @classmethod
    def _parse_axis(cls, v: object) -> list[int]:
        return _axis(v)

    @field_validator("decode_context_spread", mode="before")
    @classmethod
    def _parse_spread(cls, v: object) -> list[float]:
        vals = v if isinstance(v, list) else [v]
        if not vals or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in vals):
            raise ValueError("values must be numbers in [0, 1): the contexts' spread either side of the mean")
        return [float(x) for x in vals]


class Sweep(Strict):
    """Every combination of the three axes."""

    name: str
    n_in: list[int]
    n_out: list[int]
    batch: list[int] = Field(default_factory=lambda: [1])

    @field_validator("n_in", "n_out", "batch", mode="before")
    @classmethod
    def _parse_axis(cls, v: object) -> list[int]:
        return _axis(v)


class PointSpec(Strict):
    n_in: int = Field(gt=0)
    n_out: int = Field(gt=0)
    batch: int = Field(default=1, gt=0)


class Repeats(Strict):
    """Stopping rule (Wilkins et al., E-Energy 2024, extended): repeat a point until the confidence
    interval's half-width of every metric is within `rel_half_width` of its mean, at least `min` and at
    most `max` times."""

    min: int = Field(default=3, ge=1)
    max: int = Field(default=10, ge=1)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    rel_half_width: float = Field(default=0.05, gt=0)
    metrics: list[Literal["runtime_s", "energy_device_j", "ttft_s"]] = Field(
        default_factory=lambda: ["runtime_s", "energy_device_j"])

    @model_validator(mode="after")
    def _order(self) -> "Repeats":
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Warmup(Strict):
    """Unmeasured-for-fitting runs at the start of every session (recorded with warmup=True)."""

    runs: int = Field(default=2, ge=0)
    n_in: int = Field(default=128, gt=0)
    n_out: int = Field(default=32, gt=0)
    batch: int = Field(default=1, gt=0)
    per_prompt: bool = Field(
        default=False, description="before the first measured run of each (prompt length, batch size) in a "
        "session, one unmeasured run of that prompt with 2 output tokens: engines pay a one-off cost the first "
        "time they see a prompt length (on the H100 115-166 ms to first token against about 40 ms warm), which a "
        "server that has run for a while no longer pays, and `dcsim validate` warms every prompt length the same "
        "way")


class Idle(Strict):
    """Idle windows, seconds. deep: before the framework touches the device (no process holds it);
    serving: model loaded, no request, right after the warm-ups so the decay from activity is visible."""

    deep_s: float = Field(default=20.0, ge=0)
    serving_s: float = Field(default=40.0, ge=0)


class HostLoop(Strict):
    """The serving loop's host time between steps (dcsim.calibrate.host_loop): for each number of running
    sequences, that many short requests and `long_prompts` long prompts through the paged replay's own loop."""

    running: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 16, 32, 64], min_length=2)
    steps: int = Field(default=48, ge=4, description="decode steps of each short request")
    prompt_tokens: int = Field(default=32, gt=0)
    long_prompts: int = Field(default=2, ge=0, description="long prompts, chunked beside the decodes")
    long_prompt_tokens: int = Field(default=2048, gt=0)
    max_num_batched_tokens: int = Field(default=512, gt=0, description="the token budget a step (chunks) fills")
    settle_s: float = Field(default=0.5, ge=0, description="idle before and after each workload's window")


class Plan(Strict):
    name: str
    description: str | None = None
    seed: int = 0
    order: Literal["random", "grouped_by_batch"] = Field(
        default="random", description="random: every round shuffled; grouped_by_batch: one batch size at a time "
        "(all its rounds), shuffled within; needed by backends that compile per batch size")
    sweeps: list[Sweep] = Field(default_factory=list)
    points: list[PointSpec] = Field(default_factory=list, description="off-axis points")
    repeats: Repeats = Field(default_factory=Repeats)
    warmup: Warmup = Field(default_factory=Warmup)
    idle: Idle = Field(default_factory=Idle)
    cooldown_s: float = Field(default=0.0, ge=0, description="pause between runs")
    steps: list[StepSweep] = Field(default_factory=list, description="mixed steps (engines that run them: paged)")
    step_repeats: int = Field(default=32, ge=1, description="how many times one run of a step entry repeats "
                              "the same step (timed and metered together)")
    step_loop: Literal["pipelined", "served"] = Field(
        default="pipelined", description="pipelined: a step's repeats are queued back to back on the device, the "
        "host running ahead; served: each repeat runs as a server runs a step (the decode rows loaded from the "
        "host, the chunk's token ids sent, the step's tokens read back: one device sync a step)")
    host_loop: HostLoop | None = Field(default=None, description="the serving loop's host time between steps, "
                                       "through the paged replay's own loop (engines that serve one: paged)")

    @model_validator(mode="after")
    def _nonempty(self) -> "Plan":
        if not self.sweeps and not self.points and not self.steps:
            raise ValueError("a plan needs at least one sweep, point or step sweep")
        return self


class Point(Strict):
    """One unique shape to measure and the sweeps it belongs to. kind "step": a mixed step, with n_in the
    prefill chunk's tokens, n_out the repeats of one run, batch the decode batch, `context` each decode's KV
    tokens, `prefix` the chunk's cached prefix and `chunks` how many chunks (see StepSweep)."""

    n_in: int
    n_out: int
    batch: int
    groups: list[str]
    kind: Literal["run", "step"] = "run"
    context: int = 0
    prefix: int = 0
    chunks: int = 1
    spread: float = 0.0

    @property
    def id(self) -> str:
        if self.kind == "step":
            return step_id(self.batch, self.context, self.n_in, self.prefix, self.chunks, self.spread)
        return point_id(self.n_in, self.n_out, self.batch)


def point_id(n_in: int, n_out: int, batch: int) -> str:
    return f"i{n_in}-o{n_out}-b{batch}"


def step_id(decode_batch: int, context: int, prefill_tokens: int, prefix: int, chunks: int = 1,
            spread: float = 0.0) -> str:
    """A step's id; one chunk and equal contexts keep the id they had before those axes (so earlier runs resume)."""
    return (f"s-b{decode_batch}-l{context}-p{prefill_tokens}-h{prefix}" + (f"-k{chunks}" if chunks > 1 else "")
            + (f"-v{spread:g}" if spread > 0 else ""))


def expand(plan: Plan) -> list[Point]:
    """Unique points of the plan, in a stable order (sorted by batch, n_in, n_out); a shape listed by
    several sweeps is measured once and lists every sweep in `groups`."""
    seen: dict[tuple[int, int, int], list[str]] = {}
    for sw in plan.sweeps:
        for b in sw.batch:
            for i in sw.n_in:
                for o in sw.n_out:
                    g = seen.setdefault((i, o, b), [])
                    if sw.name not in g:
                        g.append(sw.name)
    for p in plan.points:
        g = seen.setdefault((p.n_in, p.n_out, p.batch), [])
        if "off_axis" not in g:
            g.append("off_axis")
    keys = sorted(seen, key=lambda k: (k[2], k[0], k[1]))
    out = [Point(n_in=i, n_out=o, batch=b, groups=seen[(i, o, b)]) for i, o, b in keys]
    steps: dict[tuple[int, int, float, int, int, int], list[str]] = {}
    for st in plan.steps:
        for b, ctx, v, p, h, k in itertools.product(st.decode_batch, st.decode_context, st.decode_context_spread,
                                                    st.prefill_tokens, st.prefill_prefix, st.prefill_chunks):
            if b == 0 and p == 0:
                continue
            g = steps.setdefault((b, ctx if b else 0, v if b > 1 else 0.0, p, h if p else 0, k if p else 1), [])
            if st.name not in g:
                g.append(st.name)
    out += [Point(kind="step", n_in=p, n_out=plan.step_repeats, batch=b, context=ctx, prefix=h, chunks=k, spread=v,
                  groups=steps[(b, ctx, v, p, h, k)]) for b, ctx, v, p, h, k in sorted(steps)]
    return out


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan YAML; errors name the file and the field."""
    return load_model(Plan, path)


def check_fits(plan: Plan, max_tokens: int | None, file: str | Path | None = None) -> None:
    """Refuse a plan whose longest point exceeds the model's context window."""
    if max_tokens is None:
        return
    for p in expand(plan):
        need = max(p.context, p.prefix + p.n_in) if p.kind == "step" else p.n_in + p.n_out
        if need > max_tokens:
            raise UserError(f"point {p.id} needs {need} tokens but the model's context is "
                            f"{max_tokens}", file, "steps" if p.kind == "step" else "sweeps")
