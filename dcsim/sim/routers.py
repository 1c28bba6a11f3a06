"""Routers, chosen by name from the scenario. A router is one small class with a parameter model and
`choose(request) -> Replica`; register it with @router("name"), or name a class of your own in the scenario
(`router: {name: "mypkg.routers:MyRouter"}` or `"./my_router.py:MyRouter"`; dcsim/registry.py)."""

from __future__ import annotations

import math
from operator import attrgetter
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dcsim.errors import UserError, from_validation
from dcsim.profiles.profile import ProfileEvaluator
from dcsim.registry import Registry
from dcsim.sim.replica import Replica, predicted_service_s
from dcsim.sim.replica_index import OutstandingIndex, PoolIndex, pool_indexes
from dcsim.sim.requests import Request


class Params(BaseModel):
    """Base of router parameters: unknown keys are errors. `pools` limits routing to named pools."""

    model_config = ConfigDict(extra="forbid")
    pools: list[str] | None = None


class Fleet:
    """What routers may read: replicas by pool, and per-pool predictions of a request's service."""

    def __init__(self, replicas: list[Replica], pool_names: list[str], evaluators: list[ProfileEvaluator]) -> None:
        self.replicas = replicas
        self.pool_names = pool_names
        self.evaluators = evaluators
        self.by_pool: list[list[Replica]] = [[r for r in replicas if r.pool == i] for i in range(len(pool_names))]
        self._asked: tuple[Request | None, int, int] = (None, 0, 0)  # the request last predicted, as it was
        self._known: dict[tuple[int, int], tuple[float, float]] = {}  # its predictions by (pool, batch)
        self.env = None  # the run's SimPy environment (the engine sets it), for routers that read the clock
        # each pool's grid carbon intensity: a dcsim.grid.StepSeries (its own region's, or the facility's) or a
        # constant in g/kWh (the engine sets it)
        self.carbon: list = [0.0] * len(pool_names)

    def carbon_now(self) -> list[float]:
        """Each pool's grid carbon intensity (g CO2e/kWh) at the current simulated time."""
        now = self.env.now if self.env is not None else 0.0
        return [float(c) if isinstance(c, (int, float)) else float(c.at(np.array([now]))[0]) for c in self.carbon]

    def pool_index(self, name: str, field: str) -> int:
        if name not in self.pool_names:
            raise UserError(f"no pool named '{name}' (pools: {self.pool_names})", None, field)
        return self.pool_names.index(name)

    def predict(self, pool: int, r: Request) -> tuple[float, float]:
        """(seconds, device joules) of the request alone on a replica of this pool, with its known output."""
        return self.service(pool, r, 1)

    def service(self, pool: int, r: Request, b: int) -> tuple[float, float]:
        """(seconds, device joules) of the request's service on a replica of this pool in a batch of b: alone
        (b = 1), or sharing decode steps with b - 1 others (batch_service). Kept for the request last asked about,
        which a router asks for each pool and the dispatcher again for the one chosen."""
        asked = self._asked
        if asked[0] is not r or asked[1] != r.n_in or asked[2] != r.est_out:
            self._asked = (r, r.n_in, r.est_out)
            self._known = {}
        known = self._known
        got = known.get((pool, b))
        if got is None:
            evaluator = self.evaluators[pool]
            if b == 1:
                got = evaluator.served_alone(r.n_in, r.est_out)
            else:
                pf = known.get((pool, 0))  # the prefill alone, shared by every batch size
                if pf is None:
                    pf = known[(pool, 0)] = prefill_alone(evaluator, r)
                got = batch_service(evaluator, b, r, pf)
            known[(pool, b)] = got
        return got


