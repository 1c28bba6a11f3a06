"""Device profile: one model served by one engine on one device (or k devices of a replica).

A profile holds latency and power curves as small linear models over named step features, the idle
powers, a power-cap model, memory limits, and for every term where it came from and how well it fits.
`Profile` is what sits on disk (YAML); `Profile.evaluator(cap_w)` returns the fast object the simulator
calls in its inner loop.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dcsim.errors import UserError, load_model

# Features a curve may use. Prefill curves see the prompt tokens of one step (`batch` prompts or chunks, `prefix`
# tokens cached before them, `prefixed` chunks that have some); decode curves see a step of `batch` sequences
# holding `context` KV tokens in all; a decode step's time may also have a term per KV token of each sequence
# (`context_per_seq`: context / the sequences holding it).
PREFILL_FEATURES = ("tokens", "tokens_sq", "batch", "prefix", "prefixed")
DECODE_FEATURES = ("batch", "context")
DECODE_TIME_FEATURES = (*DECODE_FEATURES, "context_per_seq")
HOST_STEP_FEATURES = ("running", "prefill_tokens")


class Strict(BaseModel):
    """Base for everything read from disk: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Curve(Strict):
    """value = intercept + sum(coef[f] * f), clamped to [lo, hi]; features are named above."""

    intercept: float = 0.0
    coef: dict[str, float] = Field(default_factory=dict)
    lo: float | None = None
    hi: float | None = None

    def bounds(self) -> tuple[float, float]:
        """(lo, hi) with a missing bound infinite, so the evaluator's clamps need no None checks."""
        return (-math.inf if self.lo is None else self.lo, math.inf if self.hi is None else self.hi)

    def prefill_terms(self) -> tuple:
        """(intercept, per token, per token squared, per prompt, per cached prefix token, per chunk after a
        cached prefix, lo, hi) for fast evaluation."""
        c = self.coef
        return (self.intercept, c.get("tokens", 0.0), c.get("tokens_sq", 0.0), c.get("batch", 0.0),
                c.get("prefix", 0.0), c.get("prefixed", 0.0), *self.bounds())

    def decode_terms(self) -> tuple:
        """(intercept, per sequence, per context token, lo, hi) for fast evaluation."""
        c = self.coef
        return (self.intercept, c.get("batch", 0.0), c.get("context", 0.0), *self.bounds())

    def at(self, **features: float) -> float:
        v = self.intercept
        for name, c in self.coef.items():
            v += c * features.get(name, 0.0)
        if self.lo is not None and v < self.lo:
            v = self.lo
        if self.hi is not None and v > self.hi:
            v = self.hi
        return v

    def scaled(self, k: float) -> "Curve":
        """The same curve with every value multiplied by k (clamps included)."""
        return Curve(intercept=self.intercept * k, coef={f: v * k for f, v in self.coef.items()},
                     lo=None if self.lo is None else self.lo * k, hi=None if self.hi is None else self.hi * k)

    def check_features(self, allowed: tuple[str, ...], where: str) -> None:
        bad = [k for k in self.coef if k not in allowed]
        if bad:
            raise ValueError(f"{where}: unknown feature(s) {bad}; allowed: {list(allowed)}")


class DeviceInfo(Strict):
    name: str
    kind: Literal["gpu", "cpu", "soc"] = "gpu"
    memory_gb: float = Field(gt=0)
    tdp_w: float | None = Field(default=None, gt=0)


class ModelInfo(Strict):
    name: str
    params_b: float = Field(gt=0, description="parameters, billions")
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    kv_bytes_per_token: int = Field(gt=0, description="K and V over all layers, bytes per token")
    max_context: int = Field(default=4096, gt=0)


class EngineInfo(Strict):
    """The serving engine. `cache_lengths`, where set, marks a static KV cache: at each batch size (key) every
    sequence holds a cache of that many tokens, allocated up front and read whole at every decode step, so the
    step's `context` is batch x that length whatever the live context (HF static cache, CUDA-graph engines). A
    batch whose sequences need more gets a cache of their full length, as the calibration engines do."""

    name: str
    version: str | None = None
    precision: str = "bf16"
    cache_lengths: dict[int, int] | None = None
    step_includes_prefill: bool = Field(
        default=False, description="the decode step was measured with the engine's prefills mixed in (an effective "
        "step, as from a serving engine's throughput); the paged policy then runs each chunk inside its step at "
        "its marginal prefill time and takes the mean prefill share back from every step")
    mixed_step: Literal["split", "fused"] | None = Field(
        default=None, description="how the engine runs a step that mixes decodes and prefill chunks: split (the "
        "decode step, then a prefill forward: the weights read twice) or fused (one forward over all its tokens, "
        "as vLLM v1 runs a mixed batch); None where the source does not say")
    kv_data: Literal["model", "zeros"] | None = Field(
        default=None, description="what the calibration's KV cache held where no step of the sequence wrote it: "
        "a model's K/V (as a server's sequences hold) or zeros (the cache as allocated; reading zeros draws less "
        "power, so such a profile's step energy is low); None where the source does not say")

    def cache_length(self, batch: int) -> int | None:
        """Static cache tokens per sequence at `batch` (None for a dynamic cache): the batch size's own entry,
        else the nearest listed batch size above it, else the largest listed one."""
        lengths = self.cache_lengths
        if not lengths:
            return None
        if batch in lengths:
            return lengths[batch]
        above = [b for b in lengths if b > batch]
        return lengths[min(above)] if above else lengths[max(lengths)]


