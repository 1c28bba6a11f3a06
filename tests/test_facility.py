"""The facility power hierarchy and its power management (dcsim/sim/facility.py, dcsim/sim/power_policies.py):
a hand-worked capping timeline, conservation of requests and joules, the `none` policy and a manager that never
caps reproducing the run without a hierarchy, the load-following `budget_share`, and bad input."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from simkit import profile_dict, scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main
from dcsim.errors import UserError
from dcsim.facility_report import level_power
from dcsim.results import requests_table, summarize
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate
from dcsim.sim.power_policies import POWER_POLICIES

# exponent 1 and half the decode compute-bound: a 150 W cap on a 200 W decode sets f = (150-100)/(200-100) = 0.5,
# so a decode step takes 0.5/0.5 + 0.5 = 1.5 x as long (0.02 -> 0.03 s) and draws 150 W
CAP = {"min_w": 100, "max_w": 400, "default_w": 300, "method": "analytic", "static_w": 100, "exponent": 1.0,
       "compute_bound_prefill": 0.9, "compute_bound_decode": 0.5}


def toy(tmp_path, cap=CAP, name="toy"):
    """Prefill 0.115 s at 300 W, decode steps 0.02 s at 200 W whatever the batch, idle 50 W, no host power."""
    return write_profile(tmp_path, name=name, prefill=(0.115, 0.0), decode=(0.02, 0.0), prefill_w=300.0,
                         decode_w=(200.0, 0.0), idle_w=50.0, cap=cap)


def two_replicas(tmp_path, policy: dict | None, limit_w=420.0, cap=CAP) -> dict:
    """Two continuous-batching replicas in one rack of one row; request A (100 in, 1001 out) and B (100 in,
    201 out) both arrive at 0 s, one on each replica (round robin). The manager's first sample, at 0 s, sees
    the fleet before it starts on them (idle)."""
    tr = write_trace(tmp_path, [100, 100], [1001, 201], [0.0, 0.0])
    data = scenario(tr, [{"name": "gpu", "profile": str(toy(tmp_path, cap)), "count": 2,
                          "batching": {"policy": "continuous", "max_batch": 4}}])
    if policy is not None:
        data["facility"] = {"power": {"control_interval_s": 1.0, "policy": policy, "rows": [
            {"name": "row", "limit_w": limit_w, "racks": [{"name": "rack", "replicas": {"gpu": 2}}]}]}}
    return data


def run(tmp_path, data):
    path = write_scenario(tmp_path, data)
    sc = Scenario.model_validate(data)
    return simulate(sc, path)


THRESHOLD = {"name": "cap_on_threshold", "threshold": 0.9, "release": 0.8, "hold_s": 10.0, "cap_w": 150.0}


def test_hand_worked_cap_and_release(tmp_path):
    """Limit 420 W, threshold 0.9 (378 W), release 0.8 (336 W), hold 10 s, cap 150 W, sampled every second.
    0-0.115 s both prefill (600 W); then both decode (400 W). Tick 1 s: 400 > 378, cap. Both decode runs are
    cut after the step in progress: 0.885 s in, 45 steps, ending at 1.015 s; from there steps take 0.03 s at
    150 W (300 W for the row). B's remaining 155 steps end at 1.015 + 4.65 = 5.665 s; the row then draws
    150 + 50 = 200 W. Tick 11 s: 200 <= 336 and 10 s since the last sample above 378: release. A's capped run
    is cut after 9.985 s / 0.03 -> 333 steps, at 11.005 s; its last 1000 - 45 - 333 = 622 steps take 0.02 s:
    A ends at 11.005 + 12.44 = 23.445 s."""
    raw = run(tmp_path, two_replicas(tmp_path, THRESHOLD))
    fac = raw.facility
    assert [(t, lv, a) for t, lv, a, *_ in fac.events] == [(1.0, "row", "cap"), (11.0, "row", "release")]
    assert fac.events[0][3] == pytest.approx(400.0) and fac.events[1][3] == pytest.approx(200.0)
    assert fac.events[0][4] == 150.0
    assert raw.end_s == pytest.approx(23.445)
    t0, t1, e, h = raw.segments[0]  # replica A
    assert t0 == pytest.approx([0.0, 0.115, 1.015, 11.005])
    assert t1 == pytest.approx([0.115, 1.015, 11.005, 23.445])
    w = e / (t1 - t0)
    assert w == pytest.approx([300.0, 200.0, 150.0, 200.0])  # the capped run draws the cap
    assert (t1[2] - t0[2]) / 333 == pytest.approx(0.03)  # and its steps are 1.5 x as long
    t0, t1, e, h = raw.segments[1]  # replica B
    assert t1 == pytest.approx([0.115, 1.015, 5.665])
    req = requests_table(raw)
    assert list(req["status"]) == ["done", "done"]
    assert req["e2e_s"].tolist() == pytest.approx([23.445, 5.665])
    s = summarize(raw)
    row = s["facility"]["levels"]["row"]
    assert row["cap_events"] == 1 and row["releases"] == 1 and row["time_capped_s"] == pytest.approx(10.0)
    assert row["first_cap_s"] == 1.0
    assert row["peak_w"] == pytest.approx(600.0) and row["peak_share_of_limit"] == pytest.approx(600 / 420)
    assert row["time_above_limit_s"] == pytest.approx(0.115)  # only the prefills: the cap held the rest below
    # joules: A 34.5 + 180 + 1498.5 + 2488 active; B 34.5 + 180 + 697.5 active and 17.78 s x 50 W idle
    assert s["energy_j"] == pytest.approx(6002.0)
    assert row["energy_j"] == pytest.approx(6002.0) and s["facility"]["levels"]["rack"]["energy_j"] == \
        pytest.approx(6002.0)
    # the level's power integrates to the segments' joules plus idle
    t, pw = level_power(raw, [0, 1])
    assert float(np.sum(np.diff(t) * pw)) == pytest.approx(sum(float(seg[2].sum()) for seg in raw.segments)
                                                           + s["idle_j"], rel=1e-12)
    assert s["requests_completed"] == 2 and s["tokens_out"] == 1202


def test_uncapped_run_of_the_same_case(tmp_path):
    """The same two requests with nobody capping: A ends at 0.115 + 1000 x 0.02 = 20.115 s, the figure the
    capped run's 23.445 s is measured against."""
    raw = run(tmp_path, two_replicas(tmp_path, None))
    assert raw.end_s == pytest.approx(20.115)
    assert raw.facility is None


