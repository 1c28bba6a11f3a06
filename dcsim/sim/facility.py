"""A facility's power hierarchy (replicas in racks, racks in rows or PDUs, each with an optional limit in watts)
and its power manager: one SimPy process that samples every limited level's power each control interval and
caps or releases the GPUs under it as the scenario's policy (dcsim/sim/power_policies.py) decides.

A level's power is what its PDU feeds: the device and host power of its replicas (the PUE's overhead is the
building's, not the rack's). A sample is the instantaneous draw: each replica's step in progress at its mean
power, or its idle power. A cap reaches a replica at its next step boundary: the manager interrupts a run of
decode steps the way an arrival does (it ends after the step in progress, at the old cap), and changes the
replica's own evaluator in place once that step is cut, so the next step the batching policy plans is capped.
A prefill finishes at the cap it began with; under a manager an fcfs request or a static batch runs as its
prefill and then decode runs (batching/base.py prefill_then_decode), so a cap reaches it at its next decode step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generator

import simpy

from dcsim.errors import UserError
from dcsim.sim.power_policies import Cap, PowerPolicy, make_power_policy

if TYPE_CHECKING:
    from dcsim.profiles.profile import ProfileEvaluator
    from dcsim.scenario import FacilityPower, Scenario
    from dcsim.sim.engine import PoolInfo
    from dcsim.sim.replica import Replica


class FacilityEnvironment(simpy.Environment):
    """A SimPy environment that remembers the time of the last event other than the power manager's own, so
    that a run without a horizon ends where it would without the manager (at its last arrival or step)."""

    def __init__(self) -> None:
        super().__init__()
        self.last_event_s = 0.0
        self._tick = False

    def tick(self, delay: float) -> simpy.Timeout:
        """A timeout of the power manager's, left out of the run's end."""
        ev = self.timeout(delay)
        ev.callbacks.append(self._mark)
        return ev

    def _mark(self, _ev: simpy.Event) -> None:
        self._tick = True

    def disown(self, ev: simpy.Event) -> None:
        """Leave an event of the manager's making out of the run's end too: a replica's timeout orphaned by the
        manager's interrupt, the manager's own end."""
        if ev.callbacks is not None:
            ev.callbacks.append(self._mark)

    def step(self) -> None:
        super().step()
        if self._tick:
            self._tick = False
        else:
            self.last_event_s = self.now


@dataclass
class Level:
    """One row or rack: its replicas (indices into the fleet), limit, and what its manager did."""

    name: str
    kind: str  # "row" or "rack"
    limit_w: float | None
    replicas: list[int]
    parent: int | None  # index of the row a rack is in
    gpus: int = 0
    default_w: float = 0.0  # the devices' default limits summed (budget shares)
    floor_fraction: float = 0.0  # lowest share of the default limit every device under it can be capped to
    cap: Cap | None = None
    state: dict = field(default_factory=dict)  # the policy's own memory (e.g. the last sample above threshold)
    capped: list[list[float]] = field(default_factory=list)  # [start, end] of each capped stint


@dataclass
class FacilityRun:
    """The hierarchy of a run and its manager's record: events (time, level, action, sampled power, cap)."""

    policy: str
    control_interval_s: float
    levels: list[Level]
    events: list[tuple[float, str, str, float, float | None, float | None]] = field(default_factory=list)
    ticks: int = 0
    managed: bool = False  # whether a manager process ran

    def close(self, end: float) -> None:
        """Cut the record at the run's end: a stint still capped ends there, and what the manager did after the
        last request (its final tick may fall past it) is left out."""
        self.events = [e for e in self.events if e[0] <= end]
        for lv in self.levels:
            lv.capped = [[s, end if e is None or e > end else e] for s, e in lv.capped if s <= end]


def build_levels(spec: "FacilityPower", pools: list["PoolInfo"], pool_names: list[str]) -> list[Level]:
    """Rows and racks with their replicas: each rack takes the next replicas of each pool it names, in the
    pool's order (the scenario has checked that every replica is placed once)."""
    first = []
    n = 0
    for p in pools:
        first.append(n)
        n += p.count
    taken = [0] * len(pools)
    levels: list[Level] = []
    for row in spec.rows:
        r_idx = len(levels)
        levels.append(Level(row.name, "row", row.limit_w, [], None))
        for rack in row.racks:
            reps: list[int] = []
            for pool_name, count in rack.replicas.items():
                k = pool_names.index(pool_name)
                reps.extend(range(first[k] + taken[k], first[k] + taken[k] + count))
                taken[k] += count
            levels.append(Level(rack.name, "rack", rack.limit_w, reps, r_idx))
            levels[r_idx].replicas.extend(reps)
    return levels


