"""Builds the fleet a scenario describes, replays its requests through SimPy, returns raw results."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, NamedTuple

import numpy as np
import simpy

from dcsim.errors import UserError
from dcsim.grid import StepSeries, load_series
from dcsim.profiles.profile import Profile, ProfileEvaluator, load_profile
from dcsim.scenario import PhaseClocks, Pool, Scenario, resolve_input
from dcsim.sim.batching import Policy, make_policy
from dcsim.sim.replica import Replica, cut_runs
from dcsim.sim.requests import Request, RequestLog
from dcsim.sim.routers import Fleet, make_router
from dcsim.sim.shapes import ColdCosts
from dcsim.traces.trace import Trace, load_trace


@dataclass
class PoolInfo:
    name: str
    profile: Profile
    profile_path: str
    evaluator: ProfileEvaluator
    count: int
    cap_w: float | None
    idle: str
    policy: Policy | None = None  # a template of the pool's batching policy (range checks, reports)
    clocks: tuple[float, float] | None = None  # locked (prefill, decode) SM clock, MHz
    shapes: ColdCosts | None = None  # a pool that starts cold: first-time costs and the shapes warmed


class Segments(NamedTuple):
    """One replica's busy segments, in time order: each a prefill step, a mixed step or a run of decode steps."""

    t0: np.ndarray  # start, s
    t1: np.ndarray  # end, s
    e: np.ndarray  # device energy, J
    h: np.ndarray  # host energy while busy, J


@dataclass
class RawResults:
    """Everything the simulation produced; results.py turns it into tables and a summary."""

    scenario: Scenario
    pools: list[PoolInfo]
    replica_pool: np.ndarray  # pool index of each replica
    n_in: np.ndarray
    n_out: np.ndarray
    arrival_s: np.ndarray
    log: dict[str, np.ndarray]
    segments: list[Segments]  # per replica
    end_s: float
    warnings: list[str] = field(default_factory=list)
    policy_stats: list[dict] = field(default_factory=list)  # per replica: what its policy counted (paged)
    itl: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # per replica: decode runs (start, first step's
    # time, last step's time, steps, decodes), for inter-token latencies; empty for policies that record none
    grid: dict[str, StepSeries] = field(default_factory=dict)  # "carbon" / "price" series the facility names
    pool_carbon: list[StepSeries | None] = field(default_factory=list)  # each pool's own carbon series, or None
    pool_price: list[StepSeries | None] = field(default_factory=list)  # each pool's own price series, or None
    classes: "RequestClassArrays | None" = None  # batch requests, their deadlines and releases (request_classes)
    baseline: "RawResults | None" = None  # the same run without deferral, where the dispatch policy defers
    facility: Any = None  # the power hierarchy and what its manager did (dcsim.sim.facility.FacilityRun), or None
    events: int = 0  # SimPy events scheduled over the run (processed or, past a horizon, left pending)
    scaling: Any = None  # the autoscaler and its state changes (dcsim.sim.autoscale.Scaler), or None (always on)
    tails: list[Segments] = field(default_factory=list)  # per replica, where its profile has power dynamics: the
    # fall after each busy period (t0, t1, device joules above idle, 0); empty where no pool's profile has them


# an arrival that can join a decode run in progress ends it after the step in progress by moving the run's process
# onto a timeout at that step's end (replica.cut_runs), not by Process.interrupt: the same results, one event fewer
# per cut. False: every cut interrupts (kept to check the two agree, tests/test_sim_events.py)
CUT_WITHOUT_INTERRUPT = True


@dataclass
class RequestClassArrays:
    """Which requests are batch, when each is due (absolute seconds; NaN for interactive ones) and when the
    dispatch policy released it to the router (its arrival unless deferred; NaN if never released)."""

    batch: np.ndarray
    deadline_s: np.ndarray
    release_s: np.ndarray


def draw_classes(sc: Scenario, arrivals: np.ndarray, trace: Trace | None = None,
                 scenario_file: str | Path | None = None) -> RequestClassArrays | None:
    """The scenario's request classes: a seeded share of the requests are batch, due deadline_s after arrival
    (a stream of its own, so that the other draws stay as they are), or, with from_trace, the requests with a
    deadline in the trace's `deadline_s` column."""
    rc = sc.request_classes
    if rc is None:
        return None
    if rc.from_trace:
        if trace is None or trace.deadline_s is None:
            raise UserError("the trace has no deadline_s column (seconds after arrival by which a batch request "
                            "is due; empty for interactive ones)", scenario_file, "request_classes.from_trace")
        batch = ~np.isnan(trace.deadline_s)
        return RequestClassArrays(batch, arrivals + trace.deadline_s, np.full(len(arrivals), np.nan))
    rng = np.random.default_rng(np.random.SeedSequence([sc.seed, 23]))
    batch = rng.random(len(arrivals)) < rc.batch.share
    deadline = np.where(batch, arrivals + rc.batch.deadline_s, np.nan)
    return RequestClassArrays(batch, deadline, np.full(len(arrivals), np.nan))


