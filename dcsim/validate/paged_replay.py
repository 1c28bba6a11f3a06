"""The device side of a validation on the `paged` engine: one process serves a workload step by step the way vLLM's
v1 scheduler does (vLLM 0.11, `vllm/v1/core/sched/scheduler.py`), with requests starting no earlier than their
arrival times and idle gaps really idle, and meters the whole window (`window.Window`).

Every step:
- running decodes first, one token each, in admission order; a decode whose next token needs a block when none is
  free preempts the most recently admitted running request (its blocks freed, itself put at the front of the
  waiting queue; readmitted, it recomputes its prefill over its prompt plus the tokens it had generated), until
  the block is found or the decode itself was preempted;
- then prefill chunks, of partially prefilled running requests, then of waiting ones (admitted while fewer than
  `max_num_seqs` run), fill what is left of the step's token budget (`max_num_batched_tokens`); without chunked
  prefill a prompt that does not fit the rest of the budget waits for a later step. A partial prefill's chunk
  (the rest of its prompt, up to the budget) that finds too few blocks preempts the newest running request, as a
  decode does. No waiting request is admitted in a step that preempted, and one whose chunk's blocks are not
  free is not admitted (its chunk is not shrunk to fit): it and those behind it wait for a later step;
- the step runs on the engine (the padded decode graph, then one prefill forward of the chunks), the host reads
  the tokens back (one sync per step, as a server returns them), and each token gets the step's end time.

Prefix caching (`enable_prefix_caching`, on by default as in vLLM and the simulator): a waiting request's tokens
are looked up in the engine's block cache when it is considered for admission (the cached full blocks its tokens
start with, leaving at least its last token to compute, as vLLM's `get_computed_blocks` and the simulator do); it
shares those blocks and its first chunk starts after them. If its blocks do not fit with the cached ones pinned,
it waits (vLLM's `allocate_slots` refuses it; it is not admitted without its hit). Full blocks are registered when
the step that computes them is scheduled (vLLM's `cache_blocks` in `allocate_slots`), so a request admitted later
in the same step may already share them. A preempted request that is readmitted looks its prompt plus generated
tokens up again, and hits its own blocks if they were not evicted.

Prompts. A request without a prefix gets seeded random ids (seed 10,000 + its index). A request with a prefix id
and prefix_len L (the workload's columns, from the trace's `prefix_id`/`prefix_len` or `session_id`) starts with
the first L tokens of the sequence of the latest earlier request with that id, then its own seeded ids; the first
request of an id starts with ids seeded by the id. The earlier request's sequence is its prompt followed by the
tokens it generated if it has finished when this request is admitted, else by as many ids seeded by its index (a
stand-in for output not known yet). So requests sharing a system prompt are identical over it, and turn k of a
conversation starts with turn k-1's prompt and output where the engine generated it. The simulator's model
matches this: an entry per prefix id holds the full blocks its requests published (a running request's prompt
blocks after its prefill, its whole sequence when it leaves), a request reuses up to floor(min(L, tokens - 1) / 16)
of them. The two differ where the simulator publishes later than the engine caches (a request sharing blocks of
an earlier one still prefilling, or admitted in the same step), under memory pressure (the simulator admits a
request without its hit rather than wait), and for a request whose L reaches past the blocks that the latest
earlier request of its id shares with the simulator's entry.

Written into the replay folder: requests.csv (a row per request as it finishes: arrival, first scheduled
(`start_s`), first token, end, tokens, preemptions, prompt tokens served from the prefix cache at its first
admission), tokens.csv (every output token and its time, for
inter-token latency), steps.csv (a row per step: decodes, padded graph batch, prefill chunks and tokens,
preemptions, cached tokens of the step's admissions, cached blocks) and power.csv. Active energy is the power
timeline's integral over the steps (merged where back to back).
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from dcsim.calibrate.backends.paged import PagedBackend, Sequence, default_graph_sizes
from dcsim.calibrate.meters import Meter
from dcsim.calibrate.store import RowWriter
from dcsim.errors import UserError
from dcsim.validate.intervals import merge
from dcsim.validate.window import Window

REQUEST_FIELDS = ("id", "arrival_s", "n_in", "n_out", "start_s", "first_token_s", "end_s", "gen_tokens",
                  "preemptions", "cached_tokens", "prefill_tokens")
TOKEN_FIELDS = ("id", "k", "token", "t_s")
STEP_FIELDS = ("step", "start_s", "end_s", "decodes", "graph_batch", "chunks", "prefill_tokens", "running",
               "waiting", "free_blocks", "preemptions", "cached_tokens", "cached_blocks",
               # what the profile's step cost reads (as the simulator sums them): the KV tokens the decodes read
               # (each its computed tokens plus the one it feeds), the tokens before the chunks (cached or
               # computed in earlier steps), the chunks' attention pairs, sum of (h + p)^2 - h^2, and the chunks with
               # tokens before them
               "decode_context", "chunk_prefix", "chunk_pairs", "prefixed_chunks")


@dataclass(frozen=True)
class PagedPolicy:
    """The scheduler's settings; the same names as the simulator's `paged` batching policy (its __dict__ is what
    replay.json records as the replay's policy, and what the comparison simulates)."""

    policy: str = "paged"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    kv_blocks: int | None = None
    chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    cudagraph_batch_sizes: list[int] | None = None

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.block_size < 1:
            raise ValueError("max_num_seqs and block_size must be at least 1")
        if self.max_num_batched_tokens < max(self.block_size, self.max_num_seqs):
            raise ValueError(f"the token budget ({self.max_num_batched_tokens}) must be at least one block "
                             f"({self.block_size}) and max_num_seqs ({self.max_num_seqs})")

    def params(self) -> dict:
        """The simulator's `paged` batching parameters for this replay."""
        return {k: v for k, v in asdict(self).items() if v is not None and k != "policy"}


@dataclass(eq=False)  # compared by identity: the loop's `in running` and `remove` stay cheap (field-wise
class _Req:                # equality over prompts and outputs made them 2-3 ms a step at 64 running)
    i: int
    arrival: float
    n_in: int
    n_out: int
    pid: int = -1  # prefix id (-1: none) and the tokens it shares with the latest earlier request of that id
    plen: int = 0
    prompt: list[int] = field(default_factory=list)  # fixed at its first admission (see the module's Prompts)
    admitted: bool = False
    out: list[int] = field(default_factory=list)
    seq: Sequence | None = None
    computed: int = 0  # tokens whose K/V are in the cache
    preemptions: int = 0
    cached: int = 0  # prompt tokens served from the prefix cache at its first admission
    prefill_tokens: int = 0  # prefill tokens computed in all (recomputes included)
    start: float | None = None
    first: float | None = None
    times: list[float] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.out

    @property
    def decoding(self) -> bool:
        return bool(self.out) and self.computed == len(self.prompt) + len(self.out) - 1


def prefix_of(wl: pd.DataFrame) -> tuple[list[int], list[int]]:
    """Each request's prefix id (-1 for none) and prefix length, from the workload's optional columns."""
    n = len(wl)
    if "prefix_id" not in wl.columns:
        return [-1] * n, [0] * n
    pid = pd.to_numeric(wl["prefix_id"], errors="coerce").fillna(-1).astype(int).tolist()
    plen = pd.to_numeric(wl["prefix_len"], errors="coerce").fillna(0).astype(int).tolist() \
        if "prefix_len" in wl.columns else [0] * n
    return pid, [p if i >= 0 else 0 for i, p in zip(pid, plen)]


class Prompts:
    """The replay's prompt ids (the module docstring's Prompts): seeded random ids, over which a request with a
    prefix id repeats the first prefix_len tokens of the latest earlier request of its id."""

    def __init__(self, backend: PagedBackend, reqs: list[_Req]) -> None:
        self.backend, self.reqs = backend, reqs
        self.prev: list[int | None] = []
        last: dict[int, int] = {}
        for r in reqs:
            self.prev.append(last.get(r.pid) if r.pid >= 0 else None)
            if r.pid >= 0:
                last[r.pid] = r.i

        self.own: dict[int, list[int]] = {}  # a waiting request's own ids, made once (dropped at admission)

    def _ids(self, n: int, seed: int) -> list[int]:
        """The ids `backend.prompt(n, 1, seed)` holds, made on the host (no device round trip)."""
        if n <= 0:
            return []
        torch = self.backend.torch
        g = torch.Generator().manual_seed(seed)
        return torch.randint(3, self.backend.vocab, (1, n), generator=g)[0].tolist()

    def admitted(self, r: _Req) -> None:
        self.own.pop(r.i, None)

    def build(self, r: _Req) -> list[int]:
        """`r`'s prompt as of now (the earlier request's output may not be known yet)."""
        own = self.own.get(r.i)
        if own is None:
            own = self.own[r.i] = self._ids(r.n_in, 10_000 + r.i)
        L = min(r.plen, r.n_in)
        if r.pid < 0 or L <= 0:
            return own
        j = self.prev[r.i]
        if j is None:
            src = self._ids(L, 1_000_000_000 + r.pid)
        else:
            p = self.reqs[j]
            if not p.admitted:  # not yet possible (admission is in order); built as it would be
                p.prompt = self.build(p)
            src = p.prompt[:L]
            if len(src) < L:
                gen = p.out if len(p.out) >= p.n_out else self._ids(p.n_out, 2_000_000_000 + p.i)
                src = src + gen[:L - len(src)]
        return src + own[len(src):]


def capture_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default decode graph sizes up to max_num_seqs (a larger decode batch runs eagerly, unpadded)."""
    return [s for s in default_graph_sizes(max_num_seqs) if s <= max_num_seqs] or [1]


def warm_up(backend: PagedBackend, policy: PagedPolicy, max_len: int, log) -> float:
    """Outside the window: one prefill and a few decode steps at batch 1 and at a large batch (first-time costs of
    the kernels), then every decode graph the replay may use captured; returns seconds spent."""
    t0 = time.perf_counter()
    e = backend.eng
    room = e.alloc.capacity * e.block_size
    n = max(1, min(max_len - 4, policy.max_num_batched_tokens, 512, room - 8))
    backend.run(n, 4, 1, seed=1, on_start=lambda: None, on_first_token=lambda: None)
    b = max(1, min(policy.max_num_seqs, e.alloc.capacity // e.blocks_for(min(40, max_len))))
    backend.run(min(32, max_len - 8) if max_len > 9 else 1, min(8, max(1, max_len - 33)), b, seed=2,
                on_start=lambda: None, on_first_token=lambda: None)
    assert backend.eng is e, "a warm-up run outgrew the replay's engine"
    for g in sorted(e.sizes, reverse=True):  # largest first, as vLLM captures (they share one memory pool)
        if g <= e.graph_size(policy.max_num_seqs):
            e.ensure_graph(g)
    if e.mixed == "fused":  # the piecewise graphs of every padded size a step of the token budget may take
        top = e.piece_size(min(policy.max_num_batched_tokens, e.piece_sizes[-1])) or 0
        for t in sorted(e.piece_sizes, reverse=True):
            if t <= top:
                e.ensure_pieces(t)
    e.reset()
    log(f"paged warm-up: {len(e.graphs)} decode graphs, {len(e.pieces)} piecewise sizes, "
        f"{time.perf_counter() - t0:.1f} s")
    return time.perf_counter() - t0


def default_blocks(backend: PagedBackend, policy: PagedPolicy, lengths: list[int]) -> int:
    """KV blocks (besides the scratch block) for the pool when none is set: every one of the max_num_seqs longest
    requests at its full length (so nothing is preempted), capped on CUDA at 90% of the free device memory."""
    bs = policy.block_size
    longest = sorted(lengths, reverse=True)[:policy.max_num_seqs]
    want = sum(-(-n // bs) for n in longest)
    if backend.device.startswith("cuda"):
        torch, cfg = backend.torch, backend.cfg
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kvh = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        per_block = 2 * cfg.num_hidden_layers * bs * kvh * hd * (torch.finfo(backend.model.dtype).bits // 8)
        want = min(want, int(0.9 * torch.cuda.mem_get_info(backend.device)[0] // per_block))
    return max(want, 1)


def write_engine(folder: Path, backend: PagedBackend) -> None:
    """engine.json: the KV pool and graph sizes the engine was built with, written before the window opens, so a
    replay that dies after its window is recovered (`--recover`) against the pool it served with."""
    doc = {"kv_blocks": backend.eng.alloc.capacity, "block_size": backend.eng.block_size,
           "graph_sizes": list(backend.eng.sizes)}
    (folder / "engine.json").write_text(json.dumps(doc, indent=1) + "\n")


def read_engine(folder: Path) -> dict:
    """engine.json as write_engine left it; a clear error when it is missing or not that shape."""
    path = folder / "engine.json"
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc.get("kv_blocks"), int) or doc["kv_blocks"] < 1:
            raise ValueError("kv_blocks is not a positive whole number")
    except FileNotFoundError:
        raise UserError("the paged replay's engine.json is missing (a replay from before it was written); pass "
                        "--kv-blocks with the pool its log printed", path) from None
    except (ValueError, AttributeError) as e:
        raise UserError(f"not an engine description: {e}", path, "kv_blocks") from None
    return doc


def serve(wl: pd.DataFrame, backend: PagedBackend, meter: Meter, policy: PagedPolicy, out: Path,
          tail_s: float = 10.0, settle_s: float = 10.0, timeline_hz: float = 20.0,
          log=lambda m: print(m, file=sys.stderr, flush=True),
          prompts: dict[int, list[int]] | None = None) -> dict:
    """Replay the workload on the engine (loaded; sized by the caller through backend.engine()); writes
    requests.csv, tokens.csv, steps.csv and power.csv into `out` and returns the window's facts (with the prefix
    cache's totals). `prompts`, if given, receives each request's prompt ids."""
    torch = backend.torch
    e = backend.eng
    bs = e.block_size
    arrival = wl["arrival_s"].to_numpy(float)
    n_in = wl["n_in"].to_numpy(int)
    n_out = wl["n_out"].to_numpy(int)
    n = len(wl)
    pid, plen = prefix_of(wl)
    reqs = [_Req(i, float(arrival[i]), int(n_in[i]), int(n_out[i]), pid[i], plen[i]) for i in range(n)]
    make_prompt = Prompts(backend, reqs)
    rw = RowWriter(out / "requests.csv", REQUEST_FIELDS, durable=False)
    tw = RowWriter(out / "tokens.csv", TOKEN_FIELDS, durable=False)
    sw = RowWriter(out / "steps.csv", STEP_FIELDS, durable=False)
    too_long = [i for i in range(n) if e.blocks_for(int(n_in[i] + n_out[i])) > e.alloc.capacity]
    if too_long:
        raise ValueError(f"request {too_long[0]} needs {int(n_in[too_long[0]] + n_out[too_long[0]])} KV tokens; the "
                         f"pool holds {e.alloc.capacity} blocks of {bs}")
    waiting: deque[_Req] = deque()
    running: list[_Req] = []  # admission order
    nxt = done = step = preempt_total = hit_total = query_total = 0
    busy: list[tuple[float, float]] = []
    last_report = 0.0
    e.reset()
    caching_was = e.prefix_caching
    e.prefix_caching = policy.enable_prefix_caching
    try:
        with Window(meter, out, tail_s, settle_s, timeline_hz) as w:
            now, timeline = w.now, w.timeline

            def preempt(r: _Req) -> None:
                nonlocal preempt_total
                e.free(r.seq)
                r.seq, r.computed = None, 0
                r.preemptions += 1
                preempt_total += 1
                running.remove(r)
                waiting.appendleft(r)

            def make_room(r: _Req, upto: int, decodes: list[_Req]) -> bool:
                """Blocks for r's first `upto` tokens, preempting the newest running request (out of this step's
                `decodes` too) until they are free; False when r itself had to go."""
                while not e.reserve(r.seq, upto):
                    victim = running[-1]
                    if victim in decodes:
                        decodes.remove(victim)
                    preempt(victim)
                    if victim is r:
                        return False
                return True

            def finish(r: _Req, t: float) -> None:
                nonlocal done
                e.free(r.seq)
                r.seq = None
                running.remove(r)
                done += 1
                rw.write({"id": r.i, "arrival_s": r.arrival, "n_in": len(r.prompt), "n_out": r.n_out,
                          "start_s": round(r.start, 6), "first_token_s": round(r.first, 6), "end_s": round(t, 6),
                          "gen_tokens": len(r.out), "preemptions": r.preemptions, "cached_tokens": r.cached,
                          "prefill_tokens": r.prefill_tokens})
                tw.w.writerows({"id": r.i, "k": k, "token": tok, "t_s": round(x, 6)}
                               for k, (tok, x) in enumerate(zip(r.out, r.times)))

            while done < n:
                t = now()
                while nxt < n and arrival[nxt] <= t:
                    waiting.append(reqs[nxt])
                    nxt += 1
                if not running and not waiting:
                    time.sleep(max(0.0, arrival[nxt] - now()))
                    continue
                budget = policy.max_num_batched_tokens
                step_pre = preempt_total
                decodes: list[_Req] = []
                for r in [x for x in running if x.decoding]:
                    if r not in running:  # preempted earlier in this loop
                        continue
                    if make_room(r, r.computed + 1, decodes):
                        decodes.append(r)
                for r in decodes:  # a block its token fills is cached from this step on (one in block_size steps)
                    if e.prefix_caching and (r.computed + 1) // bs > len(r.seq.hashes):
                        e.commit(r.seq, r.tokens, r.computed + 1)
                budget -= len(decodes)
                chunks: list[tuple[_Req, int]] = []
                for r in [x for x in running if not x.decoding]:  # partially prefilled
                    if budget <= 0:
                        break
                    if r not in running:  # preempted for an earlier one's chunk
                        continue
                    k = min(len(r.tokens) - r.computed, budget)
                    if not make_room(r, r.computed + k, decodes):  # as a decode: the newest gives its blocks up
                        continue
                    e.commit(r.seq, r.tokens, r.computed + k)
                    chunks.append((r, k))
                    budget -= k
                step_hits = 0
                # no waiting request is admitted in a step that preempted (vLLM v1: `if not preempted_reqs`)
                while (preempt_total == step_pre and waiting and budget > 0
                       and len(running) < policy.max_num_seqs):
                    r = waiting[0]
                    if not r.admitted:
                        r.prompt = make_prompt.build(r)
                    tokens = r.tokens
                    hit = e.match(tokens)  # the cached full blocks it starts with
                    h = len(hit) * bs
                    need = len(tokens) - h
                    if not policy.chunked_prefill and need > budget:
                        break
                    k = min(need, budget)
                    seq = e.add(r.i, hit)
                    if not e.reserve(seq, h + k):  # vLLM's allocate_slots refuses: it waits, chunk unshrunk
                        e.free(seq)
                        break
                    e.commit(seq, tokens, h + k)
                    waiting.popleft()
                    if not r.admitted:
                        r.admitted, r.cached = True, h
                        make_prompt.admitted(r)
                        if prompts is not None:
                            prompts[r.i] = list(r.prompt)
                    r.seq, r.computed = seq, h
                    hit_total += h
                    query_total += len(tokens)
                    step_hits += h
                    running.append(r)
                    chunks.append((r, k))
                    budget -= k
                if not decodes and not chunks:  # partial prefills hold every block: the newest gives its up
                    if running:
                        preempt(running[-1])
                    continue
                ctx_read = sum(r.computed + 1 for r in decodes)
                before = sum(r.computed for r, _ in chunks)
                pairs = sum((r.computed + k) ** 2 - r.computed ** 2 for r, k in chunks)
                after = sum(1 for r, _ in chunks if r.computed)
                t0 = now()
                for r, _ in chunks:
                    if r.start is None:
                        r.start = t0
                timeline.label = f"s{step}"
                with torch.no_grad():
                    d_tok, c_tok = e.step([r.seq for r in decodes], [r.out[-1] for r in decodes],
                                          [(r.seq, r.tokens[r.computed:r.computed + k], r.computed) for r, k in chunks])
                    d_list = d_tok.tolist() if d_tok is not None else []
                    c_list = c_tok.tolist() if c_tok is not None else []
                t1 = now()
                timeline.label = ""
                busy.append((t0, t1))
                for r, tk in zip(decodes, d_list):
                    r.computed += 1
                    r.out.append(int(tk))
                    r.times.append(t1)
                for (r, k), tk in zip(chunks, c_list):
                    r.computed += k
                    r.prefill_tokens += k
                    if r.computed == len(r.tokens):  # the prefill is complete: its last logits give a token
                        r.out.append(int(tk))
                        r.times.append(t1)
                        if r.first is None:
                            r.first = t1
                g = e.graph_size(len(decodes)) if decodes else 0
                sw.write({"step": step, "start_s": round(t0, 6), "end_s": round(t1, 6), "decodes": len(decodes),
                          "graph_batch": g, "chunks": len(chunks), "prefill_tokens": sum(k for _, k in chunks),
                          "running": len(running), "waiting": len(waiting), "free_blocks": e.alloc.free,
                          "preemptions": preempt_total - step_pre, "cached_tokens": step_hits,
                          "cached_blocks": e.alloc.cached, "decode_context": ctx_read, "chunk_prefix": before,
                          "chunk_pairs": pairs, "prefixed_chunks": after})
                step += 1
                for r in [x for x in running if len(x.out) >= x.n_out]:
                    finish(r, t1)
                if t1 - last_report > 15 or done == n:
                    last_report = t1
                    log(f"replay: {done}/{n} requests at {t1:.1f} s (arrivals span {arrival[-1]:.1f} s), "
                        f"{len(running)} running, {len(waiting)} waiting, {preempt_total} preemptions, "
                        f"{hit_total} prompt tokens from the prefix cache")
            w.close(now())
    finally:
        rw.close()
        tw.close()
        sw.close()
        e.prefix_caching = caching_was
    if e.alloc.free != e.alloc.capacity or any(e.alloc.ref):
        raise RuntimeError(f"{e.alloc.capacity - e.alloc.free} KV blocks not returned at the end")
    active = w.timeline_share_j(merge(busy)) if w.timeline.active and busy else float("nan")
    return w.facts(active, steps=step, preemptions=preempt_total, busy_s=sum(b - a for a, b in merge(busy)),
                   prefix_hit_tokens=hit_total, prefix_query_tokens=query_total,
                   prefix_hit_rate=round(hit_total / query_total, 6) if query_total else None,
                   blocks_evicted=e.alloc.evicted, blocks_cached_at_end=e.alloc.cached)