def _floor_w(evaluator: "ProfileEvaluator") -> float:
    """The lowest cap a load-following policy sets on this device: its min_w, and for the analytic model just
    above the static floor, where the model describes nothing."""
    pc = evaluator.profile.power_cap
    lo = pc.min_w
    if pc.method == "analytic":
        lo = max(lo, pc.static_w + 0.01 * pc.default_w)
    return lo


def needs_manager(spec: "FacilityPower") -> bool:
    """Whether the hierarchy needs a manager process: a policy that caps, and a level with a limit."""
    from dcsim.sim.power_policies import power_policy_class

    limited = any(r.limit_w is not None or any(k.limit_w is not None for k in r.racks) for r in spec.rows)
    return limited and power_policy_class(spec.policy.name).caps


def start_power_management(sc: "Scenario", scenario_file: str | Path | None, env: FacilityEnvironment,
                           pools: list["PoolInfo"], replicas: list["Replica"], source: simpy.Process,
                           scaler=None) -> FacilityRun:
    """The scenario's hierarchy, checked against the pools' profiles; with a policy that caps, each replica gets
    an evaluator of its own and the manager process starts."""
    spec = sc.facility.power
    names = [p.name for p in sc.fleet]
    levels = build_levels(spec, pools, names)
    pol = make_power_policy(spec.policy.name, spec.policy.params)
    run = FacilityRun(spec.policy.name, spec.control_interval_s, levels)
    pool_of = [r.pool for r in replicas]
    limited = [lv for lv in levels if lv.limit_w is not None]
    if not needs_manager(spec):
        return run
    under = sorted({pool_of[i] for lv in limited for i in lv.replicas})
    for k in under:
        _check_cappable(pol, pools[k], sc, scenario_file, k)
    for lv in levels:
        gpus = [pools[pool_of[i]].evaluator.gpus for i in lv.replicas]
        lv.gpus = sum(gpus)
        if lv.limit_w is None:
            continue
        lv.default_w = sum(pools[pool_of[i]].profile.power_cap.default_w * g for i, g in zip(lv.replicas, gpus))
        lv.floor_fraction = max(_floor_w(pools[pool_of[i]].evaluator) / pools[pool_of[i]].profile.power_cap.default_w
                                for i in lv.replicas)
    for rep in replicas:
        # its own, so that its cap can change alone (before its process first runs)
        rep.evaluator = copy.copy(rep.evaluator)
        rep.managed = True
    run.managed = True
    env.disown(env.process(_manage(env, run, pol, pools, replicas, source, scaler)))
    return run


def _check_cappable(pol: PowerPolicy, pool: "PoolInfo", sc: "Scenario", scenario_file: str | Path | None,
                    k: int) -> None:
    """Refuse a pool the policy could cap whose profile has no power-cap model, or a cap outside its range."""
    where = "facility.power.policy.name"
    if pool.clocks is not None:
        raise UserError(f"policy {pol.name!r} may cap the GPUs of pool {pool.name!r}, whose SM clock is locked "
                        f"(fleet.{k}.clock_mhz); a cap and a locked clock together are not modelled: unlock the "
                        "clock or use policy 'none'", scenario_file, where)
    pc = pool.profile.power_cap
    if pc is None:
        raise UserError(f"policy {pol.name!r} may cap the GPUs of pool {pool.name!r}, but its profile "
                        f"{Path(pool.profile_path).name} has no power_cap section (the model of how a cap changes "
                        "its speed and power); use a profile with one, or policy 'none'", scenario_file, where)
    for cap in pol.caps_tried():
        w = cap.for_device(pc)
        param = "cap_w" if cap.watts is not None else "cap_fraction"
        try:
            pool.profile.evaluator(w, pool.profile_path)
        except UserError as e:
            raise UserError(f"{e.reason} (pool {pool.name!r}, profile {Path(pool.profile_path).name})",
                            scenario_file, f"facility.power.policy.{param}") from None


