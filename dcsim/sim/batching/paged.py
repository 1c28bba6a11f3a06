"""`paged`: the iteration-level scheduler of modern serving engines, after vLLM's v1 scheduler (vLLM 0.11,
`vllm/v1/core/sched/scheduler.py`): chunked prefill under a per-step token budget with decodes in the same step,
KV memory in fixed-size blocks allocated as tokens arrive, preemption by recompute when blocks run out, prefix
caching, and decode batches padded to the sizes captured as CUDA graphs.

One step, as the engine schedules it:
- Running decodes first, one token each. A decode that needs a new block and finds none preempts the most
  recently admitted running request (its blocks are freed, it goes to the front of the queue and recomputes its
  prefill, of its prompt and the tokens it has generated, when readmitted). In vLLM the partially prefilled
  request is always the last admitted, so "decodes first" is the order the engine's running list gives.
- Then the chunk of a partially prefilled request, then waiting requests in order, fill what is left of the
  budget (`max_num_batched_tokens`), while at most `max_num_seqs` run and their blocks can be allocated. No
  waiting request is admitted in a step that preempted. A waiting request's cached prefix (its full blocks)
  is skipped; a chunk's full blocks are cached when it is scheduled (as vLLM 0.11 caches them when it allocates
  them), so a request admitted later in the same step can reuse them.
- Time and energy: the decode part at the padded batch (`decode_step_s(batch, context)`, context the live KV
  tokens) plus the prefill part (`prefill_s(tokens, tokens_sq, chunks, prefix)`, a chunk from position h to h + p
  adding (h + p)^2 - h^2 to tokens_sq, as a whole prompt adds its square, and h to prefix, the cached tokens it
  reads back); energies add. A profile measured on an
  engine whose decode step already holds its prefills (`engine.step_includes_prefill`, e.g. from a serving
  engine's throughput) is split the other way: a chunk inside a decode step costs its marginal prefill time
  (prefill_s less its fixed part; the step reads the weights once) at the step's power, and each step of n
  decodes gives back the prefill share it held, n / L admissions per step (Little's law, L the mean output
  length) times the mean prefill time per request so far (at most half the step). The steps' total stays the
  measured one; their spread (inter-token latency percentiles) comes back.

While the running set, their chunking and their block needs are fixed (decodes only, nobody waiting who could
join), many steps advance in one event in closed form: the step at which blocks run out follows from a histogram
of the sequences' positions within their last block, the finishing step from a heap, and per-request energy from
a running total per batch member. Cost per event does not grow with the batch.
"""

from __future__ import annotations

import heapq
import math
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from itertools import accumulate
from typing import TYPE_CHECKING, Generator

import simpy
from pydantic import Field, PositiveInt, ValidationInfo, field_validator

from dcsim.sim.batching.base import BatchParams, Policy, arrival_at, decode_run_events, policy
from dcsim.sim.batching.kv_blocks import BlockPool

if TYPE_CHECKING:
    from dcsim.profiles.profile import ProfileEvaluator
    from dcsim.sim.replica import Replica
    from dcsim.sim.requests import Request


