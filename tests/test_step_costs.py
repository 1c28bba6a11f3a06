"""validation/scripts/step_costs.py on a committed paged replay: the curves' time and power at the replay's own
steps, against the measured steps and the meter (figures in validation/README.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dcsim.profiles.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "validation" / "h200h-paged-conv60"
PROFILE = ROOT / "profiles" / "h200--llama-2-7b--paged-fused-model-bf16.yaml"


def _script():
    spec = importlib.util.spec_from_file_location("step_costs", ROOT / "validation" / "scripts" / "step_costs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_curves_over_a_replays_own_steps_in_time_and_in_power():
    sc = _script()
    s = sc.step_table(CASE, PROFILE)
    assert len(s) == 11345  # replay.json's steps
    assert s["dur_s"].sum() == pytest.approx(177.86, abs=0.01)
    assert s["curve_s"].sum() / s["dur_s"].sum() - 1 == pytest.approx(-0.026, abs=0.002)
    # a decode-only step's power is the decode curve's; a prefill-only one the prefill curve's
    ev = load_profile(PROFILE).evaluator()
    d = s[(s["chunks"] == 0) & (s["decodes"] > 0)].iloc[0]
    assert d["curve_w"] == pytest.approx(ev.decode_step(int(d["graph_batch"]), float(d["decode_context"]))[1])
    w = sc.power_windows(CASE, s, 5.0)
    assert len(w) >= 30 and (w["busy_s"] >= 4.75).all()
    # the windows the steps fill: 76.5 kJ measured, the curves' power at the measured steps 4.3% short
    assert w["measured_j"].sum() == pytest.approx(76_500, rel=0.002)
    assert w["curve_j"].sum() / w["measured_j"].sum() - 1 == pytest.approx(-0.043, abs=0.002)
