"""A replica: one model instance on its device(s), with a queue and a batching policy.

The policy (dcsim/sim/batching/) is a SimPy generator, one process per replica. A process yields one event per
change of state (a prefill step, a run of decode steps whose batch membership does not change, an idle wait),
never one per output token.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from typing import Callable

import simpy

from dcsim.profiles.profile import ProfileEvaluator
from dcsim.scenario import Batching
from dcsim.sim.batching import make_policy
from dcsim.sim.requests import Request, RequestLog
from dcsim.sim.shapes import ColdCosts


class Replica:
    """Queue, outstanding-work counters the routers read, and a log of busy segments for energy."""

    __slots__ = (
        "env", "index", "pool", "evaluator", "batching", "policy", "queue", "outstanding", "backlog_s", "log",
        "segment_start_s", "segment_end_s", "segment_device_j", "segment_host_j", "current", "wake", "proc", "decoding",
        "parallel", "busy_s",
        "watchers", "cuts", "run_t0", "run_cut", "cut", "managed", "replan", "arrivals", "arrival_i", "horizon",
        "shapes",
    )

    def __init__(self, env: simpy.Environment, index: int, pool: int, evaluator: ProfileEvaluator,
                 batching: Batching, log: RequestLog, cold: ColdCosts | None = None) -> None:
        self.env = env
        self.index = index
        self.pool = pool
        self.evaluator = evaluator
        self.batching = batching
        self.policy = make_policy(batching.policy, batching.params)
        self.log = log
        self.queue: deque[Request] = deque()
        self.outstanding = 0  # assigned and not finished
        self.backlog_s = 0.0  # predicted isolated service seconds of outstanding requests
        # told after every change of the two (submit, complete): routers' indexes (dcsim/sim/replica_index.py)
        self.watchers: list[Callable[[Replica], None]] = []
        self.parallel = self.policy.parallel
        self.segment_start_s = array("d")
        self.segment_end_s = array("d")
        self.segment_device_j = array("d")
        self.segment_host_j = array("d")
        self.current: tuple[float, float, float, float] | None = None  # segment in progress
        self.wake: simpy.Event | None = None
        self.decoding = False  # in a run of decode steps that an admissible arrival interrupts
        self.busy_s = 0.0
        # arrivals that cut this replica's decode run, shared by the fleet and settled by the arrival process
        # (cut_runs) before it next waits; None: an arrival interrupts the run (SimPy's Process.interrupt)
        self.cuts: list[Replica] | None = None
        # under a power manager, whose cap changes reach fcfs and static requests at their next decode step
        self.managed = False
        self.run_t0 = 0.0  # the decode run in progress: its start and cut(elapsed) (decode_run_events)
        self.run_cut: Callable | None = None
        self.cut: tuple[int, float, float, float] | None = None  # the run once cut_runs cut it: steps, t, e, h
        # a policy that plans its next event itself where an arrival cuts it: replan(now) makes the plan again
        # and returns the delay to its end, or None where the process must resume now (an interrupt)
        self.replan: Callable[[float], float | None] | None = None
        self.arrivals: list[float] = []  # where a policy plans (Policy.plans): the times arrivals are handled at
        self.arrival_i = 0  # where the replica's policy last searched them
        self.horizon = math.inf  # the run's horizon, if any
        # a pool that starts cold: the shapes this replica has run, with their first-time prices (dcsim/sim/shapes.py)
        self.shapes = None if cold is None else cold.memory()
        self.proc = env.process(self.policy.run(self))

    # ---- called by the dispatcher -------------------------------------------------------------
    def submit(self, r: Request) -> None:
        self.queue.append(r)
        self.outstanding += 1
        self.backlog_s += r.pred
        for tell in self.watchers:
            tell(self)
        w = self.wake
        if w is not None:
            self.wake = None
            w.succeed()
        elif self.decoding and self.policy.admits(self, r):
            self.decoding = False
            if self.cuts is None:
                self.proc.interrupt()
            else:
                self.cuts.append(self)

    # ---- bookkeeping shared by the policies ---------------------------------------------------
    def segment(self, t0: float, t1: float, e: float, h: float) -> None:
        self.segment_start_s.append(t0)
        self.segment_end_s.append(t1)
        self.segment_device_j.append(e)
        self.segment_host_j.append(h)
        self.busy_s += t1 - t0

    def complete(self, r: Request, now: float) -> None:
        self.outstanding -= 1
        self.backlog_s -= r.pred
        if self.outstanding == 0:
            self.backlog_s = 0.0
        for tell in self.watchers:
            tell(self)
        self.log.finish(r, now)

    def idle_wait(self) -> simpy.Event:
        self.wake = self.env.event()
        return self.wake


def cut_runs(env: simpy.Environment, cuts: list[Replica]) -> None:
    """End the decode runs that arrivals at this instant cut, each after its step in progress, as an interrupt
    would but without one: the run's process is moved from its run's end onto a timeout at the cut step's end.
    Called by the arrival process after it scheduled its next arrival, so that every event is scheduled in the
    order Process.interrupt gives. A cut that ends now needs its process resumed now: that one, and every cut
    after it in the list, still goes through Process.interrupt (the same order again)."""
    now = env.now
    interrupt = False
    for rep in cuts:
        replan = rep.replan
        if replan is not None:  # the policy makes its plan again; the process moves onto the plan's end
            rest = replan(now)
            if rest is not None:
                _move(env, rep.proc, rest)
                continue
            interrupt = True
        elif not interrupt:
            t0 = rep.run_t0
            steps, (t, e, h) = rep.run_cut(now - t0)
            rest = t0 + t - now
            if rest > 0:
                rep.current = (t0, t0 + t, e, h)
                rep.cut = (steps, t, e, h)
                _move(env, rep.proc, rest)
                continue
            interrupt = True
        rep.proc.interrupt()
    cuts.clear()


def _move(env: simpy.Environment, proc: simpy.Process, delay: float) -> None:
    """Move a waiting process from its target onto a timeout `delay` from now."""
    old = proc._target  # SimPy's own: Process.interrupt detaches a process from its target so
    old.callbacks.remove(proc._resume)
    tmo = env.timeout(delay)
    tmo.callbacks.append(proc._resume)
    proc._target = tmo


def predicted_service_s(evaluator: ProfileEvaluator, n_in: int, n_out: int) -> float:
    """Isolated (batch 1) service time of a request: what routers use to predict work."""
    return evaluator.served_alone(n_in, n_out)[0]