def load_inputs(sc: Scenario, scenario_file: str | Path | None) -> tuple[Trace, list[PoolInfo]]:
    """Read the trace and every pool's profile, resolving paths against the scenario file."""
    tpath = resolve_input(sc.trace.path, scenario_file, "traces", "trace.path", "trace file")
    trace = load_trace(tpath)
    if sc.trace.sample is not None:
        if sc.trace.sample > len(trace):
            raise UserError(f"cannot draw {sc.trace.sample} requests from a trace of {len(trace)} ({tpath}); "
                            f"use at most {len(trace)}, or leave sample out for all", scenario_file, "trace.sample")
        rng = np.random.default_rng(np.random.SeedSequence([sc.seed, 17]))
        idx = np.sort(rng.choice(len(trace), size=min(sc.trace.sample, len(trace)), replace=False))
        trace = trace.take(idx)
    if sc.trace.limit is not None:
        trace = trace.head(sc.trace.limit)
    if len(trace) == 0:
        raise UserError("the trace holds no requests", tpath)
    return trace, load_pools(sc, scenario_file)


def load_pools(sc: Scenario, scenario_file: str | Path | None,
               profiles: dict[Path, Profile] | None = None) -> list[PoolInfo]:
    """Every pool's profile, power cap and batching policy, checked. `profiles` (path -> profile) keeps the
    profiles read, for a caller that loads many scenarios (a sweep checking its points)."""
    pools = []
    for i, pool in enumerate(sc.fleet):
        ppath = resolve_input(pool.profile, scenario_file, "profiles", f"fleet.{i}.profile", "profile")
        if profiles is None:
            prof = load_profile(ppath)
        else:
            if ppath not in profiles:
                profiles[ppath] = load_profile(ppath)
            prof = profiles[ppath]
        if pool.cache_lengths is not None:
            if not prof.engine.cache_lengths:
                raise UserError(f"profile {ppath.name} describes a dynamic KV cache (its engine has no "
                                "cache_lengths); cache_lengths applies to static-cache engines only",
                                scenario_file, f"fleet.{i}.cache_lengths")
            prof = prof.model_copy(update={"engine": prof.engine.model_copy(
                update={"cache_lengths": dict(pool.cache_lengths)})})
        clocks = pool.clocks()
        try:
            evaluator = prof.evaluator(pool.power_cap_w, str(ppath), clocks)
        except UserError as e:
            field = "power_cap_w" if clocks is None else e.field or "clock_mhz"
            if field.startswith("clock_mhz.") and not isinstance(pool.clock_mhz, PhaseClocks):
                field = "clock_mhz"
            raise UserError(f"{e.reason} (profile {ppath.name})", scenario_file, f"fleet.{i}.{field}") from None
        pol = make_policy(pool.batching.policy, pool.batching.params)
        why = pol.check(evaluator)
        if why:
            raise UserError(f"{why} (profile {ppath.name})", scenario_file, f"fleet.{i}.batching")
        pools.append(PoolInfo(pool.name, prof, str(ppath), evaluator, pool.count, pool.power_cap_w, pool.idle, pol,
                              clocks, _cold(pool, prof, pol, scenario_file, i, ppath.name)))
    return pools


def _cold(pool: Pool, prof: Profile, pol: Policy, scenario_file: str | Path | None, i: int,
          name: str) -> ColdCosts | None:
    """A cold-starting pool's first-time costs (the profile's cold_shapes) and warmed shapes; None for a warm one."""
    start = pool.shape_start()
    if start is None:
        return None
    if prof.cold_shapes is None:
        raise UserError(f"profile {name} has no cold_shapes section to price new shapes with (refit it from its "
                        "calibration runs with dcsim fit, which fits them from the warm-ups and first runs)",
                        scenario_file, f"fleet.{i}.shapes")
    if not pol.cold_shapes:
        raise UserError(f"batching policy {pool.batching.policy!r} does not model first-time shape costs (fcfs and "
                        "static do: engines that serve by iteration capture their shapes at start)",
                        scenario_file, f"fleet.{i}.shapes")
    return ColdCosts(prof.cold_shapes, start.warmed.prompts, start.warmed.kv_lengths)


