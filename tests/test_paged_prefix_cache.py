"""Prefix caching in the `paged` engine and its serving replay, on the CPU with a tiny random-weight Llama: shared
full blocks give the same greedy tokens as unshared prefills, the hit counts of hand-made workloads are the ones
worked out by hand and the simulator's, a tiny pool evicts cached blocks (least recently freed, tail first) and every
request still gets its own greedy tokens, and every block ends free or cached with no reference left.

Needs torch and transformers (pip install torch==2.13.0 transformers); skipped without them."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
pytest.importorskip("transformers", reason="transformers not installed (pip install transformers)")

import pandas as pd  # noqa: E402

from dcsim.calibrate.backends.paged import BlockAllocator, PagedEngine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "h200--llama-2-7b--paged-bf16.yaml"


def _generate(model, ids, n_out: int):
    """Greedy ids after `ids` [1, n] by full forwards of the transformers model, no cache and no logits processor
    (generate's min_new_tokens would mask the end-of-sequence id, which a forced-length engine may pick)."""
    with torch.no_grad():
        for _ in range(n_out):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(3, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _serve_one(eng: PagedEngine, sid: int, tokens: list[int], n_out: int) -> tuple[list[int], object]:
    """Prefill `tokens` after the cached blocks they start with, then greedy decodes; its blocks committed as they
    are filled. Returns (output ids, sequence)."""
    hit = eng.match(tokens)
    s = eng.add(sid, hit)
    h = s.length
    assert eng.reserve(s, len(tokens))
    eng.commit(s, tokens, len(tokens))
    with torch.no_grad():
        tok = eng.prefill([(s, torch.tensor(tokens[h:]), h)])
        out = [int(tok)]
        for _ in range(n_out - 1):
            assert eng.reserve(s, s.length + 1)
            eng.commit(s, tokens + out, s.length + 1)
            out.append(int(eng.decode([s], [out[-1]])[0]))
    return out, s


# ---- the engine -----------------------------------------------------------------------------------------------
def test_shared_prefix_blocks_give_the_unshared_tokens_and_are_never_written(model):
    """A and B share a 40-token prefix (blocks of 16): B points its table at A's first two blocks (32 tokens),
    prefills the rest, and both decode in one batch to generate's greedy tokens; the shared blocks' K/V do not
    change, and a chunk that would write into one is refused."""
    eng = PagedEngine(torch, model, "cpu", num_blocks=32, block_size=16, max_batch=4, max_model_len=128,
                      prefix_caching=True)
    pre = _ids(40, 1)
    a_tok, b_tok = pre + _ids(10, 2), pre + _ids(12, 3)
    a_out, a = _serve_one(eng, 0, a_tok, 1)
    assert a.shared == 0 and eng.alloc.cached == 3  # 50 tokens: three full blocks
    assert eng.match(b_tok) == a.blocks[:2] and eng.match(a_tok) == a.blocks[:3]
    assert eng.match(a_tok[:48]) == a.blocks[:2]  # the last token is always computed
    hit = eng.match(b_tok)
    b = eng.add(1, hit)
    assert b.length == 32 and b.shared == 2 and [eng.alloc.ref[x] for x in hit] == [2, 2]
    assert eng.reserve(b, len(b_tok))
    with pytest.raises(ValueError, match="shares"):
        eng.prefill([(b, torch.tensor(b_tok[16:]), 16)])
    eng.commit(b, b_tok, len(b_tok))
    snap = [eng.k_cache[0][x].clone() for x in hit]
    with torch.no_grad():
        b_out = [int(eng.prefill([(b, torch.tensor(b_tok[32:]), 32)]))]
        outs = [a_out, b_out]
        for _ in range(9):
            for s, o, t in ((a, outs[0], a_tok), (b, outs[1], b_tok)):
                assert eng.reserve(s, s.length + 1)
                eng.commit(s, t + o, s.length + 1)
            nxt = eng.decode([a, b], [outs[0][-1], outs[1][-1]]).tolist()
            outs[0].append(nxt[0])
            outs[1].append(nxt[1])
    for t, o in ((a_tok, outs[0]), (b_tok, outs[1])):
        ids = torch.tensor([t])
        assert o == _generate(model, ids, 10)[0, len(t):].tolist()
    for x, k0 in zip(hit, snap):
        assert torch.equal(eng.k_cache[0][x], k0)
    eng.free(a)
    eng.free(b)
    assert eng.alloc.free == eng.alloc.capacity and not any(eng.alloc.ref)
    assert len(eng.alloc.lru) == eng.alloc.cached > 0  # all cached blocks evictable


def test_cached_blocks_are_evicted_tail_first_only_when_the_free_list_is_empty(model):
    eng = PagedEngine(torch, model, "cpu", num_blocks=6, block_size=4, max_batch=2, max_model_len=64,
                      prefix_caching=True)
    a_tok = _ids(13, 5)
    a_out, a = _serve_one(eng, 0, a_tok, 1)
    blocks = list(a.blocks)
    eng.free(a)
    assert eng.alloc.cached == 3 and len(eng.alloc.free_ids) == 2 and eng.alloc.free == 5
    assert list(eng.alloc.lru) == [blocks[2], blocks[1], blocks[0]]  # the tail first
    c_out, c = _serve_one(eng, 1, _ids(9, 6), 1)  # 3 blocks: both free ones, then one evicted
    assert eng.alloc.evicted == 1 and blocks[2] in c.blocks and eng.match(a_tok) == blocks[:2]
    eng.free(c)
    # A's prompt again: two blocks from the cache, the rest recomputed; the same tokens as a cold run
    again, s = _serve_one(eng, 2, a_tok, 6)
    assert s.shared == 2
    assert again[0] == a_out[0] and again == _generate(model, torch.tensor([a_tok]), 6)[0, 13:].tolist()
    eng.free(s)
    assert eng.alloc.free == eng.alloc.capacity and not any(eng.alloc.ref)


def test_allocator_refcounts_and_registration():
    a = BlockAllocator(6, reserved=1)
    x, y = a.alloc(), a.alloc()
    a.register(x, (None, (1, 2)), 11)
    a.register(y, (None, (1, 2)), 11)  # a key already cached keeps its block
    assert a.table == {(None, (1, 2)): x} and a.key[y] is None
    a.share(x)
    assert a.ref[x] == 2
    with pytest.raises(ValueError):
        a.share(y)
    a.release([x, y])
    assert a.ref[x] == 1 and y in a.free_ids and not a.lru
    a.release([x])
    assert list(a.lru) == [x] and a.free == 5 and a.evictable([x, y]) == 2
    with pytest.raises(RuntimeError):
        a.release([x])
    got = [a.alloc() for _ in range(5)]
    assert got[-1] == x and a.evicted == 1 and a.cached == 0 and a.alloc() is None


# ---- the serving replay ---------------------------------------------------------------------------------------
def _replay(tmp_path: Path, wl: pd.DataFrame, caching: bool = True, name: str = "r", **policy):
    from test_paged_backend import serve_on_cpu

    from dcsim.validate import paged_replay as PR

    out = tmp_path / name
    out.mkdir()
    pol = PR.PagedPolicy(enable_prefix_caching=caching, **policy)
    prompts: dict[int, list[int]] = {}
    be, res = serve_on_cpu(wl, pol, out, prompts)
    req = pd.read_csv(out / "requests.csv").sort_values("id").reset_index(drop=True)
    tok = pd.read_csv(out / "tokens.csv")
    outs = {i: g.sort_values("k")["token"].tolist() for i, g in tok.groupby("id")}
    e = be.eng
    # every block free or cached, no reference left
    assert e.alloc.free == e.alloc.capacity and not any(e.alloc.ref) and not e.seqs
    assert len(e.alloc.lru) == e.alloc.cached and len(e.alloc.free_ids) + e.alloc.cached == e.alloc.capacity
    return {"res": res, "req": req, "outs": outs, "prompts": prompts, "be": be, "pol": pol, "out": out,
            "steps": pd.read_csv(out / "steps.csv")}


def _check_greedy(run: dict) -> None:
    be = run["be"]
    for i, p in run["prompts"].items():
        n_out = int(run["req"].loc[run["req"]["id"] == i, "n_out"].iloc[0])
        assert run["outs"][i] == _generate(be.model, torch.tensor([p]), n_out)[0, len(p):].tolist(), i


def _simulated_cached(tmp_path: Path, wl: pd.DataFrame, pol) -> list[int]:
    """The simulator's cached tokens per request for the same workload and scheduler settings, as `dcsim
    validate` forecasts a replay (compare.scenario_for over workload.csv)."""
    from dcsim.results import requests_table
    from dcsim.sim.engine import simulate
    from dcsim.validate import compare

    folder = tmp_path / "sim"
    folder.mkdir(exist_ok=True)
    wl.to_csv(folder / "workload.csv", index=False)
    sc = compare.scenario_for(folder, {"policy": {"policy": "paged", **pol.params()}}, PROFILE)
    assert sc.fleet[0].batching.model_dump()["enable_prefix_caching"] is pol.enable_prefix_caching
    req = requests_table(simulate(sc, None))
    assert (req["status"] == "done").all()
    return req.sort_values("id")["cached_tokens"].astype(int).tolist()


def _wl(n_in, n_out, pid, plen, arrival=None) -> pd.DataFrame:
    wl = pd.DataFrame({"n_in": n_in, "n_out": n_out, "arrival_s": arrival or [0.0] * len(n_in)})
    wl["prefix_id"] = pd.array([p if p >= 0 else None for p in pid], dtype="Int64")
    wl["prefix_len"] = plen
    return wl


def test_three_requests_sharing_a_40_token_prefix_hit_32_tokens_each_after_the_first(tmp_path):
    """Blocks of 16, a 50-token budget: the first request's prompt fills step 1; the other two come in at step 2
    and reuse its first two blocks (tokens 0..31; the third block holds its own tokens 40..47). The simulator
    counts the same."""
    wl = _wl([50, 50, 50], [4, 4, 4], [7, 7, 7], [40, 40, 40])
    run = _replay(tmp_path, wl, max_num_seqs=4, max_num_batched_tokens=50, kv_blocks=64)
    assert run["req"]["cached_tokens"].tolist() == [0, 32, 32]
    assert run["req"]["prefill_tokens"].tolist() == [50, 18, 18]
    assert run["res"]["prefix_hit_tokens"] == 64 and run["res"]["prefix_query_tokens"] == 150
    assert run["steps"]["cached_tokens"].sum() == 64
    p = run["prompts"]
    assert p[0][:40] == p[1][:40] == p[2][:40] and p[0][40] != p[1][40]
    _check_greedy(run)
    assert _simulated_cached(tmp_path, wl, run["pol"]) == [0, 32, 32]


def test_a_conversation_reuses_the_earlier_turn_and_its_generated_tokens(tmp_path):
    """Turn 2 (80 tokens, 60 of them turn 1's 40-token prompt and 20 outputs) comes while turn 1 decodes: it
    shares turn 1's two full prompt blocks (32 tokens; its outputs are stand-ins then). Turn 3 comes after turn 2
    has finished: its prompt is turn 2's prompt and generated tokens, and it shares turn 2's whole sequence's full
    blocks ((80 + 10 - 1) // 16 = 5 blocks, 80 tokens). The simulator counts the same."""
    wl = _wl([40, 80, 100], [20, 10, 5], [0, 0, 0], [0, 60, 90], arrival=[0.0, 0.0, 1.5])
    run = _replay(tmp_path, wl, max_num_seqs=4, max_num_batched_tokens=40, kv_blocks=64)
    assert run["req"]["cached_tokens"].tolist() == [0, 32, 80]
    p, o = run["prompts"], run["outs"]
    assert p[1][:40] == p[0] and p[1][40:60] != o[0]  # turn 1 had not finished: stand-ins for its outputs
    assert p[2][:90] == p[1] + o[1]  # turn 2 had: its own tokens
    assert run["req"]["start_s"].iloc[2] > run["req"]["end_s"].iloc[1]
    _check_greedy(run)
    assert _simulated_cached(tmp_path, wl, run["pol"]) == [0, 32, 80]


def test_greedy_tokens_are_the_same_with_prefix_caching_on_and_off(tmp_path):
    """Two system prompts shared by five of seven requests, chunked under a 32-token budget with four running: the
    cache serves prompt tokens (some in the step that computes them) and every request's tokens are those without
    it, and generate's."""
    wl = _wl([40, 50, 30, 35, 60, 20, 45], [12, 8, 10, 15, 6, 9, 7], [0, 0, 1, 0, 1, -1, 0],
             [33, 33, 20, 33, 20, 0, 33])
    on = _replay(tmp_path, wl, True, "on", max_num_seqs=4, max_num_batched_tokens=32, kv_blocks=40)
    off = _replay(tmp_path, wl, False, "off", max_num_seqs=4, max_num_batched_tokens=32, kv_blocks=40)
    assert on["prompts"] == off["prompts"] and on["outs"] == off["outs"]
    _check_greedy(on)
    assert off["req"]["cached_tokens"].sum() == 0 and off["res"]["prefix_hit_tokens"] == 0
    assert on["req"]["cached_tokens"].sum() > 0 and (on["req"]["cached_tokens"] % 16 == 0).all()
    assert on["req"]["prefill_tokens"].sum() < off["req"]["prefill_tokens"].sum()
    assert (on["req"]["cached_tokens"][wl["prefix_len"] == 0] == 0).all()  # nothing shared, nothing cached


def test_a_tiny_pool_evicts_a_cached_block_and_every_request_keeps_its_tokens(tmp_path):
    """Eight blocks of 16, one request at a time: request 0 leaves two cached prefix blocks; request 1 (109
    tokens, seven blocks) takes the six free ones and evicts the tail of those two; request 2, with request 0's
    prefix, reuses the head block that is left (16 tokens) and caches the second again, which request 3 then
    reuses (32). The simulator's block pool evicts the same."""
    wl = _wl([40, 70, 40, 40], [8, 40, 8, 8], [0, -1, 0, 0], [40, 0, 40, 40])
    run = _replay(tmp_path, wl, max_num_seqs=1, max_num_batched_tokens=128, kv_blocks=8)
    assert run["req"]["cached_tokens"].tolist() == [0, 0, 16, 32]
    assert run["res"]["blocks_evicted"] >= 1
    _check_greedy(run)
    assert _simulated_cached(tmp_path, wl, run["pol"]) == [0, 0, 16, 32]


def test_preemption_with_shared_prefixes_keeps_every_token_and_block(tmp_path):
    """The preemption workload of test_paged_backend (four running, 32-token steps) with prefixes shared, on 8
    blocks: requests are preempted, and a readmitted one finds its own blocks still cached (more tokens hit than
    first admissions had), while cached blocks are evicted for others; every request gets its greedy tokens and
    every block comes back."""
    wl = _wl([20, 40, 8, 30, 12, 50], [30, 10, 25, 20, 5, 15], [0, 0, -1, 0, 1, 1], [16, 20, 0, 20, 12, 12])
    run = _replay(tmp_path, wl, max_num_seqs=4, max_num_batched_tokens=32, kv_blocks=8)
    req = run["req"]
    assert run["res"]["preemptions"] == req["preemptions"].sum() >= 1 and run["res"]["blocks_evicted"] >= 1
    assert run["res"]["prefix_hit_tokens"] > req["cached_tokens"].sum() > 0
    _check_greedy(run)
    assert (req["gen_tokens"] == wl["n_out"]).all()


def test_the_workload_carries_prefix_columns_and_the_forecast_simulates_prefix_caching(tmp_path):
    """A conversation trace (session_id) gives workload.csv prefix_id and prefix_len (cut to the clipped prompts),
    which the forecast's trace reads back; replay.json's policy records prefix caching on, and the forecast's
    batching has it."""
    from dcsim.profiles.profile import load_profile
    from dcsim.traces.trace import load_trace
    from dcsim.validate import compare
    from dcsim.validate import paged_replay as PR
    from dcsim.validate import workload as W

    trace = tmp_path / "t.csv"
    trace.write_text("n_in,n_out,arrival_s,session_id\n40,20,0,a\n30,5,0.1,\n80,10,0.2,a\n200,10,0.3,a\n50,3,0.4,b\n")
    wl = W.build(W.WorkloadSpec(trace=str(trace), clip_in=150), load_profile(PROFILE))
    assert wl["prefix_len"].tolist() == [0, 0, 60, 90, 0]
    assert wl["prefix_id"].isna().tolist() == [False, True, False, False, False]
    wl.to_csv(tmp_path / "workload.csv", index=False)
    back = W.read(tmp_path / "workload.csv")
    assert PR.prefix_of(back) == ([0, -1, 0, 0, 1], [0, 0, 60, 90, 0])
    tr = load_trace(tmp_path / "workload.csv")
    assert tr.prefix_len.tolist() == [0, 0, 60, 90, 0] and tr.prefix_id[1] == -1
    assert tr.prefix_id[0] == tr.prefix_id[2] == tr.prefix_id[3] != tr.prefix_id[4]
    pol = PR.PagedPolicy()
    assert pol.enable_prefix_caching is True and pol.params()["enable_prefix_caching"] is True
    sc = compare.scenario_for(tmp_path, {"policy": {**pol.__dict__, "kv_blocks": 100}}, PROFILE)
    assert sc.fleet[0].batching.model_dump()["enable_prefix_caching"] is True
    off = compare.scenario_for(tmp_path, {"policy": {**PR.PagedPolicy(enable_prefix_caching=False).__dict__}},
                               PROFILE)
    assert off.fleet[0].batching.model_dump()["enable_prefix_caching"] is False
    # a trace without prefixes keeps the three columns it always had
    plain = tmp_path / "plain.csv"
    plain.write_text("n_in,n_out,arrival_s\n10,5,0\n20,5,1\n")
    assert list(W.build(W.WorkloadSpec(trace=str(plain)), load_profile(PROFILE)).columns) == list(W.COLUMNS)
