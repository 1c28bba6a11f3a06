"""`continuous`: iteration-level batching in its 2023 form (whole-prompt prefill steps, full KV reserved at
admission, no preemption). Kept as it was for the committed comparisons; `paged` is the modern engine.

Where arrivals cut decode runs without an interrupt (replica.cut_runs), a prefill and the decode run after it are
one event, and an arrival that joins a run works out where it joins (the end of the step in progress) and plans
the prefill and the run after it there, in the same event: a plan (`_plan`) is a prefill over [p_t1, p_t2] and a
decode run from p_t2, either part absent, whose effects are applied as the process reaches them. A plan is one
event only where that gives the same results as its steps one by one (`_plan`'s checks); else it is the steps."""

from __future__ import annotations

import math
from array import array
from functools import reduce
from heapq import heappop, heappush
from itertools import islice
from operator import add
from typing import TYPE_CHECKING, Generator

import numpy as np
import simpy

from dcsim.sim.batching.base import arrival_at, decode_run_events, policy
from dcsim.sim.batching.limits import Batches, Limits

if TYPE_CHECKING:
    from dcsim.profiles.profile import ProfileEvaluator
    from dcsim.sim.replica import Replica
    from dcsim.sim.requests import Request


@policy("continuous")
class Continuous(Batches):
    """Between decode steps, admit waiting requests while the batch and KV memory allow; newcomers' prefill runs
    as one step (decodes wait for it), then all decode together. KV for a request's prompt and full output is
    reserved at admission (no preemption)."""

    plans = True

    def __init__(self, params: Limits) -> None:
        super().__init__(params)
        self.kv_used = 0  # KV tokens reserved by the running batch
        self.running_n = 0  # sequences in the running batch
        # the running batch (cut mode), in running totals so that no event walks it: decode steps taken (D), a
        # heap of (the step D at which each finishes, admission number, request), and each run's energy per member
        # (runs_e, runs_h; a member's own index into them, from its first run, in its `st`, less `base`); a member's
        # `remaining` holds its finishing step
        self.heap: list[tuple[int, int, Request]] = []
        self.D = 0
        self.seq = 0
        self.runs_e = array("d")
        self.runs_h = array("d")
        self.base = 0
        self.trim_at = 512
        self.ctx = 0  # KV tokens held by the running batch
        # the plan in progress (cut mode): admitted requests whose prefill effects are pending (or None), their
        # (tokens, t, w, h), the prefill's start and end, the decode run from p_t2 (n, ctx, k, steps, t, e, h; or
        # None) and the plan's end; p_on: arrivals are judged against the plan's phases (admits)
        self.p_admit: list[Request] | None = None
        self.p_pf: tuple[int, float, float, float] = (0, 0.0, 0.0, 0.0)
        self.p_t1 = self.p_t2 = self.p_end = 0.0
        self.p_run: tuple[int, int, int, int, float, float, float] | None = None
        self.p_on = False

    def admits(self, rep: "Replica", r: "Request") -> bool:
        if not self._can_admit(rep, r, self.running_n):
            return False
        if not self.p_on:
            return True
        now = rep.env.now
        if now >= self.p_t2:  # in the decode run: it joins after the step in progress
            return self.p_run is not None
        if len(rep.queue) != 1:  # it waits behind a request the admission leaves
            return False
        if now < self.p_t1:  # before the prefill: it may join its admission (planned again)
            return True
        return self.p_run is not None  # in the prefill: admitted at its end, ahead of the decode run

    def _can_admit(self, rep: "Replica", r: "Request", running: int) -> bool:
        return running < self.params.max_batch and self.kv_used + r.n_in + r.n_out <= rep.evaluator.kv_capacity

    def run(self, rep: "Replica") -> Generator:
        while not rep.queue:
            yield rep.idle_wait()
        if rep.cuts is None:  # arrivals (or a power manager) interrupt decode runs
            yield from self._run_interrupted(rep)
        rep.replan = lambda now: self._replan(rep, now, False)
        env, q, heap, decode_run = rep.env, rep.queue, self.heap, rep.evaluator.decode_run
        while True:
            if not q:
                if not heap:
                    yield rep.idle_wait()
                    continue
                # nobody waits: a decode run to the first finish (_plan's, without an admission to try)
                now = env.now
                n, ctx = len(heap), self.ctx
                k = heap[0][0] - self.D
                run = self.p_run = (n, ctx, k, k, *decode_run(n, ctx, k))
                delay = run[4]
                end = now + delay
                self.p_admit = None
                self.p_t1 = self.p_t2 = now
                self.p_end = end
                self.running_n = n
                self.p_on = rep.decoding = True
                rep.current = (now, end, run[5], run[6])
            else:
                now = env.now
                delay = self._plan(rep, now, now, self.ctx, True)
                if delay is None:
                    delay = self._plan(rep, now, now, self.ctx, False)
            tmo = env.timeout(delay)
            while True:
                try:
                    yield tmo
                    break
                except simpy.Interrupt:  # a cut whose step in progress ends now (replica.cut_runs)
                    delay = self._replan(rep, env.now, True)
                    if not delay:
                        break
                    tmo = env.timeout(delay)
            rep.decoding = self.p_on = False
            rep.current = None
            self._settle(rep)

    # ---- plans (cut mode) -------------------------------------------------------------------
    def _plan(self, rep: "Replica", t0: float, t1: float, ctx: int, merge: bool,
              cut: tuple[float, int, int, float, float, float] | None = None) -> float | None:
        """Plan at t0 the admission and prefill the process would make at t1 (>= t0), from `ctx` KV tokens, and
        the decode run after it where nothing else would be admitted first (`merge` False: the prefill alone);
        commit it and return the delay to its end, or None where one event would not give the steps' results
        (a prefill or run that a horizon or an arrival at one of its step boundaries would see, or a delay not
        exact in floats). `cut`: the decode run cut at t1 (start, n, steps, t, e, h), applied on commit."""
        evaluator, q, heap = rep.evaluator, rep.queue, self.heap
        c = len(heap)
        cap, mb, max_tok = evaluator.kv_capacity, self.params.max_batch, self.params.max_batched_tokens
        m = tokens = sq = grow = 0
        k = 1 << 62
        kv = self.kv_used
        for r in q:  # the admission loop of the process, without taking anyone yet
            if not (c + m < mb and kv + r.n_in + r.n_out <= cap):
                break
            if max_tok is not None and m and tokens + r.n_in > max_tok:
                break
            m += 1
            tokens += r.n_in
            sq += r.n_in * r.n_in
            grow += r.n_in + 1
            kv += r.n_in + r.n_out
            if r.n_out - 1 < k:
                k = r.n_out - 1
        run = None
        n2 = c + m
        # the first to finish among the running, its steps less those of the cut run not yet in D
        first = heap[0][0] - self.D - (0 if cut is None else cut[2]) if heap else k
        if m:
            admit = list(islice(q, m)) if m > 1 else [q[0]]
            pf = evaluator.prefill(tokens, float(sq), m)
            t2 = end = t1 + pf[0]
            if merge and k > 0:
                nxt = q[m] if len(q) > m else None
                if nxt is None or not (n2 < mb and kv + nxt.n_in + nxt.n_out <= cap):
                    if first < k:
                        k = first
                    ctx2 = ctx + grow
                    run = (n2, ctx2, k, k, *evaluator.decode_run(n2, ctx2, k))
                    end = t2 + run[4]
        else:
            if not heap:
                return None
            admit = None
            pf = (0.0, 0.0, 0.0)
            t2 = t1
            k = first
            run = (c, ctx, k, k, *evaluator.decode_run(c, ctx, k))
            end = t2 + run[4]
        if t0 < t1 or (admit is not None and run is not None):  # not the process's own next step: checks
            if not (end < rep.horizon and t0 >= 0.5 * t2 and t0 + (end - t0) == end):
                return None
            if arrival_at(rep, t0, t1, t2, end):
                return None
        if cut is not None:
            self._decoded(rep, *cut)
        for _ in range(m):
            q.popleft()
        self.kv_used = kv
        self.p_admit = admit
        self.p_pf = (tokens, *pf)
        self.p_t1, self.p_t2, self.p_end = t1, t2, end
        self.p_run = run
        self.running_n = n2
        self.p_on = rep.decoding = run is not None or t0 < t1
        if t0 == t1 and (admit is None or run is None):  # the process's own step: in progress, as it logs one
            if admit is not None:
                rep.current = (t1, t2, pf[0] * pf[1], pf[0] * pf[2])
                return pf[0]
            rep.current = (t2, end, run[5], run[6])
            return run[4]
        rep.current = None
        return end - t0

    def _replan(self, rep: "Replica", now: float, interrupted: bool) -> float | None:
        """An arrival at `now` that joins the plan (admits): plan again and return the delay to the new plan's end
        (0: the process goes on now, `interrupted`), or None where the step in progress ends now (an interrupt)."""
        self.p_on = False
        if now < self.p_t1:  # before the prefill: admitted again, with the newcomer
            admit = self.p_admit
            if admit is not None:
                rep.queue.extendleft(reversed(admit))
                self.kv_used -= sum(r.n_in + r.n_out for r in admit)
                self.p_admit = None
            self.running_n = len(self.heap)
            delay = self._plan(rep, now, self.p_t1, self.ctx, True)
            if delay is not None:
                return delay
            self.p_run = None  # wake at the prefill's start, as the cut did, and admit then
            self.p_end = self.p_t1
            return self.p_t1 - now
        if now < self.p_t2:  # in the prefill: the decode run after it is dropped for the newcomer's prefill
            self.p_run = None
            self.p_end = self.p_t2
            return self.p_t2 - now
        self._prefilled(rep)
        n, ctx, k = self.p_run[:3]
        t0 = self.p_t2
        evaluator = rep.evaluator
        steps, (t, e, h) = steps_covering_exact(evaluator, n, ctx, k, now - t0)
        rest = t0 + t - now
        if rest <= 0:
            if not interrupted:
                return None
            self.p_run = None
            self._decoded(rep, t0, n, steps, t, e, h)
            return 0.0
        t1 = now + rest
        if steps < k:
            delay = self._plan(rep, now, t1, self.ctx + steps * n, True, (t0, n, steps, t, e, h))
            if delay is not None:
                return delay
        self.p_run = (n, ctx, k, steps, t, e, h)  # wake at the cut step's end
        self.p_end = t1
        rep.current = (t0, t0 + t, e, h)
        return rest

    def _settle(self, rep: "Replica") -> None:
        """Apply what the plan has not applied yet: its prefill, then its decode run."""
        self._prefilled(rep)
        run = self.p_run
        if run is not None:
            self.p_run = None
            n, _, _, steps, t, e, h = run
            self._decoded(rep, self.p_t2, n, steps, t, e, h)

    def _prefilled(self, rep: "Replica") -> None:
        """The plan's prefill, done: log it and add its requests to the running batch."""
        admit = self.p_admit
        if admit is None:
            return
        self.p_admit = None
        tokens, t, w, h = self.p_pf
        self._admitted(rep, admit, tokens, self.p_t1, self.p_t2, t, w, h)

    def _admitted(self, rep: "Replica", admit: list["Request"], tokens: int, now: float, end: float, t: float,
                  w: float, h: float) -> None:
        """A prefill of `admit` from now to end (t s at w, h W) done: its segment and its requests' first tokens."""
        rep.segment(now, end, t * w, t * h)
        log, heap, D = rep.log, self.heap, self.D
        j = self.base + len(self.runs_e)  # its first run's index
        start, first = log.start, log.first
        for r in admit:
            share = r.n_in / tokens
            r.energy += t * w * share
            r.host += t * h * share
            start[r.rid] = now
            first[r.rid] = end
            if r.n_out == 1:
                self._retire(rep, r, end)
            else:
                self.ctx += r.n_in + 1
                r.remaining = D + r.n_out - 1
                r.st = j
                heappush(heap, (r.remaining, self.seq, r))
                self.seq += 1

    def _decoded(self, rep: "Replica", now: float, n: int, steps: int, t_run: float, e_run: float,
                 h_run: float) -> None:
        """A decode run of n sequences from now, `steps` steps (t_run s, e_run and h_run J) done: its segment, each
        member's share, and the requests it finished."""
        end = now + t_run
        rep.segment(now, end, e_run, h_run)
        runs_e, runs_h = self.runs_e, self.runs_h
        runs_e.append(e_run / n)
        runs_h.append(h_run / n)
        self.ctx += steps * n
        D = self.D = self.D + steps
        heap = self.heap
        base = self.base
        while heap and heap[0][0] <= D:
            r = heappop(heap)[2]
            self.ctx -= r.n_in + r.n_out
            j = r.st - base
            r.energy = in_order(r.energy, runs_e[j:])  # its shares in order, as one sum per run gives
            r.host = in_order(r.host, runs_h[j:])
            r.st = None
            self._retire(rep, r, end)
        self.running_n = len(heap)
        if len(runs_e) > self.trim_at:  # every 512 runs, those before every member's first are dropped
            j = min(x[2].st for x in heap) - base if heap else len(runs_e)
            if j >= 256:
                del runs_e[:j]
                del runs_h[:j]
                self.base += j
            self.trim_at = len(runs_e) + 512

    # ---- arrivals interrupt decode runs -----------------------------------------------------
    def _run_interrupted(self, rep: "Replica") -> Generator:
        """The process where arrivals (or a power manager) interrupt its decode runs: a prefill step, then decode
        runs cut at a step boundary."""
        env, evaluator, log, q = rep.env, rep.evaluator, rep.log, rep.queue
        running: list[Request] = []
        ctx = 0  # KV tokens held by the running batch
        max_tok = self.params.max_batched_tokens
        while True:
            if not running and not q:
                yield rep.idle_wait()
                continue
            # -- admission and prefill ----------------------------------------------------------
            admit: list[Request] = []
            tokens = 0
            while q and self._can_admit(rep, q[0], len(running) + len(admit)):
                if max_tok is not None and admit and tokens + q[0].n_in > max_tok:
                    break
                r = q.popleft()
                admit.append(r)
                tokens += r.n_in
                self.kv_used += r.n_in + r.n_out
            if admit:
                now = env.now
                sq = float(sum(r.n_in * r.n_in for r in admit))
                t, w, h = evaluator.prefill(tokens, sq, len(admit))
                rep.current = (now, now + t, t * w, t * h)
                yield env.timeout(t)
                rep.current = None
                end = now + t
                rep.segment(now, end, t * w, t * h)
                for r in admit:
                    share = r.n_in / tokens
                    r.energy += t * w * share
                    r.host += t * h * share
                    log.start[r.rid] = now
                    log.first[r.rid] = end
                    r.remaining = r.n_out - 1
                    ctx += r.n_in + 1
                    if r.remaining == 0:
                        self._retire(rep, r, end)
                        ctx -= r.n_in + 1
                    else:
                        running.append(r)
                continue
            # -- a run of decode steps while membership is unchanged ----------------------------
            n = self.running_n = len(running)
            k = min(r.remaining for r in running)
            now = env.now

            def cut(elapsed: float, n: int = n, ctx: int = ctx, k: int = k) -> tuple[int, tuple[float, float, float]]:
                steps = steps_covering(evaluator, n, ctx, k, elapsed)  # a newcomer joins after the step in progress
                return steps, evaluator.decode_run(n, ctx, steps)

            steps, t_run, e_run, h_run = yield from decode_run_events(rep, now, evaluator.decode_run(n, ctx, k), k, cut)
            end = now + t_run
            e_each, h_each = e_run / n, h_run / n
            ctx += steps * n
            still: list[Request] = []
            for r in running:
                r.energy += e_each
                r.host += h_each
                r.remaining -= steps
                if r.remaining == 0:
                    ctx -= r.n_in + r.n_out
                    self._retire(rep, r, end)
                else:
                    still.append(r)
            running = still
            self.running_n = len(running)

    def _retire(self, rep: "Replica", r: "Request", now: float) -> None:
        self.kv_used -= r.n_in + r.n_out
        rep.complete(r, now)