def _same_run(a, b) -> None:
    ra, rb = requests_table(a), requests_table(b)
    pd.testing.assert_frame_equal(ra, rb)
    assert a.end_s == b.end_s
    for (x0, x1, xe, xh), (y0, y1, ye, yh) in zip(a.segments, b.segments):
        assert np.array_equal(x0, y0) and np.array_equal(x1, y1) and np.array_equal(xe, ye)
    sa, sb = summarize(a), summarize(b)
    sb.pop("facility", None)
    assert json.dumps(sa, sort_keys=True, default=str) == json.dumps(sb, sort_keys=True, default=str)


def test_none_and_a_manager_that_never_caps_reproduce_the_run(tmp_path):
    """`none` measures only; cap_on_threshold with a limit never approached samples every second and never
    acts: both are the run without a hierarchy, bit for bit, and both report the row's peak."""
    base = run(tmp_path, two_replicas(tmp_path, None))
    none = run(tmp_path, two_replicas(tmp_path, {"name": "none"}))
    idle = run(tmp_path, two_replicas(tmp_path, THRESHOLD, limit_w=10_000.0))
    _same_run(base, none)
    _same_run(base, idle)
    assert idle.facility.ticks == 22 and not idle.facility.events  # ticks at 0..21 s; the run ends at 20.115
    for r in (none, idle):
        lv = summarize(r)["facility"]["levels"]["row"]
        assert lv["peak_w"] == pytest.approx(600.0) and lv["cap_events"] == 0 and lv["time_capped_s"] == 0.0
    assert summarize(none)["facility"]["levels"]["row"]["time_above_limit_s"] == pytest.approx(0.115)


