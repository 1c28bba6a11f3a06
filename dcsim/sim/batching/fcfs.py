"""`fcfs`: one request at a time, in arrival order, as the published sweeps measured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator

from dcsim.sim.batching.base import Policy, policy, prefill_then_decode, with_cold
from dcsim.sim.batching.limits import Limits

if TYPE_CHECKING:
    from dcsim.sim.replica import Replica


@policy("fcfs")
class Fcfs(Policy):
    """Prefill, then every decode step of the request alone; the next request starts when it ends (one event;
    under a power manager, a prefill and decode runs a cap change cuts at a step boundary)."""

    Params = Limits
    cold_shapes = True

    def run(self, rep: "Replica") -> Generator:
        env, evaluator, log, q = rep.env, rep.evaluator, rep.log, rep.queue
        timeout, prefill, decode_run, segment, complete = (env.timeout, evaluator.prefill, evaluator.decode_run,
                                                            rep.segment, rep.complete)
        start, first = log.start, log.first
        cold = rep.shapes is not None  # a replica that starts cold pays each shape the first time it meets it
        while True:
            if not q:
                yield rep.idle_wait()
                continue
            r = q.popleft()
            now = env.now
            n_in = r.n_in
            start[r.rid] = now
            pf = prefill(n_in, float(n_in) * n_in, 1)
            ks = kj = 0.0
            if cold:
                pf, ks, kj = with_cold(rep, pf, 1, n_in, n_in + 1, r.n_out - 1)
            if rep.managed:  # a cap may change mid-request: prefill, then decode runs cut at step boundaries
                first[r.rid], end, r.energy, r.host = yield from prefill_then_decode(rep, now, pf, 1, n_in + 1,
                                                                                     r.n_out - 1, (ks, kj))
            else:  # one event: the prefill and every decode step at the cap the request began with
                t_pf, w_pf, h_pf = pf
                t_dc, e_dc, h_dc = decode_run(1, n_in + 1, r.n_out - 1)
                t = t_pf + t_dc + ks
                end = now + t
                r.energy = e = t_pf * w_pf + e_dc + kj
                r.host = h = t_pf * h_pf + h_dc + ks * h_pf
                first[r.rid] = now + t_pf
                rep.current = (now, end, e, h)
                yield timeout(t)
                rep.current = None
                segment(now, end, e, h)
            complete(r, end)