def known_outputs(sc: Scenario, n_out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What routers know of each request's output length before it runs."""
    ok = sc.output_knowledge
    if ok.mode == "oracle":
        return n_out
    if ok.mode == "max_tokens":
        return np.full_like(n_out, ok.max_tokens)
    noisy = n_out * np.exp(rng.normal(0.0, ok.relative_error, size=n_out.shape))
    return np.maximum(1, np.rint(noisy)).astype(np.int64)


@dataclass
class Inputs:
    """What a run reads and draws once for the whole trace (as a run without domains always has): each routing
    domain simulates a subset of these requests on a subset of these pools."""

    pools: list[PoolInfo]
    grid: dict[str, StepSeries]
    pool_carbon: list[StepSeries | None]
    pool_price: list[StepSeries | None]
    arrivals: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    est_out: np.ndarray
    prefix_id: np.ndarray | None
    prefix_len: np.ndarray | None
    classes: RequestClassArrays | None
    notes: list[str]
    domain_of: np.ndarray | None = None  # each request's domain (an index into the scenario's domains)


@dataclass
class Part:
    """One routing domain's share of a run, all a simulation of it needs besides the scenario and its pools: its
    pools (indices into the fleet, in fleet order), its requests (ids in the trace, in arrival order; None: all of
    them, the arrays then the run's own), their inputs, and its router and routing stream."""

    name: str | None
    pools: list[int]
    requests: np.ndarray | None
    arrivals: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    est_out: np.ndarray
    prefix_id: np.ndarray | None
    prefix_len: np.ndarray | None
    classes: RequestClassArrays | None
    router: dict
    router_field: str  # where its router is set: "router", or "domains.K.router" for a domain's own
    route_seed: np.random.SeedSequence


def simulate(sc: Scenario, scenario_file: str | Path | None = None,
             progress: Callable[[str], None] | None = None) -> RawResults:
    """Run one scenario to completion (or to its horizon) and return the raw results; a scenario with domains
    runs them one after another in this process (`progress` told of each as it ends; dcsim.sim.domains runs
    them in parallel)."""
    inputs = prepare(sc, scenario_file)
    merged = Merger(sc, inputs)
    for k, part in enumerate(plan_parts(sc, inputs)):
        t0 = time.perf_counter()
        merged.add(k, part, run_part(sc, scenario_file, part, inputs.pools, inputs.grid, inputs.pool_carbon,
                                     inputs.pool_price))
        if progress is not None and sc.domains is not None:
            progress(part_done(merged.parts, len(sc.domains), part, time.perf_counter() - t0))
        del part  # the next part's inputs are built once this one's are let go
    return finish(sc, scenario_file, merged.result())


def part_done(done: int, count: int, part: Part, seconds: float) -> str:
    """The progress line of a domain that has ended."""
    return f"domain {done}/{count} done ({part.name}, {len(part.arrivals):,} requests, {seconds:.1f} s)"


def prepare(sc: Scenario, scenario_file: str | Path | None) -> Inputs:
    """Read the trace, profiles and series, and draw the arrivals, the outputs routers know and the request
    classes, once for the whole trace."""
    from dcsim.traces.arrivals import arrival_times

    trace, pools = load_inputs(sc, scenario_file)
    grid = load_grid(sc, scenario_file)
    seeds = np.random.SeedSequence(sc.seed).spawn(3)
    rng_arr, rng_pred = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[2])
    tpath = resolve_input(sc.trace.path, scenario_file, "traces", "trace.path", "trace file")
    arrivals = np.asarray(arrival_times(sc.arrivals, trace, rng_arr, tpath, scenario_file), dtype=np.float64)
    _check_warmup(sc, arrivals, scenario_file)
    n_in = trace.n_in.astype(np.int64)
    n_out = trace.n_out.astype(np.int64)
    est_out = known_outputs(sc, n_out, rng_pred)
    pool_carbon = load_pool_series(sc, scenario_file, "carbon")
    pool_price = load_pool_series(sc, scenario_file, "price")
    classes = draw_classes(sc, arrivals, trace, scenario_file)
    notes: list[str] = []
    _range_warnings(pools, sc, n_in, n_out, notes)
    domain_of = None
    if sc.domains is not None:
        domain_of = trace_domains(sc, trace, tpath, scenario_file) if sc.domains_from_trace else \
            assign_domains(sc, len(trace))
    return Inputs(pools, grid, pool_carbon, pool_price, arrivals, n_in, n_out, est_out, trace.prefix_id,
                  trace.prefix_len, classes, notes, domain_of)


# SeedSequence([seed, DOMAIN_STREAM]) assigns requests to domains: a stream of its own, no other draw moves
DOMAIN_STREAM = 29