class Router:
    """Chooses each arriving request's replica: `choose(r)` returns one of `self.candidates` (the replicas of
    `params.pools`, or all; the indexed routers index them when built, so they stay as built). A subclass sets
    `Params` to its own parameter model (a subclass of `Params`)."""

    Params: type[Params] = Params
    needs_work = False  # True if it reads replicas' backlog_s (then requests carry a prediction)

    def __init__(self, params: Params, fleet: Fleet, rng: np.random.Generator) -> None:
        self.params = params
        self.fleet = fleet
        self.rng = rng
        if params.pools:
            idx = [fleet.pool_index(p, "router.pools") for p in params.pools]
            self.candidates = [r for r in fleet.replicas if r.pool in idx]
        else:
            self.candidates = list(fleet.replicas)

    def choose(self, r: Request) -> Replica:
        raise NotImplementedError


ROUTERS: Registry[Router] = Registry("router", base=Router, group="dcsim.routers")


def router(name: str) -> Callable[[type[Router]], type[Router]]:
    """Register a router under `name` (a scenario's `router.name`)."""
    return ROUTERS.register(name)


def make_router(spec: dict, fleet: Fleet, rng: np.random.Generator, file: str | None = None) -> Router:
    """Build the router a scenario names (a registered name, an installed package's entry point, or a class
    given as module:Class or file.py:Class beside the scenario file), validating its parameters against the
    router's own model."""
    spec = dict(spec)
    name = spec.pop("name", "round_robin")
    cls = ROUTERS.get(name, file, "router.name", Path(file).parent if file else None)
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, Params)):
        raise UserError(f"router {name!r}: its Params ({getattr(cls.Params, '__qualname__', cls.Params)}) must "
                        "subclass dcsim.sim.routers.Params, which refuses unknown keys", file, "router.name")
    try:
        params = cls.Params.model_validate(spec)
    except ValidationError as e:
        err = from_validation(e, file)
        if err.field:
            err = UserError(err.reason, file, f"router.{err.field}")
        raise err from None
    try:
        return cls(params, fleet, rng)
    except UserError as e:
        raise UserError(e.reason, file, e.field) from None


_outstanding = attrgetter("outstanding")


def least_outstanding_of(reps: list[Replica]) -> Replica:
    """Fewest outstanding requests; min() keeps the first of equals. A pass over `reps`: the shipped routers use
    an OutstandingIndex instead."""
    return min(reps, key=_outstanding)


def predicted_wait_s(rep: Replica) -> float:
    """Queue wait a request would see: outstanding work spread over the replica's parallelism."""
    if rep.outstanding < rep.parallel:
        return 0.0 if rep.parallel > 1 else rep.backlog_s
    return rep.backlog_s / rep.parallel


def predicted_finish(fleet: "Fleet", rep: Replica, r: Request, alone: tuple[float, float]) -> tuple[float, float]:
    """(seconds until the request would finish on this replica, device joules it would be charged).

    One-at-a-time replicas: the backlog, then the request alone. Batching replicas: the request shares
    decode steps with the batch it would join (its outstanding requests), which slows each step but
    divides the step's energy among the members."""
    if rep.parallel == 1:
        return rep.backlog_s + alone[0], alone[1]
    b = min(rep.outstanding, rep.parallel - 1) + 1
    if b == 1:
        return predicted_wait_s(rep) + alone[0], alone[1]
    evaluator = fleet.evaluators[rep.pool]
    t, e = batch_service(evaluator, b, r, prefill_alone(evaluator, r))
    return predicted_wait_s(rep) + t, e


def prefill_alone(evaluator: ProfileEvaluator, r: Request) -> tuple[float, float]:
    """(seconds, device watts) of the request's prompt prefilled alone."""
    t_pf, w_pf, _ = evaluator.prefill(r.n_in, float(r.n_in) * r.n_in, 1)
    return t_pf, w_pf


def batch_service(evaluator: ProfileEvaluator, b: int, r: Request, pf: tuple[float, float]) -> tuple[float, float]:
    """(seconds, device joules) of the request's service in a batch of b > 1: its prefill `pf`, then its decode
    steps shared with the batch."""
    n_in, n_out = r.n_in, r.est_out
    t_pf, w_pf = pf
    step_t, step_w = evaluator.decode_step(b, b * (n_in + n_out / 2.0))
    t = t_pf + (n_out - 1) * step_t
    e = t_pf * w_pf + (n_out - 1) * step_t * step_w / b
    return t, e


