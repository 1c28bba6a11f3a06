"""Scenario files: pydantic-validated YAML describing workload, fleet, router and facility.

Unknown keys are errors everywhere. `--set a.b=c` overrides any field before validation. Relative paths
(trace, profiles) resolve against the scenario file's folder first, then the current directory, then the
project's shipped `profiles/` and `traces/`; a router or policy named by file (`./my_router.py:Class`) is read
from the scenario file's folder only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from dcsim.errors import UserError, load_yaml, validate_file


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- workload --------------------------------------------------------------------------------
class TraceRef(Strict):
    path: str
    limit: int | None = Field(default=None, gt=0, description="use only the first N requests")
    sample: int | None = Field(default=None, gt=0, description="draw N requests at random (with the seed)")


class ReplayArrivals(Strict):
    kind: Literal["replay"] = "replay"
    time_scale: float = Field(default=1.0, gt=0, description="multiply the trace's gaps by this")


class PoissonArrivals(Strict):
    kind: Literal["poisson"] = "poisson"
    rate_per_s: float = Field(gt=0)


class GammaArrivals(Strict):
    kind: Literal["gamma"] = "gamma"
    rate_per_s: float = Field(gt=0)
    cv: float = Field(gt=0, description="coefficient of variation of the gaps (1 = Poisson)")


class DiurnalArrivals(Strict):
    """Non-homogeneous Poisson whose rate follows a daily curve (24 hourly multipliers or a sine)."""

    kind: Literal["diurnal"] = "diurnal"
    mean_rate_per_s: float = Field(gt=0)
    hourly: list[float] | None = Field(default=None, description="24 relative rates, hour 0..23")
    amplitude: float = Field(default=0.5, ge=0, lt=1, description="sine amplitude when hourly is absent")
    peak_hour: float = Field(default=14.0, ge=0, lt=24)
    start_hour: float = Field(default=0.0, ge=0, lt=24)
    day_s: float = Field(default=86400.0, ge=1e-3, description="length of one cycle in simulated seconds")

    @model_validator(mode="after")
    def _hourly(self) -> "DiurnalArrivals":
        if self.hourly is not None and (len(self.hourly) != 24 or min(self.hourly) < 0 or max(self.hourly) <= 0):
            raise ValueError("hourly needs 24 non-negative values, not all zero")
        return self


class AllAtOnceArrivals(Strict):
    """Every request is there at time 0 (a closed batch, as the published sweeps ran)."""

    kind: Literal["all_at_once"] = "all_at_once"


Arrivals = Annotated[
    Union[ReplayArrivals, PoissonArrivals, GammaArrivals, DiurnalArrivals, AllAtOnceArrivals],
    Field(discriminator="kind"),
]


# ---- fleet -----------------------------------------------------------------------------------
def _own_params(registry: Any, name: str, extra: dict | None) -> Any:
    """The extra keys of a mapping that names a class (`registry`: a dcsim.registry.ParamsRegistry) validated by
    that class's own parameter model; its error is reported at the parameter's own field."""
    from dcsim.registry import ParamsError

    try:
        return registry.parse(name, dict(extra or {}))
    except ParamsError as e:
        raise PydanticCustomError("nested_field", "{reason}", {"reason": e.reason, "subfield": e.field}) from None


class Batching(BaseModel):
    """policy: a registered batching policy (dcsim/sim/batching/: `fcfs`, `static`, `continuous`, `paged`), an
    installed package's (entry points `dcsim.policies`) or a class of one's own (`package.module:Class`,
    `./file.py:Class` beside the scenario file); every other key is one of that policy's own parameters, checked
    by its parameter model."""

    model_config = ConfigDict(extra="allow")
    policy: str = "fcfs"
    _params: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _policy_params(self) -> "Batching":
        from dcsim.sim.batching import POLICIES

        self._params = _own_params(POLICIES, self.policy, self.__pydantic_extra__)
        return self

    @property
    def params(self) -> Any:
        """The policy's validated parameters (its own pydantic model)."""
        return self._params