def assign_domains(sc: Scenario, n: int) -> np.ndarray:
    """Each request's domain (an index into sc.domains): a seeded draw by the normalised shares."""
    shares = np.array([d.share for d in sc.domains], dtype=np.float64)
    edges = np.cumsum(shares / shares.sum())
    u = np.random.default_rng(np.random.SeedSequence([sc.seed, DOMAIN_STREAM])).random(n)
    return np.minimum(np.searchsorted(edges, u, side="right"), len(shares) - 1).astype(np.int32)


def trace_domains(sc: Scenario, trace: Trace, trace_file: str | Path,
                  scenario_file: str | Path | None) -> np.ndarray:
    """Each request's domain as its trace's `domain` column names it; a missing column, or a row naming no
    declared domain, is a UserError."""
    if trace.domain is None:
        raise UserError(f"the trace {trace_file} has no domain column (each request's routing domain, by name)",
                        scenario_file, "domains_from_trace")
    names = [d.name for d in sc.domains]
    index = {name: k for k, name in enumerate(names)}
    labels = trace.domain.tolist()
    try:
        return np.fromiter((index[x] for x in labels), dtype=np.int32, count=len(labels))
    except KeyError:
        i = next(i for i, x in enumerate(labels) if x not in index)
        what = "names no domain" if labels[i] is None else f"names domain {labels[i]!r}"
        raise UserError(f"row {i} {what}, which is none of the scenario's domains ({', '.join(names)})", trace_file,
                        "domain") from None


def route_seed(sc: Scenario, k: int) -> np.random.SeedSequence:
    """Domain k's routing stream: the scenario seed's child 1 for the first (the stream a run without domains
    routes with), its child 2 + k for the others, so that a domain's stream does not depend on how many there
    are."""
    return np.random.SeedSequence(sc.seed, spawn_key=(1 if k == 0 else 2 + k,))


def plan_parts(sc: Scenario, inputs: Inputs) -> Generator[Part, None, None]:
    """The run's parts, built one at a time (a domain's inputs are copies of its share): without domains one
    part, the whole fleet and trace; with them, one per domain."""
    router = sc.router.model_dump()
    if sc.domains is None:
        yield Part(None, list(range(len(sc.fleet))), None, inputs.arrivals, inputs.n_in, inputs.n_out,
                   inputs.est_out, inputs.prefix_id, inputs.prefix_len, inputs.classes, router, "router",
                   route_seed(sc, 0))
        return
    which = inputs.domain_of
    index = {p.name: i for i, p in enumerate(sc.fleet)}
    for k, d in enumerate(sc.domains):
        ids = np.flatnonzero(which == k)
        c = inputs.classes
        cls = None if c is None else RequestClassArrays(c.batch[ids], c.deadline_s[ids], c.release_s[ids])
        pid, plen = inputs.prefix_id, inputs.prefix_len
        yield Part(d.name, sorted(index[p] for p in d.pools), ids, inputs.arrivals[ids], inputs.n_in[ids],
                   inputs.n_out[ids], inputs.est_out[ids], None if pid is None else pid[ids],
                   None if plen is None else plen[ids], cls, router if d.router is None else d.router.model_dump(),
                   "router" if d.router is None else f"domains.{k}.router", route_seed(sc, k))