@router("round_robin")
class RoundRobin(Router):
    def __init__(self, params: Params, fleet: Fleet, rng: np.random.Generator) -> None:
        super().__init__(params, fleet, rng)
        self.i = -1

    def choose(self, r: Request) -> Replica:
        self.i = (self.i + 1) % len(self.candidates)
        return self.candidates[self.i]


@router("random")
class Random(Router):
    def choose(self, r: Request) -> Replica:
        return self.candidates[int(self.rng.integers(len(self.candidates)))]


@router("least_outstanding")
class LeastOutstanding(Router):
    """Fewest requests assigned and not finished; ties go to the first replica. Kept in an index the replicas
    update (O(log n) a request, not a pass over the fleet)."""

    def __init__(self, params: Params, fleet: Fleet, rng: np.random.Generator) -> None:
        super().__init__(params, fleet, rng)
        self.index = OutstandingIndex(self.candidates)

    def choose(self, r: Request) -> Replica:
        return self.index.best()


@router("least_work")
class LeastWork(Router):
    """Earliest predicted finish: predicted wait on the replica plus the request's own service there
    (sharing decode steps with the batch it would join, on batching replicas); ties go to the first replica.

    Without a pass over the fleet: the replicas of a pool with the same number outstanding, below its
    parallelism, predict alike (one prediction for each such number present), and the saturated ones are kept
    in order of backlog (PoolIndex.lowest)."""

    needs_work = True

    def __init__(self, params: Params, fleet: Fleet, rng: np.random.Generator) -> None:
        super().__init__(params, fleet, rng)
        self.pools = pool_indexes(self.candidates)

    def choose(self, r: Request) -> Replica:
        service = self.fleet.service
        best = None  # (predicted finish, candidate position): the least, as the scan's `<` keeps it
        for ix in self.pools:
            pool = ix.pool
            for o in ix.present:
                key = (0.0 + service(pool, r, o + 1)[0], ix.first(o))  # 0.0: the wait predicted_wait_s gives them
                if best is None or key < best:
                    best = key
            if ix.count[ix.parallel]:
                P = ix.parallel
                ts = service(pool, r, P)[0]
                key = ix.lowest(lambda b: b / P + ts)  # P = 1: the backlog itself (b / 1 is b)
                if best is None or key < best:
                    best = key
        return self.candidates[best[1]]


class ThresholdParams(Params):
    input_threshold: int = Field(ge=0, description="n_in <= this goes to small_pool")
    output_threshold: int | None = Field(default=None, ge=0, description="and known n_out <= this")
    small_pool: str
    large_pool: str


@router("token_threshold")
class TokenThreshold(Router):
    """The hybrid-cluster paper's design: small requests to the efficient pool, the rest to the other;
    within a pool, least outstanding."""

    Params = ThresholdParams

    def __init__(self, params: ThresholdParams, fleet: Fleet, rng: np.random.Generator) -> None:
        super().__init__(params, fleet, rng)
        self.small = fleet.by_pool[fleet.pool_index(params.small_pool, "router.small_pool")]
        self.large = fleet.by_pool[fleet.pool_index(params.large_pool, "router.large_pool")]
        self.t_in = params.input_threshold
        self.t_out = params.output_threshold
        self.small_ix = OutstandingIndex(self.small)
        self.large_ix = self.small_ix if self.large is self.small else OutstandingIndex(self.large)

    def choose(self, r: Request) -> Replica:
        small = r.n_in <= self.t_in and (self.t_out is None or r.est_out <= self.t_out)
        return (self.small_ix if small else self.large_ix).best()


class EnergyCostParams(Params):
    lam: float = Field(default=0.5, ge=0, le=1, alias="lambda", description="weight of energy against time")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@router("energy_cost")
