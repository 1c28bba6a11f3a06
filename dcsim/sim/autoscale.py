"""Autoscaling with cold starts, chosen by name (`autoscaling.name`): `always_on`, `reactive`, `scheduled`.

Each replica is off, loading or on (serving; busy while it holds a batch, serving-idle otherwise). A policy is one
small class with its own pydantic `Params` and `desired(now, pool)`: every `interval_s` the scaler asks it how
many replicas of each pool should be on, turns off ones up to that count (each taking the model-load time and
energy, `cold_start`) and turns off serving-idle ones above it. No event per token: decisions run on the interval
and on arrivals.

Dispatch: the router picks the pool; within it, the scaler places the request on the on replica with the fewest
outstanding requests, else on the loading replica with the fewest (the request waits in that replica's queue until
its load ends, and its TTFT carries the wait), else, when every replica of the pool is off, it starts loading one
on the spot (scale from zero on an arrival, whatever the policy). A replica is turned off only when it holds no
request. A router that weighs replicas' work when it picks the pool sees off and loading replicas as empty ones
(a limit of this first design). Off draws the profile's deep-idle power, loading load_j / load_s, on the
serving-idle power between batches; the host draws its idle power throughout.

`always_on` builds no scaler at all: its runs are those of a scenario without `autoscaling`, byte for byte.
Register a policy with `@autoscaler("name")`; a class of one's own is named by reference or through the
entry-point group `dcsim.autoscalers`.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, ClassVar, Generator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dcsim.registry import ParamsRegistry

if TYPE_CHECKING:
    import simpy

    from dcsim.profiles.profile import ProfileEvaluator
    from dcsim.sim.replica import Replica
    from dcsim.sim.requests import Request

OFF, LOADING, ON = 0, 1, 2
_outstanding = attrgetter("outstanding")
STATE_NAMES = ("off", "loading", "on")


class ScalingParams(BaseModel):
    """Base of every autoscaling policy's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    interval_s: float = Field(default=10.0, gt=0, description="the scaler evaluates the policy this often")


class ScalingPolicy:
    """Decides how many replicas of a pool should be on. `scales`: whether a scaler runs at all."""

    Params: ClassVar[type[ScalingParams]] = ScalingParams
    name: ClassVar[str] = ""
    scales: ClassVar[bool] = True

    def __init__(self, params: ScalingParams) -> None:
        self.params = params

    def initial(self, pool: "PoolScaling") -> int:
        """Replicas on (loaded) at time 0."""
        return pool.count

    def desired(self, now: float, pool: "PoolScaling") -> int:
        """How many of the pool's replicas should be on (serving or loading) from now on."""
        return pool.count


AUTOSCALERS: ParamsRegistry[ScalingPolicy] = ParamsRegistry(
    "autoscaling policy", ScalingPolicy, "dcsim.autoscalers", ScalingParams, "dcsim.sim.autoscale.ScalingParams",
    "name")
autoscaler = AUTOSCALERS.named  # @autoscaler("name"): register an autoscaling policy under `name`


def make_autoscaler(name: str, params: ScalingParams) -> ScalingPolicy:
    """The policy object of a run."""
    return AUTOSCALERS.params_class(name)(params)


# ---- the policies ------------------------------------------------------------------------------
@autoscaler("always_on")
class AlwaysOn(ScalingPolicy):
    """Every replica loaded from the start and never turned off (no scaler runs)."""

    scales = False


class ReactiveParams(ScalingParams):
    target_outstanding: float | None = Field(default=None, gt=0, description="outstanding requests per on replica "
                                             "to aim at (default 4 when target_utilisation is not given)")
    target_utilisation: float | None = Field(default=None, gt=0, le=1, description="busy share of the on replicas "
                                             "over the last interval to aim at")
    scale_up_delay_s: float = Field(default=0.0, ge=0, description="more replicas must be wanted this long before "
                                    "one is loaded")
    scale_down_delay_s: float = Field(default=300.0, ge=0, description="fewer replicas must be wanted this long "
                                      "before one is turned off")
    min_replicas: int = Field(default=0, ge=0, description="never fewer on (0: scale to zero)")
    max_replicas: int | None = Field(default=None, gt=0, description="never more on (default: the pool's count)")
    initial_replicas: int | None = Field(default=None, ge=0, description="on at time 0 (default min_replicas)")

    @model_validator(mode="after")
    def _consistent(self) -> "ReactiveParams":
        if self.target_outstanding is not None and self.target_utilisation is not None:
            raise ValueError("give target_outstanding or target_utilisation, not both")
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