# The most replicas a scenario may hold, in all pools together: each is a process with its own queue and logs
# (about 6 KB), and 100,000 take some 12 s to build; a count past this is a typing slip, refused before
# anything is allocated.
MAX_REPLICAS = 100_000


class WarmedShapes(Strict):
    """Shapes every replica of the pool has already run when the simulation starts (a warm-up before serving)."""

    prompts: list[tuple[PositiveInt, PositiveInt]] = Field(
        default_factory=list, description="(batch, prompt length) of each prefill already run")
    kv_lengths: list[tuple[PositiveInt, PositiveInt, PositiveInt]] = Field(
        default_factory=list, description="(batch, first, last): KV lengths already decoded at that batch size")

    @model_validator(mode="after")
    def _ranges(self) -> "WarmedShapes":
        for i, (_, lo, hi) in enumerate(self.kv_lengths):
            if hi < lo:
                raise ValueError(f"kv_lengths.{i}: last ({hi}) is below first ({lo})")
        return self


class Shapes(Strict):
    """Whether the pool's replicas start having run every shape (warm: no first-time costs, as calibration's
    medians are) or none but `warmed` (cold: each new prefill and decode shape pays the profile's cold_shapes)."""

    start: Literal["warm", "cold"] = "warm"
    warmed: WarmedShapes = Field(default_factory=WarmedShapes)


class PhaseClocks(Strict):
    """A locked SM clock per phase: prefill steps at prefill_mhz, decode steps at decode_mhz."""

    prefill_mhz: float = Field(gt=0)
    decode_mhz: float = Field(gt=0)


class SeriesRef(Strict):
    """A step series over simulated time in a CSV file (dcsim/grid.py): a time column in seconds, a value column."""

    path: str
    time_column: str = "t_s"
    value_column: str = "value"
    period_s: float | None = Field(default=None, gt=0, description="repeat the series every period_s seconds")


class ColdStartSpec(Strict):
    """A pool's model load (autoscaling): load_s and load_j, or a published load by name ('SYSTEM / MODEL' of
    dcsim.cold_start.PUBLISHED_LOADS); absent: the profile's cold_start."""

    load_s: float | None = Field(default=None, gt=0, description="seconds from off to serving")
    load_j: float | None = Field(default=None, ge=0, description="device joules of one load")
    published: str | None = Field(default=None, description="a published load, 'SYSTEM / MODEL'")

    @model_validator(mode="after")
    def _one_source(self) -> "ColdStartSpec":
        from dcsim.cold_start import PUBLISHED_LOADS, published_load, published_name

        if self.published is not None:
            if self.load_s is not None or self.load_j is not None:
                raise ValueError("give published, or load_s and load_j, not both")
            if published_load(self.published) is None:
                names = ", ".join(repr(published_name(*k)) for k in PUBLISHED_LOADS)
                raise ValueError(f"no published load {self.published!r} (published: {names})")
        elif self.load_s is None or self.load_j is None:
            raise ValueError("a cold_start needs load_s and load_j (or published)")
        return self


