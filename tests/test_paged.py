"""The paged (vLLM v1-style) policy against timelines worked by hand: chunked prefill beside decodes, a
preemption in a tiny block pool, prefix-cache hits, graph padding; and conservation of requests, tokens, KV
blocks and joules on a busy random workload."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from simkit import profile_dict, scenario, write_profile, write_trace

from dcsim.profiles.profile import load_profile
from dcsim.results import requests_table, summarize
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate
from dcsim.traces.trace import Trace

# Toy profile (tests/simkit.py): prefill 0.1 + 0.001*tokens s at 300 W; decode step 0.02 + 0.001*batch s at
# 200 + 10*batch W; serving idle 50 W. No context term, so decode steps depend on the batch alone.


def run(tmp_path, prof, trace, batching, **kw):
    sc = Scenario.model_validate(scenario(trace, [{"name": "p", "profile": str(prof), "count": 1,
                                                   "batching": {"policy": "paged", **batching}}], **kw))
    raw = simulate(sc)
    return raw, requests_table(raw), summarize(raw)


def pf(tokens, sq=0.0, c2=0.0):
    return 0.1 + 0.001 * tokens + c2 * sq


def dec(b):
    return 0.02 + 0.001 * b


def dec_w(b):
    return 200.0 + 10.0 * b


def test_long_prompt_chunked_over_three_steps_while_two_decodes_continue(tmp_path):
    # a tokens_sq term, to check that chunk h..h+p adds (h+p)^2 - h^2 (the three chunks add up to 150^2)
    d = profile_dict()
    c2 = 1e-6
    d["latency"]["prefill_s"]["coef"]["tokens_sq"] = c2
    prof = tmp_path / "toy.yaml"
    prof.write_text(yaml.safe_dump(d))
    tr = write_trace(tmp_path, [10, 10, 150], [20, 20, 2], [0.0, 0.0, 0.2])
    raw, req, s = run(tmp_path, prof, tr, {"max_num_seqs": 8, "max_num_batched_tokens": 64,
                                           "cudagraph_batch_sizes": [], "enable_prefix_caching": False})
    t1 = pf(20, 200, c2)  # A and B prefill together: first tokens at t1
    # decodes of A and B: C arrives at 0.2 during the 4th step, which completes first
    t = t1 + 4 * dec(2)
    assert t1 + 3 * dec(2) < 0.2 < t
    c_start = t
    chunks = [(0, 62), (62, 62), (124, 26)]  # budget 64 minus the two decodes
    for h, p in chunks:
        t += dec(2) + pf(p, (h + p) ** 2 - h ** 2, c2)
    c_first = t
    t += dec(3)  # C's one decode step, beside A and B
    c_done = t
    ab_done = t + (19 - 4 - 3 - 1) * dec(2)  # 19 decode steps each
    assert req["start_s"].tolist() == pytest.approx([0.0, 0.0, c_start])
    assert req["first_token_s"].tolist() == pytest.approx([t1, t1, c_first])
    assert req["done_s"].tolist() == pytest.approx([ab_done, ab_done, c_done])
    # energy: C pays its three chunks' prefill parts and a third of its decode step; A and B share the rest
    e_c = sum(pf(p, (h + p) ** 2 - h ** 2, c2) * 300 for h, p in chunks) + dec(3) * dec_w(3) / 3
    e_a = t1 * 300 / 2 + (4 + 3 + 11) * dec(2) * dec_w(2) / 2 + dec(3) * dec_w(3) / 3
    assert req["energy_j"].tolist() == pytest.approx([e_a, e_a, e_c])
    assert s["active_j"] == pytest.approx(req["energy_j"].sum())
    eng = s["pools"]["p"]["engine"]
    assert eng["preemptions"] == 0 and eng["blocks_private_at_end"] == 0


def test_a_fused_engine_pays_one_fixed_part_in_a_mixed_step(tmp_path):
    """latency.mixed_overlap_s 0.015 s: the same timeline as the three-chunk case, each step mixing A's and B's
    decodes with a chunk of C taking dec(2) + pf(chunk) - 0.015, the saved time at the decode step's power (so
    A and B pay less); steps of decodes alone or of a prefill alone are unchanged."""
    d = profile_dict()
    d["latency"]["mixed_overlap_s"] = 0.015
    prof = tmp_path / "fused.yaml"
    prof.write_text(yaml.safe_dump(d))
    tr = write_trace(tmp_path, [10, 10, 150], [20, 20, 2], [0.0, 0.0, 0.2])
    raw, req, s = run(tmp_path, prof, tr, {"max_num_seqs": 8, "max_num_batched_tokens": 64,
                                           "cudagraph_batch_sizes": [], "enable_prefix_caching": False})
    t1 = pf(20)
    c_start = t = t1 + 4 * dec(2)
    chunks = [62, 62, 26]
    for p in chunks:
        t += dec(2) + pf(p) - 0.015
    c_first = t
    c_done = t + dec(3)
    ab_done = c_done + 11 * dec(2)
    assert req["start_s"].tolist() == pytest.approx([0.0, 0.0, c_start])
    assert req["first_token_s"].tolist() == pytest.approx([t1, t1, c_first])
    assert req["done_s"].tolist() == pytest.approx([ab_done, ab_done, c_done])
    e_c = sum(pf(p) * 300 for p in chunks) + dec(3) * dec_w(3) / 3
    e_a = (t1 * 300 / 2 + (4 + 11) * dec(2) * dec_w(2) / 2 + 3 * (dec(2) - 0.015) * dec_w(2) / 2
           + dec(3) * dec_w(3) / 3)
    assert req["energy_j"].tolist() == pytest.approx([e_a, e_a, e_c])
    assert s["active_j"] == pytest.approx(req["energy_j"].sum())


def test_preemption_in_a_tiny_block_pool_recomputes(tmp_path):
    # 4 blocks of 4 tokens; A and B (4 in, 9 out) each need 3 blocks: B, the newest, is preempted when both
    # decodes cross into their third block, and recomputes its prompt and its 5 generated tokens.
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [4, 4], [9, 9], [0.0, 0.0])
    raw, req, s = run(tmp_path, prof, tr, {"max_num_seqs": 4, "max_num_batched_tokens": 64, "block_size": 4,
                                           "kv_blocks": 4, "cudagraph_batch_sizes": [],
                                           "enable_prefix_caching": False})
    t1 = pf(8)  # both prompts in one step
    t2 = t1 + 4 * dec(2)  # four decodes together fill both sequences' second blocks
    t3 = t2 + dec(1)  # B preempted: A decodes alone (nobody is admitted in the step that preempted)
    a_done = t3 + 3 * dec(1)  # B (9 tokens: 3 blocks) cannot return while A holds 3 of the 4 blocks
    b_first_again = a_done + pf(9)  # the recompute: prompt + 5 generated tokens
    b_done = b_first_again + 3 * dec(1)  # tokens 7..9
    assert req["first_token_s"].tolist() == pytest.approx([t1, t1])  # B's first token came before preemption
    assert req["done_s"].tolist() == pytest.approx([a_done, b_done])
    assert req["preemptions"].tolist() == [0, 1]
    eng = s["pools"]["p"]["engine"]
    assert eng["preemptions"] == 1
    # the recompute's cost is in B's energy: 9 tokens of prefill at 300 W, beside its share of the rest
    e_b = (t1 * 300 / 2 + 4 * dec(2) * dec_w(2) / 2 + pf(9) * 300 + 3 * dec(1) * dec_w(1))
    e_a = t1 * 300 / 2 + 4 * dec(2) * dec_w(2) / 2 + 4 * dec(1) * dec_w(1)
    assert req["energy_j"].tolist() == pytest.approx([e_a, e_b])
    assert s["active_j"] == pytest.approx(e_a + e_b)
    assert eng["blocks_private_at_end"] == 0


def _prefix_trace(tmp_path, n_in, n_out, arrival, pid, plen):
    t = Trace(np.asarray(n_in), np.asarray(n_out), np.asarray(arrival, dtype=float), None, {"source": "test"},
              np.asarray(pid), np.asarray(plen)).validate()
    p = tmp_path / "prefix.parquet"
    t.to_parquet(p)
    return p


def test_prefix_hits_skip_exactly_the_cached_full_blocks(tmp_path):
    prof = write_profile(tmp_path)
    # R1 shares a 40-token prefix with R2 (id 7) and runs first; R3 has no prefix; R4 shares id 9 whose prefix
    # (10 tokens) is shorter than a block.
    tr = _prefix_trace(tmp_path, [100, 60, 60, 30, 30], [2, 2, 2, 2, 2], [0, 10, 20, 30, 40],
                       [7, 7, -1, 9, 9], [40, 40, 0, 10, 10])
    raw, req, s = run(tmp_path, prof, tr, {"max_num_seqs": 8, "max_num_batched_tokens": 512,
                                           "cudagraph_batch_sizes": []})
    # R2 reuses 2 full blocks of 16 (32 of its 40 shared tokens) and prefills the other 28
    assert req["cached_tokens"].tolist() == [0, 32, 0, 0, 0]
    assert (req["first_token_s"] - req["start_s"]).tolist() == pytest.approx([pf(100), pf(28), pf(60), pf(30),
                                                                              pf(30)])
    eng = s["pools"]["p"]["engine"]
    assert eng["prefix_hit_tokens"] == 32 and eng["prefix_query_tokens"] == 280
    assert eng["prefix_hit_rate"] == pytest.approx(32 / 280)
    # without caching the same trace prefills everything
    _, req0, _ = run(tmp_path, prof, tr, {"max_num_seqs": 8, "max_num_batched_tokens": 512,
                                          "cudagraph_batch_sizes": [], "enable_prefix_caching": False})
    assert req0["cached_tokens"].sum() == 0
    assert (req0["first_token_s"] - req0["start_s"]).iloc[1] == pytest.approx(pf(60))


def test_a_request_pins_only_the_cached_blocks_it_shares(tmp_path):
    """Blocks of 16, a pool of 10, a 64-token budget. R1 (100 tokens, prefix id 7 of 32 tokens) caches its 6 full
    blocks under entry 7 and finishes. R2 (140 tokens, the same 32-token prefix; 9 blocks with its output, so it
    fits alone) reuses the entry's first 2 blocks and prefills 32..96 (4 new blocks), then 96..140 (3 more): the
    pool has 10 - 4 private - 6 cached, so those come from the 4 entry blocks R2 does not share (tail first), as
    vLLM counts references per block. Pinning the whole entry left it no block: it preempted itself and, readmitted
    with the same hit, again, without end."""
    prof = write_profile(tmp_path)
    tr = _prefix_trace(tmp_path, [100, 140], [2, 2], [0, 10], [7, 7], [32, 32])
    raw, req, s = run(tmp_path, prof, tr, {"max_num_seqs": 4, "max_num_batched_tokens": 64, "block_size": 16,
                                           "kv_blocks": 10, "cudagraph_batch_sizes": []}, horizon_s=60.0)
    assert (req["status"] == "done").all() and req["preemptions"].tolist() == [0, 0]
    assert req["cached_tokens"].tolist() == [0, 32]
    first = 10 + pf(64) + pf(44)
    assert req["first_token_s"].iloc[1] == pytest.approx(first)
    assert req["done_s"].iloc[1] == pytest.approx(first + dec(1))
    eng = s["pools"]["p"]["engine"]
    assert eng["preemptions"] == 0 and eng["blocks_evicted"] == 3
    # every block back: none private, entry 7's 3 remaining blocks cached, no entry referenced
    assert eng["blocks_private_at_end"] == 0 and eng["blocks_cached_at_end"] == 3
    assert eng["entries_referenced_at_end"] == 0


def test_the_block_pool_counts_an_entry_as_pinned_only_up_to_its_longest_shared_run():
    """Entry 7 of 6 blocks (published by a request that then left); B shares 2, C shares 4: 2 then 0 blocks
    evictable; C leaves: 2 again; eviction takes the tail down to B's run only; B leaves: all blocks back, no
    reference left."""
    from dcsim.sim.batching.kv_blocks import BlockPool

    pool = BlockPool(10)
    pool.take(6)
    assert pool.publish(7, 6, 0, False) == 6 and pool.private == 0 and pool.cached == 6
    pool.release(7, 6)
    assert pool.evictable == 6 and pool.allocatable() == 10
    assert pool.lookup(7, 2) == 2 and pool.evictable == 4 and pool.allocatable() == 8
    assert pool.lookup(7, 4) == 4 and pool.evictable == 2 and pool.allocatable() == 6
    pool.release(7, 4)
    assert pool.evictable == 4
    pool.take(8)  # 4 free, 4 evicted from the entry's tail
    assert pool.evicted == 4 and pool.entries[7].blocks == 2 and pool.allocatable() == 0
    pool.give_back(8)
    pool.release(7, 2)
    assert pool.private == 0 and pool.cached == pool.evictable == 2 and pool.allocatable() == 10
    assert all(e.refs == 0 and not e.runs for e in pool.entries.values())


def test_a_launch_floor_holds_short_chunks_and_charges_each_chunk_after_cached_tokens(tmp_path):
    """latency.prefill_launch_s: a prefill takes at least 0.17 + 0.01 x chunks + 0.05 x prefixed chunks s (an
    eager forward paced by the host). The same trace as the prefix-hit case: R2's 28 tokens after its 32 cached
    ones pay the floor with its prefixed term; R1's 100 tokens are above the floor; a prompt split over two steps
    pays the prefixed term on its second chunk (computed in the first step, not cached)."""
    d = profile_dict()
    d["latency"]["prefill_launch_s"] = {"intercept": 0.17, "coef": {"batch": 0.01, "prefixed": 0.05}}
    prof = tmp_path / "launch.yaml"
    prof.write_text(yaml.safe_dump(d))

    def floor(chunks, prefixed):
        return 0.17 + 0.01 * chunks + 0.05 * prefixed

    tr = _prefix_trace(tmp_path, [100, 60, 60, 30, 30], [2, 2, 2, 2, 2], [0, 10, 20, 30, 40],
                       [7, 7, -1, 9, 9], [40, 40, 0, 10, 10])
    _, req, _ = run(tmp_path, prof, tr, {"max_num_seqs": 8, "max_num_batched_tokens": 512,
                                         "cudagraph_batch_sizes": []})
    assert req["cached_tokens"].tolist() == [0, 32, 0, 0, 0]
    assert pf(100) > floor(1, 0) > pf(60)
    assert (req["first_token_s"] - req["start_s"]).tolist() == pytest.approx(
        [pf(100), max(pf(28), floor(1, 1)), floor(1, 0), floor(1, 0), floor(1, 0)])
    # one 150-token prompt over a 100-token budget, alone: chunks 0..100 (no prefix) and 100..150 (after 100)
    tr = write_trace(tmp_path, [150], [2], [0.0])
    _, req, _ = run(tmp_path, prof, tr, {"max_num_seqs": 8, "max_num_batched_tokens": 100,
                                         "cudagraph_batch_sizes": [], "enable_prefix_caching": False})
    assert req["first_token_s"].iloc[0] == pytest.approx(max(pf(100), floor(1, 0)) + max(pf(50), floor(1, 1)))
    # the evaluator: the floor with its chunk and prefixed terms, or the curve where it is higher (power unchanged)
    evaluator = load_profile(prof).evaluator()
    assert evaluator.prefill(10, 100.0, 2, 32.0, 1)[0] == pytest.approx(floor(2, 1))
    assert evaluator.prefill(400, 0.0, 1)[0] == pytest.approx(pf(400))
    assert evaluator.prefill(400, 0.0, 1)[1] == pytest.approx(300.0)


def test_session_turns_reuse_the_earlier_conversation(tmp_path):
    prof = write_profile(tmp_path)
    # one conversation: turn 2's prompt (200) holds turn 1's prompt and answer (100 + 30), turn 3's holds all
    csv = tmp_path / "sessions.csv"
    csv.write_text("n_in,n_out,arrival_s,session_id\n100,30,0,a\n200,30,10,a\n300,10,20,a\n50,5,25,b\n")
    raw, req, s = run(tmp_path, prof, csv, {"max_num_seqs": 8, "max_num_batched_tokens": 512,
                                            "cudagraph_batch_sizes": []})
    # turn 1 leaves 129 tokens of KV (100 + 29 fed back): 8 full blocks; turn 2 leaves 229: 14 blocks
    assert req["cached_tokens"].tolist() == [0, 8 * 16, 14 * 16, 0]


def test_decode_batches_pad_to_the_next_captured_size(tmp_path):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [10, 10, 10], [6, 6, 6], [0, 0, 0])
    raw, req, s = run(tmp_path, prof, tr, {"max_num_seqs": 8, "max_num_batched_tokens": 64,
                                           "cudagraph_batch_sizes": [1, 4, 8]})
    # three decodes run as a graph of 4: 0.024 s at 240 W per step, the energy shared by the three
    assert req["done_s"].tolist() == pytest.approx([pf(30) + 5 * dec(4)] * 3)
    assert req["energy_j"].tolist() == pytest.approx([pf(30) * 100 + 5 * dec(4) * dec_w(4) / 3] * 3)
    assert s["pools"]["p"]["engine"]["padded_rows"] == 5
    # with no graphs, no padding
    _, req0, _ = run(tmp_path, prof, tr, {"max_num_seqs": 8, "max_num_batched_tokens": 64,
                                          "cudagraph_batch_sizes": []})
    assert req0["done_s"].tolist() == pytest.approx([pf(30) + 5 * dec(3)] * 3)


def test_conservation_under_pressure(tmp_path):
    """A busy replica with a tiny block pool, chunking, caching and sessions: every request completes once with
    all its tokens, every block comes back, and per-request joules add up to the active energy."""
    prof = write_profile(tmp_path, kv_tokens=4000)
    rng = np.random.default_rng(3)
    n = 600
    n_in = rng.integers(5, 900, n)
    n_out = rng.integers(1, 400, n)
    sess = rng.integers(0, 60, n)
    arr = np.cumsum(rng.exponential(0.04, n))
    csv = tmp_path / "busy.csv"
    csv.write_text("n_in,n_out,arrival_s,session_id\n" + "".join(
        f"{a},{b},{t},{c}\n" for a, b, t, c in zip(n_in, n_out, arr, sess)))
    raw, req, s = run(tmp_path, prof, csv, {"max_num_seqs": 32, "max_num_batched_tokens": 256})
    assert (req["status"] == "done").all()
    eng = s["pools"]["p"]["engine"]
    assert eng["preemptions"] > 10  # the pool is small enough to force them
    assert eng["preemptions"] == req["preemptions"].sum()
    assert eng["prefix_hit_tokens"] > 0
    assert eng["blocks_private_at_end"] == 0 and eng["entries_referenced_at_end"] == 0
    assert s["active_j"] == pytest.approx(req["energy_j"].sum(), rel=1e-9)
    assert s["tokens_out"] == n_out.sum()
    # each request's output took at least n_out - 1 decode steps after its first token
    assert (req["done_s"] - req["first_token_s"] >= (n_out - 1) * dec(1) - 1e-9).all()


@pytest.mark.parametrize("field,value,words", [
    ("block_size", 0, "greater than 0"),
    ("max_num_batched_tokens", 8, "smaller than one block"),
    ("cudagraph_batch_sizes", [1, 512], "larger than max_num_seqs"),
    ("max_num_seqs", 0, "greater than 0"),
])
def test_bad_parameters_name_the_field(tmp_path, field, value, words):
    import subprocess
    import sys

    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [10], [2], [0])
    sc = tmp_path / "sc.yaml"
    sc.write_text(yaml.safe_dump(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1,
                                                 "batching": {"policy": "paged", "max_num_seqs": 16,
                                                              field: value}}])))
    r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc)], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"fleet.0.batching.{field}" in r.stderr and words in r.stderr
    assert "Traceback" not in r.stderr


def test_a_prefix_longer_than_its_prompt_is_refused(tmp_path):
    import subprocess
    import sys

    prof = write_profile(tmp_path)
    csv = tmp_path / "bad.csv"
    csv.write_text("n_in,n_out,prefix_id,prefix_len\n10,2,a,8\n10,2,a,12\n")
    sc = tmp_path / "sc.yaml"
    sc.write_text(yaml.safe_dump(scenario(csv, [{"name": "p", "profile": str(prof), "count": 1,
                                                  "batching": {"policy": "paged"}}], arrivals={"kind": "all_at_once"})))
    r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc)], capture_output=True, text=True)
    assert r.returncode == 2 and "prefix_len" in r.stderr and "row 1" in r.stderr and "Traceback" not in r.stderr


def test_a_paged_replay_is_judged_on_ttft_tpot_and_preemptions():
    """The comparison's extra figures for a paged engine, worked by hand on four requests."""
    import pandas as pd

    from dcsim.validate.compare import PAGED_TARGETS, _metrics

    req = pd.DataFrame({"arrival_s": [0.0, 0.0, 1.0, 2.0], "start_s": [0.0, 0.1, 1.0, 2.5],
                        "first_token_s": [0.2, 0.4, 1.1, 3.0], "done_s": [1.2, 0.4, 2.1, 3.5],
                        "n_out": [11, 1, 21, 6], "preemptions": [0, 0, 2, 1]})
    m = _metrics(req, 10.0, 8.0, 2.0, 4.0, per_request=True)
    assert m["preemptions"] == 3
    assert m["tpot_p50_s"] == pytest.approx(0.1)  # 1.0/10, 1.0/20, 0.5/5: median 0.1 (the 1-token request has none)
    assert m["ttft_p95_s"] == pytest.approx(np.percentile([0.2, 0.4, 0.1, 1.0], 95))
    assert PAGED_TARGETS["tpot_p50_s"] == 0.10 and PAGED_TARGETS["ttft_p95_s"] == 0.15


