"""Power caps: the analytic DVFS model fitted to Samsi et al. 2023 (Table III), as the simulator applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcsim.errors import UserError
from dcsim.profiles import devices
from dcsim.profiles.powercap_fit import SAMSI_2023, SAMSI_DEFAULT_W, fit_samsi, power_cap_for, predict
from dcsim.profiles.profile import cap_scaling, load_profile

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
TOLERANCE_PCT = 5.0  # stated tolerance against the published ratios


def test_fit_reproduces_the_published_ratios():
    fit = fit_samsi()
    assert fit.max_abs_error_pct() < TOLERANCE_PCT
    for p in SAMSI_2023:
        t, e = predict(fit.static_frac * SAMSI_DEFAULT_W, fit.exponent, fit.compute_bound,
                       fit.uncapped_frac * SAMSI_DEFAULT_W, p.cap_w)
        assert t == pytest.approx(p.time_x, rel=TOLERANCE_PCT / 100)
        assert e == pytest.approx(p.energy_x, rel=TOLERANCE_PCT / 100)
    # the published runs are decode-dominated: the fitted compute-bound share is well below prefill's 0.9
    assert 0.1 < fit.compute_bound < 0.5
    # the deeper cap must cost more time and save more energy, as published
    t175, e175 = predict(fit.static_frac * 250, 3.0, fit.compute_bound, fit.uncapped_frac * 250, 175)
    t150, e150 = predict(fit.static_frac * 250, 3.0, fit.compute_bound, fit.uncapped_frac * 250, 150)
    assert t150 > t175 > 1.0 and e150 < e175 < 1.0


def test_shipped_power_cap_reproduces_samsi_when_scaled_to_a_250w_device():
    """The H100 profile's cap model, rescaled to a 250 W default, gives back the published ratios."""
    pc = load_profile(PROFILES / "h100-sxm-80gb--llama-3.1-8b--vllm-mlenergy-v3-bf16.yaml").power_cap
    scale = SAMSI_DEFAULT_W / pc.default_w
    v100like = pc.model_copy(update={"min_w": 100.0, "max_w": 250.0, "default_w": 250.0,
                                     "static_w": pc.static_w * scale})
    for p in SAMSI_2023:
        s = cap_scaling(v100like, p.cap_w, 250.0, pc.compute_bound_decode, "decode")
        assert s.time_x == pytest.approx(p.time_x, rel=TOLERANCE_PCT / 100)
        assert s.time_x * s.power_x == pytest.approx(p.energy_x, rel=TOLERANCE_PCT / 100)


def test_cap_slows_compute_bound_prefill_more_than_memory_bound_decode():
    prof = load_profile(PROFILES / "h100-sxm-80gb--llama-3.1-8b--vllm-mlenergy-v3-bf16.yaml")
    free = prof.evaluator()
    capped = prof.evaluator(cap_w=400.0)
    t0, w0, _ = free.prefill(2048, 2048 ** 2, 1)
    d_free = free.decode_step(128, 128 * 500)
    assert capped.cap_effect(w0, "prefill")[0] > capped.cap_effect(d_free[1], "decode")[0] > 1.0
    t1, w1, _ = capped.prefill(2048, 2048 ** 2, 1)
    d0, p0 = free.decode_step(128, 128 * 500)
    d1, p1 = capped.decode_step(128, 128 * 500)
    assert t1 / t0 > d1 / d0 > 1.0
    assert w1 <= 400.0 and p1 <= 400.0
    # a cap above the phase's draw changes nothing
    loose = prof.evaluator(cap_w=700.0)
    assert loose.decode_step(128, 128 * 500) == pytest.approx((d0, p0))


def test_cap_outside_the_device_range_is_a_user_error():
    prof = load_profile(PROFILES / "h100-sxm-80gb--llama-3.1-8b--vllm-mlenergy-v3-bf16.yaml")
    assert (prof.power_cap.min_w, prof.power_cap.max_w) == (200.0, 700.0)
    for cap in (150.0, 800.0):
        with pytest.raises(UserError, match="outside the device's range 200-700 W"):
            prof.evaluator(cap_w=cap)


def test_no_power_cap_where_the_range_is_unknown():
    pc, prov, why = power_cap_for(devices.device("b200"))
    assert pc is None and "min None" in why and prov.source == "assumed"
    prof = load_profile(PROFILES / "b200--llama-3.1-8b--vllm-mlenergy-v3-bf16.yaml")
    with pytest.raises(UserError, match="no power_cap section"):
        prof.evaluator(cap_w=600.0)


def test_device_limits_come_from_the_catalogue():
    pc, prov, _ = power_cap_for(devices.device("a100-sxm4-40gb"))
    assert (pc.min_w, pc.max_w, pc.default_w) == (100.0, 400.0, 400.0)
    fit = fit_samsi()
    assert pc.static_w == pytest.approx(fit.static_frac * 400.0, abs=0.1)
    assert prov.source == "derived" and "Samsi" in prov.citation


def test_cap_below_the_models_static_floor_is_refused():
    """The H100 range is 200-700 W, but the analytic model's static floor (fitted share of the limit) sits
    higher: a cap under it would mean a near-zero clock, so it is refused with the floor named."""
    prof = load_profile(PROFILES / "h100-sxm-80gb--llama-3.1-8b--vllm-mlenergy-v3-bf16.yaml")
    floor = prof.power_cap.static_w
    assert 200.0 < floor < 700.0
    with pytest.raises(UserError, match="static floor") as e:
        prof.evaluator(cap_w=floor - 1.0)
    assert e.value.field == "power_cap_w"
    prof.evaluator(cap_w=floor + 1.0)  # just above it is allowed