@autoscaler("reactive")
class Reactive(ScalingPolicy):
    """Holds the on replicas at ceil(load / target), load being the pool's outstanding requests (target_outstanding)
    or its busy replica-seconds over the last interval per second (target_utilisation), within min and max; a
    change is made once it has been wanted for its delay (scale-up, scale-down)."""

    Params = ReactiveParams

    def _bounds(self, pool: "PoolScaling") -> tuple[int, int]:
        p = self.params
        hi = min(pool.count, p.max_replicas or pool.count)
        return min(p.min_replicas, hi), hi

    def initial(self, pool: "PoolScaling") -> int:
        lo, hi = self._bounds(pool)
        p = self.params
        return max(lo, min(hi, p.initial_replicas if p.initial_replicas is not None else lo))

    def desired(self, now: float, pool: "PoolScaling") -> int:
        p = self.params
        lo, hi = self._bounds(pool)
        if p.target_utilisation is not None:
            want = math.ceil(pool.busy_share() / p.target_utilisation - 1e-9)
        else:
            want = math.ceil(pool.outstanding() / (p.target_outstanding or 4.0) - 1e-9)
        want = max(lo, min(hi, want))
        on = pool.n_on()
        st = pool.state
        if want > on:
            st.pop("down_since", None)
            since = st.setdefault("up_since", now)
            return want if now - since >= p.scale_up_delay_s else on
        st.pop("up_since", None)
        if want < on:
            since = st.setdefault("down_since", now)
            return want if now - since >= p.scale_down_delay_s else on
        st.pop("down_since", None)
        return on


class ScheduledParams(ScalingParams):
    hourly: list[int] = Field(min_length=24, max_length=24, description="replicas on in each hour 0..23 (capped at "
                              "the pool's count)")
    day_s: float = Field(default=86400.0, ge=1e-3, description="length of one day in simulated seconds")
    start_hour: float = Field(default=0.0, ge=0, lt=24, description="the hour of the day at time 0")
    lead_s: float = Field(default=0.0, ge=0, description="load this long before the hour's count applies")

    @model_validator(mode="after")
    def _counts(self) -> "ScheduledParams":
        if min(self.hourly) < 0:
            raise ValueError("hourly replica counts must be at least 0")
        return self


@autoscaler("scheduled")
class Scheduled(ScalingPolicy):
    """A daily curve of replica counts, one per hour (the curve of `arrivals.kind: diurnal`'s clock): the count of
    the hour at now + lead_s."""

    Params = ScheduledParams

    def _at(self, t: float, pool: "PoolScaling") -> int:
        p = self.params
        hour = int(((t / p.day_s) * 24.0 + p.start_hour) % 24.0)
        return min(pool.count, p.hourly[hour])

    def initial(self, pool: "PoolScaling") -> int:
        return self._at(self.params.lead_s, pool)

    def desired(self, now: float, pool: "PoolScaling") -> int:
        return self._at(now + self.params.lead_s, pool)


# ---- the scaler --------------------------------------------------------------------------------
@dataclass
class ColdStart:
    """Model-load time (s) and device energy (J) of one replica, and where they came from."""

    load_s: float
    load_j: float
    source: str


