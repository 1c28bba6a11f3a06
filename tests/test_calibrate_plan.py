"""Calibration plans: expansion, validation, the stopping rule and the run order."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from dcsim.calibrate.plan import Plan, expand, load_plan
from dcsim.calibrate.schedule import Schedule, converged, half_width, wants
from dcsim.errors import UserError


def _plan(**kw) -> Plan:
    base = {"name": "t", "sweeps": [{"name": "input", "n_in": {"pow2": [8, 64]}, "n_out": [32]},
                                    {"name": "output", "n_in": [32], "n_out": {"pow2": [8, 32]}}],
            "points": [{"n_in": 100, "n_out": 7, "batch": 3}]}
    base.update(kw)
    return Plan.model_validate(base)


def test_expansion_dedupes_shared_points_and_keeps_their_sweeps():
    pts = expand(_plan())
    ids = [p.id for p in pts]
    # input 8,16,32,64 at 32 out; output 8,16,32 at 32 in; (32,32) is in both; one off-axis point
    assert ids == ["i8-o32-b1", "i16-o32-b1", "i32-o8-b1", "i32-o16-b1", "i32-o32-b1", "i64-o32-b1", "i100-o7-b3"]
    shared = next(p for p in pts if p.id == "i32-o32-b1")
    assert shared.groups == ["input", "output"]
    assert next(p for p in pts if p.batch == 3).groups == ["off_axis"]


def test_standard_plan_has_the_papers_axes():
    pts = expand(load_plan(Path(__file__).resolve().parents[1] / "calibrate/plans/standard.yaml"))
    inp = sorted(p.n_in for p in pts if "input" in p.groups)
    out = sorted(p.n_out for p in pts if "output" in p.groups)
    bat = sorted(p.batch for p in pts if "batch" in p.groups)
    assert inp == [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert out == [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4064]  # 4096 less the prompt: Llama-2's context
    assert max(p.n_in + p.n_out for p in pts) <= 4096
    assert bat == [1, 2, 4, 8, 16, 32, 64, 128, 256]


@pytest.mark.parametrize("patch,field", [
    ({"repeats": {"min": 5, "max": 3}}, "repeats"),
    ({"sweeps": [{"name": "x", "n_in": {"pow2": [8, 100]}, "n_out": [1]}]}, "sweeps.0.n_in"),
    ({"sweeps": [{"name": "x", "n_in": [8], "n_out": [1], "batchh": [2]}]}, "sweeps.0.batchh"),
])
def test_bad_plans_name_the_field(tmp_path, patch, field):
    d = {"name": "t", "sweeps": [{"name": "x", "n_in": [8], "n_out": [1]}]}
    d.update(patch)
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(UserError) as e:
        load_plan(f)
    assert str(f) in e.value.message and field in e.value.message


def test_half_width_by_hand():
    # mean 12, sample sd 2, t(0.975, 2 dof) = 4.302653: 4.302653 * 2 / sqrt(3) = 4.96828
    assert half_width([10, 12, 14]) == pytest.approx(4.96828, rel=1e-5)
    assert half_width([5.0]) == math.inf


def test_stopping_rule():
    rule = _plan(repeats={"min": 3, "max": 6, "rel_half_width": 0.05}).repeats
    tight = {"runtime_s": [1.00, 1.01, 0.99], "energy_device_j": [100, 101, 99]}
    assert converged(tight, rule)  # hw = 4.303*0.01/sqrt3 = 0.0248 <= 0.05
    loose = {"runtime_s": [1.00, 1.20, 0.80], "energy_device_j": [100, 101, 99]}
    assert not converged(loose, rule)  # runtime hw 0.497 > 0.05
    # energy not measured (latency-only): runtime alone decides
    assert converged({"runtime_s": [1.0, 1.01, 0.99], "energy_device_j": [math.nan] * 3}, rule)
    hist = [{"runtime_s": v} for v in (1.0, 1.2, 0.8)]
    assert wants(hist[:2], 2, rule)          # below min
    assert wants(hist, 3, rule)              # not converged, below max
    assert not wants(hist * 2, 6, rule)      # max reached
    assert not wants([{"failed": 1.0}], 1, rule)  # a failed point is not retried


def _order(sch: Schedule, values) -> list[tuple[str, int]]:
    seen = []
    for p, r in sch:
        seen.append((p.id, r))
        sch.record(p.id, r, {"runtime_s": values(p.id, r)})
    return seen


def test_schedule_resumed_mid_round_matches_uninterrupted():
    plan = _plan(repeats={"min": 2, "max": 5, "rel_half_width": 0.05})
    pts = expand(plan)
    noisy = {"i8-o32-b1", "i64-o32-b1"}  # these never converge; the rest are exact

    def values(pid, r):
        return 1.0 + (0.5 * (r % 2) if pid in noisy else 0.0)

    full = _order(Schedule(plan, pts), values)
    # every point 2 repeats, the two noisy ones up to the max of 5
    assert len(full) == 7 * 2 + 2 * 3
    assert {pid for pid, r in full if r >= 2} == noisy
    # rounds are shuffled: round 0 is not in the sorted order
    assert [pid for pid, r in full if r == 0] != [p.id for p in pts]
    # resume after 9 entries (in the middle of round 1): the rest comes in the same order
    sch = Schedule(plan, pts)
    for pid, r in full[:9]:
        sch.record(pid, r, {"runtime_s": values(pid, r)})
    assert full[:9] + _order(sch, values) == full


def test_grouped_order_runs_one_batch_size_at_a_time():
    plan = _plan(order="grouped_by_batch", repeats={"min": 2, "max": 2})
    seq = _order(Schedule(plan, expand(plan)), lambda pid, r: 1.0)
    batches = [3 if pid.endswith("b3") else 1 for pid, _ in seq]
    changes = sum(1 for a, b in zip(batches, batches[1:]) if a != b)
    assert changes == 1 and len(seq) == 14
