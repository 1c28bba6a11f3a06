"""`static`: gather a batch, run it padded as one `generate` call; all of its requests finish together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator

from dcsim.sim.batching.base import policy, prefill_then_decode, with_cold
from dcsim.sim.batching.limits import Batches

if TYPE_CHECKING:
    from dcsim.sim.replica import Replica


@policy("static")
class Static(Batches):
    """Gather up to max_batch requests or wait max_wait_s after the first, then run them padded to the longest
    prompt and the longest output as one batch (as HF generate does)."""

    cold_shapes = True

    def run(self, rep: "Replica") -> Generator:
        env, evaluator, log, q, b = rep.env, rep.evaluator, rep.log, rep.queue, self.params
        cold = rep.shapes is not None  # a replica that starts cold pays each shape the first time it meets it
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
                if (len(batch) + 1) * (mi + mo) > evaluator.kv_capacity:
                    break
                batch.append(q.popleft())
                max_in, max_out = mi, mo
            n = len(batch)
            now = env.now
            pf = evaluator.prefill(n * max_in, float(n) * max_in * max_in, n)
            ks = kj = 0.0
            if cold:  # the padded shape and its KV lengths, the first time this replica meets them
                pf, ks, kj = with_cold(rep, pf, n, max_in, max_in + 1, max_out - 1)
            if rep.managed:  # a cap may change mid-batch: prefill, then decode runs cut at step boundaries
                t_first, end, e, h = yield from prefill_then_decode(rep, now, pf, n, n * (max_in + 1), max_out - 1,
                                                                    (ks, kj))
            else:  # one event: the prefill and every decode step at the cap the batch began with
                t_pf, w_pf, h_pf = pf
                t_dc, e_dc, h_dc = evaluator.decode_run(n, n * (max_in + 1), max_out - 1)
                t = t_pf + t_dc + ks
                e = t_pf * w_pf + e_dc + kj
                h = t_pf * h_pf + h_dc + ks * h_pf
                rep.current = (now, now + t, e, h)
                yield env.timeout(t)
                rep.current = None
                end = now + t
                t_first = now + t_pf
                rep.segment(now, end, e, h)
            for r in batch:
                log.start[r.rid] = now
                log.first[r.rid] = t_first
                r.energy = e / n
                r.host = h / n
                rep.complete(r, end)