class PoolScaling:
    """One pool's replicas, their states and each state change (per replica: times and new states)."""

    def __init__(self, index: int, replicas: list["Replica"], cold: ColdStart) -> None:
        self.index = index
        self.replicas = replicas
        self.count = len(replicas)
        self.first = replicas[0].index  # a pool's replicas are numbered in one run
        self.cold = cold
        self.st = [ON] * self.count
        self.on = list(replicas)  # the replicas on, in index order
        self.pending: list[list["Request"]] = [[] for _ in replicas]
        self.ready_s = [0.0] * self.count  # when each loading replica will be on
        self.change_t = [array("d") for _ in replicas]
        self.change_s = [array("b") for _ in replicas]
        self.state: dict = {}
        self.busy_mark = 0.0
        self.mark_t = 0.0

    def n_on(self) -> int:
        """Replicas on or loading."""
        return sum(1 for s in self.st if s != OFF)

    def outstanding(self) -> int:
        """Requests assigned to the pool and not finished (those waiting on a load included)."""
        return sum(r.outstanding for r in self.replicas) + sum(len(p) for p in self.pending)

    def busy_share(self) -> float:
        """Busy replica-seconds per second since the last evaluation (busy_s counts finished segments)."""
        now = self.replicas[0].env.now
        busy = sum(r.busy_s for r in self.replicas)
        dt = now - self.mark_t
        share = (busy - self.busy_mark) / dt if dt > 0 else 0.0
        self.busy_mark, self.mark_t = busy, now
        return share

    def set(self, i: int, state: int, now: float) -> None:
        """Replica i enters `state` now."""
        self.st[i] = state
        self.on = [r for r, s in zip(self.replicas, self.st) if s == ON]
        self.change_t[i].append(now)
        self.change_s[i].append(state)


class Scaler:
    """Runs a policy over every pool: the evaluation loop, placement of arrivals, loads and turn-offs."""

    def __init__(self, env: "simpy.Environment", policy: ScalingPolicy, pools: list[PoolScaling],
                 n_requests: int) -> None:
        self.env = env
        self.policy = policy
        self.pools = pools
        self.cold_wait = [0.0] * n_requests  # seconds each request waited for a load to end
        self.loads = 0
        self.last_load_s = 0.0
        self.done = False  # the arrivals have all been placed
        for pool in pools:
            n = policy.initial(pool)
            for i in range(pool.count):
                if i >= n:
                    pool.set(i, OFF, 0.0)

    def place(self, pool_idx: int) -> "Replica":
        """The replica of the pool an arrival goes to (see the module docstring)."""
        pool = self.pools[pool_idx]
        if pool.on:
            return min(pool.on, key=_outstanding)
        loading = [i for i, s in enumerate(pool.st) if s == LOADING]
        if loading:
            return pool.replicas[min(loading, key=lambda i: len(pool.pending[i]))]
        i = pool.st.index(OFF)
        self._load(pool, i)
        return pool.replicas[i]

    def submit(self, rep: "Replica", r: "Request") -> None:
        """Hand a placed request to its replica, or hold it until the replica's load ends."""
        pool = self.pools[rep.pool]
        i = rep.index - pool.first
        if pool.st[i] == LOADING:
            pool.pending[i].append(r)
            self.cold_wait[r.rid] = pool.ready_s[i] - self.env.now
        else:
            rep.submit(r)

    def _load(self, pool: PoolScaling, i: int) -> None:
        now = self.env.now
        pool.set(i, LOADING, now)
        pool.ready_s[i] = now + pool.cold.load_s
        self.loads += 1
        self.env.process(self._loading(pool, i))

    def _loading(self, pool: PoolScaling, i: int) -> Generator:
        """One replica's load: its time, then it serves what was held for it."""
        yield self.env.timeout(pool.cold.load_s)
        now = self.env.now
        pool.set(i, ON, now)
        self.last_load_s = now
        rep = pool.replicas[i]
        held, pool.pending[i] = pool.pending[i], []
        for r in held:
            rep.submit(r)

    def drained(self) -> bool:
        """Nothing assigned and unfinished, and no load under way."""
        return all(pool.outstanding() == 0 and LOADING not in pool.st for pool in self.pools)

    def draw_w(self, rep: "Replica") -> float | None:
        """The watts a replica draws for being off (its device's deep idle) or loading (the load's energy over
        its time) at this moment, its host's idle power added (the host idles in every state), as the results
        count them; None while it is on."""
        pool = self.pools[rep.pool]
        st = pool.st[rep.index - pool.first]
        if st == ON:
            return None
        return state_device_w(pool.cold, rep.evaluator, st) + rep.evaluator.host_idle_w

    def run(self) -> Generator:
        """The evaluation loop; it ends once every arrival is placed and served."""
        dt = self.policy.params.interval_s
        while True:
            yield self.env.timeout(dt)
            if self.done and self.drained():
                return
            now = self.env.now
            for pool in self.pools:
                want = self.policy.desired(now, pool)
                on = pool.n_on()
                if want > on:
                    for i in [k for k, s in enumerate(pool.st) if s == OFF][:want - on]:
                        self._load(pool, i)
                elif want < on:
                    idle = [k for k, s in enumerate(pool.st) if s == ON and pool.replicas[k].outstanding == 0]
                    for i in idle[::-1][:on - want]:
                        pool.set(i, OFF, now)

    def end_s(self, log, arrivals) -> float:
        """The run's end: its last completion, arrival or load (the loop's last tick may come later)."""
        import numpy as np

        done = np.frombuffer(log.done, dtype=np.float64)
        last = float(done.max()) if done.size else 0.0
        return max(last, float(arrivals[-1]) if len(arrivals) else 0.0, self.last_load_s)