@pytest.mark.parametrize("policy", ["fcfs", "static", "paged"])
def test_every_shipped_batching_policy_conserves_requests_and_joules(tmp_path, policy):
    """Many requests, a row budget that binds: every request completes, and the level's power integrates to
    the fleet's energy."""
    rng = np.random.default_rng(3)
    n = 120
    tr = write_trace(tmp_path, rng.integers(20, 400, n), rng.integers(2, 300, n), np.sort(rng.uniform(0, 30, n)))
    b = {"fcfs": {"policy": "fcfs"}, "static": {"policy": "static", "max_batch": 4, "max_wait_s": 0.3},
         "paged": {"policy": "paged", "max_num_seqs": 16}}[policy]
    data = scenario(tr, [{"name": "gpu", "profile": str(toy(tmp_path)), "count": 4, "batching": b}])
    data["facility"] = {"power": {"policy": {**THRESHOLD, "hold_s": 2.0}, "rows": [
        {"name": "row", "limit_w": 800.0, "racks": [{"name": "r1", "replicas": {"gpu": 2}},
                                                     {"name": "r2", "limit_w": 420, "replicas": {"gpu": 2}}]}]}}
    raw = run(tmp_path, data)
    s = summarize(raw)
    assert s["requests_completed"] == n
    assert s["facility"]["levels"]["row"]["cap_events"] >= 1
    total = sum(lv["energy_j"] for name, lv in s["facility"]["levels"].items() if name != "row")
    assert total == pytest.approx(s["energy_j"], rel=1e-9)
    assert s["facility"]["levels"]["row"]["energy_j"] == pytest.approx(s["energy_j"], rel=1e-9)
    base = copy.deepcopy(data)
    del base["facility"]
    assert summarize(run(tmp_path, base))["e2e_s"]["mean"] < s["e2e_s"]["mean"]  # capping slowed the fleet


def test_budget_share_holds_the_target(tmp_path):
    """Two replicas decoding at 400 W under a 420 W row, target 0.9: the integrator lowers the shared cap until
    the row draws at most 378 W, within one resolution step (2 x 3 W) of it, and keeps it there."""
    data = two_replicas(tmp_path, {"name": "budget_share", "target": 0.9, "gain": 1.0, "resolution": 0.01})
    data["trace"]["path"] = str(write_trace(tmp_path, [100, 100], [3001, 3001], [0.0, 0.0]))
    raw = run(tmp_path, data)
    ev = raw.facility.events
    # tick 1 s: f = 1 + (378 - 400) / 600 -> 0.96 (down to the 0.01 step); a cap of 288 W does not bind a 200 W
    # decode, so the power stays 400 W and f falls 0.04 a tick (22/600 = 0.0367, floored) until 0.64 at 9 s
    # (2 x 192 = 384 W); at 10 s, 0.64 - 6/600 = 0.63: 2 x 189 = 378 W, the target, where it stays
    assert [e[5] for e in ev[:10]] == pytest.approx([0.96, 0.92, 0.88, 0.84, 0.8, 0.76, 0.72, 0.68, 0.64, 0.63])
    assert [e[0] for e in ev[:10]] == [float(k) for k in range(1, 11)]
    assert all(e[2] != "adjust" for e in ev[10:])  # held there until the load ends
    t, pw = level_power(raw, [0, 1])
    at = pw[np.searchsorted(t, [11.0, 30.0, 60.0], side="right") - 1]
    assert at == pytest.approx([378.0, 378.0, 378.0])
    assert [e[2] for e in ev] == ["cap"] + ["adjust"] * 9  # its release came after the last request: left out