def run_part(sc: Scenario, scenario_file: str | Path | None, part: Part, all_pools: list[PoolInfo],
             grid: dict[str, StepSeries], all_carbon: list[StepSeries | None],
             all_price: list[StepSeries | None]) -> RawResults:
    """Simulate one part: its requests on its pools, in an environment of its own, with its own router; replicas
    and requests are numbered within the part (Merger puts them back in the run's order)."""
    pools = [all_pools[i] for i in part.pools]
    specs = [sc.fleet[i] for i in part.pools]
    arrivals, n_in, n_out, est_out = part.arrivals, part.n_in, part.n_out, part.est_out
    n = len(arrivals)
    power = sc.facility.power
    if power is not None:
        from dcsim.sim.facility import FacilityEnvironment, needs_manager, start_power_management
    # the power manager's environment keeps its own events out of the run's end; without a manager, SimPy's own
    managed = power is not None and needs_manager(power)
    env = FacilityEnvironment() if managed else simpy.Environment()
    log = RequestLog(n)
    replicas: list[Replica] = []
    for p_idx, (pool, spec) in enumerate(zip(pools, specs)):
        for _ in range(pool.count):
            replicas.append(Replica(env, len(replicas), p_idx, pool.evaluator, spec.batching, log, pool.shapes))
    if sc.horizon_s is not None:
        for rep in replicas:
            rep.horizon = float(sc.horizon_s)
    fleet = Fleet(replicas, [p.name for p in pools], [p.evaluator for p in pools])
    fleet.env = env
    pool_carbon = [all_carbon[i] for i in part.pools]
    fleet.carbon = [pc if pc is not None else grid.get("carbon", sc.facility.carbon_g_per_kwh) for pc in pool_carbon]
    file = str(scenario_file) if scenario_file else None
    try:
        router = make_router(part.router, fleet, np.random.default_rng(part.route_seed), file)
    except UserError as e:
        if part.name is None:
            raise
        field_ = e.field if e.field is None or part.router_field == "router" else \
            part.router_field + e.field.removeprefix("router")
        raise UserError(f"{e.reason} (in domain {part.name!r})", e.file, field_) from None
    classes = part.classes

    prefix = None if part.prefix_id is None else (part.prefix_id.tolist(), part.prefix_len.tolist())
    scaler = None
    if sc.autoscaling.name != "always_on":
        from dcsim.sim.autoscale import start_autoscaling

        scaler = start_autoscaling(sc, scenario_file, env, pools, replicas, n)
    if classes is None:
        src = env.process(_source(env, router, fleet, log, arrivals, n_in, n_out, est_out, [p.policy for p in pools],
                                  prefix, managed or scaler is not None, scaler))
    else:
        from dcsim.sim.dispatch import make_dispatch

        disp = make_dispatch(sc.dispatch.name, sc.dispatch.params)
        src = env.process(_class_source(env, router, fleet, log, arrivals, n_in, n_out, est_out,
                                        [p.policy for p in pools], prefix, classes, disp, grid.get("carbon"),
                                        scaler))
    fac = None if power is None else start_power_management(sc, scenario_file, env, pools, replicas, src, scaler)
    if sc.horizon_s is not None:
        env.run(until=sc.horizon_s)
        end = float(sc.horizon_s)
    else:
        env.run()
        end = float(env.now) if fac is None or not fac.managed else float(env.last_event_s)
        if scaler is not None:  # the run ends with its last request or load, not with the scaler's last tick
            end = scaler.end_s(log, arrivals)
    events = next(env._eid)  # SimPy numbers every event it schedules from 0 (Environment.schedule)
    segments = [_segments(rep, end) for rep in replicas]
    if fac is not None:
        fac.close(end)
    stats = [rep.policy.stats() | (rep.shapes.stats() if rep.shapes else {}) for rep in replicas]
    itl = [_itl_runs(rep.policy) for rep in replicas]
    return RawResults(
        scenario=sc, pools=pools, replica_pool=np.array([r.pool for r in replicas], dtype=np.int32),
        n_in=n_in, n_out=n_out, arrival_s=arrivals, log=log.arrays(), segments=segments, end_s=end,
        warnings=[], policy_stats=stats, itl=itl, grid=grid, facility=fac, pool_carbon=pool_carbon,
        pool_price=[all_price[i] for i in part.pools], events=events,
        classes=classes, scaling=scaler,
    )


class Merger:
    """The parts' RawResults -> the run's, in the run's order: replicas in the fleet's pool order, each request's
    log row at its id in the trace; the run ends with its last part, warnings once each in order, events summed.
    Each part is folded in as it is added, so that no part needs to be kept (a split run's parent holds the merged
    run and the part in hand only)."""

    def __init__(self, sc: Scenario, inputs: Inputs) -> None:
        self.sc, self.inputs = sc, inputs
        counts = [p.count for p in inputs.pools]
        self.first = np.concatenate(([0], np.cumsum(counts)))[:-1]  # each pool's first replica in the run
        self.replica_pool = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        n_rep = int(sum(counts))
        self.segments: list[Segments | None] = [None] * n_rep
        self.stats: list[dict] = [{}] * n_rep
        self.itl: list[tuple[np.ndarray, ...]] = [()] * n_rep
        self.log: dict[str, np.ndarray] | None = None
        self.whole: RawResults | None = None  # a part that is the whole run, kept as it is
        self.end, self.events, self.warnings, self.parts = 0.0, 0, list(inputs.notes), 0

    def add(self, k: int, part: Part | None, raw: RawResults) -> None:
        """Fold in part k's results (`part`: its pools and requests; None when raw covers the whole run)."""
        self.parts += 1
        self.end = max(self.end, raw.end_s)
        self.events += raw.events
        self.warnings += [w for w in raw.warnings if w not in self.warnings]
        if part is None or part.requests is None:
            self.whole = raw
            return
        rep = np.concatenate([np.arange(self.first[g], self.first[g] + self.inputs.pools[g].count)
                              for g in part.pools]).astype(np.int32)  # the part's replicas in the run
        for j, g in enumerate(rep.tolist()):
            self.segments[g] = raw.segments[j]
            self.stats[g] = raw.policy_stats[j]
            self.itl[g] = raw.itl[j]
        n = len(self.inputs.arrivals)
        if self.log is None:
            self.log = {key: np.zeros(n, dtype=v.dtype) for key, v in raw.log.items()}
        ids = part.requests
        for key, v in raw.log.items():
            self.log[key][ids] = rep[v] if key == "replica" else v
        if self.inputs.classes is not None:
            self.inputs.classes.release_s[ids] = raw.classes.release_s

    def result(self) -> RawResults:
        """The merged run (summarize and write_outputs take it as any run's)."""
        if self.whole is not None:
            raw = self.whole
            raw.warnings = self.warnings
        else:
            i = self.inputs
            raw = RawResults(
                scenario=self.sc, pools=i.pools, replica_pool=self.replica_pool, n_in=i.n_in, n_out=i.n_out,
                arrival_s=i.arrivals, log=self.log, segments=self.segments, end_s=self.end, warnings=self.warnings,
                policy_stats=self.stats, itl=self.itl, grid=i.grid, pool_carbon=i.pool_carbon,
                pool_price=i.pool_price, classes=i.classes, events=self.events)
        # the power state over the run's whole time: a part that ends early idles (and falls) to the run's end
        raw.tails = _power_dynamics(raw.pools, raw.replica_pool, raw.segments, raw.end_s)
        return raw