class Pool(Strict):
    name: str
    profile: str
    count: int = Field(gt=0, le=MAX_REPLICAS, description=f"replicas (at most {MAX_REPLICAS:,} in all pools)")
    batching: Batching = Field(default_factory=Batching)
    power_cap_w: float | None = Field(default=None, gt=0, description="per-device power limit")
    clock_mhz: float | PhaseClocks | None = Field(
        default=None, description="locked SM clock (MHz) for every step, or {prefill_mhz, decode_mhz} per phase; "
        "within the profile's clock range")

    def clocks(self) -> tuple[float, float] | None:
        """(prefill, decode) locked clock in MHz, or None for the device's own clocking."""
        c = self.clock_mhz
        if c is None:
            return None
        if isinstance(c, PhaseClocks):
            return (c.prefill_mhz, c.decode_mhz)
        return (float(c), float(c))
    idle: Literal["serving", "deep"] = Field(
        default="serving", description="power between requests: serving-idle (model loaded) or deep idle"
    )
    cache_lengths: dict[PositiveInt, PositiveInt] | None = Field(
        default=None, description="static-KV-cache engines only: tokens of cache per sequence at each batch size "
        "(default: the lengths the profile was calibrated with); every decode step reads the whole cache"
    )
    carbon_series: SeriesRef | None = Field(default=None, description="the pool's own grid carbon intensity over "
                                              "time (its grid region), in place of the facility's")
    price_series: SeriesRef | None = Field(default=None, description="the pool's own electricity price per kWh over "
                                             "time (its site's tariff or market), in place of the facility's")
    cold_start: ColdStartSpec | None = Field(default=None, description="model-load time and energy for "
                                             "autoscaling (default: the profile's)")
    shapes: Literal["warm", "cold"] | Shapes = Field(
        default="warm", description="warm: replicas have run every shape; cold: each new prefill shape and decode "
        "KV length pays the profile's cold_shapes (or {start: cold, warmed: {prompts, kv_lengths}})")

    def shape_start(self) -> Shapes | None:
        """The pool's starting shapes where it starts cold, else None."""
        s = self.shapes
        if isinstance(s, str):
            s = Shapes(start=s)
        return s if s.start == "cold" else None


class RouterSpec(BaseModel):
    """name (registered, an entry point in `dcsim.routers`, or `package.module:Class` / `./file.py:Class`) plus
    the router's own parameters (checked by the router's parameter model)."""

    model_config = ConfigDict(extra="allow")
    name: str = "round_robin"


class OutputKnowledge(Strict):
    """What routers and admission know of a request's output length before it runs."""

    mode: Literal["oracle", "max_tokens", "predicted"] = "oracle"
    max_tokens: int = Field(default=512, gt=0)
    relative_error: float = Field(default=0.2, ge=0, description="predicted: lognormal error, sigma of log")


class BatchClass(Strict):
    """Which requests are batch work and how long they may take: a seeded share of the trace's requests, each due
    `deadline_s` after its arrival."""

    share: float = Field(ge=0, le=1, description="share of requests that are batch (drawn with the seed)")
    deadline_s: float = Field(gt=0, description="a batch request is due this many seconds after it arrives")


class RequestClasses(Strict):
    """Request classes: interactive requests (the rest) are held to the scenario's `slo`; batch requests carry a
    deadline and may be deferred by the dispatch policy. Either `batch` (a share drawn with the seed) or
    `from_trace` (the requests with a `deadline_s` in the trace are batch, due that many seconds after arrival)."""

    batch: BatchClass | None = None
    from_trace: bool = Field(default=False, description="batch requests are those with a deadline_s in the trace")

    @model_validator(mode="after")
    def _one_source(self) -> "RequestClasses":
        if (self.batch is not None) == self.from_trace:
            raise ValueError("give batch (a share and a deadline) or from_trace: true, one of the two")
        return self


class DispatchSpec(BaseModel):
    """name: a registered dispatch policy (dcsim/sim/dispatch.py: `immediate`, `carbon_defer`), an installed
    package's (entry points `dcsim.dispatch`) or `package.module:Class`; every other key is one of that policy's
    parameters, checked by its own model."""

    model_config = ConfigDict(extra="allow")
    name: str = "immediate"
    _params: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _policy_params(self) -> "DispatchSpec":
        from dcsim.sim.dispatch import DISPATCH

        self._params = _own_params(DISPATCH, self.name, self.__pydantic_extra__)
        return self

    @property
    def params(self) -> Any:
        """The policy's validated parameters (its own pydantic model)."""
        return self._params


class Rack(Strict):
    """A rack: which replicas sit in it (pool name -> how many, taken in the pool's order) and its budget."""

    name: str
    limit_w: float | None = Field(default=None, gt=0, description="power budget: device and host watts of its "
                                  "replicas")
    replicas: dict[str, PositiveInt] = Field(min_length=1, description="pool name -> replicas of it in this rack")


