"""A replica: one model instance on its device(s), with a queue and a batching policy.

Each batching policy is a SimPy generator (one process per replica). A process yields one event per
change of state — a prefill step, a run of decode steps whose batch membership does not change, an idle
wait — never one per output token.
"""

from __future__ import annotations

from array import array
from collections import deque
from typing import Callable, Generator

import simpy

from dcsim.profiles.profile import ProfileEvaluator
from dcsim.scenario import Batching
from dcsim.sim.requests import Request, RequestLog


class Replica:
    """Queue, outstanding-work counters the routers read, and a log of busy segments for energy."""

    __slots__ = (
        "env", "index", "pool", "ev", "batching", "queue", "outstanding", "backlog_s", "log",
        "seg_t0", "seg_t1", "seg_e", "seg_h", "current", "wake", "proc", "decoding", "kv_used",
        "parallel", "busy_s", "running_n",
    )

    def __init__(self, env: simpy.Environment, index: int, pool: int, ev: ProfileEvaluator,
                 batching: Batching, log: RequestLog) -> None:
        self.env = env
        self.index = index
        self.pool = pool
        self.ev = ev
        self.batching = batching
        self.log = log
        self.queue: deque[Request] = deque()
        self.outstanding = 0  # assigned and not finished
        self.backlog_s = 0.0  # predicted isolated service seconds of outstanding requests
        self.parallel = 1 if batching.policy == "fcfs" else batching.max_batch
        self.seg_t0 = array("d")
        self.seg_t1 = array("d")
        self.seg_e = array("d")
        self.seg_h = array("d")
        self.current: tuple[float, float, float, float] | None = None  # segment in progress
        self.wake: simpy.Event | None = None
        self.decoding = False
        self.kv_used = 0
        self.busy_s = 0.0
        self.running_n = 0  # continuous: sequences in the running batch
        self.proc = env.process(POLICIES[batching.policy](self))

    # ---- called by the dispatcher -------------------------------------------------------------
    def submit(self, r: Request) -> None:
        self.queue.append(r)
        self.outstanding += 1
        self.backlog_s += r.pred
        w = self.wake
        if w is not None:
            self.wake = None
            w.succeed()
        elif self.decoding and self._can_admit(r, self.running_n):
            self.decoding = False
            self.proc.interrupt()

    def _can_admit(self, r: Request, running: int) -> bool:
        return running < self.batching.max_batch and self.kv_used + r.n_in + r.n_out <= self.ev.kv_capacity

    # ---- bookkeeping shared by the policies ---------------------------------------------------
    def segment(self, t0: float, t1: float, e: float, h: float) -> None:
        self.seg_t0.append(t0)
        self.seg_t1.append(t1)
        self.seg_e.append(e)
        self.seg_h.append(h)
        self.busy_s += t1 - t0

    def complete(self, r: Request, now: float) -> None:
        self.outstanding -= 1
        self.backlog_s -= r.pred
        if self.outstanding == 0:
            self.backlog_s = 0.0
        self.log.finish(r, now)

    def idle_wait(self) -> simpy.Event:
        self.wake = self.env.event()
        return self.wake


def predicted_service_s(ev: ProfileEvaluator, n_in: int, n_out: int) -> float:
    """Isolated (batch 1) service time of a request: what routers use to predict work."""
    t_pf = ev.prefill(n_in, float(n_in) * n_in, 1)[0]
    return t_pf + ev.decode_run(1, n_in + 1, n_out - 1)[0]


def fcfs(rep: Replica) -> Generator:
    """One request at a time, in arrival order, as the published sweeps measured."""
    env, ev, log, q = rep.env, rep.ev, rep.log, rep.queue
    timeout, prefill, decode_run, segment, complete = env.timeout, ev.prefill, ev.decode_run, rep.segment, rep.complete
    start, first = log.start, log.first
    while True:
        if not q:
            yield rep.idle_wait()
            continue
        r = q.popleft()
        now = env.now
        n_in = r.n_in
        t_pf, w_pf, h_pf = prefill(n_in, float(n_in) * n_in, 1)
        t_dc, e_dc, h_dc = decode_run(1, n_in + 1, r.n_out - 1)
        t = t_pf + t_dc
        end = now + t
        r.energy = e = t_pf * w_pf + e_dc
        r.host = h = t_pf * h_pf + h_dc
        start[r.rid] = now
        first[r.rid] = now + t_pf
        rep.current = (now, end, e, h)
        yield timeout(t)
        rep.current = None
        segment(now, end, e, h)
        complete(r, end)