def finish(sc: Scenario, scenario_file: str | Path | None, raw: RawResults) -> RawResults:
    """The merged run's last checks, and the run without deferral where the dispatch policy defers."""
    if sc.warmup_s > 0 and raw.end_s <= sc.warmup_s:
        raise UserError(f"the warm-up ({sc.warmup_s:g} s) lasts to or past the end of the run ({raw.end_s:g} s): no "
                        "time is left to measure", scenario_file, "warmup_s")
    if raw.classes is not None:
        from dcsim.sim.dispatch import DISPATCH

        if DISPATCH.params_class(sc.dispatch.name).defers:  # the same requests sent at arrival: what it saved
            from dcsim.scenario import DispatchSpec

            raw.baseline = simulate(sc.model_copy(update={"dispatch": DispatchSpec()}), scenario_file)
    return raw


def load_pool_series(sc: Scenario, scenario_file: str | Path | None, kind: str) -> list[StepSeries | None]:
    """Each pool's own `kind` series ("carbon": its grid region's intensity; "price": its site's price per kWh),
    read and checked; None where it has none."""
    out: list[StepSeries | None] = []
    for i, pool in enumerate(sc.fleet):
        ref = getattr(pool, f"{kind}_series")
        if ref is None:
            out.append(None)
            continue
        field_ = f"fleet.{i}.{kind}_series.path"
        path = resolve_input(ref.path, scenario_file, "scenarios", field_, "series file")
        out.append(load_series(path, ref.time_column, ref.value_column, ref.period_s, scenario_file, field_))
    return out


def load_grid(sc: Scenario, scenario_file: str | Path | None) -> dict[str, StepSeries]:
    """The carbon-intensity and price series the scenario's facility names, read and checked."""
    out = {}
    for key, ref in (("carbon", sc.facility.carbon_series), ("price", sc.facility.price_series)):
        if ref is not None:
            field_ = f"facility.{key}_series.path"
            path = resolve_input(ref.path, scenario_file, "scenarios", field_, "series file")
            out[key] = load_series(path, ref.time_column, ref.value_column, ref.period_s, scenario_file, field_)
    return out


def _check_warmup(sc: Scenario, arrivals: np.ndarray, scenario_file: str | Path | None) -> None:
    """A warm-up that leaves no request to count (every request arrives before it ends, or after the horizon) is
    refused, naming the field: its statistics would all be undefined."""
    w = float(sc.warmup_s)
    if w <= 0 or not arrivals.size:
        return
    counted = arrivals >= w
    if sc.horizon_s is not None:
        counted &= arrivals < sc.horizon_s
    if not counted.any():
        last = float(arrivals[-1])
        why = (f"the last arrives at {last:g} s" if last < w
               else f"none arrives between it and horizon_s ({sc.horizon_s:g} s)")
        raise UserError(f"no request arrives after the warm-up ({w:g} s; {why}): no request would be counted",
                        scenario_file, "warmup_s")


def _itl_runs(pol: Policy) -> tuple[np.ndarray, ...]:
    """A policy's recorded decode runs as arrays (empty where it records none)."""
    cols = [getattr(pol, f"itl_{c}", []) for c in ("ts", "t0", "t1", "k", "n")]
    return tuple(np.asarray(c, dtype=np.float64) for c in cols)