class Latency(Strict):
    """Seconds. prefill: one prefill step over `tokens` prompt tokens (`batch` prompts); it emits each
    prompt's first output token. decode_step: one decode step of `batch` sequences holding `context` KV
    tokens in all. A request of n_in, n_out at batch 1 therefore takes
    prefill_s(tokens=n_in) + sum over j=0..n_out-2 of decode_step_s(batch=1, context=n_in+1+j)."""

    prefill_s: Curve
    decode_step_s: Curve
    # An eager prefill launched kernel by kernel takes at least as long as the host needs to launch it, whatever
    # the device's share: the prefill is the larger of prefill_s and this (features batch: chunks or prompts;
    # prefixed: chunks after cached tokens, each its own gather and masked attention in every layer).
    prefill_launch_s: Curve | None = None
    # A fused engine runs a step that mixes decodes and prefill chunks as one forward, so it pays one fixed part
    # (the weights' read, the launches) where a decode step and a prefill each have their own: such a step takes
    # decode + prefill - mixed_overlap_s (the saving at most the shorter of the two), the saved time at decode power.
    mixed_overlap_s: float | None = Field(default=None, ge=0)
    # The serving loop's host time between one step and the next (scheduling, the tokens' bookkeeping), measured
    # through the engine's own loop (dcsim.calibrate.host_loop): intercept + running x (sequences in the step) +
    # prefill_tokens x (chunk tokens in it); each step takes this much longer, at the step's power.
    host_step_s: Curve | None = None


class HostPower(Strict):
    """Host (CPU, memory) share of power, where the source measured it: power x time, plus a fixed energy per
    decode step (the CPU work of launching a step, paid however long the device takes over it)."""

    prefill_w: Curve
    decode_w: Curve
    idle_w: float = Field(ge=0)
    decode_step_j: float = Field(0.0, ge=0, description="host joules per decode step beyond decode_w x its time")


class PowerDynamics(Strict):
    """How power moves between the levels (dcsim.profiles.power_dynamics): a first-order rise over rise_s when
    work starts after idle, and a fall to idle over fall_s after it; absent, power jumps between the levels."""

    rise_s: float = Field(ge=0, description="time constant of the rise to a step's power after idle, s")
    fall_s: float = Field(ge=0, description="time constant of the fall to idle after work, s")


class Power(Strict):
    """Watts drawn by the replica's devices (all gpus_per_replica together)."""

    prefill_w: Curve
    decode_w: Curve
    serving_idle_w: float = Field(ge=0, description="process up, model loaded, no request")
    deep_idle_w: float = Field(ge=0, description="device idle without a serving process, or off")
    host: HostPower | None = None
    dynamics: PowerDynamics | None = None


class ColdStart(Strict):
    """Loading the model onto the replica's devices (a cold start): wall time and device energy, all GPUs
    together (dcsim/cold_start.py for published figures)."""

    load_s: float = Field(gt=0, description="seconds from off to serving")
    load_j: float = Field(ge=0, description="device joules of one load")


class ColdShapes(Strict):
    """What the engine pays the first time it runs a shape (dcsim.profiles.cold_shapes fits it from calibration's
    warm-up and first runs; dcsim.sim.shapes applies it to pools that start cold): a prefill at a (batch, prompt
    length) it has not run adds prompt_s to the time to first token, and each decode step at a (batch, KV length)
    it has not run adds kv_length_s; the joules are the device's over that extra time."""

    prompt_s: float = Field(ge=0, description="seconds added to a prefill at a new (batch, prompt length)")
    prompt_j: float = Field(ge=0, description="device joules of that extra time")
    kv_length_s: float = Field(ge=0, description="seconds added to a decode step at a new (batch, KV length)")
    kv_length_j: float = Field(ge=0, description="device joules of that extra time")


class CapPoint(Strict):
    """A measured cap: multipliers on uncapped time and power for each phase."""

    cap_w: float = Field(gt=0)
    prefill_time_x: float = Field(gt=0)
    decode_time_x: float = Field(gt=0)
    prefill_power_x: float = Field(gt=0)
    decode_power_x: float = Field(gt=0)


