"""Power-management policies of a facility's power hierarchy, chosen by name (`facility.power.policy.name`).

A policy is one small class with its own pydantic `Params` and `decide(now, level, power_w)`: the control loop
(dcsim/sim/facility.py) samples each limited level's power every control interval and asks the policy what cap,
if any, that level's GPUs should run under. Register one with `@power_policy("name")`; adding a policy touches
this file only. A class of one's own is named by reference (`"mypkg.power:MyPolicy"`, `"./my_policy.py:MyPolicy"`)
or through the entry-point group `dcsim.power_policies`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dcsim.registry import ParamsError, ParamsRegistry

if TYPE_CHECKING:
    from dcsim.profiles.profile import PowerCap
    from dcsim.sim.facility import Level


class PowerParams(BaseModel):
    """Base of every power policy's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Cap:
    """A cap a level asks of its GPUs: `watts` per device, or `fraction` of each device's default limit."""

    watts: float | None = None
    fraction: float | None = None

    def for_device(self, pc: "PowerCap") -> float:
        """The per-device watts this cap means on a device with this power-cap model."""
        return self.watts if self.watts is not None else float(self.fraction) * pc.default_w


class PowerPolicy:
    """Decides, at each control tick, the cap of one limited level from its sampled power. `caps`: whether it
    may cap at all (then every profile under a limited level needs a power_cap section)."""

    Params: ClassVar[type[PowerParams]] = PowerParams
    name: ClassVar[str] = ""
    caps: ClassVar[bool] = True

    def __init__(self, params: PowerParams) -> None:
        self.params = params

    def caps_tried(self) -> list[Cap]:
        """Caps the policy may ask for whatever the load (checked against each profile's range before the run);
        empty where they depend on the load (those are clamped to the range instead)."""
        return []

    def decide(self, now: float, level: "Level", power_w: float) -> Cap | None:
        """The level's cap from now on (None: uncapped), given its power sampled now (device and host watts)."""
        return None


POWER_POLICIES: ParamsRegistry[PowerPolicy] = ParamsRegistry(
    "power policy", PowerPolicy, "dcsim.power_policies", PowerParams, "dcsim.sim.power_policies.PowerParams", "name")
power_policy = POWER_POLICIES.named  # @power_policy("name"): register a power policy under `name`
power_policy_class = POWER_POLICIES.params_class
PowerParamsError = ParamsError  # a power policy's parameters failed its model (`field`, `reason`)


def parse_power_params(name: str, data: dict) -> PowerParams:
    """Validate `data` (the policy mapping without `name`) against the named policy's own model."""
    return POWER_POLICIES.parse(name, data)


def make_power_policy(name: str, params: PowerParams) -> PowerPolicy:
    """The policy object of a run (one for the whole hierarchy; per-level state lives on the levels)."""
    return power_policy_class(name)(params)


# ---- the policies ------------------------------------------------------------------------------
@power_policy("none")
class NoManagement(PowerPolicy):
    """Never caps: the hierarchy is only measured (peak power and time above each limit)."""

    caps = False


class ThresholdParams(PowerParams):
    threshold: float = Field(default=0.95, gt=0, le=2, description="cap when power exceeds this share of the limit")
    release: float = Field(default=0.85, gt=0, le=2, description="uncap when power is at or below this share")
    hold_s: float = Field(default=30.0, ge=0, description="stay capped at least this long after the last sample "
                          "above the threshold")
    cap_w: float | None = Field(default=None, gt=0, description="per-device cap in watts")
    cap_fraction: float | None = Field(default=None, gt=0, le=1, description="per-device cap as a share of each "
                                       "device's default limit (default 0.7 when cap_w is not given)")

    @model_validator(mode="after")
    def _consistent(self) -> "ThresholdParams":
        if self.release > self.threshold:
            raise ValueError(f"release ({self.release:g}) must not exceed threshold ({self.threshold:g}): the "
                             "level would be released above the power that capped it")
        if self.cap_w is not None and self.cap_fraction is not None:
            raise ValueError("give cap_w or cap_fraction, not both")
        return self


@power_policy("cap_on_threshold")
class CapOnThreshold(PowerPolicy):
    """The POLCA design (Patel et al., "POLCA: Power Oversubscription in LLM Cloud Providers", ASPLOS 2024):
    when a level's power exceeds `threshold` x its limit, cap every GPU under it to one fixed cap; release the
    cap once the power is at or below `release` x the limit and `hold_s` has passed since the last sample above
    the threshold (hysteresis in power and in time, so that the level does not flap)."""

    Params = ThresholdParams

    def __init__(self, params: ThresholdParams) -> None:
        super().__init__(params)
        p = params
        self.cap = Cap(watts=p.cap_w) if p.cap_w is not None else Cap(fraction=p.cap_fraction or 0.7)

    def caps_tried(self) -> list[Cap]:
        return [self.cap]

    def decide(self, now: float, level: "Level", power_w: float) -> Cap | None:
        p = self.params
        st = level.state
        if power_w > p.threshold * level.limit_w:
            st["last_over"] = now
            return self.cap
        if level.cap is None:
            return None
        if power_w <= p.release * level.limit_w and now - st.get("last_over", -math.inf) >= p.hold_s:
            return None
        return level.cap


class ShareParams(PowerParams):
    target: float = Field(default=0.95, gt=0, le=2, description="hold the level's power at this share of its limit")
    gain: float = Field(default=0.5, gt=0, le=2, description="share of the power error corrected each interval")
    resolution: float = Field(default=0.01, gt=0, lt=1, description="caps move in steps of this share of the "
                              "default limit (fewer cap changes)")


@power_policy("budget_share")
class BudgetShare(PowerPolicy):
    """A proportional-integral share of the budget: each interval the level's cap, a share f of every device's
    default limit, moves by gain x (target x limit - power) / (the level's summed default limits), so that every
    GPU gives up the same share of its limit; f = 1 is uncapped (an integrator clamped at both ends, so it does
    not wind up). Devices clamp their cap to their own range (at least min_w, above the model's static floor)."""

    Params = ShareParams

    def decide(self, now: float, level: "Level", power_w: float) -> Cap | None:
        p = self.params
        f = 1.0 if level.cap is None else float(level.cap.fraction)
        f += p.gain * (p.target * level.limit_w - power_w) / level.default_w
        f = math.floor(f / p.resolution + 1e-9) * p.resolution
        f = max(f, level.floor_fraction)
        return None if f >= 1.0 else Cap(fraction=f)