class EnergyCost(Router):
    """Minimise lambda * E/E_max + (1 - lambda) * T/T_max over replicas, T including the predicted queue
    wait (equation 1 of the hybrid-cluster paper, normalised by the largest candidate); ties go to the first.

    Found as least_work finds its replica: one prediction for each class of alike replicas, the saturated ones
    in order of backlog (their score grows with it), the maxima from each class's extremes."""

    Params = EnergyCostParams
    needs_work = True

    def __init__(self, params: EnergyCostParams, fleet: Fleet, rng: np.random.Generator) -> None:
        super().__init__(params, fleet, rng)
        self.pools = pool_indexes(self.candidates, highest=True)

    def choose(self, r: Request) -> Replica:
        return self.best(r, None)

    def best(self, r: Request, weight: list[float] | None) -> Replica:
        """The least score, each pool's energy multiplied by its `weight` (None: by 1)."""
        service = self.fleet.service
        alike: list[tuple[float, float, int]] = []  # (T, E, first position) of each class of alike replicas
        saturated: list[tuple[PoolIndex, float, float]] = []  # (pool, its service seconds, E): T adds the wait
        t_top = e_top = -math.inf
        for ix in self.pools:
            pool, P = ix.pool, ix.parallel
            w = 1.0 if weight is None else weight[pool]
            for o in ix.present:
                ts, e = service(pool, r, o + 1)
                e = e * w
                t = 0.0 + ts
                alike.append((t, e, ix.first(o)))
                t_top, e_top = max(t_top, t), max(e_top, e)
            if ix.count[P]:
                ts, e = service(pool, r, P)
                e = e * w
                saturated.append((ix, ts, e))
                t_top, e_top = max(t_top, ix.highest() / P + ts), max(e_top, e)
        e_max = e_top or 1.0
        t_max = t_top or 1.0
        if not t_max > 0.0:  # then the score would not grow with the wait, which the index relies on
            return self.scan(r, weight)
        lam = self.params.lam
        best = None  # (score, candidate position)
        for t, e, p in alike:
            key = (lam * e / e_max + (1.0 - lam) * t / t_max, p)
            if best is None or key < best:
                best = key
        for ix, ts, e in saturated:
            P = ix.parallel
            ce = lam * e / e_max
            k = 1.0 - lam

            def score(b: float, ce: float = ce, k: float = k, P: int = P, ts: float = ts) -> float:
                return ce + k * (b / P + ts) / t_max

            if k == 0.0:  # lambda 1: no time term, so every saturated replica of the pool scores alike
                p = ix.first(P)
                key = (score(self.candidates[p].backlog_s), p)
            else:
                key = ix.lowest(score)
            if best is None or key < best:
                best = key
        return self.candidates[best[1]]

    def scan(self, r: Request, weight: list[float] | None = None) -> Replica:
        """The score of every candidate, the least kept (the first of equals); energies times `weight`."""
        alone = {}
        es, ts = [], []
        for rep in self.candidates:
            a = alone.get(rep.pool)
            if a is None:
                a = alone[rep.pool] = self.fleet.predict(rep.pool, r)
            t, e = predicted_finish(self.fleet, rep, r, a)
            es.append(e if weight is None else e * weight[rep.pool])
            ts.append(t)
        e_max = max(es) or 1.0
        t_max = max(ts) or 1.0
        lam = self.params.lam
        best, bc = None, float("inf")
        for rep, e, t in zip(self.candidates, es, ts):
            c = lam * e / e_max + (1.0 - lam) * t / t_max
            if c < bc:
                best, bc = rep, c
        return best


@router("carbon_cost")
class CarbonCost(EnergyCost):
    """energy_cost's score with each replica's energy weighted by its pool's grid carbon intensity now (a pool's
    own `carbon_series`, its grid region, else the facility's series or constant): minimise
    lambda * C/C_max + (1 - lambda) * T/T_max, C the predicted grams of the request's device energy. With one
    intensity for all pools it chooses as energy_cost does."""

    def choose(self, r: Request) -> Replica:
        return self.best(r, self.fleet.carbon_now())


__all__ = ["ROUTERS", "Router", "Params", "Fleet", "make_router", "router", "predicted_service_s"]