class Row(Strict):
    """A row of racks (or a PDU): the racks it feeds and its budget."""

    name: str
    limit_w: float | None = Field(default=None, gt=0, description="power budget of all its racks together")
    racks: list[Rack] = Field(min_length=1)


class PowerPolicySpec(BaseModel):
    """name: a registered power policy (dcsim/sim/power_policies.py: `none`, `cap_on_threshold`, `budget_share`),
    an installed package's (entry points `dcsim.power_policies`) or `package.module:Class`; every other key is one
    of that policy's parameters, checked by its own model."""

    model_config = ConfigDict(extra="allow")
    name: str = "none"
    _params: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _policy_params(self) -> "PowerPolicySpec":
        from dcsim.sim.power_policies import POWER_POLICIES

        self._params = _own_params(POWER_POLICIES, self.name, self.__pydantic_extra__)
        return self

    @property
    def params(self) -> Any:
        """The policy's validated parameters (its own pydantic model)."""
        return self._params


class FacilityPower(Strict):
    """The power hierarchy around the fleet: rows of racks holding every replica, each level with an optional
    limit, and the policy that manages them (dcsim/sim/facility.py)."""

    control_interval_s: float = Field(default=1.0, gt=0, description="the manager samples level power this often")
    policy: PowerPolicySpec = Field(default_factory=PowerPolicySpec)
    rows: list[Row] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_levels(self) -> "FacilityPower":
        names = [r.name for r in self.rows] + [k.name for r in self.rows for k in r.racks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"row and rack names must be unique, repeated: {dup}")
        return self


class AutoscalingSpec(BaseModel):
    """name: a registered autoscaling policy (dcsim/sim/autoscale.py: `always_on`, `reactive`, `scheduled`), an
    installed package's (entry points `dcsim.autoscalers`) or `package.module:Class`; every other key is one of
    that policy's parameters, checked by its own model. It applies to every pool, each scaled on its own."""

    model_config = ConfigDict(extra="allow")
    name: str = "always_on"
    _params: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _policy_params(self) -> "AutoscalingSpec":
        from dcsim.sim.autoscale import AUTOSCALERS

        self._params = _own_params(AUTOSCALERS, self.name, self.__pydantic_extra__)
        return self

    @property
    def params(self) -> Any:
        """The policy's validated parameters (its own pydantic model)."""
        return self._params


