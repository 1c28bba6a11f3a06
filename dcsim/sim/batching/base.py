"""The batching-policy registry: a policy is one class with its own pydantic parameters and a SimPy process.

Adding a policy is one new module in this folder: subclass `Policy`, give it a `Params` model, decorate it
with `@policy("name")`, and write `run(replica)`, a generator that yields one event per change of state.
Scenarios choose it by name (`batching: {policy: name, ...}`); its parameters are checked by its own model.
A policy defined outside dcsim is named by reference instead (`policy: "mypkg.batching:MyPolicy"` or
`"./my_policy.py:MyPolicy"`, beside the scenario file) or by an entry point in the `dcsim.policies` group.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Callable, ClassVar, Generator

import simpy
from pydantic import BaseModel, ConfigDict

from dcsim.registry import ParamsError, ParamsRegistry

if TYPE_CHECKING:
    from dcsim.profiles.profile import ProfileEvaluator
    from dcsim.sim.replica import Replica
    from dcsim.sim.requests import Request


class BatchParams(BaseModel):
    """Base of every policy's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Policy:
    """One replica's batching policy. `run` is the replica's SimPy process; the rest is what routers and the
    dispatcher may ask of it."""

    Params: ClassVar[type[BatchParams]] = BatchParams
    name: ClassVar[str] = ""
    # whether the policy plans several steps as one event, asking which instants arrivals are handled at
    # (Replica.arrivals, arrival_at)
    plans: ClassVar[bool] = False
    # whether the policy pays first-time shape costs where its pool starts cold (Replica.shapes, dcsim/sim/shapes.py)
    cold_shapes: ClassVar[bool] = False

    def __init__(self, params: BatchParams) -> None:
        self.params = params

    @property
    def parallel(self) -> int:
        """Requests served at once at most (routers spread predicted work over this many)."""
        return 1

    @property
    def max_batch(self) -> int | None:
        """The largest batch the policy forms, for the profile's range check (None: one at a time)."""
        return None

    def admits(self, rep: "Replica", r: "Request") -> bool:
        """Whether an arrival should interrupt a run of decode steps in progress to join at the next step."""
        return False

    def check(self, evaluator: "ProfileEvaluator") -> str | None:
        """A reason the policy cannot run on this profile, or None (called once per pool)."""
        return None

    def stats(self) -> dict[str, float]:
        """What the policy counted over the run, for the summary (empty for the 2023-style policies)."""
        return {}

    def run(self, rep: "Replica") -> Generator:
        raise NotImplementedError


def decode_run_events(rep: "Replica", now: float, run: tuple[float, float, float], k: int,
                      cut: Callable[[float], tuple[int, tuple[float, float, float]]],
                      interruptible: bool = True) -> Generator:
    """The events of a run of k decode steps starting at `now` whose (time, device J, host J) is `run`: an arrival
    that can join interrupts it (Replica.submit), and the run then stops at the end of the step in progress,
    `cut(elapsed)` giving (steps done, their time and energies). Logs the segment; returns (steps, t, e, h)."""
    env = rep.env
    t, e, h = run
    steps = k
    rep.decoding = interruptible
    rep.current = (now, now + t, e, h)
    rep.run_t0 = now
    rep.run_cut = cut
    try:
        yield env.timeout(t)
        if rep.cut is not None:  # cut by an arrival (replica.cut_runs): the run ended at its cut step's end
            steps, t, e, h = rep.cut
            rep.cut = None
    except simpy.Interrupt:
        steps, (t, e, h) = cut(env.now - now)
        rep.current = (now, now + t, e, h)
        rest = now + t - env.now
        if rest > 0:
            yield env.timeout(rest)
    rep.decoding = False
    rep.current = None
    rep.segment(now, now + t, e, h)
    return steps, t, e, h


