"""Cold shapes: the first time a replica meets a prompt length or KV lengths it pays the profile's cold_shapes
(hand-worked timelines, conservation of joules), the fit recovers known costs from a calibration table, and bad
input names its field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from simkit import profile_dict, run_pool, scenario, write_trace

from dcsim.profiles.cold_shapes import fit_cold_shapes
from dcsim.results import requests_table, summarize
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate
from dcsim.sim.shapes import Lengths, ShapeMemory

ROOT = Path(__file__).resolve().parents[1]
COLD = {"prompt_s": 0.05, "prompt_j": 10.0, "kv_length_s": 0.01, "kv_length_j": 1.0}


def _profile(tmp_path: Path, cold: dict | None = COLD) -> Path:
    d = profile_dict()
    if cold is not None:
        d["cold_shapes"] = cold
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _run(tmp_path, n_in, n_out, arrival, batching, shapes, cold: dict | None = COLD):
    return run_pool(tmp_path, _profile(tmp_path, cold), n_in, n_out, arrival, batching, shapes=shapes)


def test_lengths_count_only_what_is_new():
    s = Lengths()
    assert s.add(10, 19) == 10
    assert s.add(15, 24) == 5  # 20..24
    assert s.add(30, 29) == 0  # empty range
    assert s.add(26, 30) == 5
    assert s.add(25, 25) == 1  # joins the two ranges
    assert (s.lo, s.hi) == ([10], [30])
    assert len(s) == 21


def test_fcfs_cold_timeline(tmp_path):
    # Toy profile: prefill 0.1 + 0.001*tokens s at 300 W, decode 0.021 s at 210 W (batch 1), idle 50 W.
    # A (100 in, 11 out) is cold: +0.05 s / 10 J on its prefill, 10 new KV lengths 101..110: +0.1 s / 10 J.
    # B, the same shape, pays nothing; C (100 in, 16 out) meets KV lengths 111..115 only: +0.05 s / 5 J.
    raw, req, s = _run(tmp_path, [100, 100, 100], [11, 11, 16], [0.0, 10.0, 20.0], {"policy": "fcfs"}, "cold")
    assert req["first_token_s"].tolist() == pytest.approx([0.25, 10.2, 20.2])
    assert req["done_s"].tolist() == pytest.approx([0.56, 10.41, 20.2 + 15 * 0.021 + 0.05])
    assert req["energy_j"].tolist() == pytest.approx([104.1 + 20.0, 104.1, 60 + 15 * 0.021 * 210 + 5.0])
    eng = s["pools"]["p"]["engine"]
    assert (eng["cold_prompts"], eng["cold_kv_lengths"]) == (1, 15)
    assert eng["cold_s"] == pytest.approx(0.05 + 0.15)
    assert eng["cold_j"] == pytest.approx(25.0)
    # joules conserved: the requests' energy is the active energy
    assert s["active_j"] == pytest.approx(req["energy_j"].sum())


def test_warm_start_is_the_old_forecast(tmp_path):
    args = ([100, 60], [11, 11], [0.0, 10.0], {"policy": "fcfs"})
    _, warm, sw = _run(tmp_path, *args, None)
    _, warm2, _ = _run(tmp_path, *args, "warm")
    _, nocold, _ = _run(tmp_path, *args, None, cold=None)
    assert warm["done_s"].tolist() == warm2["done_s"].tolist() == nocold["done_s"].tolist()
    assert "engine" not in sw["pools"]["p"]


def test_warmed_shapes_are_not_paid(tmp_path):
    shapes = {"start": "cold", "warmed": {"prompts": [[1, 100]], "kv_lengths": [[1, 101, 105]]}}
    _, req, s = _run(tmp_path, [100], [11], [0.0], {"policy": "fcfs"}, shapes)
    # prompt warmed; KV lengths 106..110 new: +0.05 s / 5 J
    assert req["first_token_s"].tolist() == pytest.approx([0.2])
    assert req["done_s"].tolist() == pytest.approx([0.41 + 0.05])
    assert req["energy_j"].tolist() == pytest.approx([104.1 + 5.0])


def test_static_cold_batch(tmp_path):
    # A and B run together padded to 100 in / 21 out (tests/test_sim_timelines.py: 0.5 -> 1.24, 186.8 J), now
    # cold: (2, 100) is new (+0.05 s, 10 J), KV lengths 101..120 at batch 2 are new (+0.2 s, 20 J). C alone at
    # batch 1 meets (1, 100) and 101..110 at batch 1 for the first time too.
    _, req, _ = _run(tmp_path, [100, 50, 100], [11, 21, 11], [0.0, 0.5, 3.0],
                     {"policy": "static", "max_batch": 2, "max_wait_s": 1.0}, "cold")
    assert req["first_token_s"].tolist() == pytest.approx([0.85, 0.85, 4.25])
    assert req["done_s"].tolist() == pytest.approx([1.24 + 0.25, 1.24 + 0.25, 4.41 + 0.15])
    assert req["energy_j"].tolist() == pytest.approx([93.4 + 15.0, 93.4 + 15.0, 104.1 + 20.0])


def test_cold_under_a_power_manager_costs_the_same(tmp_path):
    """Under a power manager that never caps (its runs cut at step boundaries, the managed path) the cold costs
    are the same seconds and joules."""
    d = profile_dict()
    d["cold_shapes"] = COLD
    d["power_cap"] = {"min_w": 100, "max_w": 400, "default_w": 300, "method": "analytic", "static_w": 100,
                      "exponent": 1.0, "compute_bound_prefill": 0.9, "compute_bound_decode": 0.5}
    prof = tmp_path / "capped.yaml"
    prof.write_text(yaml.safe_dump(d))
    tr = write_trace(tmp_path, [100, 100], [11, 16], [0.0, 10.0])
    pool = {"name": "p", "profile": str(prof), "count": 1, "batching": {"policy": "fcfs"}, "shapes": "cold"}
    plain = simulate(Scenario.model_validate(scenario(tr, [pool])))
    managed = simulate(Scenario.model_validate(scenario(tr, [pool], facility={"power": {
        "control_interval_s": 1.0, "policy": {"name": "cap_on_threshold", "threshold": 0.9, "release": 0.8,
                                              "hold_s": 10.0, "cap_w": 150.0},
        "rows": [{"name": "row", "limit_w": 1e6, "racks": [{"name": "rack", "replicas": {"p": 1}}]}]}})))
    assert managed.facility is not None  # the managed path ran: its runs are cut into more segments, plus the tail
    assert len(managed.segments[0].t0) > len(plain.segments[0].t0)
    a, b = requests_table(plain), requests_table(managed)
    assert b["first_token_s"].tolist() == pytest.approx(a["first_token_s"].tolist())
    assert b["done_s"].tolist() == pytest.approx(a["done_s"].tolist())
    assert b["energy_j"].tolist() == pytest.approx(a["energy_j"].tolist())
    assert a["done_s"].tolist() == pytest.approx([0.56, 10.2 + 15 * 0.021 + 0.05])


def _runs_table(prompt_s: float, kv_s: float, seed: int = 0) -> pd.DataFrame:
    """A calibration runs.csv whose engine pays prompt_s at each new (batch, prompt length) and kv_s at each new
    KV length, with 1 ms of noise: one session, three repeats a point, a warm-up first."""
    rng = np.random.default_rng(seed)
    points = [(32, 64, 1), (256, 64, 1), (512, 32, 1), (32, 256, 1), (1024, 32, 1), (256, 64, 4), (128, 32, 1)]
    rows, mem, t = [], ShapeMemory(), 0.0
    seq = [("warmup", (128, 32, 1), 0)] + [("run", p, k) for p in points for k in range(3)]
    for phase, (n_in, n_out, b), k in seq:
        new = mem.meet(b, n_in, n_in + 1, n_out - 1)
        ttft = 0.02 + 1e-4 * n_in * b + prompt_s * new.prompt + rng.normal(0, 1e-3)
        dec = 0.01 * (n_out - 1) + kv_s * new.kv_lengths + rng.normal(0, 1e-3)
        rows.append({"entry": f"{phase}-i{n_in}-o{n_out}-b{b}-r{k}", "phase": phase, "n_in": n_in, "n_out": n_out,
                     "batch": b, "repeat": k, "power_cap_w": np.nan, "session": 0, "t_start": t,
                     "runtime_s": ttft + dec, "ttft_s": ttft, "energy_device_j": 300 * ttft + 200 * dec,
                     "energy_prefill_device_j": 300 * ttft, "status": "ok"})
        t += 10
    return pd.DataFrame(rows)


def test_fit_recovers_known_costs(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    _runs_table(0.08, 0.03).to_csv(d / "runs.csv", index=False)
    fit = fit_cold_shapes([d])
    assert fit.prompt_s == pytest.approx(0.08, abs=2e-3)
    assert fit.kv_length_s == pytest.approx(0.03, rel=0.02)
    assert fit.prompt_j == pytest.approx(300 * 0.08, rel=0.05)
    assert fit.kv_length_j == pytest.approx(200 * 0.03, rel=0.05)
    assert fit.ape_with < fit.ape_without


def test_fit_of_a_warm_engine_finds_nothing(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    _runs_table(0.0, 0.0).to_csv(d / "runs.csv", index=False)
    fit = fit_cold_shapes([d])
    assert fit.prompt_s < 2e-3 and fit.kv_length_s < 1e-4


@pytest.mark.parametrize("shapes, cold, field, words", [
    ("cold", None, "fleet.0.shapes", "no cold_shapes"),
    ({"start": "cold", "warmed": {"kv_lengths": [[1, 10, 5]]}}, COLD, "fleet.0.shapes", "below first"),
    ("lukewarm", COLD, "fleet.0.shapes", ""),
])
def test_bad_shapes_exit_2(tmp_path, shapes, cold, field, words):
    prof = _profile(tmp_path, cold)
    tr = write_trace(tmp_path, [10], [5], [0.0])
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1, "shapes": shapes}])))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc), "--out", str(out)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert field in r.stderr and words in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_iteration_engines_refuse_cold(tmp_path):
    prof = _profile(tmp_path)
    tr = write_trace(tmp_path, [10], [5], [0.0])
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1, "shapes": "cold",
                                                "batching": {"policy": "continuous", "max_batch": 4}}])))
    r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "fleet.0.shapes" in r.stderr and "continuous" in r.stderr, r.stderr


def test_shipped_hf_static_profile_carries_its_fit():
    p = yaml.safe_load((ROOT / "profiles" / "h100-sxm-80gb--llama-2-7b--hf-static-bf16.yaml").read_text())
    c = p["cold_shapes"]
    assert 0.03 < c["prompt_s"] < 0.12  # the replays saw about 90 ms a new prompt length on this engine
    assert "cold_shapes" in p["provenance"]


def test_run_prints_what_a_cold_pool_paid(tmp_path):
    """`dcsim run` on a cold pool: its text summary says what the first-time shapes cost (1 prompt shape and 15
    KV lengths on the fcfs timeline above: 0.2 s)."""
    prof = _profile(tmp_path)
    tr = write_trace(tmp_path, [100, 100, 100], [11, 11, 16], [0.0, 10.0, 20.0])
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1, "shapes": "cold"}])))
    r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "p: 1 new prompt shapes and 15 new KV lengths paid 0.2 s" in r.stdout


def test_spread_leaves_out_first_time_runs():
    """A run that met its shape first pays the first-time cost, not run-to-run noise: the spread is over the warm
    repeats (here 1.0, 1.1, 0.9 s: CV 0.1), not over those and a 2.0 s first run; a term the warm runs alone cannot
    give keeps the figure over every run."""
    from dcsim.profiles.fit_stats import spread_cv
    from dcsim.profiles.measurements import normalise

    rows = [{"kind": "run", "n_in": 32, "n_out": 64, "batch": 1, "runtime_s": t, "energy_device_j": 100 * t,
             "source": "r:i32-o64-b1", "first_time": first} for t, first in ((2.0, True), (1.0, False),
                                                                             (1.1, False), (0.9, False))]
    t = normalise(pd.DataFrame(rows))
    assert spread_cv(t)["latency.run_s"] == pytest.approx(0.1, abs=1e-4)
    assert spread_cv(t.assign(first_time=False))["latency.run_s"] == pytest.approx(
        float(np.std([2.0, 1.0, 1.1, 0.9], ddof=1) / np.mean([2.0, 1.0, 1.1, 0.9])), abs=1e-4)
    few = normalise(pd.DataFrame(rows[:3]))  # two warm runs: no warm figure, so the one over all three runs
    assert spread_cv(few)["latency.run_s"] == pytest.approx(
        float(np.std([2.0, 1.0, 1.1], ddof=1) / np.mean([2.0, 1.0, 1.1])), abs=1e-4)


def test_shipped_cold_scenario_prices_what_it_met():
    """scenarios/cold-shapes-h100-gsm8k.yaml: only the cold pool pays, and what it paid is its counts times the
    profile's prices."""
    from dcsim.profiles.profile import load_profile

    path = ROOT / "scenarios" / "cold-shapes-h100-gsm8k.yaml"
    s = summarize(simulate(Scenario.model_validate(yaml.safe_load(path.read_text())), path))
    c = load_profile(ROOT / "profiles" / "h100-sxm-80gb--llama-2-7b--hf-static-bf16.yaml").cold_shapes
    assert "engine" not in s["pools"]["warm"]
    e = s["pools"]["cold"]["engine"]
    assert e["cold_prompts"] > 50 and e["cold_kv_lengths"] > 0
    assert e["cold_s"] == pytest.approx(e["cold_prompts"] * c.prompt_s + e["cold_kv_lengths"] * c.kv_length_s)
    assert e["cold_j"] == pytest.approx(e["cold_prompts"] * c.prompt_j + e["cold_kv_lengths"] * c.kv_length_j)
    assert s["requests_completed"] == 1319