class PowerCap(Strict):
    """Allowed power-limit range per device and how a cap changes time and power.

    analytic: DVFS model. Dynamic power scales as f**exponent above a static floor, so a cap C below the
    phase's uncapped draw P sets f = ((C - static) / (P - static)) ** (1/exponent); a phase whose
    compute-bound share is beta then takes t * (beta / f + 1 - beta) and draws at most C.
    points: measured caps, linearly interpolated.
    """

    min_w: float = Field(gt=0)
    max_w: float = Field(gt=0)
    default_w: float = Field(gt=0)
    method: Literal["analytic", "points"] = "analytic"
    static_w: float = Field(default=0.0, ge=0)
    exponent: float = Field(default=3.0, gt=0)
    compute_bound_prefill: float = Field(default=0.9, ge=0, le=1)
    compute_bound_decode: float = Field(default=0.3, ge=0, le=1)
    points: list[CapPoint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _range(self) -> "PowerCap":
        if not self.min_w <= self.default_w <= self.max_w:
            raise ValueError(f"need min_w <= default_w <= max_w, got {self.min_w}, {self.default_w}, {self.max_w}")
        if self.method == "points" and not self.points:
            raise ValueError("method 'points' needs at least one entry in points")
        return self


class ClockPoint(Strict):
    """A measured locked clock: multipliers on the default clock's time and power for each phase."""

    mhz: float = Field(gt=0)
    prefill_time_x: float = Field(gt=0)
    decode_time_x: float = Field(gt=0)
    prefill_power_x: float = Field(gt=0)
    decode_power_x: float = Field(gt=0)


class ClockModel(Strict):
    """Allowed locked SM clock range per device and how a locked clock changes time and power: the clock-model
    twin of PowerCap.

    analytic: at r = clock / default_mhz (the clock the profile's curves were measured at), a phase whose
    compute-bound share is beta takes t * (beta / r + 1 - beta) and draws w * (s + (1 - s) * r ** exponent), s the
    phase's clock-independent share of its draw (memory, static power). Compute-bound prefill (beta near 1) slows
    with the clock; memory-bound decode (beta near 0) barely does, and both draw less.
    points: measured clocks, linearly interpolated (the default clock is 1, 1).
    """

    min_mhz: float = Field(gt=0)
    max_mhz: float = Field(gt=0)
    default_mhz: float = Field(gt=0)
    method: Literal["analytic", "points"] = "analytic"
    exponent: float = Field(default=3.0, gt=0)
    compute_bound_prefill: float = Field(default=0.9, ge=0, le=1)
    compute_bound_decode: float = Field(default=0.05, ge=0, le=1)
    static_share_prefill: float = Field(default=0.3, ge=0, le=1)
    static_share_decode: float = Field(default=0.6, ge=0, le=1)
    points: list[ClockPoint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _range(self) -> "ClockModel":
        if not self.min_mhz <= self.default_mhz <= self.max_mhz:
            raise ValueError(f"need min_mhz <= default_mhz <= max_mhz, got {self.min_mhz}, {self.default_mhz}, "
                             f"{self.max_mhz}")
        if self.method == "points" and not self.points:
            raise ValueError("method 'points' needs at least one entry in points")
        return self


class Memory(Strict):
    """Device memory of the whole replica and what the model leaves for the KV cache."""

    device_gb: float = Field(gt=0)
    weights_gb: float = Field(ge=0)
    activation_reserve_gb: float = Field(default=0.0, ge=0)
    kv_capacity_tokens: int | None = Field(default=None, gt=0, description="measured or engine-reported; else derived")


class Provenance(Strict):
    source: Literal["measured", "published", "derived", "assumed"]
    citation: str | None = None
    path: str | None = None
    command: str | None = None
    note: str | None = None


class FitError(Strict):
    median_ape_pct: float = Field(ge=0)
    max_ape_pct: float = Field(ge=0)
    n_points: int = Field(ge=0)


class Profile(Strict):
    schema_version: Literal[1] = 1
    name: str
    device: DeviceInfo
    model: ModelInfo
    engine: EngineInfo
    gpus_per_replica: int = Field(default=1, gt=0)
    latency: Latency
    power: Power
    power_cap: PowerCap | None = None
    clock: ClockModel | None = None
    cold_start: ColdStart | None = Field(default=None, description="model-load time and energy (autoscaling)")
    cold_shapes: ColdShapes | None = Field(default=None, description="first-time costs of new shapes (pools "
                                           "that start cold)")
    memory: Memory
    provenance: dict[str, Provenance] = Field(default_factory=dict)
    valid_range: dict[str, tuple[float, float]] = Field(default_factory=dict)
    fit_error: dict[str, FitError] = Field(default_factory=dict)
    spread_cv: dict[str, float] = Field(default_factory=dict,
                                        description="run-to-run coefficient of variation per term")
    not_covered: list[str] = Field(default_factory=list, description="what the source could not measure")
    notes: str | None = None

    @model_validator(mode="after")
    def _features(self) -> "Profile":
        self.latency.prefill_s.check_features(PREFILL_FEATURES, "latency.prefill_s")
        if self.latency.prefill_launch_s is not None:
            self.latency.prefill_launch_s.check_features(("batch", "prefixed"), "latency.prefill_launch_s")
        self.power.prefill_w.check_features(PREFILL_FEATURES, "power.prefill_w")
        self.latency.decode_step_s.check_features(DECODE_TIME_FEATURES, "latency.decode_step_s")
        self.power.decode_w.check_features(DECODE_FEATURES, "power.decode_w")
        if self.latency.host_step_s:
            self.latency.host_step_s.check_features(HOST_STEP_FEATURES, "latency.host_step_s")
        if self.power.host:
            self.power.host.prefill_w.check_features(PREFILL_FEATURES, "power.host.prefill_w")
            self.power.host.decode_w.check_features(DECODE_FEATURES, "power.host.decode_w")
        return self

    # ---- derived quantities -------------------------------------------------------------------
    def kv_capacity_tokens(self) -> int:
        """KV tokens the replica can hold: given, or (memory - weights - reserve) / bytes per token."""
        if self.memory.kv_capacity_tokens is not None:
            return self.memory.kv_capacity_tokens
        free_gb = self.memory.device_gb - self.memory.weights_gb - self.memory.activation_reserve_gb
        return max(0, int(free_gb * 1e9 // self.model.kv_bytes_per_token))

    def evaluator(self, cap_w: float | None = None, file: str | None = None,
                  clock: tuple[float, float] | None = None) -> "ProfileEvaluator":
        """The simulator's evaluator at a per-device power cap, or a locked (prefill, decode) SM clock in MHz."""
        return ProfileEvaluator(self, cap_w, file, clock)

    def drifted(self, time_x: float, energy_x: float) -> "Profile":
        """This profile with every active step taking time_x as long and using energy_x as much energy (power
        x energy_x / time_x); idle unchanged. Models a common-mode drift of the engine, e.g. by the run-to-run
        spread its calibration measured."""
        lat, pw = self.latency, self.power
        w = energy_x / time_x
        return self.model_copy(update={
            "latency": lat.model_copy(update={
                "prefill_s": lat.prefill_s.scaled(time_x), "decode_step_s": lat.decode_step_s.scaled(time_x),
                "prefill_launch_s": lat.prefill_launch_s.scaled(time_x) if lat.prefill_launch_s else None,
                "mixed_overlap_s": lat.mixed_overlap_s * time_x if lat.mixed_overlap_s else None}),
            "power": pw.model_copy(update={"prefill_w": pw.prefill_w.scaled(w), "decode_w": pw.decode_w.scaled(w)}),
            "cold_shapes": None if self.cold_shapes is None else ColdShapes(
                prompt_s=self.cold_shapes.prompt_s * time_x, prompt_j=self.cold_shapes.prompt_j * energy_x,
                kv_length_s=self.cold_shapes.kv_length_s * time_x, kv_length_j=self.cold_shapes.kv_length_j * energy_x),
        })

    def to_yaml(self, path: str | Path) -> None:
        data = self.model_dump(mode="json", exclude_none=True)
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False, width=110))


def load_profile(path: str | Path) -> Profile:
    """Load and validate a profile YAML; errors name the file and field."""
    return load_model(Profile, path)


class CapScaling:
    """Multipliers that a power cap applies to one phase: time_x on time, and a ceiling on power."""

    __slots__ = ("time_x", "power_x", "ceiling_w")

    def __init__(self, time_x: float = 1.0, power_x: float = 1.0, ceiling_w: float = math.inf) -> None:
        self.time_x = time_x
        self.power_x = power_x
        self.ceiling_w = ceiling_w


def cap_scaling(pc: PowerCap, cap_w: float, uncapped_w: float, compute_bound: float, phase: str) -> CapScaling:
    """How a per-device cap changes a phase that draws `uncapped_w` per device without one."""
    if pc.method == "points":
        pts = sorted(pc.points, key=lambda p: p.cap_w)
        caps = [p.cap_w for p in pts] + [pc.default_w]
        tx = [getattr(p, f"{phase}_time_x") for p in pts] + [1.0]
        px = [getattr(p, f"{phase}_power_x") for p in pts] + [1.0]
        return CapScaling(_interp(cap_w, caps, tx), _interp(cap_w, caps, px))
    if cap_w >= uncapped_w:
        return CapScaling()
    dyn = max(uncapped_w - pc.static_w, 1e-9)
    f = max((cap_w - pc.static_w) / dyn, 1e-6) ** (1.0 / pc.exponent)
    time_x = compute_bound / f + (1.0 - compute_bound)
    return CapScaling(time_x, cap_w / uncapped_w, cap_w)


def clock_scaling(cm: ClockModel, mhz: float, phase: str) -> CapScaling:
    """How a locked SM clock of `mhz` changes a phase ("prefill" or "decode"): time and power multipliers."""
    if cm.method == "points":
        pts = sorted([(p.mhz, getattr(p, f"{phase}_time_x"), getattr(p, f"{phase}_power_x")) for p in cm.points]
                     + [(cm.default_mhz, 1.0, 1.0)])
        xs = [p[0] for p in pts]
        return CapScaling(_interp(mhz, xs, [p[1] for p in pts]), _interp(mhz, xs, [p[2] for p in pts]))
    r = mhz / cm.default_mhz
    beta = cm.compute_bound_prefill if phase == "prefill" else cm.compute_bound_decode
    static = cm.static_share_prefill if phase == "prefill" else cm.static_share_decode
    return CapScaling(beta / r + 1.0 - beta, static + (1.0 - static) * r ** cm.exponent)


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    if x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1]) if xs[i] > xs[i - 1] else 1.0
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


