"""`continuous`: iteration-level batching in its 2023 form (whole-prompt prefill steps, full KV reserved at
admission, no preemption). Kept as it was for the committed comparisons; `paged` is the modern engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator

from dcsim.sim.batching.base import decode_run_events, policy
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

    def __init__(self, params: Limits) -> None:
        super().__init__(params)
        self.kv_used = 0  # KV tokens reserved by the running batch
        self.running_n = 0  # sequences in the running batch

    def admits(self, rep: "Replica", r: "Request") -> bool:
        return self._can_admit(rep, r, self.running_n)

    def _can_admit(self, rep: "Replica", r: "Request", running: int) -> bool:
        return running < self.params.max_batch and self.kv_used + r.n_in + r.n_out <= rep.evaluator.kv_capacity

    def run(self, rep: "Replica") -> Generator:
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