class Facility(Strict):
    pue: float = Field(default=1.0, ge=1.0)
    carbon_g_per_kwh: float = Field(default=0.0, ge=0)
    price_per_kwh: float = Field(default=0.0, ge=0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of price_per_kwh")
    carbon_series: SeriesRef | None = Field(default=None, description="grid g CO2e per kWh over time")
    price_series: SeriesRef | None = Field(default=None, description="price per kWh over time")
    power: FacilityPower | None = Field(default=None, description="racks and rows with power limits, and their "
                                        "power management (absent: no hierarchy)")

    @model_validator(mode="after")
    def _constant_or_series(self) -> "Facility":
        for const, series in (("carbon_g_per_kwh", "carbon_series"), ("price_per_kwh", "price_series")):
            if getattr(self, const) and getattr(self, series) is not None:
                raise ValueError(f"give {const} or {series}, not both")
        return self


class Slo(Strict):
    """Latency targets a request must meet to count as served well (each optional, at least one): the summary
    reports the share of counted requests that met all of them (attainment) and their rate (goodput)."""

    ttft_s: float | None = Field(default=None, gt=0, description="time to first token, at most")
    tpot_s: float | None = Field(default=None, gt=0, description="mean time per output token after the first, at most")
    e2e_s: float | None = Field(default=None, gt=0, description="end-to-end latency, at most")

    @model_validator(mode="after")
    def _some_target(self) -> "Slo":
        if self.ttft_s is None and self.tpot_s is None and self.e2e_s is None:
            raise ValueError("an slo needs at least one of ttft_s, tpot_s, e2e_s")
        return self


class Domain(Strict):
    """A routing domain: a part of the fleet behind a router of its own (a region, a cluster behind its own load
    balancer) that gets `share` of the requests and shares nothing else with the other domains, so that each
    domain is simulated on its own (one after another, or in parallel: `dcsim run --workers`)."""

    name: str
    pools: list[str] = Field(min_length=1, description="the pools it holds (each pool in exactly one domain); "
                             "taken in the fleet's order")
    share: float | None = Field(default=None, gt=0, description="its share of the requests (the shares are "
                                "normalised); not with domains_from_trace")
    router: RouterSpec | None = Field(default=None, description="its own router (default: the scenario's)")


# what a run with domains refuses: (the field that sets it, why)
DOMAIN_REFUSED = (
    ("facility.power", "the power hierarchy's racks and rows, and their manager, may span domains"),
    ("autoscaling.name", "an autoscaler's state is kept for the whole run (use always_on)"),
    ("dispatch.name", "deferral reruns the whole fleet without it (use a dispatch that does not defer)"),
)


class Scenario(Strict):
    name: str = "scenario"
    description: str | None = None
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="random seed (arrivals, sampling, routing)")
    trace: TraceRef
    arrivals: Arrivals = Field(default_factory=ReplayArrivals)
    fleet: list[Pool] = Field(min_length=1)
    router: RouterSpec = Field(default_factory=RouterSpec)
    output_knowledge: OutputKnowledge = Field(default_factory=OutputKnowledge)
    facility: Facility = Field(default_factory=Facility)
    slo: Slo | None = None
    request_classes: RequestClasses | None = Field(default=None, description="batch requests with deadlines "
                                                   "(absent: every request is interactive)")
    dispatch: DispatchSpec = Field(default_factory=DispatchSpec, description="when batch requests go to the router")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    horizon_s: float | None = Field(default=None, gt=0, description="stop here; unfinished requests are reported")
    warmup_s: float = Field(default=0.0, ge=0, description="requests arriving before this are left out of statistics")
    domains: list[Domain] | None = Field(default=None, min_length=1, description="independent routing domains, "
                                         "each with its pools, its share of the requests and its router (absent: "
                                         "one router over the whole fleet)")
    domains_from_trace: bool = Field(default=False, description="each request's domain is the one its trace's "
                                     "`domain` column names (no shares)")

    @field_validator("warmup_s")
    @classmethod
    def _warmup_before_horizon(cls, v: float, info: ValidationInfo) -> float:
        horizon = info.data.get("horizon_s")
        if horizon is not None and v >= horizon:
            raise ValueError(f"the warm-up ({v:g} s) must end before horizon_s ({horizon:g} s): "
                             "no request would be counted")
        return v

    @field_validator("fleet")
    @classmethod
    def _fleet_size(cls, fleet: list[Pool]) -> list[Pool]:
        if sum(p.count for p in fleet) > MAX_REPLICAS:
            i = max(range(len(fleet)), key=lambda k: fleet[k].count)
            raise PydanticCustomError("nested_field", "{reason}", {
                "reason": f"the pools hold {sum(p.count for p in fleet):,} replicas in all; a scenario holds at "
                          f"most {MAX_REPLICAS:,}", "subfield": f"{i}.count"})
        return fleet

    @field_validator("facility")
    @classmethod
    def _placement(cls, v: Facility, info: ValidationInfo) -> Facility:
        fleet = info.data.get("fleet")
        if v.power is None or fleet is None:
            return v
        counts = {p.name: p.count for p in fleet}
        placed = dict.fromkeys(counts, 0)
        last: dict[str, str] = {}
        for i, row in enumerate(v.power.rows):
            for j, rack in enumerate(row.racks):
                for name, n in rack.replicas.items():
                    where = f"power.rows.{i}.racks.{j}.replicas.{name}"
                    if name not in counts:
                        raise PydanticCustomError("nested_field", "{reason}", {
                            "reason": f"no pool named {name!r} (pools: {', '.join(counts)})", "subfield": where})
                    placed[name] += n
                    last[name] = where
                    if placed[name] > counts[name]:
                        raise PydanticCustomError("nested_field", "{reason}", {
                            "reason": f"the racks place {placed[name]} replicas of pool {name!r}, which has "
                                      f"{counts[name]}", "subfield": where})
        for name, n in placed.items():
            if n < counts[name]:
                raise PydanticCustomError("nested_field", "{reason}", {
                    "reason": f"the racks place {n} of the {counts[name]} replicas of pool {name!r}; every replica "
                              "sits in one rack", "subfield": last.get(name, "power.rows")})
        return v

    @model_validator(mode="after")
    def _dispatch_needs(self) -> "Scenario":
        from dcsim.sim.dispatch import DISPATCH

        if DISPATCH.params_class(self.dispatch.name).defers:
            if self.request_classes is None:
                raise PydanticCustomError("nested_field", "{reason}", {
                    "reason": f"dispatch {self.dispatch.name!r} defers batch requests, and the scenario has none: "
                              "set request_classes.batch (or request_classes.from_trace)", "subfield": "dispatch.name"})
            if self.facility.carbon_series is None:
                raise PydanticCustomError("nested_field", "{reason}", {
                    "reason": f"dispatch {self.dispatch.name!r} follows the grid's carbon intensity: set "
                              "facility.carbon_series", "subfield": "dispatch.name"})
        return self

    @model_validator(mode="after")
    def _domains_cover_fleet(self) -> "Scenario":
        if self.domains is None:
            if self.domains_from_trace:
                raise PydanticCustomError("nested_field", "{reason}", {
                    "reason": "needs domains (the names the trace's domain column uses, and their pools)",
                    "subfield": "domains_from_trace"})
            return self
        from dcsim.sim.dispatch import DISPATCH

        def bad(reason: str, where: str) -> PydanticCustomError:
            return PydanticCustomError("nested_field", "{reason}", {"reason": reason, "subfield": where})

        pools = [p.name for p in self.fleet]
        owner: dict[str, str] = {}
        names: list[str] = []
        for k, d in enumerate(self.domains):
            if d.name in names:
                raise bad(f"domain names must be unique, {d.name!r} is repeated", f"domains.{k}.name")
            names.append(d.name)
            if (d.share is None) != self.domains_from_trace:
                raise bad("a domain's share of the requests, > 0" if d.share is None else
                          "the trace's domain column assigns the requests (domains_from_trace): leave share out",
                          f"domains.{k}.share")
            for j, name in enumerate(d.pools):
                where = f"domains.{k}.pools.{j}"
                if name not in pools:
                    raise bad(f"no pool named {name!r} (pools: {', '.join(pools)})", where)
                if name in owner:
                    raise bad(f"pool {name!r} is already in domain {owner[name]!r}; each pool sits in exactly one "
                              "domain", where)
                owner[name] = d.name
        missing = [p for p in pools if p not in owner]
        if missing:
            raise bad(f"pool{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} in no domain; each "
                      "pool sits in exactly one", "domains")
        used = {"facility.power": self.facility.power is not None,
                "autoscaling.name": self.autoscaling.name != "always_on",
                "dispatch.name": DISPATCH.params_class(self.dispatch.name).defers}
        for where, why in DOMAIN_REFUSED:
            if used[where]:
                raise bad(f"not supported with domains: {why}", where)
        return self

    @model_validator(mode="after")
    def _unique_pools(self) -> "Scenario":
        names = [p.name for p in self.fleet]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"pool names must be unique, repeated: {sorted(dup)}")
        return self