def vllm_capture_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default CUDA-graph capture sizes (1, 2, 4, then multiples of 8 to 256 and of 16 to 512), limited
    to max_num_seqs as vLLM limits them to the largest decode batch."""
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, 513, 16)]
    return [s for s in sizes if s <= max_num_seqs]


class PagedParams(BatchParams):
    block_size: PositiveInt = Field(default=16, description="KV tokens per block")
    max_num_seqs: PositiveInt = Field(default=256, description="sequences running at once at most")
    max_num_batched_tokens: PositiveInt = Field(default=8192, description="tokens of one step at most")
    kv_blocks: PositiveInt | None = Field(
        default=None, description="KV blocks in memory (default: the profile's KV capacity / block_size)")
    chunked_prefill: bool = Field(default=True, description="split prompts over steps under the token budget")
    enable_prefix_caching: bool = Field(default=True, description="reuse cached full blocks of shared prefixes")
    cudagraph_batch_sizes: list[PositiveInt] | None = Field(
        default=None, description="decode batch sizes captured as graphs; a decode batch is padded up to the next "
        "one (default: vLLM's list up to max_num_seqs; [] for none)")

    @field_validator("max_num_batched_tokens")
    @classmethod
    def _budget(cls, v: int, info: ValidationInfo) -> int:
        bs, seqs = info.data.get("block_size"), info.data.get("max_num_seqs")
        if bs is not None and v < bs:
            raise ValueError(f"the token budget ({v}) is smaller than one block ({bs} tokens)")
        if seqs is not None and v < seqs:
            raise ValueError(f"the token budget ({v}) must be >= max_num_seqs ({seqs}), so that every running "
                             "decode fits in a step (vLLM requires the same)")
        return v

    @field_validator("cudagraph_batch_sizes")
    @classmethod
    def _sizes(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        seqs = info.data.get("max_num_seqs")
        if v is not None and seqs is not None and v and max(v) > seqs:
            raise ValueError(f"captured batch size {max(v)} is larger than max_num_seqs ({seqs})")
        return v


class Seq:
    """A request's state inside the paged engine."""

    __slots__ = ("target", "done", "gen", "kv", "d0", "key", "shared", "ref", "ckey", "own", "epoch",
                 "e_mark", "h_mark", "decoding", "started")

    def __init__(self, r: "Request") -> None:
        self.target = r.n_in  # tokens to hold before the next output token (the prompt, or prompt + outputs)
        self.done = 0  # tokens computed toward the target (a prefill in progress)
        self.gen = 0  # output tokens produced
        self.kv = 0  # decoding: KV tokens held when decode step d0 began
        self.d0 = 0
        self.key = 0  # decoding: residue class of its last block
        self.shared = 0  # leading blocks that belong to a cache entry
        self.ref = False  # whether it references entry ckey
        self.ckey = r.prefix_id if r.prefix_id >= 0 else -1 - r.rid  # cache entry of its sequence
        self.own = r.prefix_len  # tokens at its start known to be the entry's content
        self.epoch = 0  # invalidates heap entries of a decoding stint that a preemption ended
        self.e_mark = 0.0  # per-member decode energy total when it began decoding
        self.h_mark = 0.0
        self.decoding = False
        self.started = False