def _admitter(env: simpy.Environment, router, fleet: Fleet, log: RequestLog, policies: list[Policy],
              scaler=None) -> Callable[[Request], None]:
    """The one admission both arrival processes use: the router picks a replica; a request its pool can never
    serve is rejected with the reason (the policy's own refusal, more tokens than KV memory holds, longer than the
    model's context); else it is submitted (with an autoscaler, the router picks the pool and the scaler the
    replica in it)."""
    needs_work = router.needs_work
    caps = [evaluator.kv_capacity for evaluator in fleet.evaluators]
    # policies with requests they can never serve (paged: more blocks than memory holds)
    refusers = [getattr(p, "refuses", None) for p in policies]
    ctx = [p_ev.profile.model.max_context for p_ev in fleet.evaluators]
    choose, predict, replica_of, reject = router.choose, fleet.predict, log.replica, log.reject

    def admit(r: Request) -> None:
        rep = choose(r)
        refuse = refusers[rep.pool]
        if refuse is not None:
            why = refuse(r, fleet.evaluators[rep.pool])
            if why:
                reject(r.rid, rep.index, why, env.now)
                return
        need = r.n_in + r.n_out
        if need > caps[rep.pool]:
            reject(r.rid, rep.index, 1, env.now)
            return
        if need > ctx[rep.pool]:
            reject(r.rid, rep.index, 2, env.now)
            return
        if scaler is not None:
            rep = scaler.place(rep.pool)
        replica_of[r.rid] = rep.index
        if needs_work:
            r.pred = predict(rep.pool, r)[0]
        if scaler is None:
            rep.submit(r)
        else:
            scaler.submit(rep, r)

    return admit


def _source(env: simpy.Environment, router, fleet: Fleet, log: RequestLog, arrivals: np.ndarray,
            n_in: np.ndarray, n_out: np.ndarray, est_out: np.ndarray, policies: list[Policy],
            prefix: tuple[list[int], list[int]] | None = None, managed: bool = False, scaler=None) -> Generator:
    """The arrival process: hands each request to the router at its arrival time (`managed`: something else
    interrupts decode runs too, and arrivals interrupt them as it does; with an autoscaler, the router picks the
    pool and the scaler the replica in it)."""
    admit = _admitter(env, router, fleet, log, policies, scaler)
    pid, plen = prefix if prefix is not None else (None, None)
    arr = arrivals.tolist()
    nin = n_in.tolist()
    nout = n_out.tolist()
    est = est_out.tolist()
    timeout = env.timeout
    # decode runs cut by arrivals without an interrupt (replica.cut_runs), where no power manager interrupts runs
    cuts: list[Replica] | None = None if managed or not CUT_WITHOUT_INTERRUPT else []
    # the times arrivals are handled at, for policies that plan several steps as one event (Policy.plans)
    plans = cuts is not None and any(getattr(p, "plans", False) for p in policies)
    handled = _handled_at(arrivals, arr) if plans else []
    for rep in fleet.replicas if cuts is not None else ():
        rep.cuts = cuts
        rep.arrivals = handled
    for i in range(len(arr)):
        t = arr[i]
        if t > env.now:
            tmo = timeout(t - env.now)
            if cuts:
                cut_runs(env, cuts)
            yield tmo
        r = Request(i, nin[i], nout[i], t, est[i])
        if pid is not None:
            r.prefix_id = pid[i]
            r.prefix_len = plen[i]
        admit(r)
    if cuts:
        cut_runs(env, cuts)
    if scaler is not None:
        scaler.done = True


def _handled_at(arrivals: np.ndarray, arr: list[float]) -> list[float]:
    """The times _source hands each arrival over at: env.now after its timeout (arrival - now added to now), which
    is the arrival time itself wherever that sum is exact, as it almost always is (then `arr`, the arrivals as a
    list, itself)."""
    n, step = len(arr), 1 << 16  # checked in slices, so that the check's arrays stay small beside the run's
    for i in range(0, max(n - 1, 0), step):
        a, b = arrivals[i:min(i + step, n - 1)], arrivals[i + 1:min(i + step, n - 1) + 1]
        if not np.array_equal(a + (b - a), b):
            break
    else:
        return arr
    out, now = [], 0.0
    for t in arr:
        if t > now:
            now = now + (t - now)
        out.append(now)
    return out


