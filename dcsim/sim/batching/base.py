"""The batching-policy registry: a policy is one class with its own pydantic parameters and a SimPy process.

Adding a policy is one new module in this folder: subclass `Policy`, give it a `Params` model, decorate it
with `@policy("name")`, and write `run(replica)`, a generator that yields one event per change of state.
Scenarios choose it by name (`batching: {policy: name, ...}`); its parameters are checked by its own model.
A policy defined outside dcsim is named by reference instead (`policy: "mypkg.batching:MyPolicy"` or
`"./my_policy.py:MyPolicy"`, beside the scenario file) or by an entry point in the `dcsim.policies` group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Generator

from pydantic import BaseModel, ConfigDict, ValidationError

from dcsim.errors import UserError
from dcsim.registry import Registry

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

    def check(self, ev: "ProfileEvaluator") -> str | None:
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
    import simpy

    env = rep.env
    t, e, h = run
    steps = k
    rep.decoding = interruptible
    rep.current = (now, now + t, e, h)
    try:
        yield env.timeout(t)
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


POLICIES: Registry[Policy] = Registry("batching policy", base=Policy, group="dcsim.policies")


def policy(name: str) -> Callable[[type[Policy]], type[Policy]]:
    """Register a batching policy under `name`."""

    def register(cls: type[Policy]) -> type[Policy]:
        POLICIES.register(name)(cls)
        cls.name = name
        return cls

    return register


class PolicyParamsError(ValueError):
    """A policy's parameters failed its model: `field` is the parameter, `reason` what is wrong."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def policy_class(name: str) -> type[Policy]:
    """The policy a scenario names: registered, an installed package's entry point, or a reference
    (module:Class, /abs/file.py:Class; a relative file is read from the current folder); a PolicyParamsError
    on the `policy` field otherwise."""
    try:
        cls = POLICIES.get(name, None, "policy")
    except UserError as e:
        raise PolicyParamsError("policy", e.reason) from None
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, BatchParams)):
        what = getattr(cls.Params, "__qualname__", cls.Params)
        raise PolicyParamsError("policy", f"batching policy {name!r}: its Params ({what}) must subclass "
                                "dcsim.sim.batching.BatchParams, which refuses unknown keys")
    return cls


def parse_params(name: str, data: dict) -> BatchParams:
    """Validate `data` (the batching mapping without `policy`) against the named policy's model."""
    cls = policy_class(name)
    try:
        return cls.Params.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or None
        msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        raise PolicyParamsError(loc, msg) from None


def make_policy(name: str, params: BatchParams) -> Policy:
    """The policy object for one replica."""
    return policy_class(name)(params)