def in_order(x: float, terms: array) -> float:
    """x + terms[0] + terms[1] + ..., added left to right (as x += t for each term gives): in C, by numpy's
    accumulate (sequential, unlike its sum) where the terms are many."""
    if len(terms) < 64:
        return reduce(add, terms, x)
    a = np.frombuffer(terms, dtype=np.float64)
    a[0] += x
    return float(np.add.accumulate(a)[-1])


def steps_covering_exact(evaluator: "ProfileEvaluator", n: int, ctx: float, k: int,
                         elapsed: float) -> tuple[int, tuple[float, float, float]]:
    """steps_covering's answer (a run's time increases with its steps) and that run, from a closed-form guess
    checked and moved with decode_time (decode_run's own sum): two times and one run evaluated, not a bisection's."""
    a, b, c, _ = evaluator.decode_time_terms
    if evaluator.decode_per_seq:
        c = evaluator.per_kv_token_s(n)
    t0 = a + b * n + c * ctx
    dt = c * n  # step j takes t0 + dt * j: s steps take s * t0 + dt * s * (s - 1) / 2
    if dt > 1e-15 * t0:
        g = (-(t0 - dt / 2) + math.sqrt((t0 - dt / 2) ** 2 + 2 * dt * elapsed)) / dt
    else:
        g = elapsed / t0 if t0 > 0 else 1.0
    s = min(k, max(1, math.ceil(g))) if g == g and g < k else k
    time = evaluator.decode_time
    if time(n, ctx, s) >= elapsed:
        while s > 1 and time(n, ctx, s - 1) >= elapsed:
            s -= 1
    else:
        while s < k:
            s += 1
            if time(n, ctx, s) >= elapsed:
                break
    return s, evaluator.decode_run(n, ctx, s)


def steps_covering(evaluator: "ProfileEvaluator", n: int, ctx: float, k: int, elapsed: float, **kw: float) -> int:
    """Fewest decode steps (1..k) whose total time reaches `elapsed`: the step in progress completes."""
    lo, hi = 1, k
    while lo < hi:
        mid = (lo + hi) // 2
        if evaluator.decode_run(n, ctx, mid, **kw)[0] >= elapsed:
            hi = mid
        else:
            lo = mid + 1
    return lo
