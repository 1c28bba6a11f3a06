"""Dispatch of batch requests, chosen by name (`dispatch.name`): when a batch request (one carrying a deadline;
the scenario's `request_classes`) is handed to the router. Interactive requests are always handed over at
arrival.

A policy is one small class with its own pydantic `Params` and `release_s(arrival, deadline, service, series)`,
the time at which the request is released, computed once at its arrival from the carbon series in closed form
(dcsim/grid.py's pieces), never by polling. Register one with `@dispatch_policy("name")`; a class of one's own is
named by reference (`"mypkg.dispatch:MyPolicy"`) or through the entry-point group `dcsim.dispatch`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dcsim.grid import StepSeries
from dcsim.registry import ParamsRegistry


class DispatchParams(BaseModel):
    """Base of every dispatch policy's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class DispatchPolicy:
    """Decides when a batch request is released to the router. `defers`: whether it may hold any (then the
    scenario needs request classes and a carbon series)."""

    Params: ClassVar[type[DispatchParams]] = DispatchParams
    name: ClassVar[str] = ""
    defers: ClassVar[bool] = False

    def __init__(self, params: DispatchParams) -> None:
        self.params = params

    def release_s(self, arrival: float, deadline: float, service_s: float, series: StepSeries | None) -> float:
        """The time (at or after `arrival`) at which the request goes to the router; `deadline` is the absolute
        time by which it should be done, `service_s` its predicted service time."""
        return arrival


DISPATCH: ParamsRegistry[DispatchPolicy] = ParamsRegistry(
    "dispatch policy", DispatchPolicy, "dcsim.dispatch", DispatchParams, "dcsim.sim.dispatch.DispatchParams", "name")
dispatch_policy = DISPATCH.named  # @dispatch_policy("name"): register a dispatch policy under `name`


def make_dispatch(name: str, params: DispatchParams) -> DispatchPolicy:
    """The dispatch policy object of a run."""
    return DISPATCH.params_class(name)(params)


@dispatch_policy("immediate")
class Immediate(DispatchPolicy):
    """Every request goes to the router when it arrives (the behaviour without request classes)."""


class CarbonDeferParams(DispatchParams):
    threshold: float = Field(ge=0, description="release once the carbon intensity (g CO2e/kWh) is below this")
    margin_s: float = Field(default=0.0, ge=0, description="start this much earlier than the latest start that "
                            "the predicted service allows (room for queueing)")


def latest_start_s(arrival: float, deadline: float, service_s: float, margin_s: float) -> float:
    """The last moment a request can start and still be done by its deadline (never before its arrival)."""
    return max(arrival, deadline - service_s - margin_s)


def first_below(series: StepSeries, lo: float, hi: float, threshold: float) -> float | None:
    """The earliest time in [lo, hi] at which the series is below `threshold`, from its pieces; None if never."""
    if hi <= lo:
        return lo if float(series.at(np.array([lo]))[0]) < threshold else None
    edges, values = series.breakpoints(lo, hi)
    below = np.flatnonzero(values < threshold)
    return float(edges[below[0]]) if len(below) else None


@dispatch_policy("carbon_defer")
class CarbonDefer(DispatchPolicy):
    """Hold a batch request arriving while the grid is dirtier than `threshold` until the carbon intensity falls
    below it, or until the latest start that still meets its deadline (deadline - predicted service -
    margin_s), whichever comes first."""

    Params = CarbonDeferParams
    defers = True

    def release_s(self, arrival: float, deadline: float, service_s: float, series: StepSeries | None) -> float:
        latest = latest_start_s(arrival, deadline, service_s, self.params.margin_s)
        if series is None:
            return arrival
        clean = first_below(series, arrival, latest, self.params.threshold)
        return latest if clean is None else clean


class CleanestParams(DispatchParams):
    margin_s: float = Field(default=0.0, ge=0, description="start this much earlier than the latest start that "
                            "the predicted service allows (room for queueing)")


def cleanest_start(series: StepSeries, lo: float, hi: float) -> float:
    """The start of the piece of lowest value in [lo, hi] (the earliest of equals); lo when none is below the
    value at lo."""
    if hi <= lo:
        return lo
    edges, values = series.breakpoints(lo, hi)
    k = int(np.argmin(values))
    return float(edges[k]) if values[k] < values[0] else lo


@dispatch_policy("carbon_cleanest")
class CarbonCleanest(DispatchPolicy):
    """Hold a batch request until the cleanest hour before its latest start (deadline - predicted service -
    margin_s): the start of the series' lowest piece in that window, the earliest of equals; at once where no
    later piece is cleaner than the one it arrives in. Needs no threshold, and never starts dirtier than now."""

    Params = CleanestParams
    defers = True

    def release_s(self, arrival: float, deadline: float, service_s: float, series: StepSeries | None) -> float:
        if series is None:
            return arrival
        return cleanest_start(series, arrival, latest_start_s(arrival, deadline, service_s, self.params.margin_s))


__all__ = ["DISPATCH", "DispatchPolicy", "DispatchParams", "dispatch_policy", "make_dispatch", "first_below",
           "cleanest_start", "latest_start_s"]
