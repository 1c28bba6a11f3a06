"""The `paged` engine on the CPU with a tiny random-weight Llama: its greedy tokens equal transformers' `generate`,
a prompt prefilled in three chunks leaves the same next token and the same K/V as one whole-prompt prefill, the
decode attention implementations agree on ragged lengths, block accounting, graph padding, mixed steps, and
calibration runs through it. The Triton kernel runs in Triton's CPU interpreter where Triton is installed; the
CUDA-graph and Triton GPU paths need a CUDA device and are skipped without one.

Needs torch and transformers (pip install torch==2.13.0 transformers); skipped without them."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
pytest.importorskip("transformers", reason="transformers not installed (pip install transformers)")

from dcsim.calibrate.backends import paged_attention as PA  # noqa: E402
from dcsim.calibrate.backends.paged import (  # noqa: E402
    BlockAllocator,
    PagedBackend,
    PagedEngine,
    default_graph_sizes,
)

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def _generate(model, ids, n_out: int):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, min_new_tokens=n_out,
                              max_new_tokens=n_out, pad_token_id=0)


@pytest.fixture(scope="module")
def backend():
    be = PagedBackend("cpu", arch="tiny-llama", dtype="fp32")
    info = be.load()
    assert info["backend"] == "paged" and info["decode"]["cuda_graph"].startswith("none")
    yield be
    be.close()


@pytest.fixture(scope="module")
def gqa_model():
    """A tiny model with 4 query heads per KV head and a longer head (32), to exercise grouped-query paths."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, vocab_size=300, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("shape", [(8, 5, 1), (16, 4, 3), (6, 1, 1), (30, 12, 5), (40, 30, 2)])
def test_run_tokens_equal_greedy_generate_and_lengths_are_forced(backend, shape):
    n_in, n_out, batch = shape
    calls: list[str] = []
    tm = backend.run(n_in, n_out, batch, 11, lambda: calls.append("start"), lambda: calls.append("first"))
    assert calls == ["start", "first"] and tm.gen_tokens == n_out
    assert 0 < tm.ttft_s <= tm.runtime_s
    assert tm.extra["graph"] is False and "cache_len" not in tm.extra  # a dynamic cache for the fit
    assert tm.extra["graph_batch"] == backend.eng.graph_size(batch) >= batch
    ref = _generate(backend.model, backend.prompt(n_in, batch, 11), n_out)
    assert torch.equal(backend.last_ids, ref), shape


def test_engine_decode_step_by_step_equals_generate_with_grouped_query_heads(gqa_model):
    eng = PagedEngine(torch, gqa_model, "cpu", num_blocks=40, block_size=8, max_batch=8, max_model_len=96)
    ids = torch.randint(3, 300, (3, 19), generator=torch.Generator().manual_seed(2))
    ref = _generate(gqa_model, ids, 12)[:, 19:]
    seqs = [eng.add(i) for i in range(3)]
    out = []
    with torch.no_grad():
        for s in seqs:
            assert eng.reserve(s, 19)
        tok = eng.prefill([(s, ids[i], 0) for i, s in enumerate(seqs)])
        out.append(tok)
        for _ in range(11):
            for s in seqs:  # blocks as the tokens arrive
                assert eng.reserve(s, s.length + 1)
            tok = eng.decode(seqs, tok.tolist())
            out.append(tok)
    assert torch.equal(torch.stack(out, 1), ref)
    assert [s.length for s in seqs] == [30, 30, 30] and all(len(s.blocks) == 4 for s in seqs)