def test_registry_refuses_an_unknown_name_with_the_known_ones(tmp_path, capsys):
    with pytest.raises(UserError) as e:
        POWER_POLICIES.get("polca")
    assert "unknown power policy 'polca'" in e.value.reason
    assert "budget_share, cap_on_threshold, none" in e.value.reason
    data = two_replicas(tmp_path, {"name": "polca"})
    rc = main(["run", str(write_scenario(tmp_path, data))])
    err = capsys.readouterr().err
    assert rc == 2 and "facility.power.policy.name" in err and "cap_on_threshold" in err


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["facility"]["power"]["rows"][0].update(limit_w=-5), ["'facility.power.rows.0.limit_w'",
                                                                      "greater than 0"]),
    (lambda d: d["facility"]["power"]["policy"].update(threshold=0.5), ["'facility.power.policy'", "release"]),
    (lambda d: d["facility"]["power"]["policy"].update(hold=3), ["'facility.power.policy.hold'", "unknown key"]),
    (lambda d: d["facility"]["power"]["rows"][0]["racks"][0]["replicas"].update(gpu=3),
     ["'facility.power.rows.0.racks.0.replicas.gpu'", "place 3 replicas", "has 2"]),
    (lambda d: d["facility"]["power"]["rows"][0]["racks"][0]["replicas"].update(gpu=1),
     ["'facility.power.rows.0.racks.0.replicas.gpu'", "1 of the 2 replicas"]),
    (lambda d: d["facility"]["power"]["rows"][0]["racks"][0]["replicas"].update(tpu=1),
     ["'facility.power.rows.0.racks.0.replicas.tpu'", "no pool named 'tpu'"]),
    (lambda d: d["facility"]["power"]["rows"][0]["racks"][0].update(name="row"), ["row and rack names must be "
                                                                                  "unique"]),
    (lambda d: d["facility"]["power"]["policy"].update(cap_w=50), ["'facility.power.policy.cap_w'",
                                                                  "outside the device's range 100-400 W"]),
])
def test_bad_fields_exit_2_naming_file_and_field(tmp_path, capsys, edit, words):
    data = two_replicas(tmp_path, dict(THRESHOLD))
    edit(data)
    path = write_scenario(tmp_path, data)
    rc = main(["run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "scenario.yaml" in err
    for w in words:
        assert w in err
    assert not (tmp_path / "out").exists()


def test_a_profile_without_a_power_cap_model_is_refused_when_it_could_be_capped(tmp_path, capsys):
    data = two_replicas(tmp_path, THRESHOLD, cap=None)
    path = write_scenario(tmp_path, data)
    rc = main(["run", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and "facility.power.policy.name" in err and "no power_cap section" in err and "toy.yaml" in err
    data["facility"]["power"]["policy"] = {"name": "none"}  # measuring only needs no cap model
    assert main(["run", str(write_scenario(tmp_path, data)), "--json"]) == 0
    capsys.readouterr()
    data["facility"]["power"]["policy"] = THRESHOLD  # nor does a level without a limit: nothing can be capped
    del data["facility"]["power"]["rows"][0]["limit_w"]
    assert main(["run", str(write_scenario(tmp_path, data)), "--json"]) == 0


def test_run_outputs_hold_the_events_and_level_power(tmp_path, capsys):
    data = two_replicas(tmp_path, THRESHOLD)
    rc = main(["run", str(write_scenario(tmp_path, data)), "--out", str(tmp_path / "res"), "--no-plots"])
    assert rc == 0, capsys.readouterr().err
    text = (tmp_path / "res" / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    s = json.loads(text)
    assert s["facility"]["levels"]["rack"]["peak_share_of_limit"] is None  # no limit: null, not NaN
    ev = pd.read_csv(tmp_path / "res" / "power_events.csv")
    assert ev["action"].tolist() == ["cap", "release"] and ev["t_s"].tolist() == [1.0, 11.0]
    lv = pd.read_csv(tmp_path / "res" / "power_levels.csv")
    assert float(((lv["t_end_s"] - lv["t_start_s"]) * lv["row_w"]).sum()) == pytest.approx(6002.0)


def test_a_pool_cap_stays_the_ceiling_and_returns_on_release(tmp_path):
    """A pool capped at 180 W of its own: decode steps draw 180 W (0.0225 s each), the row 360 W, over a threshold
    of 0.85 x 420 = 357 W; the manager's 150 W cap is lower and applies; on release the replica goes back to its
    pool's 180 W, not to uncapped."""
    data = two_replicas(tmp_path, {**THRESHOLD, "threshold": 0.85})
    data["fleet"][0]["power_cap_w"] = 180.0
    raw = run(tmp_path, data)
    assert [e[2] for e in raw.facility.events] == ["cap", "release"]
    t0, t1, e, h = raw.segments[0]
    assert e / (t1 - t0) == pytest.approx([180.0, 180.0, 150.0, 180.0])
    assert (t1[1] - t0[1]) / round((t1[1] - t0[1]) / 0.0225) == pytest.approx(0.0225)


def test_warm_up_and_horizon_windows(tmp_path):
    """The summary's figures cover the measured window only: a warm-up of 2 s leaves the cap event at 1 s out
    and counts 11 - 2 = 9 s capped; a horizon at 5 s ends the stint there (4 s capped), with no release."""
    s = summarize(run(tmp_path, {**two_replicas(tmp_path, THRESHOLD), "warmup_s": 0.0}))["facility"]["levels"]
    assert s["row"]["time_capped_s"] == pytest.approx(10.0)
    data = two_replicas(tmp_path, THRESHOLD)
    data["trace"]["path"] = str(write_trace(tmp_path, [100, 100, 10], [1001, 201, 2], [0.0, 0.0, 3.0]))
    lv = summarize(run(tmp_path, {**data, "warmup_s": 2.0}))["facility"]["levels"]["row"]
    assert lv["cap_events"] == 0 and lv["releases"] == 1 and lv["time_capped_s"] == pytest.approx(9.0)
    raw = run(tmp_path, {**two_replicas(tmp_path, THRESHOLD), "horizon_s": 5.0})
    lv = summarize(raw)["facility"]["levels"]["row"]
    assert raw.end_s == 5.0 and lv["cap_events"] == 1 and lv["releases"] == 0
    assert lv["time_capped_s"] == pytest.approx(4.0)


STUDY = Path(__file__).resolve().parent.parent / "studies" / "oversubscription"


def _study_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("oversubscription_study", STUDY / "oversubscription.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_oversubscription_study_headline_follows_from_its_table():
    """The write-up's answer, recomputed from the committed points: the largest count within 5% of the unmanaged
    p99 and at most 1% of the run above budget, per load and policy."""
    rows = list(csv.DictReader(open(STUDY / "oversubscription.csv")))
    assert all(float(r["e2e_p99_ratio"]) == 1.0 for r in rows if r["policy"] == "none")
    best = {}
    for pol in ("cap_on_threshold", "budget_share"):
        for load in ("2.0", "6.0", "10.0"):
            ok = [int(r["servers"]) for r in rows if r["policy"] == pol and r["load_rps_per_server"] == load
                  and float(r["e2e_p99_ratio"]) <= 1.05 and float(r["share_of_time_above_budget"]) <= 0.01]
            best[pol, load] = max(ok)
    assert [best["cap_on_threshold", k] for k in ("2.0", "6.0", "10.0")] == [15, 13, 11]
    assert [best["budget_share", k] for k in ("2.0", "6.0", "10.0")] == [14, 13, 12]


def test_oversubscription_cut_down():
    """One point of the study on 1,500 requests: 14 servers under the 10-server budget at 6 req/s each. Unmanaged,
    the row is over its budget most of the run; capped to the fair share (500 W), hardly ever; every request is
    served either way."""
    mod = _study_module()
    out = {}
    for name in ("none", "cap_on_threshold"):
        data = mod.scenario(14, 6.0, mod.POLICIES[name], 1500)
        out[name] = summarize(simulate(Scenario.model_validate(data), None))
    assert data["facility"]["power"]["policy"]["cap_w"] == 500.0
    above = {k: s["facility"]["levels"]["row"]["share_of_time_above_limit"] for k, s in out.items()}
    assert above["none"] > 0.5 and above["cap_on_threshold"] < 0.02
    assert out["none"]["requests_completed"] == out["cap_on_threshold"]["requests_completed"] == 1500
    assert out["cap_on_threshold"]["e2e_s"]["p99"] >= out["none"]["e2e_s"]["p99"]


@pytest.mark.parametrize("policy", ["fcfs", "static"])
def test_a_cap_reaches_an_fcfs_request_or_a_static_batch_at_its_next_decode_step(tmp_path, policy):
    """One request (100 in, 101 out) alone under a 150 W row that the manager caps at its 1 s sample (its 0 s
    sample saw the replica idle): the prefill (0.115 s) and the decode steps up to the one in progress at 1 s
    run at full power (45 steps of 0.02 s: to 1.015 s), the other 55 at the 150 W cap (0.03 s each, 150 W), so the
    request ends at 1.015 + 55 x 0.03 = 2.665 s, not 0.115 + 100 x 0.02 = 2.115 s."""
    data = two_replicas(tmp_path, THRESHOLD, limit_w=150.0)
    data["fleet"][0]["count"] = 1
    data["fleet"][0]["batching"] = {"policy": policy, **({"max_batch": 1, "max_wait_s": 0} if policy == "static"
                                                           else {})}
    data["facility"]["power"]["rows"][0]["racks"][0]["replicas"] = {"gpu": 1}
    data["trace"]["path"] = str(write_trace(tmp_path, [100], [101], [0.0]))
    raw = run(tmp_path, data)
    req = requests_table(raw)
    ev = raw.facility.events
    assert (ev[0][0], ev[0][2], ev[0][4]) == (1.0, "cap", 150.0)
    assert req["first_token_s"][0] == pytest.approx(0.115)
    assert req["done_s"][0] == pytest.approx(0.115 + 45 * 0.02 + 55 * 0.03)
    assert req["energy_j"][0] == pytest.approx(0.115 * 300 + 45 * 0.02 * 200 + 55 * 0.03 * 150)


def test_a_capped_static_batch_advances_its_context_by_the_batch_each_step(tmp_path):
    """Two requests (100 in, 101 out) in one static batch, a decode step that grows with the KV tokens read
    (20 us per 1,000 tokens), capped at the 1 s sample: the steps before the cap read 2 x 101 tokens and 2 more
    each step, the rest continue from there at the cap (the profile's own evaluators, uncapped and at 150 W, give
    each part's time; a run that advanced the context by one token a step would end earlier)."""
    from dcsim.profiles.profile import load_profile
    from dcsim.sim.batching.continuous import steps_covering

    d = profile_dict(prefill=(0.115, 0.0), decode=(0.02, 0.0), prefill_w=300.0, decode_w=(200.0, 0.0), idle_w=50.0,
                     cap=CAP)
    d["latency"]["decode_step_s"]["coef"]["context"] = 2e-8
    prof = tmp_path / "ctx.yaml"
    prof.write_text(yaml.safe_dump(d))
    data = two_replicas(tmp_path, THRESHOLD, limit_w=150.0)
    data["fleet"][0].update(count=1, profile=str(prof), batching={"policy": "static", "max_batch": 2, "max_wait_s": 0})
    data["facility"]["power"]["rows"][0]["racks"][0]["replicas"] = {"gpu": 1}
    data["trace"]["path"] = str(write_trace(tmp_path, [100, 100], [101, 101], [0.0, 0.0]))
    raw = run(tmp_path, data)
    req = requests_table(raw)
    assert raw.facility.events[0][:3] == (1.0, "row", "cap")
    p = load_profile(prof)
    full, capped = p.evaluator(), p.evaluator(150.0)
    t_pf = full.prefill(200, 2 * 100.0 ** 2, 2)[0]
    k = steps_covering(full, 2, 2 * 101, 100, 1.0 - t_pf)
    t_k = full.decode_run(2, 2 * 101, k)[0]
    t_rest = capped.decode_run(2, 2 * 101 + 2 * k, 100 - k)[0]
    assert req["done_s"].tolist() == pytest.approx([t_pf + t_k + t_rest] * 2, rel=1e-9)
    assert t_rest > capped.decode_run(2, 2 * 101 + k, 100 - k)[0]  # the context term is felt