def prefill_then_decode(rep: "Replica", now: float, prefill: tuple[float, float, float], n: int, ctx: int,
                        k: int, cold: tuple[float, float] = (0.0, 0.0)) -> Generator:
    """Under a power manager: a prefill (seconds, device W, host W) at `now`, then k decode steps of n sequences
    from `ctx` KV tokens, as runs the manager can cut at a step boundary (decode_run_events), the rest at the cap
    it sets, so a cap reaches a request in progress at its next step, as on the engines that batch by iteration;
    then `cold` (seconds, device J: the decode's first-time costs, with_cold) as one segment at the prefill's host
    power. Logs the segments; returns (first token time, end, device J, host J)."""
    from dcsim.sim.batching.continuous import steps_covering

    env, evaluator = rep.env, rep.evaluator
    t_pf, w_pf, h_pf = prefill
    e_tot, h_tot = t_pf * w_pf, t_pf * h_pf
    first = now + t_pf
    rep.current = (now, first, e_tot, h_tot)
    yield env.timeout(t_pf)
    rep.current = None
    rep.segment(now, first, e_tot, h_tot)
    while k > 0:
        def cut(elapsed: float, ctx: int = ctx, k: int = k) -> tuple[int, tuple[float, float, float]]:
            steps = steps_covering(evaluator, n, ctx, k, elapsed)  # the step in progress completes at the old cap
            return steps, evaluator.decode_run(n, ctx, steps)

        steps, _, e, h = yield from decode_run_events(rep, env.now, evaluator.decode_run(n, ctx, k), k, cut)
        e_tot += e
        h_tot += h
        k -= steps
        ctx += steps * n
    ks, kj = cold
    if ks > 0:
        t0 = env.now
        yield env.timeout(ks)
        rep.segment(t0, t0 + ks, kj, ks * h_pf)
        e_tot += kj
        h_tot += ks * h_pf
    return first, env.now, e_tot, h_tot


def with_cold(rep: "Replica", pf: tuple[float, float, float], n: int, n_in: int, kv_from: int,
              steps: int) -> tuple[tuple[float, float, float], float, float]:
    """On a replica that starts cold (rep.shapes set): a prefill (seconds, device W, host W) of n x n_in tokens with
    the first-time cost of its shape folded in, and the extra decode (seconds, device J) that its `steps` steps
    from KV length kv_from pay for KV lengths new to the replica (dcsim/sim/shapes.py)."""
    ps, pj, ks, kj = rep.shapes.pay(n, n_in, kv_from, steps)
    if ps > 0:
        t, w, h = pf
        pf = (t + ps, (t * w + pj) / (t + ps), h)
    return pf, ks, kj


ARRIVAL_WINDOW = 256  # arrivals searched near a replica's last plan before a search of them all


def arrival_at(rep: "Replica", t0: float, *times: float) -> bool:
    """Whether an arrival is handled at one of `times` after t0 (the replica's clock, which only grows): where one
    is, the plan that would cover that instant in one event is not made (which of the two the steps would have
    served first depends on when each was scheduled). Searched from the arrivals at t0, near them first."""
    arr = rep.arrivals
    n = len(arr)
    lo = rep.arrival_i
    hi = min(n, lo + ARRIVAL_WINDOW)
    lo = bisect_left(arr, t0, lo, hi)
    if lo == hi < n:
        lo = bisect_left(arr, t0, hi)
    rep.arrival_i = lo
    hi = min(n, lo + ARRIVAL_WINDOW)
    for t in times:
        if t > t0:
            i = bisect_left(arr, t, lo, hi)
            if i == hi < n:
                i = bisect_left(arr, t, hi)
            if i < n and arr[i] == t:
                return True
    return False


POLICIES: ParamsRegistry[Policy] = ParamsRegistry("batching policy", Policy, "dcsim.policies", BatchParams,
                                                  "dcsim.sim.batching.BatchParams", "policy")
policy = POLICIES.named  # @policy("name"): register a batching policy under `name`
policy_class = POLICIES.params_class
PolicyParamsError = ParamsError  # a policy's parameters failed its model (`field`, `reason`)


def parse_params(name: str, data: dict) -> BatchParams:
    """Validate `data` (the batching mapping without `policy`) against the named policy's model."""
    return POLICIES.parse(name, data)


def make_policy(name: str, params: BatchParams) -> Policy:
    """The policy object for one replica."""
    return policy_class(name)(params)