# ---- loading ---------------------------------------------------------------------------------
def apply_overrides(data: dict, overrides: list[str], file: str | Path | None = None) -> dict:
    """Apply `a.b=c` overrides (value parsed as YAML) to a nested dict; list items by index (fleet.0.count=3)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got '{item}'", file)
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    # allow selecting a pool by its name: fleet.a100.count=4
                    match = [x for x in node if isinstance(x, dict) and x.get("name") == part]
                    if not match:
                        raise UserError(f"--set {key}: no list item '{part}'", file, key)
                    idx = node.index(match[0])
                else:
                    idx = int(part)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise UserError(f"--set {key}: '{parts[i - 1]}' is not a mapping", file, key)
    return data


def absolute_refs(data: dict, folder: str | Path) -> dict:
    """The routers, batching and power policies a scenario names by file (`./my_router.py:Class`), made absolute
    against the scenario's folder before validation: wherever the scenario is read next (a sweep's worker), the
    same file is found."""
    from dcsim.registry import absolute_ref

    doms = data.get("domains")
    routers = [data.get("router")] + [d.get("router") for d in (doms if isinstance(doms, list) else [])
                                      if isinstance(d, dict)]
    for rt in routers:
        if isinstance(rt, dict) and "name" in rt:
            rt["name"] = absolute_ref(rt["name"], folder)
    fleet = data.get("fleet")
    for pool in fleet if isinstance(fleet, list) else []:
        b = pool.get("batching") if isinstance(pool, dict) else None
        if isinstance(b, dict) and "policy" in b:
            b["policy"] = absolute_ref(b["policy"], folder)
    fac = data.get("facility")
    pw = fac.get("power") if isinstance(fac, dict) else None
    pol = pw.get("policy") if isinstance(pw, dict) else None
    if isinstance(pol, dict) and "name" in pol:
        pol["name"] = absolute_ref(pol["name"], folder)
    dsp = data.get("dispatch")
    if isinstance(dsp, dict) and "name" in dsp:
        dsp["name"] = absolute_ref(dsp["name"], folder)
    sc = data.get("autoscaling")
    if isinstance(sc, dict) and "name" in sc:
        sc["name"] = absolute_ref(sc["name"], folder)
    return data


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override and validate a scenario; errors name the file and the field."""
    data = load_yaml(path)
    if isinstance(data, dict) and "base" in data and any(k in data for k in ("grid", "zip", "set")):
        raise UserError("this is a sweep file (base and grid), not a scenario: run it with `dcsim sweep`", path,
                        "base")
    data = apply_overrides(data, overrides or [], path)
    data = absolute_refs(data, Path(path).absolute().parent)
    return validate_file(Scenario, data, path)


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_path(ref: str, base: str | Path | None, shipped: str) -> Path:
    """Find a file named in a scenario: as given, beside the scenario, or among the shipped ones."""
    p = Path(ref)
    candidates = [p]
    if base is not None and not p.is_absolute():
        candidates.append(Path(base).parent / p)
    if not p.is_absolute():
        candidates.append(PROJECT_ROOT / p)
        candidates.append(PROJECT_ROOT / shipped / p)
        ext = ".yaml" if shipped == "profiles" else ".parquet"
        if p.suffix != ext:  # a bare name; shipped names may hold dots, e.g. "...--llama-3.1-8b--..."
            candidates.append(PROJECT_ROOT / shipped / (p.name + ext))
    folder = None
    for c in candidates:
        try:
            if c.is_file():
                return c
            if folder is None and c.is_dir():
                folder = c
        except OSError:  # a candidate the system cannot look at (too long, no permission) is not this file
            continue
    return folder or p  # a folder, so that the caller can say it is one


def resolve_input(ref: str, base: str | Path | None, shipped: str, field: str, what: str) -> Path:
    """resolve_path for an input that must be a file: a folder, a missing file or a path the system cannot take
    is a UserError naming the scenario file and the field (`what` names the input, e.g. "trace file")."""
    import errno

    from dcsim.errors import _short

    path = resolve_path(ref, base, shipped)
    try:
        if path.is_file():
            return path
        folder = path.is_dir()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise UserError(f"the {what} path, or a part of it, is longer than the system allows: {_short(ref)}",
                            base, field) from None
        raise UserError(f"cannot read the {what} {_short(ref)}: {e.strerror}", base, field) from None
    if folder:
        raise UserError(f"{path} is a folder; expected a {what}", base, field)
    raise UserError(f"{what} not found: {ref}", base, field)