def test_replay_forecast_starts_with_the_warm_up_shapes(tmp_path):
    """A replay without the length warm-up ran batch 1 at 128 prompt tokens (and KV 129..159) before its window; one
    with it also every prompt length once (one decode step); a recorded list is taken as it is."""
    from dcsim.validate.compare import replay_shapes

    pd.DataFrame({"n_in": [40, 40, 7], "n_out": [5, 5, 5], "arrival_s": [0, 1, 2]}).to_csv(
        tmp_path / "workload.csv", index=False)
    fcfs = {"policy": "fcfs", "max_batch": 1, "max_wait_s": 0.0}
    cold = replay_shapes(tmp_path, {"policy": fcfs, "cache_lengths": {"1": 2080}, "length_warmup": False})
    assert cold.start == "cold" and cold.warmed.prompts == [(1, 128)]
    assert cold.warmed.kv_lengths == [(1, 129, 159)]
    warm = replay_shapes(tmp_path, {"policy": fcfs, "cache_lengths": {"1": 2080}, "length_warmup": True})
    assert warm.warmed.prompts == [(1, 128), (1, 7), (1, 40)]
    assert warm.warmed.kv_lengths == [(1, 129, 159), (1, 8, 8), (1, 41, 41)]
    rec = replay_shapes(tmp_path, {"policy": fcfs, "warmed_shapes": {"prompts": [[1, 9]], "kv_lengths": []}})
    assert rec.warmed.prompts == [(1, 9)] and rec.warmed.kv_lengths == []
    assert replay_shapes(tmp_path, {"policy": {"policy": "paged"}}) == "warm"