class ProfileEvaluator:
    """Fast, cap-adjusted evaluation of a profile for the simulator's inner loop.

    A power cap acts on each step by that step's own uncapped draw: a step drawing less than the cap is
    untouched; one drawing more runs at the frequency the cap allows (the analytic model) and draws the cap.
    Decode terms are kept as plain floats so a run of k steps can be summed in closed form.
    """

    __slots__ = (
        "profile", "gpus", "prefill_time_terms", "prefill_power_terms", "prefill_launch_terms", "decode_time_terms",
        "decode_power_terms", "host_prefill_w", "host_decode_w", "host_step_j",
        "idle_w", "deep_idle_w", "host_idle_w", "kv_capacity", "cap_w", "pc",
        "prefill_time_x", "decode_time_x", "prefill_power_x", "decode_power_x", "prefill_ceiling_w", "decode_ceiling_w",
        "decode_bounded", "engine", "_cache", "clock",
        "mixed_overlap_s", "decode_per_seq", "host_a", "host_run", "host_tok",
    )

    def __init__(self, profile: Profile, cap_w: float | None = None, file: str | None = None,
                 clock: tuple[float, float] | None = None) -> None:
        p = profile
        self.profile = p
        self.gpus = p.gpus_per_replica
        self.prefill_time_terms = p.latency.prefill_s.prefill_terms()
        self.prefill_power_terms = p.power.prefill_w.prefill_terms()
        launch = p.latency.prefill_launch_s
        self.prefill_launch_terms = None if launch is None else (launch.intercept, launch.coef.get("batch", 0.0),
                                                                 launch.coef.get("prefixed", 0.0))
        self.mixed_overlap_s = p.latency.mixed_overlap_s or 0.0
        # decode linear terms: (intercept, per batch, per context token, lo[, hi]); step time has no ceiling
        self.decode_time_terms = p.latency.decode_step_s.decode_terms()[:4]
        # seconds per KV token of each sequence (context_per_seq): the part of a step's attention that runs over
        # each sequence's tokens in turn, so a token costs more in a small batch; 0 for most profiles
        self.decode_per_seq = p.latency.decode_step_s.coef.get("context_per_seq", 0.0)
        self.decode_power_terms = p.power.decode_w.decode_terms()
        # the serving loop's host seconds between steps (latency.host_step_s): per step, per sequence in it, per
        # prefill token in it; 0 for profiles without it (their steps are as before, to the bit)
        hs = p.latency.host_step_s
        self.host_a = hs.intercept if hs else 0.0
        self.host_run = hs.coef.get("running", 0.0) if hs else 0.0
        self.host_tok = hs.coef.get("prefill_tokens", 0.0) if hs else 0.0
        # whether any decode clamp is finite: an unbounded profile skips the clamp test of a whole run
        self.decode_bounded = (max(self.decode_time_terms[3], self.decode_power_terms[3]) > -math.inf
                               or self.decode_power_terms[4] < math.inf)
        host = p.power.host
        self.host_prefill_w = host.prefill_w if host else None
        self.host_decode_w = host.decode_w if host else None
        self.host_idle_w = host.idle_w if host else 0.0
        self.host_step_j = host.decode_step_j if host else 0.0
        self.idle_w = p.power.serving_idle_w
        self.deep_idle_w = p.power.deep_idle_w
        self.kv_capacity = p.kv_capacity_tokens()
        # a static-cache engine reads its whole allocated cache at every step (EngineInfo.cache_lengths); the
        # length per batch size is looked up once and kept (the inner loop asks for it at every batch)
        self.engine = p.engine if p.engine.cache_lengths else None
        self._cache: dict[int, int] = {}
        self.cap_w = cap_w
        self.pc = None  # analytic cap model in force (per-step scaling)
        # measured cap points: constant multipliers per phase
        self.prefill_time_x = self.decode_time_x = self.prefill_power_x = self.decode_power_x = 1.0
        self.prefill_ceiling_w = self.decode_ceiling_w = math.inf
        self.clock = clock
        if clock is not None:
            self._lock_clock(clock, cap_w, file)
            return
        if cap_w is None:
            return
        pc = p.power_cap
        if pc is None:
            raise UserError("a power cap was set but the profile has no power_cap section", file, "power_cap")
        if not pc.min_w <= cap_w <= pc.max_w:
            raise UserError(
                f"cap {cap_w:g} W is outside the device's range {pc.min_w:g}-{pc.max_w:g} W", file, "power_cap_w"
            )
        if pc.method == "points":
            s = cap_scaling(pc, cap_w, 0.0, pc.compute_bound_prefill, "prefill")
            self.prefill_time_x, self.prefill_power_x = s.time_x, s.power_x
            s = cap_scaling(pc, cap_w, 0.0, pc.compute_bound_decode, "decode")
            self.decode_time_x, self.decode_power_x = s.time_x, s.power_x
            return
        if cap_w <= pc.static_w:
            raise UserError(
                f"cap {cap_w:g} W is at or below the power-cap model's static floor {pc.static_w:.1f} W, where it "
                "describes nothing; use a higher cap or measured cap points", file, "power_cap_w"
            )
        self.pc = pc
        self.prefill_ceiling_w = self.decode_ceiling_w = cap_w * self.gpus

    def _lock_clock(self, clock: tuple[float, float], cap_w: float | None, file: str | None) -> None:
        """Set the constant per-phase multipliers of a locked (prefill, decode) clock (ClockModel)."""
        cm = self.profile.clock
        if cm is None:
            raise UserError("a locked clock was set but the profile has no clock section (the model of how a "
                            "clock changes its speed and power)", file, "clock_mhz")
        if cap_w is not None:
            raise UserError("a locked clock and a power cap on the same pool are not modelled together; set one",
                            file, "clock_mhz")
        for phase, mhz in zip(("prefill", "decode"), clock):
            if not (math.isfinite(mhz) and cm.min_mhz <= mhz <= cm.max_mhz):
                raise UserError(f"{phase} clock {mhz:g} MHz is outside the device's range {cm.min_mhz:g}-"
                                f"{cm.max_mhz:g} MHz", file, f"clock_mhz.{phase}_mhz")
        s = clock_scaling(cm, clock[0], "prefill")
        self.prefill_time_x, self.prefill_power_x = s.time_x, s.power_x
        s = clock_scaling(cm, clock[1], "decode")
        self.decode_time_x, self.decode_power_x = s.time_x, s.power_x

    # what a cap sets in __init__: adopt_cap copies exactly these
    CAP_SLOTS = ("cap_w", "pc", "prefill_time_x", "decode_time_x", "prefill_power_x", "decode_power_x",
                 "prefill_ceiling_w", "decode_ceiling_w")

    def adopt_cap(self, other: "ProfileEvaluator") -> None:
        """Take the cap of another evaluator of the same profile, in place: a facility's power manager changes a
        replica's cap between steps, and the replica's batching policy holds this object's bound methods."""
        for name in self.CAP_SLOTS:
            setattr(self, name, getattr(other, name))

    def cap_effect(self, draw_w: float, phase: str) -> tuple[float, float]:
        """(time multiplier, power multiplier) the cap applies to a step whose uncapped replica draw is draw_w."""
        if self.pc is None:
            if phase == "prefill":
                return self.prefill_time_x, self.prefill_power_x
            return self.decode_time_x, self.decode_power_x
        pc = self.pc
        per_dev = draw_w / self.gpus
        beta = pc.compute_bound_prefill if phase == "prefill" else pc.compute_bound_decode
        s = cap_scaling(pc, self.cap_w, per_dev, beta, phase)
        return s.time_x, s.power_x

    # ---- prefill ------------------------------------------------------------------------------
    def prefill(self, tokens: float, tokens_sq: float, batch: int, prefix: float = 0.0,
                prefixed: int = 0) -> tuple[float, float, float]:
        """(seconds, device watts, host watts) of one prefill step; `prefix`: cached tokens its chunks read back,
        `prefixed`: how many of its chunks have any."""
        a, b, c, d, e, f, lo, hi = self.prefill_time_terms
        t = a + b * tokens + c * tokens_sq + d * batch + e * prefix + f * prefixed
        if self.prefill_launch_terms is not None:
            la, lb, lf = self.prefill_launch_terms
            floor = la + lb * batch + lf * prefixed
            if floor > lo:
                lo = floor
        if t < lo:
            t = lo
        elif t > hi:
            t = hi
        a, b, c, d, e, f, lo, hi = self.prefill_power_terms
        w = a + b * tokens + c * tokens_sq + d * batch + e * prefix + f * prefixed
        if w < lo:
            w = lo
        elif w > hi:
            w = hi
        if w > self.prefill_ceiling_w:
            tx, px = self.cap_effect(w, "prefill")
            t *= tx
            w *= px
        else:
            t *= self.prefill_time_x
            w *= self.prefill_power_x
        if self.host_a or self.host_run or self.host_tok:  # the loop's host time before the step, at its power
            t += self.host_a + self.host_run * batch + self.host_tok * tokens
        if self.host_prefill_w is None:
            return t, w, 0.0
        return t, w, self.host_prefill_w.at(tokens=tokens, tokens_sq=tokens_sq, batch=batch, prefix=prefix,
                                            prefixed=prefixed)

    def overlap(self, t_decode: float, t_prefill: float) -> float:
        """Seconds a step of both decodes (t_decode) and prefill chunks (t_prefill) saves against their sum on a
        fused engine (latency.mixed_overlap_s, at most the shorter part; 0 without it). The figure is the
        uncapped one: under a power cap or a locked clock the saving is not rescaled."""
        ov = self.mixed_overlap_s
        if not ov:
            return 0.0
        return min(ov, t_decode, t_prefill)

    def served_alone(self, n_in: int, n_out: int) -> tuple[float, float]:
        """(seconds, device joules) of one request served alone: its prefill, then n_out - 1 decode steps at
        batch 1. The one prediction of isolated service that routers and the replay's planning use."""
        t_pf, w_pf, _ = self.prefill(n_in, float(n_in) * n_in, 1)
        t_dc, e_dc, _ = self.decode_run(1, n_in + 1, n_out - 1)
        return t_pf + t_dc, t_pf * w_pf + e_dc

    # ---- decode -------------------------------------------------------------------------------
    def cache_tokens(self, batch: int) -> int:
        """Static cache tokens per sequence at `batch` (EngineInfo.cache_length), memoised."""
        n = self._cache.get(batch)
        if n is None:
            n = self._cache[batch] = self.engine.cache_length(batch)
        return n

    def per_kv_token_s(self, seqs: float) -> float:
        """Decode seconds per KV token in a step of `seqs` sequences: the context term, plus the per-sequence one
        (context_per_seq, over context / seqs tokens a sequence) spread over the step's tokens."""
        c = self.decode_time_terms[2]
        return c + self.decode_per_seq / seqs if self.decode_per_seq and seqs > 0 else c

    def decode_step(self, batch: int, context: float, seqs: float | None = None) -> tuple[float, float]:
        """(seconds, device watts) of one decode step; `seqs`: the sequences holding the context where `batch`
        counts padding rows (default `batch`)."""
        if self.engine is not None:  # the cache, grown to the live context where that is longer (as the engine does)
            context = batch * max(self.cache_tokens(batch), context / batch)
        a, b, c, lo = self.decode_time_terms
        if self.decode_per_seq:
            c = self.per_kv_token_s(seqs or batch)
        t = a + b * batch + c * context
        if t < lo:
            t = lo
        pa, pb, pc, plo, phi = self.decode_power_terms
        w = pa + pb * batch + pc * context
        if w < plo:
            w = plo
        elif w > phi:
            w = phi
        h = self.host_a + self.host_run * (seqs or batch) if self.host_a or self.host_run else 0.0
        if w > self.decode_ceiling_w:
            tx, px = self.cap_effect(w, "decode")
            return t * tx + h, w * px
        return t * self.decode_time_x + h, w * self.decode_power_x

    def decode_steps_covering(self, batch: int, context0: float, k: int, elapsed: float,
                              grow: float | None = None, per_step: float = 0.0) -> int:
        """Fewest decode steps (1..k) of the run decode_run(batch, context0, k, grow), each `per_step` seconds
        longer, whose total time reaches `elapsed`: where a run stops at the end of the step in progress. Solved
        in closed form where the step time is linear in the step (no clamp, no cap, no static cache), by
        bisection otherwise."""
        a, b, c, lo = self.decode_time_terms
        g = float(batch) if grow is None else float(grow)
        if self.decode_per_seq:
            c = self.per_kv_token_s(g or batch)
        if (self.engine is None and not self.decode_bounded and self.decode_ceiling_w == math.inf
                and self.decode_time_x == 1.0):
            t0 = a + b * batch + c * context0 + per_step
            if self.host_a or self.host_run:  # the loop's host time of each step (decode_run holds it too)
                t0 += self.host_a + self.host_run * (g or batch)
            dt = c * g  # step j takes t0 + dt * j: the first s steps take s*t0 + dt*s(s-1)/2
            if dt > 1e-15 * t0:
                s = (-(t0 - dt / 2) + math.sqrt((t0 - dt / 2) ** 2 + 2 * dt * elapsed)) / dt
            else:
                s = elapsed / t0
            n = min(k, max(1, math.ceil(s - 1e-9)))
            # float guard: the result must be the fewest steps whose time reaches elapsed
            while n > 1 and n * t0 + dt * n * (n - 1) / 2 - (t0 + dt * (n - 1)) >= elapsed:
                n -= 1
            while n < k and n * t0 + dt * n * (n - 1) / 2 < elapsed:
                n += 1
            return n
        lo_, hi_ = 1, k
        while lo_ < hi_:
            mid = (lo_ + hi_) // 2
            if self.decode_run(batch, context0, mid, grow)[0] + mid * per_step >= elapsed:
                hi_ = mid
            else:
                lo_ = mid + 1
        return lo_

    def decode_time(self, batch: int, context0: float, steps: int) -> float:
        """decode_run(batch, context0, steps)[0], summed as decode_run sums it (its closed form where the curves
        are unclamped and uncapped), for searches that need only the time."""
        if steps > 0 and self.engine is None and not self.decode_bounded and self.decode_ceiling_w == math.inf:
            a, b, c, _ = self.decode_time_terms
            if self.decode_per_seq:
                c = self.per_kv_token_s(batch)
            t0 = (a + b * batch + c * context0)
            k = steps
            t = (k * t0 + c * float(batch) * (k * (k - 1) / 2.0)) * self.decode_time_x
            if self.host_a or self.host_run:
                t += k * (self.host_a + self.host_run * batch)
            return t
        return self.decode_run(batch, context0, steps)[0]

    def decode_run(self, batch: int, context0: float, steps: int,
                   grow: float | None = None) -> tuple[float, float, float]:
        """Time, device energy and host energy of `steps` decode steps of a fixed batch whose context
        starts at `context0` and grows by `grow` each step (default `batch`; less where `batch` counts padding
        rows that hold no context); summed in closed form where the curves are unclamped, step by step
        otherwise."""
        if steps <= 0:
            return 0.0, 0.0, 0.0
        a, b, c, lo = self.decode_time_terms
        pa, pb, pc, plo, phi = self.decode_power_terms
        k = steps
        grow = float(batch) if grow is None else float(grow)
        seqs = grow or float(batch)  # the sequences holding the context (grow: the real rows of a padded batch)
        if self.engine is not None:  # static cache: every step attends over the same allocated cache, which the
            # engine grows to the sequence's full length when that is longer
            context0, grow, seqs = batch * max(self.cache_tokens(batch), context0 / batch + k), 0.0, float(batch)
        if self.decode_per_seq:
            c = self.per_kv_token_s(seqs)
        # t_j = T0 + c*B*j ; w_j = W0 + pc*B*j for j = 0..k-1
        t0 = (a + b * batch + c * context0)
        w0 = (pa + pb * batch + pc * context0)
        dt = c * grow
        dw = pc * grow
        if self.decode_bounded or self.decode_ceiling_w != math.inf:
            t_last = t0 + dt * (k - 1)
            w_last = w0 + dw * (k - 1)
            clamped = self.decode_bounded and (min(t0, t_last) < lo or min(w0, w_last) < plo
                                               or max(w0, w_last) > phi)
            over = max(w0, w_last) > self.decode_ceiling_w
        else:  # no clamp and no cap: the closed form, whatever the run
            clamped = over = False
        if clamped or (over and min(w0, w_last) <= self.decode_ceiling_w):
            # clamps, or a run that crosses the cap: step by step
            total_t = total_e = 0.0
            ctx = context0
            for _ in range(k):
                t, w = self.decode_step(batch, ctx, seqs)
                total_t += t
                total_e += t * w
                ctx += grow
        else:
            s1 = k * (k - 1) / 2.0
            s2 = (k - 1) * k * (2 * k - 1) / 6.0
            total_t = (k * t0 + dt * s1) * self.decode_time_x
            total_e = (k * t0 * w0 + (t0 * dw + w0 * dt) * s1 + dt * dw * s2) * self.decode_time_x * self.decode_power_x
            if over:
                # the whole run draws more than the cap: scale it by its mean uncapped draw
                tx, _ = self.cap_effect(total_e / total_t, "decode")
                total_t *= tx
                total_e = total_t * self.decode_ceiling_w
            if self.host_a or self.host_run:  # each step's host time, at that step's power (as decode_step)
                h = self.host_a + self.host_run * seqs
                total_t += k * h
                total_e += h * (k * self.decode_ceiling_w if over else (k * w0 + dw * s1) * self.decode_power_x)
        host_e = 0.0
        if self.host_decode_w is not None:
            hw = self.host_decode_w.at(batch=batch, context=context0 + grow * (k - 1) / 2.0)
            host_e = hw * total_t + self.host_step_j * k
        return total_t, total_e, host_e
