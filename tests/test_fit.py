"""The one fit: recovers known curves from synthetic measurements, keeps the simulator's semantics, says what
it assumed, and refuses tables it cannot fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dcsim.errors import UserError
from dcsim.profiles.fit import FitMeta, fit_profile, meta_from_dict
from dcsim.profiles.plots import run_prediction
from dcsim.profiles.profile import DeviceInfo, EngineInfo, ModelInfo

TRUE_PF = {"intercept": 0.04, "tokens": 2.0e-4}            # prefill seconds
TRUE_DC = {"intercept": 0.02, "batch": 1.0e-3, "context": 2.0e-6}  # decode-step seconds
TRUE_PW_PF = {"intercept": 300.0, "tokens": 0.02}          # prefill watts
TRUE_PW_DC = {"intercept": 150.0, "batch": 3.0, "context": 1.0e-3}  # decode watts


def _meta(**kw) -> FitMeta:
    base = dict(device="h100-sxm-80gb", model="llama-3.1-8b", engine={"name": "test", "precision": "bf16"},
                citation="synthetic", command="test")
    base.update(kw)
    return meta_from_dict(base)


def _truth_run(b: int, n: int, m: int) -> tuple[float, float]:
    """Exact run time and energy of the true curves (step by step, as defined in fit.py)."""
    t_pf = TRUE_PF["intercept"] + TRUE_PF["tokens"] * b * n
    e = (TRUE_PW_PF["intercept"] + TRUE_PW_PF["tokens"] * b * n) * t_pf
    t = t_pf
    for j in range(m - 1):
        ctx = b * (n + 1 + j)
        dt = TRUE_DC["intercept"] + TRUE_DC["batch"] * b + TRUE_DC["context"] * ctx
        w = TRUE_PW_DC["intercept"] + TRUE_PW_DC["batch"] * b + TRUE_PW_DC["context"] * ctx
        t += dt
        e += dt * w
    return t, e


def synthetic_runs(noise: float = 0.01, seed: int = 1, repeats: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for b in (1, 4, 16):
        for n in (32, 128, 512, 1024):
            for m in (16, 64, 256):
                t, e = _truth_run(b, n, m)
                for r in range(repeats):
                    rows.append(dict(kind="run", n_in=n, n_out=m, batch=b,
                                     runtime_s=t * (1 + noise * rng.standard_normal()),
                                     energy_device_j=e * (1 + noise * rng.standard_normal()),
                                     ttft_s=(TRUE_PF["intercept"] + TRUE_PF["tokens"] * b * n)
                                     * (1 + noise * rng.standard_normal()),
                                     tpot_s=(TRUE_DC["intercept"] + TRUE_DC["batch"] * b
                                             + TRUE_DC["context"] * b * (n + 1 + (m - 2) / 2)),
                                     repeat=r, source=f"b{b}-n{n}-m{m}"))
    return pd.DataFrame(rows)


def test_recovers_known_coefficients_from_noisy_runs():
    res = fit_profile(synthetic_runs(), _meta())
    p = res.profile
    pf, dc = p.latency.prefill_s, p.latency.decode_step_s
    assert pf.intercept == pytest.approx(TRUE_PF["intercept"], rel=0.05)
    assert pf.coef["tokens"] == pytest.approx(TRUE_PF["tokens"], rel=0.05)
    assert dc.intercept == pytest.approx(TRUE_DC["intercept"], rel=0.05)
    assert dc.coef["batch"] == pytest.approx(TRUE_DC["batch"], rel=0.05)
    assert dc.coef["context"] == pytest.approx(TRUE_DC["context"], rel=0.15)
    pw = p.power.decode_w
    assert pw.intercept == pytest.approx(TRUE_PW_DC["intercept"], rel=0.05)
    assert pw.coef["batch"] == pytest.approx(TRUE_PW_DC["batch"], rel=0.1)
    assert p.power.prefill_w.intercept == pytest.approx(TRUE_PW_PF["intercept"], rel=0.1)
    # 1% noise, averaged over 3 repeats: the shape means fit to well under 2%
    assert p.fit_error["latency.run_s"].median_ape_pct < 1.0
    assert p.fit_error["energy.run_device_j"].median_ape_pct < 1.5
    assert p.fit_error["latency.run_s"].n_points == 36  # shapes, not rows
    assert p.fit_error["latency.tpot_s"].median_ape_pct < 1.0  # mean decode step of each run
    assert p.fit_error["latency.prefill_s"].median_ape_pct < 1.5  # time to first token
    assert 0.005 < p.spread_cv["latency.run_s"] < 0.02  # the 1% noise, measured back
    assert p.valid_range["batch"] == (1.0, 16.0)
    assert p.valid_range["prefill_tokens"] == (32.0, 16 * 1024.0)
    assert p.provenance["latency.prefill_s"].source == "published" or p.provenance["latency.prefill_s"].citation


def test_fit_uses_the_simulators_semantics():
    """Time and energy the evaluator computes for a fitted profile equal the fit's own predictions."""
    res = fit_profile(synthetic_runs(noise=0.0, repeats=1), _meta())
    for _, r in res.rows.iterrows():
        t, e = run_prediction(res.profile, r["batch"], r["n_in"], r["n_out"])
        assert t == pytest.approx(r["pred_runtime_s"], rel=1e-9)
        assert e == pytest.approx(r["pred_energy_device_j"], rel=1e-9)
    # and with exact data the fit is exact
    assert res.profile.fit_error["latency.run_s"].max_ape_pct < 1e-3


