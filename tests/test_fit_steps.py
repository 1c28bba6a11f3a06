"""Fitting a paged engine's mixed-step sweep: known curves are recovered from steps made with them, the fitted
profile composes a mixed step as the simulator does, and too little data is a clear error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcsim.errors import UserError
from dcsim.profiles.fit import fit_profile, meta_from_dict
from dcsim.profiles.measurements import normalise

# the truth: decode 6 ms + 20 us per padded row + 0.1 us per KV token read; prefill 8 ms + 60 us per token +
# 5 ns per attention pair + 4 us per cached token read back; decode power 300 W + 0.5 W per row, prefill 420 W +
# 0.02 W per token; idle 120 W
D0, DG, DC, P0, PP, PSQ, PH = 6e-3, 2e-5, 1e-7, 8e-3, 6e-5, 5e-9, 4e-6
WD0, WDG, WP0, WPP = 300.0, 0.5, 420.0, 0.02
K = 100


def truth(b, g, ctx, p, h):
    td = (b > 0) * (D0 + DG * g + DC * ctx)
    tp = (p > 0) * (P0 + PP * p + PSQ * ((h + p) ** 2 - h ** 2) + PH * h)
    return td, tp, td * (WD0 + WDG * g) + tp * (WP0 + WPP * p)


def table(rng=None, noise=0.0):
    rows = []
    shapes = [(b, L, 0, 0) for b in (1, 4, 16, 64) for L in (128, 512, 2048)]
    shapes += [(0, 0, p, h) for p in (64, 256, 1024, 2048) for h in (0, 1024)]
    shapes += [(b, 512, p, 0) for b in (4, 32) for p in (64, 512)] + [(32, 2048, 512, 1024)]
    for b, L, p, h in shapes:
        g = 0 if b == 0 else {1: 1, 4: 4, 16: 16, 32: 32, 64: 64}[b]
        td, tp, e = truth(np.array(b), np.array(g), np.array(b * L), np.array(p), np.array(h))
        for r in range(3):
            f = 1.0 + (noise * rng.standard_normal() if rng is not None else 0.0)
            rows.append({"kind": "step", "n_in": p, "n_out": K, "batch": b, "graph_batch": g, "context": b * L,
                         "prefill_prefix": h, "runtime_s": float(K * (td + tp) * f),
                         "energy_device_j": float(K * e * f), "repeat": r, "source": f"t:s-b{b}-l{L}-p{p}-h{h}"})
    rows += [{"kind": "idle_serving", "n_in": 0, "n_out": 0, "batch": 0, "runtime_s": 30.0, "avg_power_w": 120.0,
              "source": "t:idle_serving"},
             {"kind": "idle_deep", "n_in": 0, "n_out": 0, "batch": 0, "runtime_s": 20.0, "avg_power_w": 75.0,
              "source": "t:idle_deep"}]
    return normalise(pd.DataFrame(rows))


META = {"device": "h200", "model": "llama-2-7b", "engine": {"name": "paged"}, "source_kind": "measured",
        "citation": "test"}


def test_known_curves_are_recovered():
    p = fit_profile(table(), meta_from_dict(dict(META))).profile
    lat = p.latency
    assert lat.decode_step_s.intercept == pytest.approx(D0, rel=1e-6)
    assert lat.decode_step_s.coef == pytest.approx({"batch": DG, "context": DC}, rel=1e-6)
    assert lat.prefill_s.intercept == pytest.approx(P0, rel=1e-6)
    assert lat.prefill_s.coef == pytest.approx({"tokens": PP, "tokens_sq": PSQ, "prefix": PH}, rel=1e-6)
    assert p.power.decode_w.intercept == pytest.approx(WD0, rel=1e-6)
    assert p.power.prefill_w.coef["tokens"] == pytest.approx(WPP, rel=1e-6)
    assert p.power.serving_idle_w == 120.0 and p.power.decode_w.lo == 120.0
    for k in ("latency.step_s", "energy.step_device_j", "energy.mixed_step_device_j"):
        assert p.fit_error[k].max_ape_pct < 1e-3, k


def test_the_fitted_profile_composes_a_mixed_step_as_the_simulator_does():
    """A step of 32 decodes reading 2,048 tokens each, beside a 512-token chunk after 1,024 cached: the evaluator
    the simulator calls gives the measured time and energy."""
    evaluator = fit_profile(table(), meta_from_dict(dict(META))).profile.evaluator()
    t_d, e_d, _ = evaluator.decode_run(32, 32 * 2048, 1, 32)
    t_p, w_p, _ = evaluator.prefill(512, float(1536 ** 2 - 1024 ** 2), 1, 1024.0)
    td, tp, e = truth(np.array(32), np.array(32), np.array(32 * 2048), np.array(512), np.array(1024))
    assert t_d + t_p == pytest.approx(float(td + tp), rel=1e-6)
    assert e_d + t_p * w_p == pytest.approx(float(e), rel=1e-6)


def test_a_fused_engines_overlap_is_recovered_and_composed_as_the_simulator_does():
    """A fused engine runs a mixed step as one forward: its time is the decode step plus the prefill less one
    fixed part (4 ms here), the saved time at decode power. Fitted with engine.mixed_step fused, the overlap is
    found and the evaluator's overlap gives each mixed step back; a split engine's fit has none."""
    ov = 4e-3
    t = table()
    mixed = (t["kind"] == "step") & (t["batch"] > 0) & (t["n_in"] > 0)
    b = t["batch"].to_numpy(float)
    g = np.where(b > 0, t["graph_batch"].fillna(t["batch"]).to_numpy(float), 0.0)
    w_dec = WD0 + WDG * g
    t = t.copy()
    t.loc[mixed, "runtime_s"] -= K * ov
    t.loc[mixed, "energy_device_j"] -= K * ov * w_dec[mixed.to_numpy()]
    fused = fit_profile(t, meta_from_dict({**META, "engine": {"name": "paged", "mixed_step": "fused"}})).profile
    assert fused.engine.mixed_step == "fused"
    assert fused.latency.mixed_overlap_s == pytest.approx(ov, rel=1e-6)
    assert fused.latency.decode_step_s.intercept == pytest.approx(D0, rel=1e-6)
    assert fused.fit_error["latency.step_s"].max_ape_pct < 1e-3
    assert fused.fit_error["energy.mixed_step_device_j"].max_ape_pct < 1e-3
    assert "mixed_overlap_s, 4.00 ms" in fused.provenance["latency.decode_step_s"].note
    evaluator = fused.evaluator()
    t_d, e_d, _ = evaluator.decode_run(32, 32 * 2048, 1, 32)
    t_p, w_p, _ = evaluator.prefill(512, float(1536 ** 2 - 1024 ** 2), 1, 1024.0)
    # at most the shorter
    assert evaluator.overlap(t_d, t_p) == pytest.approx(ov) and evaluator.overlap(t_d, 1e-3) == 1e-3
    td, tp, e = truth(np.array(32), np.array(32), np.array(32 * 2048), np.array(512), np.array(1024))
    assert t_d + t_p - evaluator.overlap(t_d, t_p) == pytest.approx(float(td + tp) - ov, rel=1e-6)
    split = fit_profile(t, meta_from_dict(dict(META))).profile  # the same steps read as a split engine's
    assert split.latency.mixed_overlap_s is None and split.evaluator().overlap(t_d, t_p) == 0.0
    assert split.fit_error["latency.step_s"].max_ape_pct > 1.0


def test_noisy_steps_fit_within_their_noise():
    p = fit_profile(table(np.random.default_rng(1), 0.01), meta_from_dict(dict(META))).profile
    assert p.fit_error["latency.step_s"].median_ape_pct < 2.0
    assert p.fit_error["energy.step_device_j"].median_ape_pct < 2.0
    assert p.spread_cv["latency.step_s"] == pytest.approx(0.01, abs=0.006)
    # each repeat's noise scales its time and its energy alike, so each point's energy CV is its time CV: the
    # comparison's energy band comes from the steps' own repeats
    assert p.spread_cv["energy.step_device_j"] == p.spread_cv["latency.step_s"]


def test_too_few_steps_is_a_clear_error():
    t = table()
    only_decode = t[(t["kind"] != "step") | (t["n_in"] == 0)]
    with pytest.raises(UserError, match="steps with decodes and steps with a prefill chunk"):
        fit_profile(only_decode, meta_from_dict(dict(META)))


PM = 3e-3  # the truth's cost of every chunk beyond the first in one step (its own attention call in every layer)


def test_a_cost_per_chunk_is_recovered_from_steps_of_several_chunks_and_composed_as_the_simulator_does():
    """Steps of m chunks of p, p + 1, ..., p + m - 1 tokens after h cached each (the plan's prefill_chunks):
    the fit recovers the extra per chunk, and the simulator's evaluator, given the step's summed tokens,
    attention pairs, chunk count and cached tokens, gives the step's time."""
    rows = []
    for b, p, h, m in [(0, 64, 0, 2), (0, 64, 1024, 4), (0, 256, 0, 3), (0, 512, 512, 6), (32, 64, 0, 4),
                       (32, 256, 1024, 2)]:
        lens = [p + j for j in range(m)]
        td = (b > 0) * (D0 + DG * b + DC * b * 512)
        tp = P0 + PM * (m - 1) + sum(PP * n + PSQ * ((h + n) ** 2 - h ** 2) + PH * h for n in lens)
        for r in range(3):
            rows.append({"kind": "step", "n_in": p, "n_out": K, "batch": b, "graph_batch": b, "context": b * 512,
                         "prefill_prefix": h, "prefill_chunks": m, "runtime_s": K * (td + tp),
                         "energy_device_j": K * (td * (WD0 + WDG * b) + tp * (WP0 + WPP * sum(lens))),
                         "repeat": r, "source": f"t:s-b{b}-l512-p{p}-h{h}-k{m}"})
    t = pd.concat([table(), normalise(pd.DataFrame(rows))], ignore_index=True)
    prof = fit_profile(t, meta_from_dict(dict(META))).profile
    c = prof.latency.prefill_s
    assert c.coef["batch"] == pytest.approx(PM, rel=1e-6)
    assert c.intercept + c.coef["batch"] == pytest.approx(P0, rel=1e-6)  # one chunk: the intercept it had
    assert prof.fit_error["latency.step_s"].max_ape_pct < 1e-3
    # 5 chunks of 100..104 tokens after 256 cached each, as the simulator composes them
    lens, h = [100, 101, 102, 103, 104], 256
    t_p, _, _ = prof.evaluator().prefill(sum(lens), float(sum((h + n) ** 2 - h ** 2 for n in lens)), 5,
                                         float(5 * h))
    want = P0 + PM * 4 + sum(PP * n + PSQ * ((h + n) ** 2 - h ** 2) + PH * h for n in lens)
    assert t_p == pytest.approx(want, rel=1e-6)


LAUNCH = (0.030, 1.5e-3, 7e-3)  # the truth's launch floor: one chunk, per chunk beyond it, per chunk after cache


def test_a_launch_floor_with_chunk_and_prefix_terms_is_recovered_and_composed_as_the_simulator_does():
    """Short chunks paced by the host: the prefill is max(curve, 30 ms + 1.5 ms per extra chunk + 7 ms per chunk
    after cached tokens). Steps made that way, with short and long chunks, alone and after a prefix, one and
    several chunks a step: the fit finds the floor's three figures, writes them as latency.prefill_launch_s, and
    the evaluator reproduces every step."""
    rows = []
    shapes = [(b, 16 * 2 ** i, h, m) for b in (0, 16) for i in range(0, 8, 2) for h in (0, 256, 2048)
              for m in (1, 3)]
    for b, p, h, m in shapes:
        lens = [p + j for j in range(m)]
        td = (b > 0) * (D0 + DG * b + DC * b * 512)
        lin = P0 + PM * (m - 1) + sum(PP * n + PSQ * ((h + n) ** 2 - h ** 2) + PH * h for n in lens)
        tp = max(lin, LAUNCH[0] + LAUNCH[1] * (m - 1) + LAUNCH[2] * (m if h else 0))
        for r in range(3):
            rows.append({"kind": "step", "n_in": p, "n_out": K, "batch": b, "graph_batch": b, "context": b * 512,
                         "prefill_prefix": h, "prefill_chunks": m, "runtime_s": K * (td + tp),
                         "energy_device_j": K * (td * (WD0 + WDG * b) + tp * (WP0 + WPP * sum(lens))),
                         "repeat": r, "source": f"t:s-b{b}-l512-p{p}-h{h}-k{m}"})
    base = table()
    base = base[(base["kind"] != "step") | (base["n_in"] == 0)]  # its decode-only steps and idle windows
    t = pd.concat([base, normalise(pd.DataFrame(rows))], ignore_index=True)
    res = fit_profile(t, meta_from_dict(dict(META)))
    launch = res.profile.latency.prefill_launch_s
    assert launch is not None and res.profile.latency.prefill_s.lo is None
    assert launch.intercept + launch.coef["batch"] == pytest.approx(LAUNCH[0], rel=1e-3)
    assert launch.coef["batch"] == pytest.approx(LAUNCH[1], rel=1e-2)
    assert launch.coef["prefixed"] == pytest.approx(LAUNCH[2], rel=1e-3)
    assert res.profile.fit_error["latency.step_s"].median_ape_pct < 0.1
    assert "prefill_launch_s" in res.profile.provenance["latency.prefill_s"].note
    evaluator = res.profile.evaluator()
    # 3 chunks of 16..18 tokens after 256 cached each: under the floor, which charges 2 extra and 3 prefixed
    lens, h = [16, 17, 18], 256
    t_p = evaluator.prefill(sum(lens), float(sum((h + n) ** 2 - h ** 2 for n in lens)), 3, float(3 * h), 3)[0]
    assert t_p == pytest.approx(LAUNCH[0] + 2 * LAUNCH[1] + 3 * LAUNCH[2], rel=1e-3)
    # one long chunk: the curve, above the floor
    t_p = evaluator.prefill(1024.0, 1024.0 ** 2, 1, 0.0, 0)[0]
    assert t_p == pytest.approx(P0 + PP * 1024 + PSQ * 1024 ** 2, rel=1e-3)


def test_a_term_per_kv_token_of_each_sequence_is_recovered_and_the_simulator_sums_it_as_it_steps(monkeypatch):
    """Decode steps made with 1 us per KV token of each sequence (context / batch) beside the per-token term:
    `--decode-per-sequence` recovers it, the fit without it cannot; the evaluator's decode run (closed form, with a
    padded batch whose real rows hold the context) equals its steps one by one, each at context / real rows."""
    ds = 1e-6
    t = table()
    dec = (t["kind"] == "step") & (t["batch"] > 0)
    per_seq = np.where(dec, t["context"].fillna(0.0) / t["batch"].clip(lower=1), 0.0)
    t = t.assign(runtime_s=t["runtime_s"] + K * ds * per_seq,
                 energy_device_j=t["energy_device_j"] + K * ds * per_seq * (WD0 + WDG * t["graph_batch"].fillna(0)))
    with_it = fit_profile(t, meta_from_dict({**META, "decode_per_seq": True})).profile
    without = fit_profile(t, meta_from_dict(dict(META))).profile
    assert with_it.latency.decode_step_s.coef["context_per_seq"] == pytest.approx(ds, rel=1e-3)
    assert with_it.fit_error["latency.step_s"].max_ape_pct < 0.1
    assert without.fit_error["latency.step_s"].max_ape_pct > 1.0
    assert "context_per_seq" not in without.latency.decode_step_s.coef
    ev = with_it.evaluator()
    # 5 real sequences padded to 8 rows, 600 KV tokens each, 7 steps: each step reads 5 more tokens
    total = sum(ev.decode_step(8, 3000.0 + 5 * j, 5)[0] for j in range(7))
    assert ev.decode_run(8, 3000.0, 7, 5)[0] == pytest.approx(total, rel=1e-12)
    c = with_it.latency.decode_step_s
    assert ev.decode_step(8, 3000.0, 5)[0] == pytest.approx(
        c.intercept + c.coef["batch"] * 8 + c.coef["context"] * 3000.0 + c.coef["context_per_seq"] * 600.0, rel=1e-12)
    steps = ev.decode_steps_covering(8, 3000.0, 7, total * 0.6, 5)
    assert ev.decode_run(8, 3000.0, steps, 5)[0] >= total * 0.6 > ev.decode_run(8, 3000.0, steps - 1, 5)[0]