def test_chunked_prefill_equals_one_whole_prompt_prefill(gqa_model):
    """37 tokens in chunks of 13 + 16 + 8 (crossing block edges), the middle chunk in the same forward as another
    sequence's whole prompt: same next token and the same K/V, position by position, as one prefill."""
    eng = PagedEngine(torch, gqa_model, "cpu", num_blocks=64, block_size=8, max_batch=4, max_model_len=64)
    ids = torch.randint(3, 300, (37,), generator=torch.Generator().manual_seed(5))
    other = torch.randint(3, 300, (11,), generator=torch.Generator().manual_seed(6))
    whole, parts, side, solo = eng.add(0), eng.add(1), eng.add(2), eng.add(3)
    for s, n in ((whole, 37), (parts, 37), (side, 11), (solo, 11)):
        assert eng.reserve(s, n)
    with torch.no_grad():
        t_whole = eng.prefill([(whole, ids, 0)])
        eng.prefill([(parts, ids[:13], 0)])
        t_mid = eng.prefill([(side, other, 0), (parts, ids[13:29], 13)])
        t_parts = eng.prefill([(parts, ids[29:], 29)])
        t_side = eng.prefill([(solo, other, 0)])
    assert int(t_parts) == int(t_whole) and parts.length == 37
    assert int(t_mid[0]) == int(t_side)  # the other sequence's token is untouched by sharing the forward

    def kv(seq, cache):
        return torch.cat([cache[b] for b in seq.blocks])[:37]

    for i in range(len(eng.layers)):
        torch.testing.assert_close(kv(parts, eng.k_cache[i]), kv(whole, eng.k_cache[i]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kv(parts, eng.v_cache[i]), kv(whole, eng.v_cache[i]), rtol=1e-5, atol=1e-5)
    assert not torch.equal(kv(parts, eng.k_cache[0]), torch.zeros_like(kv(parts, eng.k_cache[0])))


@pytest.mark.parametrize("pad", [0, 5])
def test_a_fused_step_equals_the_decode_graph_then_the_prefill_forward(gqa_model, monkeypatch, pad):
    """One forward over 2 decodes and 4 chunks (two equal chunks from scratch, one after 8 computed tokens, one
    of 5) leaves the same tokens and the same K/V as the split form (decode step, then prefill forward); with
    `pad` padding rows (the padded size of a piecewise graph, run eagerly here) the padding writes only to the
    scratch block."""
    gen = torch.Generator().manual_seed(9)
    prompts = [torch.randint(3, 300, (n,), generator=gen) for n in (20, 9, 13, 20, 13, 5)]
    out = {}
    for mixed in ("split", "fused"):
        eng = PagedEngine(torch, gqa_model, "cpu", num_blocks=64, block_size=8, max_batch=8, max_model_len=64,
                          mixed=mixed)
        if mixed == "fused" and pad:
            monkeypatch.setattr(eng, "piece_size", lambda t: t + pad)
            monkeypatch.setattr(eng, "ensure_pieces", lambda t: True)  # no graphs on the CPU: the padded rows eager
        seqs = [eng.add(i) for i in range(6)]
        for sq in seqs:
            assert eng.reserve(sq, 24)
        assert not eng.k_cache[0][0].any()
        with torch.no_grad():
            first = eng.step([], None, [(seqs[0], prompts[0], 0), (seqs[1], prompts[1], 0),
                                        (seqs[3], prompts[3][:8], 0)])[1]
            d, c = eng.step(seqs[:2], first[:2], [(seqs[2], prompts[2], 0), (seqs[3], prompts[3][8:].tolist(), 8),
                                                  (seqs[4], prompts[4], 0), (seqs[5], prompts[5], 0)])
        assert [sq.length for sq in seqs] == [21, 10, 13, 20, 13, 5]
        kv = [[torch.cat([cache[b] for b in sq.blocks])[:sq.length] for sq in seqs]
              for cache in eng.k_cache + eng.v_cache]
        out[mixed] = (d.tolist(), c.tolist(), kv)
        if mixed == "fused" and pad:
            assert eng.k_cache[0][0].any()  # the padding rows wrote to the scratch block, and nowhere else
    assert out["fused"][0] == out["split"][0] and out["fused"][1] == out["split"][1]
    for a, b in zip(out["fused"][2], out["split"][2]):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def _ragged(heads: int, kv_heads: int, dim: int = 16, bs: int = 16, dtype=torch.float32):
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    nb = 64
    kc = torch.randn(nb, bs, kv_heads, dim, generator=g, dtype=dtype)
    vc = torch.randn(nb, bs, kv_heads, dim, generator=g, dtype=dtype)
    lens = torch.tensor([1, 17, 33, 5, 64, 16, 150], dtype=torch.int32)
    bt = torch.zeros(len(lens), 12, dtype=torch.int32)
    perm = torch.randperm(nb - 1, generator=g) + 1  # scattered blocks, never the scratch block
    k = 0
    for i, n in enumerate(lens.tolist()):
        m = math.ceil(n / bs)
        bt[i, :m] = perm[k:k + m]
        k += m
    q = torch.randn(len(lens), heads, dim, generator=g, dtype=dtype)
    return q, kc, vc, bt, lens


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (8, 1)])
def test_decode_attention_equals_the_gather_reference_on_ragged_lengths(heads, kv_heads):
    q, kc, vc, bt, lens = _ragged(heads, kv_heads)
    ref = PA.decode_attention_naive(q, kc, vc, bt, lens, 0.25)
    torch.testing.assert_close(PA.decode_attention_torch(q, kc, vc, bt, lens, 0.25), ref, rtol=1e-5, atol=1e-5)
    # gathering only the blocks the longest row needs gives the same
    torch.testing.assert_close(PA.decode_attention_torch(q, kc, vc, bt, lens, 0.25, max_blocks=10), ref,
                               rtol=1e-5, atol=1e-5)
    # the reference itself: row 0 holds one token, so its output is that token's value, whatever the scores
    torch.testing.assert_close(ref[0], vc[int(bt[0, 0]), 0].repeat_interleave(heads // kv_heads, 0))
    # a value past a row's length never leaks in
    vc2 = vc.clone()
    vc2[int(bt[3, 0]), 5:] = 1e4
    torch.testing.assert_close(PA.decode_attention_torch(q, kc, vc2, bt, lens, 0.25), ref, rtol=1e-5, atol=1e-5)


TRITON_CHECK = """
import torch
from dcsim.calibrate.backends import paged_attention as PA
import sys
sys.path.insert(0, {tests!r})
from test_paged_backend import _ragged
for split in (512, 32):  # one piece per sequence, and long sequences split in pieces (short ones leave some empty)
    PA.TOKENS_PER_SPLIT = split
    for heads, kvh in ((4, 4), (8, 2), (8, 1)):
        q, kc, vc, bt, lens = _ragged(heads, kvh)
        ref = PA.decode_attention_naive(q, kc, vc, bt, lens, 0.25)
        got = PA.decode_attention_triton(q, kc, vc, bt, lens, 0.25)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.skipif(not PA.triton_available() or CUDA, reason="Triton not installed, or a CUDA device (the CUDA "
                    "test runs the kernel itself there)")
def test_triton_kernel_in_the_cpu_interpreter_equals_the_reference():
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-c", TRITON_CHECK.format(tests=str(REPO / "tests"))], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_the_cache_filled_with_a_forwards_kv_holds_its_blocks_everywhere_and_changes_no_token(gqa_model):
    """fill_kv: every block (scratch included) holds one of the whole blocks a prefill of 43 tokens wrote, in
    turn (5 whole blocks of 8: block b holds tokens 8 (b mod 5) .. +8), the allocator is left empty of sequences, and
    a later prefill + decode gives the same tokens as on a zero cache (steps read only what they wrote)."""
    ids = torch.randint(3, 300, (43,), generator=torch.Generator().manual_seed(9))
    ref = PagedEngine(torch, gqa_model, "cpu", num_blocks=20, block_size=8, max_batch=4, max_model_len=64)
    s = ref.add(0)
    assert ref.reserve(s, 43)
    with torch.no_grad():
        ref.prefill([(s, ids, 0)])
    eng = PagedEngine(torch, gqa_model, "cpu", num_blocks=20, block_size=8, max_batch=4, max_model_len=64)
    free0 = eng.alloc.free
    assert eng.fill_kv(ids) == 5 and eng.alloc.free == free0 and not eng.seqs
    for i in range(len(eng.layers)):
        for cache, want in ((eng.k_cache[i], ref.k_cache[i]), (eng.v_cache[i], ref.v_cache[i])):
            toks = torch.cat([want[b] for b in s.blocks])  # the reference's K/V by token position
            for b in range(20):
                j = b % 5
                torch.testing.assert_close(cache[b], toks[8 * j:8 * j + 8], rtol=0, atol=0)
    assert bool((eng.k_cache[0].flatten(1) != 0).any(1).all())  # no block left all zeros

    def serve(e):
        q = torch.randint(3, 300, (2, 13), generator=torch.Generator().manual_seed(4))
        seqs = [e.add(i) for i in range(2)]
        out = []
        with torch.no_grad():
            for s_ in seqs:
                assert e.reserve(s_, 13)
            tok = e.prefill([(s_, q[i], 0) for i, s_ in enumerate(seqs)])
            out.append(tok)
            for _ in range(6):
                for s_ in seqs:
                    assert e.reserve(s_, s_.length + 1)
                tok = e.decode(seqs, tok.tolist())
                out.append(tok)
        return torch.stack(out, 1)

    zero = PagedEngine(torch, gqa_model, "cpu", num_blocks=20, block_size=8, max_batch=4, max_model_len=64)
    assert torch.equal(serve(eng), serve(zero))


def test_the_backend_refuses_an_unknown_kv_cache_content():
    from dcsim.errors import UserError

    with pytest.raises(UserError, match="--kv-data|model, zeros"):
        PagedBackend("cpu", arch="tiny-llama", dtype="fp32", kv_data="random")


def test_allocator_and_block_accounting():
    a = BlockAllocator(5, reserved=1)
    assert a.capacity == 4 and [a.alloc() for _ in range(4)] == [1, 2, 3, 4] and a.alloc() is None
    a.release([2, 3])
    assert a.free == 2 and sorted([a.alloc(), a.alloc()]) == [2, 3]
    with pytest.raises(ValueError):
        BlockAllocator(1)


def test_reserve_refuses_without_allocating_and_free_returns_blocks(gqa_model):
    eng = PagedEngine(torch, gqa_model, "cpu", num_blocks=5, block_size=4, max_batch=2, max_model_len=64)
    s, t = eng.add(0), eng.add(1)
    assert eng.reserve(s, 9) and len(s.blocks) == 3 and eng.alloc.free == 1
    assert not eng.reserve(t, 5) and t.blocks == [] and eng.alloc.free == 1  # all or nothing
    assert eng.reserve(s, 12) and len(s.blocks) == 3  # 12 tokens still fit 3 blocks of 4
    eng.free(s)
    assert eng.alloc.free == 4 and 0 not in eng.seqs


def test_graph_sizes_and_padding(gqa_model):
    assert default_graph_sizes(1) == [1]
    assert default_graph_sizes(20) == [1, 2, 4, 8, 16, 24]
    full = default_graph_sizes(512)
    assert full[:5] == [1, 2, 4, 8, 16] and full[-3:] == [480, 496, 512] and 256 in full and 264 not in full
    assert default_graph_sizes(600)[-1] == 600
    eng = PagedEngine(torch, gqa_model, "cpu", num_blocks=16, block_size=8, max_batch=8, max_model_len=64)
    assert [eng.graph_size(b) for b in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError):
        eng.graph_size(9)
    small = PagedEngine(torch, gqa_model, "cpu", num_blocks=16, block_size=8, max_batch=12, max_model_len=64,
                        graph_sizes=[1, 2, 4, 8])
    assert small.graph_size(10) == 10 and small.ensure_graph(10) is False  # above the sizes: eager, unpadded
    s = [eng.add(i) for i in range(3)]
    for x in s:
        eng.reserve(x, 10)
        x.length = 9
    g = eng.load_rows(s, [5, 6, 7])
    assert g == 4 and eng.pos[:4].tolist() == [9, 9, 9, 0] and eng.live[:4].tolist() == [1, 1, 1, 0]
    assert eng.bt[3].tolist() == [0] * eng.max_blocks  # the padding row points at the scratch block
    with torch.no_grad():
        eng.replay(g)
    assert eng.pos[:4].tolist() == [10, 10, 10, 0]  # the padding row does not advance


def test_mixed_steps_time_the_same_step_and_leave_no_growth(backend):
    calls = []
    tm = backend.run_step(3, 20, 7, 9, 4, 5, lambda: calls.append("start"))
    assert calls == ["start"] and tm.gen_tokens == 4 and tm.runtime_s > 0 and math.isnan(tm.ttft_s)
    assert tm.extra["graph_batch"] == 4 and tm.extra["context_per_seq"] == 20
    e = backend.eng
    assert sorted(s.length for s in e.seqs.values()) == [16, 19, 19, 19]  # prefix 9 + chunk 7; decodes reset
    assert backend.run_step(0, 0, 7, 0, 2, 5, lambda: None).extra["graph_batch"] == 0
    assert backend.run_step(5, 40, 0, 0, 2, 5, lambda: None).extra["graph_batch"] == 8
    with pytest.raises(ValueError):
        backend.run_step(0, 0, 0, 0, 2, 5, lambda: None)
    # several chunks: distinct lengths 7, 8, 9, each in its own sequence after 9 cached tokens, beside 2 decodes
    tm = backend.run_step(2, 20, 7, 9, 3, 5, lambda: None, chunks=3)
    assert tm.gen_tokens == 3 and tm.extra["graph_batch"] == 2
    assert sorted(s.length for s in backend.eng.seqs.values()) == [16, 17, 18, 19, 19]
    # decodes of different lengths: 4 contexts spread over 20 x (1 -/+ 0.5), the same 80 KV tokens in all
    from dcsim.calibrate.backends.paged import spread_contexts

    assert spread_contexts(20, 4, 0.5) == [10, 17, 23, 30] and spread_contexts(20, 4, 0.0) == [20] * 4
    assert sum(spread_contexts(333, 7, 0.9)) == 7 * 333 and min(spread_contexts(2, 5, 0.99)) >= 1
    tm = backend.run_step(4, 20, 0, 0, 3, 5, lambda: None, spread=0.5)
    assert tm.extra["contexts"] == [10, 17, 23, 30]
    assert sorted(s.length for s in backend.eng.seqs.values()) == [9, 16, 22, 29]  # each reads its context
    with pytest.raises(ValueError, match="spread"):
        backend.run_step(4, 20, 0, 0, 3, 5, lambda: None, spread=1.0)


def test_a_served_step_runs_the_same_step_as_the_server_loop_does_and_leaves_the_same_state(backend):
    """The served loop (plan step_loop: served) runs each repeat through the server's own calls: decode rows
    loaded from host lists, chunk ids sent from the host, tokens read back. Same step, same end state, and the
    row says which loop timed it."""
    queued = backend.run_step(3, 20, 7, 9, 4, 5, lambda: None, chunks=2)
    q_len = sorted(s.length for s in backend.eng.seqs.values())
    served = backend.run_step(3, 20, 7, 9, 4, 5, lambda: None, chunks=2, served=True)
    assert sorted(s.length for s in backend.eng.seqs.values()) == q_len == [16, 17, 19, 19, 19]
    assert served.gen_tokens == queued.gen_tokens == 4 and served.extra["graph_batch"] == 4
    assert served.extra["loop"] == "served" and "loop" not in queued.extra
    # its decode rows are the server's: each sequence feeds the token at position context - 1, in the fused
    # forward's rows ahead of the chunks' (9 cached, then 7 and 8 tokens)
    f = backend.eng.fused_bufs
    assert f.pos[:3].tolist() == [19, 19, 19] and f.pos[3:18].tolist() == list(range(9, 16)) + list(range(9, 17))
    tm = backend.run_step(0, 0, 7, 0, 2, 5, lambda: None, served=True)  # a prefill-only served step
    assert tm.extra["graph_batch"] == 0 and tm.extra["loop"] == "served"


def test_a_served_plan_has_its_own_digest_and_the_committed_step_plans_keep_theirs():
    import json

    from dcsim.calibrate.plan import Plan, load_plan
    from dcsim.calibrate.run import plan_digest

    for d in sorted((REPO / "calibrate" / "runs").glob("*paged*")):
        man = json.loads((d / "manifest.json").read_text())
        assert plan_digest(load_plan(d / "plan.yaml")) == man["identity"]["plan_sha256"], d.name
    base = {"name": "t", "steps": [{"name": "c", "decode_batch": [4], "decode_context": [64]}], "step_repeats": 4}
    assert Plan.model_validate(base).step_loop == "pipelined"
    assert plan_digest(Plan.model_validate(base)) == plan_digest(Plan.model_validate({**base,
                                                                                        "step_loop": "pipelined"}))
    assert plan_digest(Plan.model_validate(base)) != plan_digest(Plan.model_validate({**base, "step_loop": "served"}))
    with pytest.raises(ValueError, match="step_loop"):
        Plan.model_validate({**base, "step_loop": "async"})


def test_plan_steps_of_several_chunks_or_spread_contexts_have_their_own_ids_and_the_old_ones_stay():
    from dcsim.calibrate.plan import Plan, expand
    from dcsim.calibrate.run import plan_digest

    base = {"name": "t", "steps": [{"name": "c", "decode_batch": [0, 4], "decode_context": [64],
                                    "prefill_tokens": [0, 32]}], "step_repeats": 4}
    one = Plan.model_validate(base)
    ids = [p.id for p in expand(one)]
    assert ids == ["s-b0-l0-p32-h0", "s-b4-l64-p0-h0", "s-b4-l64-p32-h0"]
    assert plan_digest(one) == plan_digest(Plan.model_validate(
        {**base, "steps": [{**base["steps"][0], "prefill_chunks": [1]}]}))  # earlier runs resume
    many = Plan.model_validate({**base, "steps": [{**base["steps"][0], "prefill_chunks": [1, 3]}]})
    pts = expand(many)
    # the chunks axis multiplies the steps with a chunk only; decode-only steps stay one
    assert [p.id for p in pts] == ["s-b0-l0-p32-h0", "s-b0-l0-p32-h0-k3", "s-b4-l64-p0-h0", "s-b4-l64-p32-h0",
                                   "s-b4-l64-p32-h0-k3"]
    assert [p.chunks for p in pts] == [1, 3, 1, 1, 3]
    spread = Plan.model_validate({**base, "steps": [{**base["steps"][0], "decode_context_spread": [0, 0.5]}]})
    assert [p.id for p in expand(spread)] == ["s-b0-l0-p32-h0", "s-b4-l64-p0-h0", "s-b4-l64-p32-h0",
                                              "s-b4-l64-p0-h0-v0.5", "s-b4-l64-p32-h0-v0.5"]
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        Plan.model_validate({**base, "steps": [{**base["steps"][0], "decode_context_spread": [1.5]}]})


@pytest.mark.skipif(not CUDA, reason="the CUDA-graph and Triton paths need a CUDA device")
def test_cuda_triton_kernel_equals_the_reference(monkeypatch):
    for (heads, kvh, dim), split in itertools.product(((32, 32, 128), (32, 8, 128), (8, 2, 64)), (512, 32)):
        monkeypatch.setattr(PA, "TOKENS_PER_SPLIT", split)  # long sequences in pieces, short ones leaving some empty
        q, kc, vc, bt, lens = (x.cuda() for x in _ragged(heads, kvh, dim=dim))
        for dt in (torch.float32, torch.bfloat16):
            q2, kc2, vc2 = q.to(dt), kc.to(dt), vc.to(dt)
            ref = PA.decode_attention_naive(q2.float(), kc2.float(), vc2.float(), bt, lens, dim ** -0.5)
            got = PA.decode_attention_triton(q2, kc2, vc2, bt, lens, dim ** -0.5).float()
            tol = 1e-4 if dt == torch.float32 else 2e-2
            torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


@pytest.mark.skipif(not CUDA, reason="the CUDA-graph and Triton paths need a CUDA device")
def test_cuda_graph_decode_equals_generate_and_never_syncs():
    be = PagedBackend("cuda:0", arch="tiny-llama", dtype="fp32")
    be.load()
    be.prepare([(30, 12, 5), (8, 5, 1), (16, 4, 3)])
    for n_in, n_out, batch in ((8, 5, 1), (16, 4, 3), (30, 12, 5)):
        tm = be.run(n_in, n_out, batch, 11, lambda: None, lambda: None)
        assert tm.extra["graph"] is True and tm.extra["attention"] == "triton", tm.extra
        assert torch.equal(be.last_ids, _generate(be.model, be.prompt(n_in, batch, 11), n_out)), (n_in, n_out, batch)
    assert be.graph_failures == {}
    e = be.eng
    e.reset()
    s = [e.add(100 + i) for i in range(3)]
    for x in s:
        e.reserve(x, 40)
        x.length = 20
    g = e.load_rows(s, [5, 6, 7])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            e.replay(g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert e.pos[:3].tolist() == [25, 25, 25]
    tm = be.run_step(3, 20, 7, 9, 4, 5, lambda: None)
    assert tm.extra["graph"] is True and tm.extra["graph_batch"] == 4
    be.close()


@pytest.mark.skipif(not CUDA, reason="the CUDA-graph and Triton paths need a CUDA device")
def test_cuda_piecewise_graphs_give_the_split_steps_tokens_and_kv():
    """On CUDA a first fused step of 37 tokens (padded to 40), then one of 2 decodes and 3 chunks (32 tokens),
    replay their piecewise graphs and give the tokens and K/V of the split form (the decode graph, then the eager
    prefill)."""
    be = PagedBackend("cuda:0", arch="tiny-llama", dtype="fp32")
    be.load()
    gen = torch.Generator().manual_seed(9)
    prompts = [torch.randint(3, 300, (n,), generator=gen).cuda() for n in (20, 9, 13, 20, 5)]
    out = {}
    for mixed in ("split", "fused"):
        eng = PagedEngine(torch, be.model, "cuda:0", num_blocks=64, block_size=16, max_batch=8, max_model_len=64,
                          mixed=mixed)
        seqs = [eng.add(i) for i in range(5)]
        for sq in seqs:
            assert eng.reserve(sq, 24)
        with torch.no_grad():
            first = eng.step([], None, [(seqs[0], prompts[0], 0), (seqs[1], prompts[1], 0),
                                        (seqs[3], prompts[3][:8], 0)])[1]
            d, c = eng.step(seqs[:2], first[:2], [(seqs[2], prompts[2], 0), (seqs[3], prompts[3][8:], 8),
                                                  (seqs[4], prompts[4], 0)])
        out[mixed] = (d.tolist(), c.tolist(), [torch.cat([cache[b] for b in sq.blocks])[:sq.length]
                                               for cache in eng.k_cache for sq in seqs])
        if mixed == "fused":
            assert eng.piece_size(37) == 40 and eng.piece_size(33) == 40 and sorted(eng.pieces) == [32, 40]
            assert eng.graph_errors == {}
    assert out["fused"][:2] == out["split"][:2]
    for x, y in zip(out["fused"][2], out["split"][2]):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-3)
    be.close()


# ---- calibration through the paged backend ----------------------------------------------------------------------
SMOKE = REPO / "calibrate" / "plans" / "paged-mixed-steps-smoke.yaml"


def _rows(d: Path) -> list[dict]:
    import csv

    with open(d / "runs.csv") as f:
        return list(csv.DictReader(f))


def test_calibration_with_mixed_steps_resumes_and_fits(tmp_path, monkeypatch):
    from test_calibrate_run import StandInMeter

    from dcsim.calibrate import store
    from dcsim.calibrate.plan import expand, load_plan
    from dcsim.calibrate.run import Settings, calibrate
    from dcsim.cli import main as cli
    from dcsim.profiles.importers import calibrate_runs

    out = tmp_path / "run"

    def sweep() -> dict:
        s = Settings(out=out, plan_path=SMOKE, device="cpu", identity={"backend": "paged", "arch": "tiny-llama"},
                     progress=False)
        return calibrate(s, PagedBackend("cpu", arch="tiny-llama", dtype="fp32"), StandInMeter())

    pts = expand(load_plan(SMOKE))
    steps = [p for p in pts if p.kind == "step"]
    assert len(steps) == 4 + 4 + 2 + 2 and len(pts) - len(steps) == 11
    assert sweep() == {"status": "complete", "runs": 2 * len(pts), "left": 0}
    rows = _rows(out)
    assert list(rows[0]) == list(store.COLUMNS)
    step_rows = [r for r in rows if r["phase"] == "step"]
    assert len(step_rows) == 2 * len(steps) and {r["status"] for r in rows} == {"ok"}
    for r in step_rows:
        p = next(x for x in steps if x.id == r["point"])
        assert (int(r["batch"]), int(r["n_in"]), int(r["n_out"])) == (p.batch, p.n_in, 4)
        assert int(r["context"]) == p.batch * p.context and int(r["prefill_prefix"]) == p.prefix
        assert (r["prefill_chunks"] or "1") == str(p.chunks)  # written where a step has several
        g = int(r["graph_batch"])
        assert (g == 0) if p.batch == 0 else (g >= p.batch and g in default_graph_sizes(g))
        e, rt = float(r["energy_device_j"]), float(r["runtime_s"])
        assert 50.0 * rt <= e <= 50.0 * (rt + 0.01)  # the meter window encloses the K steps, and only just
        assert r["ttft_s"] == "" and int(r["gen_tokens"]) == 4
    for r in rows:
        if r["phase"] in ("run", "warmup"):
            assert r["context"] == r["graph_batch"] == "" and "cache_len" not in r["extra"]
    # a killed session lost its last two rows: the same command runs exactly those again
    text = (out / "runs.csv").read_text().splitlines(keepends=True)
    (out / "runs.csv").write_text("".join(text[:-2]))
    lost = {r["entry"] for r in rows[-2:]}
    assert sweep()["runs"] == 2
    again = _rows(out)
    assert {r["entry"] for r in again[-2:]} == lost
    # and the session's own model load and warm-up
    assert len(again) == len(rows) + 2 and [r["phase"] for r in again[-4:-2]] == ["load", "warmup"]
    assert sweep()["runs"] == 0
    # the fit reads the run rows (the step rows are left for the mixed-step fit); tiny runs are far shorter than
    # the energy counter's 0.5 s floor, which a stand-in meter does not have
    monkeypatch.setattr(calibrate_runs.load, "__defaults__", (None, 0.0, None))
    table, _ = calibrate_runs.load(out)
    assert (table["kind"] == "run").sum() == sum(r["phase"] in ("run", "warmup") for r in _rows(out))
    prof = tmp_path / "p.yaml"
    assert cli(["fit", str(out), "-o", str(prof), "--no-plot"]) == 0
    from dcsim.profiles.profile import load_profile

    p = load_profile(prof)
    assert p.engine.name == "paged" and not p.engine.cache_lengths


def test_plans_without_steps_keep_their_digest_and_old_columns_still_append(tmp_path):
    import json

    from dcsim.calibrate import store
    from dcsim.calibrate.plan import load_plan
    from dcsim.calibrate.run import plan_digest

    d = REPO / "calibrate" / "runs" / "h200-llama-2-7b-hf-graph-standard-b"
    man = json.loads((d / "manifest.json").read_text())
    assert plan_digest(load_plan(d / "plan.yaml")) == man["identity"]["plan_sha256"]
    old = tmp_path / "runs.csv"
    old.write_text(",".join(store.LEGACY_COLUMNS) + "\n")
    assert store.columns_of(old) == store.LEGACY_COLUMNS and store.columns_of(tmp_path / "new.csv") == store.COLUMNS
    w = store.RowWriter(old, store.columns_of(old))
    w.write({"entry": "x", "phase": "run", "context": 5})
    w.close()
    assert store.read_rows(old)[0]["entry"] == "x"


def test_the_command_offers_paged_and_refuses_steps_on_other_backends(tmp_path, capsys):
    from dcsim.commands.calibrate import main

    args = ["--device", "cpu", "--model-arch", "tiny-llama", "--dtype", "fp32", "--plan", str(SMOKE),
            "--latency-only", "--no-progress"]
    assert main(args + ["--backend", "hf-graph", "--out", str(tmp_path / "g")]) == 2
    assert "--backend paged" in capsys.readouterr().err and not (tmp_path / "g").exists()
    assert main(args + ["--backend", "paged", "--out", str(tmp_path / "p")]) == 0
    assert {r["backend"] for r in _rows(tmp_path / "p")} == {"paged"}


# ---- serving replay on the paged engine -------------------------------------------------------------------------
def serve_on_cpu(wl, pol, out: Path, prompts: dict | None = None):
    """Replay `wl` under `pol` on the tiny model on the CPU, the engine sized for its longest request and warmed up
    as `dcsim validate` does: (backend, the window's facts)."""
    from test_calibrate_run import StandInMeter

    from dcsim.validate import paged_replay as PR

    be = PagedBackend("cpu", arch="tiny-llama", dtype="fp32")
    be.load()
    be.kv_blocks, be.graph_sizes = pol.kv_blocks, PR.capture_sizes(pol.max_num_seqs)
    longest = int((wl["n_in"] + wl["n_out"]).max())
    be.engine(pol.kv_blocks, pol.max_num_seqs, longest)
    PR.warm_up(be, pol, longest, lambda m: None)
    return be, PR.serve(wl, be, StandInMeter(), pol, out, tail_s=0.05, settle_s=0.0, prompts=prompts)


def test_paged_replay_serves_every_request_its_greedy_tokens_through_a_preemption(tmp_path):
    """Six requests on a pool of 12 blocks of 16 tokens, at most 4 running, 32 tokens a step, no prefix caching
    (tests/test_paged_prefix_cache.py has it on): the longest request is
    preempted when the decodes outgrow the pool and recomputes its prompt plus what it had generated; every
    request still gets exactly generate's greedy tokens, the scheduler never exceeds its limits, and every block
    comes back."""
    import pandas as pd

    from dcsim.validate import compare
    from dcsim.validate import paged_replay as PR

    # all at once, so that the schedule does not depend on how fast this machine steps
    wl = pd.DataFrame({"n_in": [20, 40, 8, 30, 12, 50], "n_out": [30, 10, 25, 20, 5, 15], "arrival_s": [0.0] * 6})
    pol = PR.PagedPolicy(max_num_seqs=4, max_num_batched_tokens=32, kv_blocks=12, enable_prefix_caching=False)
    be, res = serve_on_cpu(wl, pol, tmp_path)
    req = pd.read_csv(tmp_path / "requests.csv").sort_values("id").reset_index(drop=True)
    tok = pd.read_csv(tmp_path / "tokens.csv")
    steps = pd.read_csv(tmp_path / "steps.csv")
    assert list(req["id"]) == list(range(6)) and (req["gen_tokens"] == wl["n_out"]).all()
    for r in req.itertuples():
        ref = _generate(be.model, be.prompt(r.n_in, 1, 10_000 + r.id), r.n_out)[0, r.n_in:].tolist()
        mine = tok[tok["id"] == r.id].sort_values("k")
        assert mine["token"].tolist() == ref, r.id
        assert mine["t_s"].iloc[0] == r.first_token_s and mine["t_s"].iloc[-1] == r.end_s
        assert (mine["t_s"].diff().dropna() > 0).all()  # one token per step
        assert r.arrival_s <= r.start_s < r.first_token_s <= r.end_s
        # a preempted request recomputed its prompt plus the tokens it had when it was preempted
        assert (r.prefill_tokens > r.n_in) == (r.preemptions > 0)
    assert res["preemptions"] == req["preemptions"].sum() == steps["preemptions"].sum() >= 1
    assert (steps["decodes"] + steps["prefill_tokens"] <= 32).all() and (steps["running"] <= 4).all()
    assert (steps["graph_batch"] >= steps["decodes"]).all() and steps["free_blocks"].min() >= 0
    # what each step's cost reads: every prompt token computed in some step; a whole first chunk (nothing before
    # it) pairs p x p; decodes read at least their own token each, and without decodes none
    assert steps["prefill_tokens"].sum() == req["prefill_tokens"].sum()
    whole = steps[(steps["chunks"] == 1) & (steps["chunk_prefix"] == 0)]
    assert len(whole) and (whole["chunk_pairs"] == whole["prefill_tokens"] ** 2).all()
    assert (steps["chunk_pairs"] >= steps["prefill_tokens"] ** 2 / steps["chunks"].clip(lower=1)).all()
    assert (steps["decode_context"] > steps["decodes"]).where(steps["decodes"] > 0, True).all()
    assert (steps.loc[steps["decodes"] == 0, "decode_context"] == 0).all()
    assert ((steps["prefixed_chunks"] > 0) == (steps["chunk_prefix"] > 0)).all()
    assert (steps["prefixed_chunks"] <= steps["chunks"]).all() and steps["prefixed_chunks"].sum() >= 1
    assert res["energy_j"] > res["active_j"] > 0 and res["busy_s"] <= res["window_s"]
    # the comparison reads these rows as a continuous-batching replay's: per request
    meta = {**res, "policy": {"policy": "paged", **pol.params()}}
    m = compare.measured_metrics(req, meta)
    assert m["wait_mean_s"] == pytest.approx((req["start_s"] - req["arrival_s"]).mean())
    assert pol.params()["enable_prefix_caching"] is False and "policy" not in pol.params()


def test_paged_policy_refuses_bad_settings():
    from dcsim.validate.paged_replay import PagedPolicy

    with pytest.raises(ValueError, match="token budget"):
        PagedPolicy(max_num_seqs=4, max_num_batched_tokens=8)
    assert PagedPolicy().enable_prefix_caching is True  # vLLM's default and the simulator's


def test_paged_replay_schedules_as_the_simulator_does_under_preemption(tmp_path):
    """Both follow vLLM v1's scheduler. With every request arriving at once the schedule does not depend on how
    fast steps run, so the replay on the CPU and the simulator must admit, preempt and finish the same requests
    in the same steps: ten requests on 16 blocks of 16 tokens, at most 4 running, 32 tokens a step, no prefix
    caching. Preemptions happen as decodes outgrow the pool and as a partial prefill needs blocks; no request is
    admitted in a step that preempted, and a chunk is never shrunk to the free blocks."""
    import json

    import pandas as pd

    from dcsim.validate import compare
    from dcsim.validate import paged_replay as PR

    wl = pd.DataFrame({"n_in": [40, 70, 12, 55, 30, 90, 20, 64, 8, 45],
                       "n_out": [60, 20, 70, 40, 50, 10, 80, 30, 40, 25], "arrival_s": [0.0] * 10})
    pol = PR.PagedPolicy(max_num_seqs=4, max_num_batched_tokens=32, kv_blocks=16, enable_prefix_caching=False)
    _, res = serve_on_cpu(wl, pol, tmp_path)
    got = pd.read_csv(tmp_path / "requests.csv").sort_values("id").reset_index(drop=True)
    wl.to_csv(tmp_path / "workload.csv", index=False)
    meta = {**res, "policy": {"policy": "paged", **pol.params()}}
    (tmp_path / "replay.json").write_text(json.dumps(meta))
    _, sim, _, _ = compare.forecast(tmp_path, meta, REPO / "profiles" / "h200--llama-2-7b--paged-bf16.yaml")
    sim = sim.sort_values("id").reset_index(drop=True)

    def steps_of(times: pd.Series) -> list[list[int]]:
        """Requests grouped by the step (equal time) they were first scheduled in or finished in, in order."""
        t = times.round(9)
        return [sorted(int(i) for i in got["id"][t == v]) for v in sorted(t.unique())]

    assert res["preemptions"] == int(sim["preemptions"].sum()) >= 3
    assert got["preemptions"].tolist() == sim["preemptions"].astype(int).tolist()
    assert steps_of(got["start_s"]) == steps_of(sim["start_s"])  # admissions, in the same steps
    assert steps_of(got["end_s"]) == steps_of(sim["done_s"])  # and finishes
    # requests compare by identity: the loop's `in running` and `remove` must not compare prompts and outputs
    a, b = PR._Req(0, 0.0, 8, 4), PR._Req(0, 0.0, 8, 4)
    assert a != b and a in [a] and b not in [a]


def test_a_runs_csv_written_before_the_chunks_column_is_read_and_appended_to_as_it_is(tmp_path):
    """The committed mixed-step runs have every column but prefill_chunks: they resume with their own header
    (tests/test_profiles_shipped.py refits their profile from them, one chunk a step)."""
    import csv

    from dcsim.calibrate import store

    src = REPO / "calibrate" / "runs" / "h200b-llama-2-7b-paged-paged-mixed-steps" / "runs.csv"
    with src.open() as f:
        head = next(csv.reader(f))
    assert head == list(store.STEP_V1_COLUMNS) and "prefill_chunks" not in head
    path = tmp_path / "runs.csv"
    path.write_text(src.read_text())
    assert store.columns_of(path) == store.STEP_V1_COLUMNS
    assert len(store.read_rows(path)) == len(src.read_text().splitlines()) - 1