def test_floor_on_the_decode_step_is_found():
    """Step time max(0.03, 0.005 + 1e-4 * context): the fitted floor (lo) and slope come back."""
    rows = []
    for n in (8, 32, 128, 512, 1024, 2048):
        for m in (8, 32, 128, 512):
            t = 0.0
            for j in range(-1, m - 1):  # prefill tied: one more step at context n
                ctx = n if j < 0 else n + 1 + j
                t += max(0.03, 0.005 + 1e-4 * ctx)
            rows.append(dict(kind="run", n_in=n, n_out=m, batch=1, runtime_s=t, energy_device_j=200.0 * t,
                             source=f"{n}-{m}"))
    res = fit_profile(pd.DataFrame(rows), _meta(tie_prefill_to_decode=True))
    dc = res.profile.latency.decode_step_s
    assert dc.lo == pytest.approx(0.03, rel=0.02)
    assert dc.coef["context"] == pytest.approx(1e-4, rel=0.02)
    assert dc.intercept == pytest.approx(0.005, abs=1e-3)
    assert res.profile.latency.prefill_s.lo == dc.lo  # tied
    assert res.profile.fit_error["latency.run_s"].max_ape_pct < 0.5
    assert res.profile.power.decode_w.intercept == pytest.approx(200.0, rel=1e-3)


def test_decode_rows_identify_context_when_it_varies_apart_from_batch():
    rows = []
    for b in (1, 8, 32, 128):
        for ctx_per in (100, 1000, 4000):
            ctx = b * ctx_per
            rows.append(dict(kind="decode", batch=b, n_in=ctx_per - 50, n_out=100,
                             runtime_s=0.01 + 2e-4 * b + 1e-7 * ctx, avg_power_w=300 + 2 * b + 1e-3 * ctx,
                             source=f"{b}-{ctx_per}"))
    p = fit_profile(pd.DataFrame(rows), _meta()).profile
    assert p.latency.decode_step_s.coef["context"] == pytest.approx(1e-7, rel=0.02)
    assert p.power.decode_w.coef["batch"] == pytest.approx(2.0, rel=0.02)
    # decode-only source: prefill is assumed and said so
    assert p.provenance["latency.prefill_s"].source == "assumed"
    assert p.provenance["power.prefill_w"].source == "assumed"
    assert any("prefill time" in s for s in p.not_covered)


def test_decode_rows_with_context_proportional_to_batch_drop_the_context_term():
    rows = [dict(kind="decode", batch=b, n_in=0, n_out=400, runtime_s=0.007 + 9e-5 * b, avg_power_w=500 + b,
                 source=str(b)) for b in (8, 16, 32, 64, 128, 256)]
    p = fit_profile(pd.DataFrame(rows), _meta()).profile
    assert "context" not in p.latency.decode_step_s.coef
    assert p.latency.decode_step_s.coef["batch"] == pytest.approx(9e-5, rel=1e-3)
    assert any("context length" in s for s in p.not_covered)


def test_idle_rows_become_idle_powers_and_warmups_are_ignored():
    t = synthetic_runs(noise=0.0, repeats=1)
    idle = pd.DataFrame([dict(kind="idle_serving", n_in=0, n_out=0, batch=0, runtime_s=60.0, avg_power_w=w,
                              source="idle") for w in (118.0, 120.0, 125.0)]
                        + [dict(kind="idle_deep", n_in=0, n_out=0, batch=0, runtime_s=60.0, energy_device_j=60 * 70.0,
                                source="deep")])
    warm = t.head(3).assign(warmup=True, runtime_s=1e3, energy_device_j=1e6)  # absurd: must not matter
    p = fit_profile(pd.concat([t, idle, warm], ignore_index=True), _meta()).profile
    assert p.power.serving_idle_w == pytest.approx(120.0)
    assert p.power.deep_idle_w == pytest.approx(70.0)
    assert p.provenance["power.serving_idle_w"].note.startswith("median of the idle_serving")
    assert p.fit_error["latency.run_s"].max_ape_pct < 1e-3


def test_idle_falls_back_to_catalogue_then_to_a_derived_rule():
    t = synthetic_runs(noise=0.0, repeats=1)
    p = fit_profile(t, _meta()).profile  # H100: both idle figures measured on the project's device
    assert (p.power.deep_idle_w, p.power.serving_idle_w) == (70.2, 120.1)
    assert p.provenance["power.deep_idle_w"].source == "measured"
    p = fit_profile(t, _meta(device="b200")).profile  # no figure: fraction of the power limit measured on H100
    assert p.power.deep_idle_w == pytest.approx(1000 * 70.2 / 700, rel=1e-3)
    assert p.provenance["power.serving_idle_w"].source == "derived"