def _draw(rep: "Replica", idle_w: float, now: float) -> float:
    """A replica's device and host watts at `now`: its step in progress at that step's mean power, else idle."""
    c = rep.current
    if c is not None and c[1] > c[0]:
        return (c[2] + c[3]) / (c[1] - c[0])
    return idle_w


def _manage(env: FacilityEnvironment, run: FacilityRun, pol: PowerPolicy, pools: list["PoolInfo"],
            replicas: list["Replica"], source: simpy.Process, scaler=None) -> Generator:
    """The power manager: every control interval, sample each limited level, let the policy decide its cap,
    and carry changed caps to the replicas at their next step boundary. Ends once every request has arrived
    and every replica is idle (nothing can draw more after that)."""
    dt = run.control_interval_s
    limited = [lv for lv in run.levels if lv.limit_w is not None]
    pool_of = [r.pool for r in replicas]
    idle = []
    for r in replicas:
        p = pools[r.pool]
        evaluator = p.evaluator
        idle.append((evaluator.idle_w if p.idle == "serving" else evaluator.deep_idle_w) + evaluator.host_idle_w)
    # the limited levels above each replica
    above: list[list[Level]] = [[] for _ in replicas]
    for lv in limited:
        for i in lv.replicas:
            above[i].append(lv)
    applied: list[float | None] = [None] * len(replicas)  # the facility cap each replica runs under
    templates: dict[tuple[int, float | None], ProfileEvaluator] = {}

    def template(k: int, w: float | None) -> ProfileEvaluator:
        key = (k, w)
        t = templates.get(key)
        if t is None:
            p = pools[k]
            t = templates[key] = p.evaluator if w is None else p.profile.evaluator(w, p.profile_path)
        return t

    def wanted(i: int) -> float | None:
        """The per-device cap replica i should run under: the lowest its capped levels ask, within its device's
        range, and never above the pool's own fixed cap."""
        w = math.inf
        p = pools[pool_of[i]]
        for lv in above[i]:
            if lv.cap is not None:
                pc = p.profile.power_cap
                c = lv.cap.for_device(pc)
                if lv.cap.watts is None:  # a load-following share: clamped to what the device can do
                    c = min(max(c, _floor_w(p.evaluator)), pc.max_w)
                w = min(w, c)
        if w == math.inf or (p.cap_w is not None and w >= p.cap_w):
            return None
        return w

    while True:
        now = env.now
        run.ticks += 1
        draws = [_draw(r, idle[i], now) for i, r in enumerate(replicas)]
        if scaler is not None:  # a replica off or loading draws that, not its idle or a step
            for i, r in enumerate(replicas):
                w = scaler.draw_w(r)
                if w is not None:
                    draws[i] = w
        changed = False
        for lv in limited:
            pw = math.fsum(draws[i] for i in lv.replicas)
            new = pol.decide(now, lv, pw)
            if new == lv.cap:
                continue
            action = "cap" if lv.cap is None else "release" if new is None else "adjust"
            if action == "cap":
                lv.capped.append([now, None])
            elif action == "release":
                lv.capped[-1][1] = now
            run.events.append((now, lv.name, action, pw, None if new is None else new.watts,
                               None if new is None else new.fraction))
            lv.cap = new
            changed = True
        if changed:
            moves = []
            for i, rep in enumerate(replicas):
                w = wanted(i)
                if w != applied[i]:
                    moves.append((i, w))
                    if rep.decoding:  # end its decode run after the step in progress, at the old cap
                        rep.decoding = False
                        env.disown(rep.proc.target)  # the run's own end, which nobody waits for now
                        rep.proc.interrupt()
            if moves:
                yield env.tick(0)  # the interrupted runs are cut (at the old cap) before the caps change
                for i, w in moves:
                    replicas[i].evaluator.adopt_cap(template(pool_of[i], w))
                    applied[i] = w
        if env.peek() == math.inf or (not source.is_alive and (scaler is None or scaler.drained()) and all(
                r.outstanding == 0 and r.current is None for r in replicas)):
            return
        yield env.tick(dt)