def start_autoscaling(sc, scenario_file, env: "simpy.Environment", pools: list, replicas: list["Replica"],
                      n_requests: int) -> Scaler:
    """The scaler of a run: every pool's cold start resolved (the scenario's, else the profile's; a UserError
    naming the pool's field where neither gives one), the evaluation loop started."""
    from dcsim.cold_start import CITATION, published_load
    from dcsim.errors import UserError

    policy = make_autoscaler(sc.autoscaling.name, sc.autoscaling.params)
    scaled = []
    for p_idx, (pool, spec) in enumerate(zip(pools, sc.fleet)):
        cs = spec.cold_start
        if cs is not None and cs.published is not None:
            load_s, load_j = published_load(cs.published)
            cold = ColdStart(load_s, load_j, f"published: {cs.published}, {CITATION}")
        elif cs is not None:
            cold = ColdStart(float(cs.load_s), float(cs.load_j), "scenario")
        elif pool.profile.cold_start is not None:
            pc = pool.profile.cold_start
            cold = ColdStart(pc.load_s, pc.load_j, f"profile {pool.profile.name}")
        else:
            raise UserError(f"autoscaling '{sc.autoscaling.name}' needs the model-load time and energy of pool "
                            f"{pool.name!r}: its profile ({pool.profile.name}) has no cold_start; give "
                            "cold_start: {load_s, load_j} or {published: 'SYSTEM / MODEL'} in the pool",
                            scenario_file, f"fleet.{p_idx}.cold_start")
        scaled.append(PoolScaling(p_idx, [r for r in replicas if r.pool == p_idx], cold))
    scaler = Scaler(env, policy, scaled, n_requests)
    env.process(scaler.run())
    return scaler


def state_device_w(cold: ColdStart, evaluator: "ProfileEvaluator", state: int) -> float:
    """A replica's device watts off (its deep idle) or loading (the load's energy over its time): the one figure
    the results, the power manager and the levels' power all count."""
    return evaluator.deep_idle_w if state == OFF else cold.load_j / cold.load_s


def state_spans(scaler: Scaler, rep: int, pool: int, end: float) -> list[tuple[float, float, int]]:
    """Replica `rep`'s spans off or loading up to `end`: (start, end, state), in time order."""
    ps = scaler.pools[pool]
    i = rep - ps.first
    t = list(ps.change_t[i]) + [end]
    s = list(ps.change_s[i])
    return [(a, min(b, end), st) for a, b, st in zip(t, t[1:], s) if st != ON and a < end]


def state_seconds(scaler: Scaler, rep: int, pool: int, edges) -> tuple:
    """Cumulative seconds replica `rep` spent off and loading by each of the times `edges` (numpy arrays)."""
    import numpy as np

    ps = scaler.pools[pool]
    i = rep - ps.first
    t = np.frombuffer(ps.change_t[i], dtype=np.float64)
    s = np.frombuffer(ps.change_s[i], dtype=np.int8)
    x = np.asarray(edges, dtype=np.float64)
    # piecewise constant: state s[k] over [t[k], t[k+1]); ON before the first change
    starts = np.concatenate(([0.0], t))
    states = np.concatenate(([ON], s)).astype(np.int8)
    ends = np.concatenate((t, [np.inf]))
    out = []
    for want in (OFF, LOADING):
        m = states == want
        a, b = starts[m], ends[m]
        out.append(np.clip(x[:, None] - a[None, :], 0.0, (b - a)[None, :]).sum(axis=1) if a.size
                   else np.zeros_like(x))
    return out[0], out[1]