def test_rows_beyond_the_context_window_are_left_out():
    t = synthetic_runs(noise=0.0, repeats=1)
    meta = _meta(model={"name": "small", "params_b": 1.0, "layers": 2, "hidden_size": 64, "kv_bytes_per_token": 256,
                        "max_context": 600})
    p = fit_profile(t, meta).profile
    assert p.valid_range["prefill_tokens"][1] == 16 * 512  # n_in 1024 shapes dropped, and 512 + 256 > 600
    assert "left out" in (p.notes or "")


def test_too_few_shapes_is_a_user_error():
    t = pd.DataFrame([dict(kind="run", n_in=100, n_out=10, batch=1, runtime_s=1.0, energy_device_j=100.0,
                           source="one")])
    with pytest.raises(UserError, match="measured shapes"):
        fit_profile(t, _meta())


def test_no_energy_is_a_user_error():
    t = synthetic_runs(noise=0.0, repeats=1).assign(energy_device_j=np.nan)
    with pytest.raises(UserError, match="energy"):
        fit_profile(t, _meta())


def test_bad_metadata_names_the_missing_key():
    with pytest.raises(UserError, match="engine"):
        meta_from_dict({"device": "h100-sxm-80gb", "model": "llama-3.1-8b"})
    with pytest.raises(UserError, match="unknown device"):
        meta_from_dict({"device": "tpu-v9", "model": "llama-3.1-8b", "engine": {"name": "x"}})


def test_explicit_identity_without_catalogue():
    meta = FitMeta(device=DeviceInfo(name="x", memory_gb=24, tdp_w=300), engine=EngineInfo(name="e"),
                   model=ModelInfo(name="m", params_b=1.0, layers=2, hidden_size=64, kv_bytes_per_token=256))
    p = fit_profile(synthetic_runs(noise=0.0, repeats=1), meta).profile
    assert p.power_cap is None
    assert p.power.deep_idle_w == pytest.approx(300 * 70.2 / 700, rel=1e-3)


def test_per_run_overhead_after_the_first_token_is_found():
    """Runs that spend a fixed 35 ms after their first token (TPOT falls with output length, as on the static-cache
    GPU runs): the overhead goes into prefill_s, so run time is exact, and TTFT is compared without it."""
    ov = 0.035
    rows = []
    for b in (1, 4, 16):
        for n in (32, 128, 512, 1024):
            for m in (8, 32, 128, 512):
                t, _ = _truth_run(b, n, m)
                ttft = TRUE_PF["intercept"] + TRUE_PF["tokens"] * b * n
                _, e = _truth_run(b, n, m)
                rows.append(dict(kind="run", n_in=n, n_out=m, batch=b, runtime_s=t + ov, energy_device_j=e,
                                 ttft_s=ttft, tpot_s=(t + ov - ttft) / (m - 1), repeat=0, source=f"b{b}-n{n}-m{m}"))
    res = fit_profile(pd.DataFrame(rows), _meta())
    p = res.profile
    assert p.latency.prefill_s.intercept == pytest.approx(TRUE_PF["intercept"] + ov, rel=0.02)
    assert p.latency.decode_step_s.intercept == pytest.approx(TRUE_DC["intercept"], rel=0.02)
    assert p.fit_error["latency.run_s"].max_ape_pct < 0.5
    assert p.fit_error["latency.prefill_s"].max_ape_pct < 0.5      # TTFT = prefill_s - overhead
    assert p.fit_error["latency.tpot_s"].max_ape_pct < 0.5
    # a simulated TTFT is prefill_s: 35 ms late on a 46-ms TTFT (b1, n32) -> about 76% off
    assert 70 < p.fit_error["latency.ttft_as_simulated_s"].max_ape_pct < 80
    assert "35.0 ms per run" in p.provenance["latency.prefill_s"].note


def test_floor_on_the_prefill_is_found():
    """TTFT max(0.05, 0.002 + 3e-5 * tokens): flat for short prompts, linear in batch x n_in beyond ~1,600 tokens."""
    rows = []
    for b in (1, 4, 16, 64):
        for n in (8, 64, 256, 1024):
            for m in (16, 64):
                ttft = max(0.05, 0.002 + 3e-5 * b * n)
                t = ttft + sum(0.01 + 1e-4 * b for _ in range(m - 1))
                rows.append(dict(kind="run", n_in=n, n_out=m, batch=b, runtime_s=t, energy_device_j=300.0 * t,
                                 ttft_s=ttft, repeat=0, source=f"b{b}-n{n}-m{m}"))
    p = fit_profile(pd.DataFrame(rows), _meta()).profile
    pf = p.latency.prefill_s
    assert pf.lo == pytest.approx(0.05, rel=0.02)
    assert pf.coef["tokens"] == pytest.approx(3e-5, rel=0.05)
    assert p.fit_error["latency.prefill_s"].max_ape_pct < 2.0