def _class_source(env: simpy.Environment, router, fleet: Fleet, log: RequestLog, arrivals: np.ndarray,
                  n_in: np.ndarray, n_out: np.ndarray, est_out: np.ndarray, policies: list[Policy],
                  prefix: tuple[list[int], list[int]] | None, classes: RequestClassArrays, disp,
                  series: StepSeries | None, scaler=None) -> Generator:
    """The arrival process with request classes: an interactive request goes to the router at its arrival, a
    batch one at the time the dispatch policy computes when it arrives (held in a queue ordered by release time;
    the process wakes at the next arrival or release, whichever is first, never to poll). With an autoscaler, as
    `_source`: the router picks the pool and the scaler the replica."""
    import heapq

    admit_now = _admitter(env, router, fleet, log, policies, scaler)
    pid, plen = prefix if prefix is not None else (None, None)
    batch = classes.batch.tolist()
    deadline = classes.deadline_s.tolist()
    release = classes.release_s
    held: list[tuple[float, int, Request]] = []  # (release time, id, request)
    arr = arrivals.tolist()
    n = len(arr)
    i = 0

    def admit(r: Request) -> None:
        release[r.rid] = env.now
        admit_now(r)

    while i < n or held:
        t_arr = arr[i] if i < n else np.inf
        if held and held[0][0] <= t_arr:  # a release due first (at a tie, before the newcomer: it came earlier)
            t, _, r = heapq.heappop(held)
            if t > env.now:
                yield env.timeout(t - env.now)
            admit(r)
            continue
        if t_arr > env.now:
            yield env.timeout(t_arr - env.now)
        r = Request(i, int(n_in[i]), int(n_out[i]), t_arr, int(est_out[i]))
        if pid is not None:
            r.prefix_id = pid[i]
            r.prefix_len = plen[i]
        if batch[i]:
            service = max(evaluator.served_alone(r.n_in, r.est_out)[0] for evaluator in fleet.evaluators)
            t_rel = disp.release_s(t_arr, deadline[i], service, series)
            if t_rel > env.now:
                heapq.heappush(held, (t_rel, i, r))
                i += 1
                continue
        admit(r)
        i += 1
    if scaler is not None:
        scaler.done = True


def _segments(rep: Replica, end: float) -> Segments:
    """A replica's busy segments, with the one in progress at the horizon cut and prorated."""
    t0 = np.frombuffer(rep.segment_start_s, dtype=np.float64).copy()
    t1 = np.frombuffer(rep.segment_end_s, dtype=np.float64).copy()
    e = np.frombuffer(rep.segment_device_j, dtype=np.float64).copy()
    h = np.frombuffer(rep.segment_host_j, dtype=np.float64).copy()
    if rep.current is not None:
        c0, c1, ce, ch = rep.current
        if c1 > c0 and end > c0:
            f = min(1.0, (end - c0) / (c1 - c0))
            t0 = np.append(t0, c0)
            t1 = np.append(t1, min(c1, end))
            e = np.append(e, ce * f)
            h = np.append(h, ch * f)
    return Segments(t0, t1, e, h)


def _power_dynamics(pools: list[PoolInfo], replica_pool: np.ndarray, segments: list[Segments],
                    end: float) -> list[Segments]:
    """Where a pool's profile has power dynamics: each replica's busy periods lose their rise (in `segments`, in
    place) and gain their fall after them (returned per replica); [] where no profile has them."""
    if not any(p.profile.power.dynamics for p in pools):
        return []
    from dcsim.profiles.power_dynamics import apply_dynamics

    z = np.zeros(0)
    tails = []
    for i, p in enumerate(replica_pool.tolist()):
        pool = pools[p]
        dyn = pool.profile.power.dynamics
        if dyn is None:
            tails.append(Segments(z, z, z, z))
            continue
        seg = segments[i]
        idle_w = pool.evaluator.idle_w if pool.idle == "serving" else pool.evaluator.deep_idle_w
        a = apply_dynamics(seg.t0, seg.t1, seg.e, idle_w, dyn.rise_s, dyn.fall_s, end)
        segments[i] = seg._replace(e=a.e)
        tails.append(Segments(a.tail_t0, a.tail_t1, a.tail_e, np.zeros(len(a.tail_e))))
    return tails


def _range_warnings(pools: list[PoolInfo], sc: Scenario, n_in: np.ndarray, n_out: np.ndarray,
                    notes: list[str]) -> None:
    """Say once per profile when the workload lies outside the range the profile was fitted on."""
    for p, spec in zip(pools, sc.fleet):
        vr = p.profile.valid_range
        msgs = []
        top = p.policy.max_batch
        if top is not None and "batch" in vr and top > vr["batch"][1]:
            msgs.append(f"pool {p.name} batches up to {top}, measured up to {vr['batch'][1]:g}")
        for key, arr in (("prefill_tokens", n_in), ("output_tokens", n_out)):
            if key in vr:
                lo, hi = vr[key]
                out = int(np.sum((arr < lo) | (arr > hi)))
                if out:
                    msgs.append(f"{out} of {len(arr)} requests have {key} outside {lo:g}-{hi:g}")
        if msgs:
            text = f"profile {p.profile.name} extrapolates: " + "; ".join(msgs)
            notes.append(text)