@policy("paged")
class Paged(Policy):
    """vLLM-style scheduling with paged KV blocks, chunked prefill, preemption, prefix caching, graph padding."""

    Params = PagedParams
    plans = True

    def __init__(self, params: PagedParams) -> None:
        super().__init__(params)
        p = params
        self.bs = p.block_size
        sizes = vllm_capture_sizes(p.max_num_seqs) if p.cudagraph_batch_sizes is None else p.cudagraph_batch_sizes
        self.sizes = sorted(set(sizes))
        self.pool: BlockPool | None = None
        self.n_run = 0  # running requests (decoding or prefilling)
        self.n_dec = 0  # decoding requests
        self.cnt = [0] * self.bs  # decoding requests by residue key
        self.D = 0  # decode steps taken
        self.S = 0  # sum over decoders of (kv - d0): their KV tokens are S + n_dec * D
        self.cum_e = 0.0  # decode energy per batch member, summed over steps
        self.cum_h = 0.0
        # what the replica reports (RawResults.policy_stats)
        self.preemptions = 0
        self.hit_tokens = 0
        self.query_tokens = 0
        self.steps = 0
        self.pf_sum = 0.0  # step_includes_prefill: marginal prefill seconds charged, over pf_n first prefills
        self.pf_n = 0
        self.out_sum = 0  # and the output lengths of the out_n requests admitted so far
        self.out_n = 0
        self.padded_rows = 0  # graph padding: rows run beyond the real decodes, summed over steps
        # a mixed step planned as one event with the decode run after it: the step's end (the run's start) and
        # the blocks the run's first step takes there, not yet taken (admits counts them taken)
        self.m_t2 = -math.inf
        self.pend = 0
        # decode runs: start, first step's time, last step's time, steps, decodes (8 bytes an entry)
        self.itl_ts, self.itl_t0, self.itl_t1 = array("d"), array("d"), array("d")
        self.itl_k, self.itl_n = array("q"), array("q")

    @property
    def parallel(self) -> int:
        return self.params.max_num_seqs

    @property
    def max_batch(self) -> int:
        return self.params.max_num_seqs

    def total_blocks(self, evaluator: "ProfileEvaluator") -> int:
        return self.params.kv_blocks or evaluator.kv_capacity // self.bs

    def check(self, evaluator: "ProfileEvaluator") -> str | None:
        if evaluator.engine is not None:
            return ("policy 'paged' reads live KV blocks at every step; this profile's engine holds a static KV "
                    "cache (engine.cache_lengths): use a profile of a paged or dynamic-cache engine")
        if self.total_blocks(evaluator) < 1:
            return f"the profile leaves no KV memory for one block of {self.bs} tokens; set kv_blocks"
        return None

    def refuses(self, r: "Request", evaluator: "ProfileEvaluator") -> int:
        """A reject reason code (dcsim.sim.requests.REJECT_REASONS) for a request this engine can never serve."""
        if -(-(r.n_in + r.n_out - 1) // self.bs) > self.total_blocks(evaluator):
            return 1
        if not self.params.chunked_prefill and r.n_in > self.params.max_num_batched_tokens:
            return 4
        return 0

    def stats(self) -> dict[str, float]:
        pool = self.pool
        return {"preemptions": self.preemptions, "prefix_hit_tokens": self.hit_tokens,
                "prefix_query_tokens": self.query_tokens, "steps": self.steps, "padded_rows": self.padded_rows,
                "blocks_evicted": 0 if pool is None else pool.evicted,
                "blocks_private_at_end": 0 if pool is None else pool.private,
                "blocks_cached_at_end": 0 if pool is None else pool.cached,
                "entries_referenced_at_end": 0 if pool is None else sum(e.refs > 0 for e in pool.entries.values())}

    # ---- block arithmetic ---------------------------------------------------------------------
    def new_blocks(self, k: int) -> int:
        """Blocks the decoding requests need over their next k steps (one each time a sequence's KV crosses
        into a new block)."""
        n = self.n_dec
        if k <= 0 or n == 0:
            return 0
        bs = self.bs
        if k == 1:  # the sequences whose last block is full
            return self.cnt[-self.D % bs]
        m, j = divmod(k, bs)
        return m * n + sum(self._by_offset()[:j])

    def _by_offset(self) -> list[int]:
        """Decoding requests by the step (0 .. block_size - 1 from now) at which each next needs a new block."""
        # a sequence of residue key needs one at step (-key - D) % bs: step j is key (r - j) % bs, r = -D % bs
        cnt = self.cnt
        r = -self.D % self.bs
        return cnt[r::-1] + cnt[:r:-1]

    def max_steps(self, free: int) -> int:
        """The most decode steps the decoding requests can take before their block needs exceed `free`."""
        m, rem = divmod(free, self.n_dec)
        # j: the leading steps whose needs together stay within rem (rem < n_dec, so j < block_size)
        return m * self.bs + bisect_right(list(accumulate(self._by_offset())), rem)

    def padded(self, n: int) -> int:
        """The captured graph batch a decode batch of n runs as: the next captured size, or n above them all."""
        sizes = self.sizes
        i = bisect_left(sizes, n)
        return sizes[i] if i < len(sizes) else n

    # ---- arrivals -----------------------------------------------------------------------------
    def admits(self, rep: "Replica", r: "Request") -> bool:
        """An arrival interrupts a decode run when it could join at the next step: nobody else waits, a sequence
        slot is free, and its first chunk's blocks can be allocated."""
        if rep.env.now < self.m_t2:  # in a mixed step planned with the run after it: the run is dropped
            return True
        if len(rep.queue) != 1 or self.n_run >= self.params.max_num_seqs:
            return False
        room = self.params.max_num_batched_tokens - self.n_dec
        if room <= 0:
            return False
        return -(-min(r.n_in, room) // self.bs) <= self.pool.allocatable() - self.pend

    # ---- the engine ---------------------------------------------------------------------------
    def run(self, rep: "Replica") -> Generator:
        env, evaluator, log, q, p = rep.env, rep.evaluator, rep.log, rep.queue, self.params
        bs = self.bs
        pool = self.pool = BlockPool(self.total_blocks(evaluator))
        caching = p.enable_prefix_caching
        chunked = p.chunked_prefill
        budget_max = p.max_num_batched_tokens
        # a profile whose decode step was measured with the engine's prefills inside it (engine.step_includes_prefill):
        # a chunk that shares a step with decodes costs its marginal prefill time (the step reads the weights once),
        # and every step with n decodes gives back the prefill share it held: by Little's law n / L admissions per
        # step, L the mean output length, each costing c, the mean prefill time per request so far
        split = evaluator.profile.engine.step_includes_prefill
        pf_fixed = evaluator.prefill(0, 0.0, 0)[0]  # a prefill step's fixed part (the weights' read)

        def give_back(n: int, t_step: float) -> float:
            """Seconds a step of n decodes gives back to the prefills moved out of it (at most half the step)."""
            if not split or not self.pf_n:
                return 0.0
            return min(self.pf_sum / self.pf_n * n / (self.out_sum / self.out_n), 0.5 * t_step)

        def shorter(k: int, n: int, run: tuple[float, float, float], give: float) -> tuple[float, float, float]:
            """A run of k steps, each `give` seconds shorter at its own power."""
            t, e, h = run
            if not give or t <= 0:
                return run
            f = (t - k * give) / t
            return t - k * give, e * f, h * f
        running: OrderedDict[int, Request] = OrderedDict()  # admission order
        partial: OrderedDict[int, Request] = OrderedDict()  # running, prefill not complete
        fins: list[tuple[int, int, int, Request]] = []  # (finishing decode step, rid, epoch, request)
        cnt = self.cnt
        decode_run, decode_step = evaluator.decode_run, evaluator.decode_step
        pad = [self.padded(n) for n in range(p.max_num_seqs + 1)]  # the graph batch of each decode batch
        n_pad = len(pad)
        itl_ts, itl_t0, itl_t1, itl_k, itl_n = (self.itl_ts.append, self.itl_t0.append, self.itl_t1.append,
                                                self.itl_k.append, self.itl_n.append)

        def leave_decoding(r: Request) -> int:
            """Take a decoding request out of the batch; returns the KV tokens it holds."""
            st = r.st
            cnt[st.key] -= 1
            self.S -= st.kv - st.d0
            self.n_dec -= 1
            st.decoding = False
            st.epoch += 1
            st.gen += self.D - st.d0  # one output token per decode step it took
            r.energy += self.cum_e - st.e_mark
            r.host += self.cum_h - st.h_mark
            return st.kv + self.D - st.d0

        def publish(st: Seq, full: int) -> None:
            """Cache a request's first `full` blocks under its entry, where they continue the entry's run."""
            shared = pool.publish(st.ckey, full, st.shared, st.ref)
            if shared > st.shared:
                st.own = max(st.own, shared * bs)
                st.ref = True
            st.shared = shared

        def free_blocks(r: Request, kv: int) -> None:
            """Return a leaving request's blocks; with caching, its full blocks stay cached first."""
            st = r.st
            if caching:
                publish(st, kv // bs)
            pool.give_back(-(-kv // bs) - st.shared)
            if st.ref:
                pool.release(st.ckey, st.shared)
            st.ref = False
            st.shared = 0

        def preempt(r: Request) -> None:
            st = r.st
            if st.decoding:
                kv = leave_decoding(r)
            else:
                kv = st.done
                del partial[r.rid]
            free_blocks(r, kv)
            del running[r.rid]
            self.n_run -= 1
            st.target = r.n_in + st.gen
            st.done = 0
            q.appendleft(r)
            log.preempted[r.rid] += 1
            self.preemptions += 1

        def finish(r: Request, kv: int, now: float) -> None:
            free_blocks(r, kv)
            del running[r.rid]
            self.n_run -= 1
            r.st = None
            rep.complete(r, now)

        def start_decoding(r: Request) -> None:
            st = r.st
            st.decoding = True
            st.kv = st.done
            st.d0 = self.D
            st.key = (st.kv - self.D) % bs
            cnt[st.key] += 1
            self.S += st.kv - st.d0
            self.n_dec += 1
            st.e_mark = self.cum_e
            st.h_mark = self.cum_h
            heapq.heappush(fins, (self.D + r.n_out - st.gen, r.rid, st.epoch, r))  # the step after its last token

        def pop_finished(now: float) -> None:
            D = self.D
            while fins and fins[0][0] <= D:
                _, _, epoch, r = heapq.heappop(fins)
                st = r.st
                if st is None or epoch != st.epoch:
                    continue
                kv = leave_decoding(r)
                finish(r, kv, now)

        def ran(t0: float, steps: int, t_run: float, e_run: float, h_run: float, t_first: float, n: int, bg: int,
                dec_need: int) -> None:
            """A decode run of `steps` steps from t0 done (its segment logged): its blocks, its decodes' tokens and
            energy, its inter-token record, and the sequences it finished."""
            pool.take(self.new_blocks(steps) - dec_need)
            self.D += steps
            self.cum_e += e_run / n
            self.cum_h += h_run / n
            self.steps += steps - 1
            self.padded_rows += (bg - n) * steps
            itl_ts(t0)
            itl_t0(t_first)
            itl_t1(2.0 * t_run / steps - t_first if steps > 1 else t_run)
            itl_k(steps)
            itl_n(n)
            pop_finished(t0 + t_run)

        def stepped(now: float, end: float, n: int, bg: int, e_d: float, h_d: float, e_p: float, h_p: float,
                    t: float, tokens: int, chunks: list[tuple[Request, int, int]]) -> None:
            """A mixed step from now to end done: its segment, its decodes' step, its chunks' tokens."""
            rep.segment(now, end, e_d + e_p, h_d + h_p)
            if n:
                self.D += 1
                self.cum_e += e_d / n
                self.cum_h += h_d / n
                self.padded_rows += bg - n
                itl_ts(now)
                itl_t0(t)
                itl_t1(t)
                itl_k(1)
                itl_n(n)
            for r, d, c in chunks:
                st = r.st
                r.energy += e_p * c / tokens
                r.host += h_p * c / tokens
                st.done = d + c
                if st.done < st.target:
                    continue
                del partial[r.rid]
                st.gen += 1
                if st.gen == 1:
                    log.first[r.rid] = end
                    self.pf_n += 1
                if st.gen == r.n_out:
                    finish(r, st.done, end)
                else:
                    start_decoding(r)

        def first_finish() -> int:
            """The decode step at which the first decoding request finishes (stale heap entries dropped)."""
            while fins and (fins[0][3].st is None or fins[0][2] != fins[0][3].st.epoch):
                heapq.heappop(fins)
            return fins[0][0] if fins else 1 << 62

        def plan_run(now: float, t2: float) -> tuple | None:
            """The decode run the loop would start at t2, the end of a mixed step begun now whose effects are in:
            (k, graph batch, decodes, context, the decodes' first blocks, first step's time, run, its end), or None
            where it would preempt or one event from now would not give its results (a horizon or an arrival at
            t2 or its end, a delay not exact in floats)."""
            dec_need = cnt[-self.D % bs]  # new_blocks(1)
            free = pool.allocatable()  # what it would be after taking them, and them
            if dec_need > free:
                return None
            k = first_finish() - self.D
            n = self.n_dec
            if free < n * (k // bs + 1):
                k = min(k, self.max_steps(free))
            bg = pad[n] if n < n_pad else self.padded(n)
            ctx0 = self.S + n * self.D + n
            t_one = decode_step(bg, ctx0, n)[0]
            run = decode_run(bg, ctx0, k, n)
            t3 = t2 + run[0]
            if not (t3 < rep.horizon and now >= 0.5 * t2 and now + (t3 - now) == t3) or arrival_at(rep, now, t2, t3):
                return None
            return k, bg, n, ctx0, dec_need, t_one, run, t3

        while True:
            if not running and not q:
                yield rep.idle_wait()
                continue
            now = env.now
            # -- 1. decodes: find the blocks of this step, preempting the newest if they run short ---------
            preempted = False
            dec_need = cnt[-self.D % bs] if self.n_dec else 0  # new_blocks(1)
            while dec_need > pool.allocatable():
                preempt(running[next(reversed(running))])
                preempted = True
                dec_need = self.new_blocks(1)
            pool.take(dec_need)  # the decodes' blocks for this step, before any chunk takes blocks
            budget = budget_max - self.n_dec
            chunks: list[tuple[Request, int, int]] = []  # (request, tokens computed before, chunk tokens)
            # -- 2. the partially prefilled request(s), in admission order -----------------------------
            for rid in list(partial) if partial else ():
                if rid not in partial or budget <= 0:
                    continue
                r = partial[rid]
                st = r.st
                ch = min(st.target - st.done, budget)
                need = -(-(st.done + ch) // bs) - -(-st.done // bs)
                while need > pool.allocatable() and rid in running:
                    preempt(running[next(reversed(running))])
                    preempted = True
                if rid not in running:
                    continue
                pool.take(need)
                if caching:  # cached as scheduled, as vLLM caches a chunk's full blocks when it allocates them
                    publish(st, (st.done + ch) // bs)
                chunks.append((r, st.done, ch))
                budget -= ch
            # -- 3. waiting requests, unless this step preempted ----------------------------------------
            while not preempted and q and budget > 0 and self.n_run < p.max_num_seqs:
                r = q[0]
                st = r.st
                if st is None:
                    st = r.st = Seq(r)
                hit = 0
                e = pool.entries.get(st.ckey) if caching else None
                if e is not None:
                    hit = min(e.blocks, min(st.target - 1, st.own) // bs)
                free = pool.allocatable()
                done = hit * bs
                rest = st.target - done
                ch = rest if rest < budget else budget
                need = -(-(done + ch) // bs) - hit
                if hit and need > free - max(0, hit - e.pinned):
                    # its cached prefix would be pinned and leave too little: without it (the entry stays evictable)
                    hit = done = 0
                    rest = st.target
                    ch = rest if rest < budget else budget
                    need = -(-ch // bs)
                if need > free:
                    break
                if not chunked and budget < rest <= budget_max:
                    break
                q.popleft()
                if hit:
                    pool.lookup(st.ckey, hit)
                    st.ref = True
                st.shared = hit
                pool.take(need)
                st.done = done
                if caching:
                    publish(st, (done + ch) // bs)
                self.hit_tokens += done
                self.query_tokens += st.target
                if not st.started:
                    st.started = True
                    log.start[r.rid] = now
                    log.cached[r.rid] = done
                    self.out_sum += r.n_out
                    self.out_n += 1
                running[r.rid] = r
                partial[r.rid] = r
                self.n_run += 1
                chunks.append((r, done, ch))
                budget -= ch
            n = self.n_dec
            if not chunks and n == 0:
                continue  # everything was preempted back to the queue; schedule again
            self.steps += 1
            if not chunks:
                # -- a run of decode steps while nothing changes --------------------------------------
                while fins and (fins[0][3].st is None or fins[0][2] != fins[0][3].st.epoch):
                    heapq.heappop(fins)
                k = fins[0][0] - self.D
                if preempted:
                    k = 1
                else:
                    free = pool.allocatable() + dec_need
                    if free < n * (k // bs + 1):  # blocks may run out before the first finish
                        k = min(k, self.max_steps(free))
                bg = pad[n] if n < n_pad else self.padded(n)
                ctx0 = self.S + n * self.D + n
                t_one = decode_step(bg, ctx0, n)[0]
                give = give_back(n, t_one) if split else 0.0
                run = decode_run(bg, ctx0, k, n)
                if give:
                    run = shorter(k, n, run, give)

                def cut(elapsed: float, bg: int = bg, ctx0: int = ctx0, k: int = k, n: int = n,
                        give: float = give) -> tuple[int, tuple[float, float, float]]:
                    steps = evaluator.decode_steps_covering(bg, ctx0, k, elapsed, n, -give)
                    return steps, shorter(steps, n, decode_run(bg, ctx0, steps, n), give)

                steps, t_run, e_run, h_run = yield from decode_run_events(
                    rep, now, run, k, cut, not q and self.n_run < p.max_num_seqs)
                ran(now, steps, t_run, e_run, h_run, t_one - give, n, bg, dec_need)
                continue
            # -- one step mixing prefill chunks with the decodes ------------------------------------
            t_d = e_d = h_d = 0.0
            bg = 0
            if n:
                bg = pad[n] if n < n_pad else self.padded(n)
                t_d, e_d, h_d = decode_run(bg, self.S + n * self.D + n, 1, n)
            # the chunks' tokens, attention pairs ((h+p)^2 - h^2), tokens before them, and chunks with any
            tokens = sq = pre = after = 0
            for _, d, c in chunks:
                tokens += c
                sq += (d + c) * (d + c) - d * d
                pre += d
                after += d > 0
            t_p, w_p, hw_p = evaluator.prefill(tokens, float(sq), len(chunks), float(pre), after)
            if split and n:  # the prefill runs inside this decode step, at the step's measured power
                t_p = max(0.0, t_p - pf_fixed)
                self.pf_sum += t_p
                give = give_back(n, t_d)
                w_p, hw_p = e_d / t_d, h_d / t_d
                e_d, h_d = e_d * (t_d - give) / t_d, h_d * (t_d - give) / t_d
                t_d -= give
            elif split:
                self.pf_sum += max(0.0, t_p - pf_fixed)
            elif n:  # a fused engine's one forward: one fixed part for both, saved from the decode part
                t_p -= evaluator.host_a  # and one step of the loop's host time (the decode part holds it)
                ov = evaluator.overlap(t_d, t_p)
                if ov:
                    f = (t_d - ov) / t_d
                    t_d, e_d, h_d = t_d - ov, e_d * f, h_d * f
            t = t_d + t_p
            e_p, h_p = t_p * w_p, t_p * hw_p
            end = now + t
            if (rep.cuts is not None and not split and not q and len(partial) == len(chunks) and end < rep.horizon
                    and all(d + c == r.st.target and r.st.gen + 1 < r.n_out for r, d, c in chunks)
                    and first_finish() > self.D + (1 if n else 0)):
                # nobody finishes at the step's end, nor waits: its effects now (nothing reads them before its
                # end), and the decode run after it, where that is one event with the steps' results
                stepped(now, end, n, bg, e_d, h_d, e_p, h_p, t, tokens, chunks)
                plan = plan_run(now, end)
                if plan is None:
                    rep.current = (now, end, e_d + e_p, h_d + h_p)
                    yield env.timeout(t)
                    rep.current = None
                    continue
                k, bg, n, ctx0, dec_need, t_one, run, t3 = plan
                t2 = end
                self.steps += 1

                def cut(elapsed: float, bg: int = bg, ctx0: int = ctx0, k: int = k,
                        n: int = n) -> tuple[int, tuple[float, float, float]]:
                    if elapsed < 0:  # in the mixed step: the run is dropped, the step ends as planned
                        return 0, (0.0, 0.0, 0.0)
                    steps = evaluator.decode_steps_covering(bg, ctx0, k, elapsed, n, -0.0)
                    return steps, decode_run(bg, ctx0, steps, n)

                rep.decoding = True
                self.m_t2, self.pend = t2, dec_need
                rep.run_t0, rep.run_cut = t2, cut
                try:
                    yield env.timeout(t3 - now)
                    if rep.cut is not None:
                        steps, t_run, e_run, h_run = rep.cut
                        rep.cut = None
                    else:
                        steps = k
                        t_run, e_run, h_run = run
                except simpy.Interrupt:
                    steps, (t_run, e_run, h_run) = cut(env.now - t2)
                    rest = t2 + t_run - env.now
                    if rest > 0:
                        yield env.timeout(rest)
                rep.decoding = False
                rep.current = None
                self.m_t2, self.pend = -math.inf, 0
                if not steps:
                    self.steps -= 1
                    continue
                pool.take(dec_need)
                rep.segment(t2, t2 + t_run, e_run, h_run)
                ran(t2, steps, t_run, e_run, h_run, t_one, n, bg, dec_need)
                continue
            rep.current = (now, end, e_d + e_p, h_d + h_p)
            yield env.timeout(t)
            rep.current = None
            stepped(now, end, n, bg, e_d, h_d, e_p, h_p, t, tokens, chunks)
            pop_finished(end)
