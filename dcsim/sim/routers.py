"""Routers, chosen by name from the scenario. A router is one small class with a parameter model and
`choose(request) -> Replica`; register it with @router("name"), or name a class of your own in the scenario
(`router: {name: "mypkg.routers:MyRouter"}` or `"./my_router.py:MyRouter"`; dcsim/registry.py)."""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dcsim.errors import UserError, from_validation
from dcsim.profiles.profile import ProfileEvaluator
from dcsim.registry import Registry
from dcsim.sim.replica import Replica, predicted_service_s
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

    def pool_index(self, name: str, field: str) -> int:
        if name not in self.pool_names:
            raise UserError(f"no pool named '{name}' (pools: {self.pool_names})", None, field)
        return self.pool_names.index(name)

    def predict(self, pool: int, r: Request) -> tuple[float, float]:
        """(seconds, device joules) of the request alone on a replica of this pool, with its known output."""
        return self.evaluators[pool].served_alone(r.n_in, r.est_out)


class Router:
    """Chooses each arriving request's replica: `choose(r)` returns one of `self.candidates` (the replicas of
    `params.pools`, or all). A subclass sets `Params` to its own parameter model (a subclass of `Params`)."""

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
    """Fewest outstanding requests; min() keeps the first of equals."""
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
    ev = fleet.evaluators[rep.pool]
    n_in, n_out = r.n_in, r.est_out
    t_pf, w_pf, _ = ev.prefill(n_in, float(n_in) * n_in, 1)
    step_t, step_w = ev.decode_step(b, b * (n_in + n_out / 2.0))
    t = t_pf + (n_out - 1) * step_t
    e = t_pf * w_pf + (n_out - 1) * step_t * step_w / b
    return predicted_wait_s(rep) + t, e


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
    """Fewest requests assigned and not finished; ties go to the first replica."""

    def choose(self, r: Request) -> Replica:
        return least_outstanding_of(self.candidates)


@router("least_work")
class LeastWork(Router):
    """Earliest predicted finish: predicted wait on the replica plus the request's own service there
    (sharing decode steps with the batch it would join, on batching replicas)."""

    needs_work = True

    def choose(self, r: Request) -> Replica:
        best, bt = None, float("inf")
        alone = {}
        for rep in self.candidates:
            a = alone.get(rep.pool)
            if a is None:
                a = alone[rep.pool] = self.fleet.predict(rep.pool, r)
            t = predicted_finish(self.fleet, rep, r, a)[0]
            if t < bt:
                best, bt = rep, t
        return best


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

    def choose(self, r: Request) -> Replica:
        small = r.n_in <= self.t_in and (self.t_out is None or r.est_out <= self.t_out)
        return least_outstanding_of(self.small if small else self.large)


class EnergyCostParams(Params):
    lam: float = Field(default=0.5, ge=0, le=1, alias="lambda", description="weight of energy against time")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@router("energy_cost")
class EnergyCost(Router):
    """Minimise lambda * E/E_max + (1 - lambda) * T/T_max over replicas, T including the predicted queue
    wait (equation 1 of the hybrid-cluster paper, normalised by the largest candidate)."""

    Params = EnergyCostParams
    needs_work = True

    def choose(self, r: Request) -> Replica:
        alone = {}
        es, ts = [], []
        for rep in self.candidates:
            a = alone.get(rep.pool)
            if a is None:
                a = alone[rep.pool] = self.fleet.predict(rep.pool, r)
            t, e = predicted_finish(self.fleet, rep, r, a)
            es.append(e)
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


__all__ = ["ROUTERS", "Router", "Params", "Fleet", "make_router", "router", "predicted_service_s"]