def static(rep: Replica) -> Generator:
    """Gather up to max_batch requests or wait max_wait_s after the first, then run them padded to the
    longest prompt and the longest output as one batch (as HF generate does); all finish together."""
    env, ev, log, q, b = rep.env, rep.ev, rep.log, rep.queue, rep.batching
    while True:
        if not q:
            yield rep.idle_wait()
            continue
        if len(q) < b.max_batch and b.max_wait_s > 0:
            deadline = env.now + b.max_wait_s
            while len(q) < b.max_batch and env.now < deadline:
                wake = rep.idle_wait()
                yield wake | env.timeout(deadline - env.now)
                rep.wake = None
        # take requests in order while the padded batch's KV (n x longest prompt+output) fits
        batch = [q.popleft()]
        max_in, max_out = batch[0].n_in, batch[0].n_out
        while q and len(batch) < b.max_batch:
            mi, mo = max(max_in, q[0].n_in), max(max_out, q[0].n_out)
            if (len(batch) + 1) * (mi + mo) > ev.kv_capacity:
                break
            batch.append(q.popleft())
            max_in, max_out = mi, mo
        n = len(batch)
        now = env.now
        t_pf, w_pf, h_pf = ev.prefill(n * max_in, float(n) * max_in * max_in, n)
        t_dc, e_dc, h_dc = ev.decode_run(n, n * (max_in + 1), max_out - 1)
        t = t_pf + t_dc
        e = t_pf * w_pf + e_dc
        h = t_pf * h_pf + h_dc
        rep.current = (now, now + t, e, h)
        yield env.timeout(t)
        rep.current = None
        end = now + t
        rep.segment(now, end, e, h)
        for r in batch:
            log.start[r.rid] = now
            log.first[r.rid] = now + t_pf
            r.energy = e / n
            r.host = h / n
            rep.complete(r, end)


def continuous(rep: Replica) -> Generator:
    """Iteration-level batching as vLLM schedules it: between decode steps, admit waiting requests while
    the batch and KV memory allow; newcomers' prefill runs as one step (decodes wait for it), then all
    decode together. KV for a request's prompt and full output is reserved at admission (no preemption)."""
    env, ev, log, q, b = rep.env, rep.ev, rep.log, rep.queue, rep.batching
    running: list[Request] = []
    ctx = 0  # KV tokens held by the running batch
    max_tok = b.max_batched_tokens
    while True:
        if not running and not q:
            yield rep.idle_wait()
            continue
        # -- admission and prefill --------------------------------------------------------------
        admit: list[Request] = []
        tokens = 0
        while q and rep._can_admit(q[0], len(running) + len(admit)):
            if max_tok is not None and admit and tokens + q[0].n_in > max_tok:
                break
            r = q.popleft()
            admit.append(r)
            tokens += r.n_in
            rep.kv_used += r.n_in + r.n_out
        if admit:
            now = env.now
            sq = float(sum(r.n_in * r.n_in for r in admit))
            t, w, h = ev.prefill(tokens, sq, len(admit))
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
                    _retire(rep, r, end)
                    ctx -= r.n_in + 1
                else:
                    running.append(r)
            continue
        # -- a run of decode steps while membership is unchanged --------------------------------
        n = rep.running_n = len(running)
        k = min(r.remaining for r in running)
        now = env.now
        t_run, e_run, h_run = ev.decode_run(n, ctx, k)
        steps = k
        rep.decoding = True
        rep.current = (now, now + t_run, e_run, h_run)
        try:
            yield env.timeout(t_run)
        except simpy.Interrupt:
            # a newcomer can join: finish the step in progress, then stop the run there
            steps = _steps_covering(ev, n, ctx, k, env.now - now)
            t_run, e_run, h_run = ev.decode_run(n, ctx, steps)
            rep.current = (now, now + t_run, e_run, h_run)
            rest = now + t_run - env.now
            if rest > 0:
                yield env.timeout(rest)
        rep.decoding = False
        rep.current = None
        end = now + t_run
        rep.segment(now, end, e_run, h_run)
        e_each, h_each = e_run / n, h_run / n
        ctx += steps * n
        still: list[Request] = []
        for r in running:
            r.energy += e_each
            r.host += h_each
            r.remaining -= steps
            if r.remaining == 0:
                ctx -= r.n_in + r.n_out
                _retire(rep, r, end)
            else:
                still.append(r)
        running = still
        rep.running_n = len(running)


def _retire(rep: Replica, r: Request, now: float) -> None:
    rep.kv_used -= r.n_in + r.n_out
    rep.complete(r, now)


def _steps_covering(ev: ProfileEvaluator, n: int, ctx: float, k: int, elapsed: float) -> int:
    """Fewest decode steps (1..k) whose total time reaches `elapsed`: the step in progress completes."""
    lo, hi = 1, k
    while lo < hi:
        mid = (lo + hi) // 2
        if ev.decode_run(n, ctx, mid)[0] >= elapsed:
            hi = mid
        else:
            lo = mid + 1
    return lo


POLICIES: dict[str, Callable[[Replica], Generator]] = {"fcfs": fcfs, "static": static, "continuous": continuous}
