"""Autoscaling with cold starts (dcsim/sim/autoscale.py): hand-worked timelines, conservation of requests and
joules, always_on identical to no autoscaling, bad parameters refused naming the field, published load figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.results import energy_by, power_timeline, replicas_table, requests_table, summarize
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate

REPO = Path(__file__).resolve().parent.parent
# Toy profile (tests/simkit.py): prefill 0.1 + 0.001*tokens s at 300 W; decode step 0.02 + 0.001*batch s at
# 200 + 10*batch W; serving idle 50 W, deep idle (off) 10 W. A request of 100 in, 11 out alone: prefill 0.2 s
# (60 J), 10 decode steps of 0.021 s at 210 W (44.1 J): 0.41 s, 104.1 J.
COLD = {"load_s": 20.0, "load_j": 2000.0}  # 100 W while loading


def run(tmp_path, n_in, n_out, arrival, count=1, autoscaling=None, cold=COLD, **kw):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, n_in, n_out, arrival)
    pool = {"name": "p", "profile": str(prof), "count": count, "batching": {"policy": "fcfs"}}
    if cold is not None:
        pool["cold_start"] = cold
    extra = {} if autoscaling is None else {"autoscaling": autoscaling}
    sc = Scenario.model_validate(scenario(tr, [pool], **extra, **kw))
    raw = simulate(sc)
    return raw, requests_table(raw), summarize(raw)


def test_scale_from_zero_one_request(tmp_path):
    # one replica, off at t=0 (reactive, min_replicas 0); a request at t=0 finds it off and loads it: on at 20,
    # served 20..20.41; a second at 25 finds it serving-idle (scale-down delay 300 s): served 25..25.41, the end
    raw, req, s = run(tmp_path, [100, 100], [11, 11], [0.0, 25.0],
                      autoscaling={"name": "reactive", "min_replicas": 0, "interval_s": 10})
    assert req["start_s"].tolist() == pytest.approx([20.0, 25.0])
    assert req["ttft_s"].tolist() == pytest.approx([20.0 + 0.2, 0.2])  # load time + prefill
    assert req["e2e_s"].tolist() == pytest.approx([20.41, 0.41])
    assert req["cold_wait_s"].tolist() == pytest.approx([20.0, 0.0])
    assert raw.end_s == pytest.approx(25.41)
    # energy = load 2000 J + busy 2 x 104.1 J + serving-idle (25.41 - 20 - 0.82) s x 50 W; never off after t=0
    idle = 50.0 * (25.41 - 20.0 - 0.82)
    assert s["off_j"] == pytest.approx(0.0)
    assert s["load_j"] == pytest.approx(2000.0)
    assert s["active_j"] == pytest.approx(208.2)
    assert s["idle_j"] == pytest.approx(idle)
    assert s["energy_j"] == pytest.approx(2000.0 + 208.2 + idle)
    a = s["autoscaling"]
    assert a["loads"] == 1 and a["requests_waited_for_load"] == 1
    assert a["extra_ttft_s"]["mean"] == pytest.approx(20.0)
    # always on: the same busy work, serving-idle the rest of the 25.41 s
    assert a["always_on_same_work_j"] == pytest.approx(208.2 + 50.0 * (25.41 - 0.82))


def test_scale_down_then_cold_again(tmp_path):
    # scale-down delay 20 s on a 10 s interval: after the first request (load 0..20, done 20.41) the replica is
    # wanted off from the tick at 30 and turned off at the tick at 50; a request at 95 loads it again (on at 115,
    # done 115.41, the end)
    raw, req, s = run(tmp_path, [100, 100], [11, 11], [0.0, 95.0],
                      autoscaling={"name": "reactive", "min_replicas": 0, "interval_s": 10,
                                   "scale_down_delay_s": 20})
    assert req["start_s"].tolist() == pytest.approx([20.0, 115.0])
    assert raw.end_s == pytest.approx(115.41)
    assert s["off_j"] == pytest.approx(10.0 * (95.0 - 50.0))
    assert s["load_j"] == pytest.approx(4000.0)
    assert s["idle_j"] == pytest.approx(50.0 * ((50.0 - 20.0) - 0.41))
    assert s["energy_j"] == pytest.approx(450.0 + 4000.0 + 208.2 + 50.0 * 29.59)
    assert s["autoscaling"]["loads"] == 2


def test_conservation_requests_and_joules(tmp_path):
    rng = np.random.default_rng(3)
    n = 300
    arr = np.sort(np.concatenate([rng.uniform(0, 200, n // 2), rng.uniform(1000, 1200, n - n // 2)]))
    raw, req, s = run(tmp_path, rng.integers(20, 400, n), rng.integers(2, 60, n), arr, count=4,
                      autoscaling={"name": "reactive", "target_outstanding": 2, "interval_s": 5,
                                   "scale_down_delay_s": 60, "min_replicas": 0})
    assert (req["status"] == "done").sum() == n
    assert s["autoscaling"]["loads"] >= 2  # scaled back up after the quiet period
    rep = replicas_table(raw)
    span = raw.end_s
    # every replica's time is busy, serving-idle, off or loading
    assert np.allclose(rep["busy_s"] + rep["idle_s"] + rep["off_s"] + rep["loading_s"], span)
    # joules: the summary, the replica table, the cumulative curve and the power timeline agree
    tot = rep[["active_j", "idle_j", "host_j", "off_j", "load_j"]].to_numpy().sum()
    assert s["energy_j"] == pytest.approx(tot)
    assert energy_by(raw, list(range(4)), np.array([span]))[0] == pytest.approx(tot)
    pt = power_timeline(raw)
    assert float((pt["fleet_w"] * (pt["t_end_s"] - pt["t_start_s"])).sum()) == pytest.approx(tot)
    # requests' own joules are the active energy; only ON replicas served
    assert req["energy_j"].sum() == pytest.approx(s["active_j"])
    assert s["energy_j"] < s["autoscaling"]["always_on_same_work_j"]


def test_always_on_identical_to_no_autoscaling(tmp_path):
    def out(name, autoscaling):
        d = tmp_path / name
        d.mkdir()
        prof = write_profile(d)
        rng = np.random.default_rng(1)
        tr = write_trace(d, rng.integers(20, 300, 200), rng.integers(2, 50, 200), np.sort(rng.uniform(0, 60, 200)))
        data = scenario(tr, [{"name": "p", "profile": str(prof), "count": 3, "batching": {"policy": "continuous"}}],
                        router={"name": "round_robin"})
        if autoscaling:
            data["autoscaling"] = {"name": "always_on"}
        sc = write_scenario(d, data)
        r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc), "--out", str(d / "o"), "--no-plots"],
                           cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
        assert r.returncode == 0, r.stderr
        return {f: (d / "o" / f).read_bytes() for f in ("summary.json", "replicas.csv", "power.csv")}, d

    a, da = out("a", False)
    b, db = out("b", True)
    for f in a:
        assert a[f].replace(str(da).encode(), b"X") == b[f].replace(str(db).encode(), b"X"), f


def test_scheduled_curve(tmp_path):
    # a 240 s "day", 10 s hours: 1 replica on in hours 0-11, 2 in hours 12-23; interval 10 s
    hourly = [1] * 12 + [2] * 12
    raw, req, s = run(tmp_path, [100] * 4, [11] * 4, [0.0, 1.0, 129.0, 130.0], count=2,
                      autoscaling={"name": "scheduled", "hourly": hourly, "day_s": 240.0, "interval_s": 10})
    # the second replica is loaded at the tick at 120 (hour 12), on at 140
    ps = raw.scaling.pools[0]
    assert list(ps.change_t[1]) == pytest.approx([0.0, 120.0, 140.0])
    assert list(ps.change_s[1]) == [0, 1, 2]
    assert s["autoscaling"]["requests_waited_for_load"] == 0  # the on replica took them: placed on ON first
    assert s["off_j"] == pytest.approx(10.0 * 120.0)


@pytest.mark.parametrize("key,value,field", [
    ("autoscaling", {"name": "reactive", "target_utilisation": 1.5}, "autoscaling.target_utilisation"),
    ("autoscaling", {"name": "reactive", "scale_up_delay": 3}, "autoscaling.scale_up_delay"),
    ("autoscaling", {"name": "reactive", "min_replicas": 3, "max_replicas": 2}, "autoscaling"),
    ("autoscaling", {"name": "scheduled", "hourly": [1, 2]}, "autoscaling.hourly"),
    ("autoscaling", {"name": "warp"}, "autoscaling.name"),
    ("cold_start", {"load_s": 10}, "fleet.0.cold_start"),
    ("cold_start", {"published": "Nowhere / Nothing"}, "fleet.0.cold_start"),
])
def test_bad_params_exit_2_naming_field(tmp_path, key, value, field):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [10], [5], [0.0])
    data = scenario(tr, [{"name": "p", "profile": str(prof), "count": 1}])
    if key == "cold_start":
        data["fleet"][0]["cold_start"] = value
        data["autoscaling"] = {"name": "reactive"}
    else:
        data[key] = value
    sc = write_scenario(tmp_path, data)
    r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc)], cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
    assert r.returncode == 2
    assert field in r.stderr and "Traceback" not in r.stderr


def test_no_cold_start_anywhere_exit_2(tmp_path):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [10], [5], [0.0])
    data = scenario(tr, [{"name": "p", "profile": str(prof), "count": 1}], autoscaling={"name": "reactive"})
    sc = write_scenario(tmp_path, data)
    r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc)], cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
    assert r.returncode == 2 and "fleet.0.cold_start" in r.stderr and "no cold_start" in r.stderr


def test_published_loads_recomputed(shared_data):
    from dcsim.cold_start import PUBLISHED_LOADS, published_loads

    got = published_loads(shared_data / "wilkins2024-energy-inference")
    assert set(got) == set(PUBLISHED_LOADS)
    for k, (s, j) in PUBLISHED_LOADS.items():
        assert got[k][0] == pytest.approx(s, abs=0.006) and got[k][1] == pytest.approx(j, abs=0.006)


def test_outputs_states_table(tmp_path):
    from dcsim.run_outputs import write_outputs

    raw, req, s = run(tmp_path, [100, 100], [11, 11], [0.0, 25.0],
                      autoscaling={"name": "reactive", "min_replicas": 0, "interval_s": 10})
    out = write_outputs(raw, s, tmp_path / "o", plots=True)
    import pandas as pd

    st = pd.read_csv(out / "replica_states.csv")
    w = st["t_end_s"] - st["t_start_s"]
    # replica-seconds in each state add to the replica table's
    assert float((st["p_off"] * w).sum()) == pytest.approx(0.0)
    assert float((st["p_loading"] * w).sum()) == pytest.approx(20.0)
    assert float((st["p_busy"] * w).sum()) == pytest.approx(0.82)
    assert (out / "replica_states.png").is_file()
    json.loads((out / "summary.json").read_text())


def test_profile_cold_start_used(tmp_path):
    import yaml

    prof = write_profile(tmp_path)
    d = yaml.safe_load(prof.read_text())
    d["cold_start"] = {"load_s": 5.0, "load_j": 300.0}
    prof.write_text(yaml.safe_dump(d))
    tr = write_trace(tmp_path, [100], [11], [0.0])
    sc = Scenario.model_validate(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1}],
                                          autoscaling={"name": "reactive"}))
    raw = simulate(sc)
    s = summarize(raw)
    assert requests_table(raw)["ttft_s"].tolist() == pytest.approx([5.2])
    assert s["load_j"] == pytest.approx(300.0) and s["energy_j"] == pytest.approx(300.0 + 104.1)


def test_study_cut_down():
    # the study's code-trace case on its first 1,500 requests: scale-to-zero saves energy and makes requests wait
    # for loads; one replica kept loaded makes none wait
    sys.path.insert(0, str(REPO / "studies" / "autoscaling"))
    import autoscaling as study

    out = {}
    for pol in ("always_on", "reactive_zero", "reactive_one_warm"):
        data = study.scenario("code, own timestamps", pol, study.FAST)
        data["trace"]["limit"] = 1500
        data["trace"]["path"] = str(REPO / data["trace"]["path"])
        out[pol] = summarize(simulate(Scenario.model_validate(data)))
    base = out["always_on"]["energy_j"]
    assert out["reactive_zero"]["energy_j"] < base and out["reactive_one_warm"]["energy_j"] < base
    assert out["reactive_zero"]["autoscaling"]["requests_waited_for_load"] > 0
    assert out["reactive_one_warm"]["autoscaling"]["requests_waited_for_load"] == 0
    for s in out.values():
        assert s["requests_completed"] == 1500


def test_autoscaling_under_a_facility_power_limit(tmp_path):
    """An autoscaler and a power hierarchy together. One replica scales from zero (a 20 s, 2,000 J load: 100 W);
    requests at 0 and 25 as in the scale-from-zero case. Under a 1,000 W row limit nothing is capped, the
    timeline is the one without a facility, and the row's energy is the run's, the load's 2,000 J included
    (peak 300 W, the prefill: under a manager a request's prefill and decode steps are segments of their own).
    Under 90 W the manager sees the
    load's 100 W (cap_on_threshold caps above 85.5 W) and caps during the load, before the first step at 20 s."""
    cap = {"min_w": 100, "max_w": 400, "default_w": 400, "static_w": 60, "exponent": 3}
    prof = write_profile(tmp_path, cap=cap)
    tr = write_trace(tmp_path, [100, 100], [11, 11], [0.0, 25.0])
    auto = {"name": "reactive", "min_replicas": 0, "interval_s": 10}
    # with a host idling at 5 W in every state, the row still integrates to the run's energy
    hosted = write_profile(tmp_path, name="hosted", cap=cap, host={"prefill_w": {"intercept": 20.0},
                                                                   "decode_w": {"intercept": 10.0}, "idle_w": 5.0})

    def go(limit_w: float | None):
        pool = {"name": "p", "profile": str(prof), "count": 1, "batching": {"policy": "fcfs"}, "cold_start": COLD}
        kw = {} if limit_w is None else {"facility": {"power": {
            "control_interval_s": 1.0, "policy": {"name": "cap_on_threshold", "cap_w": 150, "hold_s": 0},
            "rows": [{"name": "row", "limit_w": limit_w, "racks": [{"name": "r", "replicas": {"p": 1}}]}]}}}
        raw = simulate(Scenario.model_validate(scenario(tr, [pool], autoscaling=auto, **kw)))
        return raw, requests_table(raw), summarize(raw)

    pool_h = {"name": "p", "profile": str(hosted), "count": 1, "batching": {"policy": "fcfs"}, "cold_start": COLD}
    facility = {"power": {"control_interval_s": 1.0, "policy": {"name": "cap_on_threshold", "cap_w": 150},
                          "rows": [{"name": "row", "limit_w": 1000.0, "racks": [{"name": "r", "replicas": {"p": 1}}]}]}}
    sh = summarize(simulate(Scenario.model_validate(scenario(tr, [pool_h], autoscaling=auto, facility=facility))))
    assert sh["facility"]["levels"]["row"]["energy_j"] == pytest.approx(sh["energy_j"])
    _, req0, s0 = go(None)
    _, req, s = go(1000.0)
    assert req0["done_s"].tolist() == pytest.approx([20.41, 25.41])
    assert req["done_s"].tolist() == pytest.approx(req0["done_s"].tolist())
    row = s["facility"]["levels"]["row"]
    assert row["cap_events"] == 0 and row["peak_w"] == pytest.approx(300.0)  # the prefill
    assert row["energy_j"] == pytest.approx(s["energy_j"]) and s["load_j"] == pytest.approx(2000.0)
    raw, req, s = go(90.0)
    row = s["facility"]["levels"]["row"]
    assert row["cap_events"] == 1 and row["first_cap_s"] == 0.0
    from dcsim.facility_report import events_columns

    ev = events_columns(raw)  # capped at the first sample on the loading replica's 100 W, released when it idles
    assert ev["action"] == ["cap", "release"] and ev["power_w"] == pytest.approx([100.0, 50.0])
    assert ev["t_s"] == pytest.approx([0.0, 20.0])