def test_replay_load_is_sized_by_the_engines_sustained_rate(tmp_path):
    """--utilisation with an iteration-level engine: a fraction of the request rate the engine sustains. One
    sequence at a time on the toy profile serves a 100-in / 11-out request in 0.41 s, so it sustains 1/0.41 per s."""
    from dcsim.profiles.profile import load_profile
    from dcsim.validate import workload as W

    prof = load_profile(write_profile(tmp_path))
    tr = write_trace(tmp_path, [100] * 60, [11] * 60)
    b = {"policy": "paged", "max_num_seqs": 1, "max_num_batched_tokens": 256, "cudagraph_batch_sizes": []}
    spec = W.WorkloadSpec(trace=str(tr), arrivals="poisson", utilisation=0.5, batching=b, seed=3)
    wl = W.build(spec, prof)
    info = W.describe(wl, prof, b)
    assert info["sustained_rate_per_s"] == pytest.approx(1 / 0.41, rel=0.03)
    gaps = np.diff(wl["arrival_s"].to_numpy())
    assert gaps.mean() == pytest.approx(0.41 / 0.5, rel=0.3)  # Poisson gaps at half the sustained rate
    # 64 sequences at once sustain far more than one at a time on the same requests
    wide = W.sustained_rate(prof, np.full(60, 100), np.full(60, 11), {**b, "max_num_seqs": 64})
    assert wide > 3 * info["sustained_rate_per_s"]  # (the toy prefill, 0.1 s a step, bounds it)
