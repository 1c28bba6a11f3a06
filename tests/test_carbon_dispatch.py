"""Request classes and carbon-aware dispatch (dcsim/sim/dispatch.py, the `carbon_cost` router): a batch request
arriving in a dirty hour starts at the clean hour, a deadline forces a dirty start, carbon worked by hand,
conservation of requests and joules with deferral, the run without request classes unchanged, bad input exit 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main

# toy profile (simkit): idle 50 W; a request of 100 tokens in and 11 out runs a 0.2 s prefill at 300 W (60 J)
# and 10 decode steps of 0.021 s at 210 W (44.1 J): 0.41 s and 104.1 J alone. Replayed, the first arrival is 0 s.
SERVICE_S, ACTIVE_J, IDLE_W = 0.41, 60.0 + 10 * 0.021 * 210.0, 50.0
DIRTY, CLEAN, CLEAN_AT = 500.0, 100.0, 100.0  # g/kWh before and from 100 s
SERIES = f"t_s,value\n0,{DIRTY:g}\n{CLEAN_AT:g},{CLEAN:g}\n"


def _run(tmp_path, capsys, n_in=(100,), n_out=(11,), arrival=(0.0,), out=None, series=SERIES, **kw) -> dict:
    (tmp_path / "g.csv").write_text(series)
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, list(n_in), list(n_out), arrival=list(arrival))
    pools = kw.pop("pools", None) or [{"name": "a", "profile": str(prof), "count": 1}]
    kw.setdefault("facility", {"carbon_series": {"path": "g.csv"}})
    sc = write_scenario(tmp_path, scenario(tr, pools, **kw))
    args = ["run", str(sc)] + (["--out", str(out)] if out else ["--json"])
    code = main(args)
    got = capsys.readouterr()
    if code != 0:
        return {"code": code, "err": got.err}
    return json.loads((out / "summary.json").read_text()) if out else json.loads(got.out)


def _classes(deadline_s: float, share: float = 1.0) -> dict:
    return {"batch": {"share": share, "deadline_s": deadline_s}}


def test_a_batch_request_arriving_dirty_starts_at_the_clean_hour(tmp_path, capsys):
    s = _run(tmp_path, capsys, out=tmp_path / "o", request_classes=_classes(1000.0),
             dispatch={"name": "carbon_defer", "threshold": 200})
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert req["request_class"].tolist() == ["batch"]
    assert req["released_s"][0] == CLEAN_AT and req["start_s"][0] == CLEAN_AT
    assert req["done_s"][0] == pytest.approx(CLEAN_AT + SERVICE_S) and bool(req["deadline_met"][0])
    # deferred: [0, 100) idle at 500 g/kWh, then the request's 104.1 J at 100
    carbon = (IDLE_W * CLEAN_AT * DIRTY + ACTIVE_J * CLEAN) / 3.6e6
    assert s["carbon_g"] == pytest.approx(carbon, rel=1e-9)
    # sent at arrival: the request and 99.59 s idle at 500, then 0.41 s idle at 100 (the same window)
    base = ((ACTIVE_J + IDLE_W * (CLEAN_AT - SERVICE_S)) * DIRTY + IDLE_W * SERVICE_S * CLEAN) / 3.6e6
    d = s["dispatch"]
    assert d["window_s"] == [0.0, pytest.approx(CLEAN_AT + SERVICE_S)]
    assert d["carbon_g"] == pytest.approx(carbon, rel=1e-9)
    assert d["carbon_g_without_deferral"] == pytest.approx(base, rel=1e-9)
    assert d["carbon_saved_g"] == pytest.approx(base - carbon, rel=1e-9)
    b = s["request_classes"]["batch"]
    assert (b["deferred"], b["deadline_misses"], b["deferral_s"]["mean"]) == (1, 0, CLEAN_AT)
    # the carbon over time sums to the summary's, and the figure is drawn
    grid = pd.read_csv(tmp_path / "o" / "grid.csv")
    assert grid["carbon_g"].sum() == pytest.approx(carbon, rel=1e-9)
    assert grid["carbon_g_without_deferral"].sum() == pytest.approx(base, rel=1e-9)
    assert grid["facility_kwh"].sum() == pytest.approx(s["facility_j"] / 3.6e6, rel=1e-9)
    assert (tmp_path / "o" / "carbon_cost.png").stat().st_size > 10_000
    # the run report carries the figure and the classes' figures
    assert main(["report", str(tmp_path / "o"), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert 'alt="carbon cost"' in page and "Request classes and carbon-aware dispatch" in page
    assert f'data-v="{d["carbon_saved_g"]!r}"' in page


def test_a_deadline_forces_a_start_in_the_dirty_hour(tmp_path, capsys):
    # due at 50 s: the latest start that meets it is 50 - 0.41 (predicted alone) - 1 (margin) = 48.59 s, before
    # the clean hour, so the request starts then, at 500 g/kWh
    s = _run(tmp_path, capsys, out=tmp_path / "o", request_classes=_classes(50.0),
             dispatch={"name": "carbon_defer", "threshold": 200, "margin_s": 1.0})
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    start = 50.0 - SERVICE_S - 1.0
    assert req["start_s"][0] == pytest.approx(start, abs=1e-9)
    assert req["done_s"][0] == pytest.approx(49.0, abs=1e-9) and bool(req["deadline_met"][0])
    assert s["carbon_g"] == pytest.approx((IDLE_W * start + ACTIVE_J) * DIRTY / 3.6e6, rel=1e-9)
    assert s["request_classes"]["batch"]["deadline_misses"] == 0
    # a deadline shorter than the service is missed, and counted as missed
    (tmp_path / "m").mkdir()
    s = _run(tmp_path / "m", capsys, request_classes=_classes(0.3), dispatch={"name": "carbon_defer",
                                                                               "threshold": 200})
    b = s["request_classes"]["batch"]
    assert (b["deferred"], b["late"], b["deadline_misses"]) == (0, 1, 1)
    assert s["dispatch"]["deadline_misses"] == s["dispatch"]["deadline_misses_without_deferral"] == 1


def test_a_clean_grid_at_arrival_sends_the_request_at_once_and_interactive_ones_are_never_held(tmp_path, capsys):
    s = _run(tmp_path, capsys, series="t_s,value\n0,100\n", request_classes=_classes(1000.0),
             dispatch={"name": "carbon_defer", "threshold": 200})
    assert s["makespan_s"] == pytest.approx(SERVICE_S) and s["request_classes"]["batch"]["deferred"] == 0
    (tmp_path / "i").mkdir()
    s = _run(tmp_path / "i", capsys, request_classes=_classes(1000.0, share=0.0), slo={"ttft_s": 0.25},
             dispatch={"name": "carbon_defer", "threshold": 200})
    assert s["makespan_s"] == pytest.approx(SERVICE_S)
    assert s["request_classes"]["interactive"]["slo"]["met"] == 1 and s["slo"]["attainment"] == 1.0
    assert s["dispatch"]["carbon_saved_g"] == 0.0


def test_requests_and_joules_are_conserved_with_deferral(tmp_path, capsys):
    rng = np.random.default_rng(5)
    n = 300
    arrival = np.sort(rng.uniform(0, 400, n))
    n_in = rng.integers(20, 400, n)
    n_out = rng.integers(2, 60, n)
    series = "t_s,value\n0,450\n60,120\n120,480\n200,90\n260,500\n"  # repeating every 300 s
    kw = dict(n_in=n_in, n_out=n_out, arrival=arrival, series=series,
              facility={"pue": 1.3, "carbon_series": {"path": "g.csv", "period_s": 300},
                        "price_per_kwh": 0.2},
              pools=None, request_classes=_classes(240.0, share=0.6),
              dispatch={"name": "carbon_defer", "threshold": 200, "margin_s": 5})
    s = _run(tmp_path, capsys, out=tmp_path / "o", **kw)
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert s["requests_total"] == n == s["requests_completed"] + s["requests_rejected"] + s["requests_unfinished"]
    assert s["requests_completed"] == n
    b, i = s["request_classes"]["batch"], s["request_classes"]["interactive"]
    assert b["requests"] + i["requests"] == n and 120 < b["requests"] < 240 and b["deferred"] > 20
    held = req["released_s"] - req["arrival_s"]
    assert (held[req["request_class"] == "interactive"] == 0).all() and (held >= 0).all()
    # every request is released at a clean time or at its latest start
    rel = req.loc[held > 0, "released_s"] % 300
    clean = ((rel >= 60) & (rel < 120)) | ((rel >= 200) & (rel < 260))
    latest = np.isclose(req.loc[held > 0, "released_s"], req.loc[held > 0, "due_s"] - 5
                        - (req.loc[held > 0, "done_s"] - req.loc[held > 0, "start_s"]), atol=5)
    assert (clean | latest).all()
    # joules: per-request energies sum to the active energy; the bins of grid.csv to the facility energy and carbon
    assert req["energy_j"].sum() == pytest.approx(s["active_j"], rel=1e-9) and s["unattributed_active_j"] == 0
    grid = pd.read_csv(tmp_path / "o" / "grid.csv")
    assert grid["facility_kwh"].sum() == pytest.approx(s["facility_j"] / 3.6e6, rel=1e-9)
    assert grid["carbon_g"].sum() == pytest.approx(s["carbon_g"], rel=1e-9)
    assert grid["cost"].sum() == pytest.approx(s["cost"], rel=1e-9)
    # deferral saved carbon against the same requests sent at arrival, over one window
    d = s["dispatch"]
    assert d["carbon_saved_g"] > 0 and d["carbon_g"] == pytest.approx(s["carbon_g"], rel=1e-9)
    assert d["window_s"][1] >= s["makespan_s"]


def test_without_request_classes_the_run_is_unchanged(tmp_path, capsys):
    kw = dict(n_in=[100, 50, 300], n_out=[11, 40, 5], arrival=[0.0, 0.1, 0.15])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = _run(tmp_path / "a", capsys, **kw)
    named = _run(tmp_path / "b", capsys, dispatch={"name": "immediate"}, **kw)
    assert "request_classes" not in plain and "dispatch" not in plain
    assert json.dumps(plain) == json.dumps(named)
    # classes with no deferral: the same timings and joules as without classes
    (tmp_path / "c").mkdir()
    classed = _run(tmp_path / "c", capsys, request_classes=_classes(1000.0, share=0.5), **kw)
    for k in ("makespan_s", "energy_j", "carbon_g", "e2e_s", "ttft_s"):
        assert classed[k] == plain[k]


def test_the_carbon_cost_router_sends_work_to_the_cleaner_region(tmp_path, capsys):
    (tmp_path / "east.csv").write_text("t_s,value\n0,600\n5,50\n")
    (tmp_path / "west.csv").write_text("t_s,value\n0,50\n5,600\n")
    prof = str(write_profile(tmp_path))
    pools = [{"name": "east", "profile": prof, "count": 1, "carbon_series": {"path": "east.csv"}},
             {"name": "west", "profile": prof, "count": 1, "carbon_series": {"path": "west.csv"}}]
    s = _run(tmp_path, capsys, out=tmp_path / "o", n_in=[100] * 4, n_out=[11] * 4, arrival=[0, 1, 6, 7],
             pools=pools, router={"name": "carbon_cost", "lambda": 1.0}, facility={})
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert req["pool"].tolist() == ["west", "west", "east", "east"]
    # each pool's carbon at its own series: idle and active joules in each piece, by hand
    east = ((IDLE_W * 5) * 600 + (IDLE_W * (7.41 - 5 - 2 * SERVICE_S) + 2 * ACTIVE_J) * 50) / 3.6e6
    west = ((IDLE_W * (5 - 2 * SERVICE_S) + 2 * ACTIVE_J) * 50 + IDLE_W * 2.41 * 600) / 3.6e6
    assert s["pools"]["east"]["carbon_g"] == pytest.approx(east, rel=1e-9)
    assert s["pools"]["west"]["carbon_g"] == pytest.approx(west, rel=1e-9)
    assert s["carbon_g"] == pytest.approx(east + west, rel=1e-9)
    # energy_cost, blind to the regions, keeps to the first of equals
    (tmp_path / "e").mkdir()
    for f in ("east.csv", "west.csv"):
        (tmp_path / "e" / f).write_text((tmp_path / f).read_text())
    _run(tmp_path / "e", capsys, out=tmp_path / "e" / "o", n_in=[100] * 4, n_out=[11] * 4, arrival=[0, 1, 6, 7],
         pools=pools, router={"name": "energy_cost", "lambda": 1.0}, facility={})
    assert pd.read_parquet(tmp_path / "e" / "o" / "requests.parquet")["pool"].tolist() == ["east"] * 4


@pytest.mark.parametrize("extra, words", [
    ({"request_classes": {"batch": {"share": 1.5, "deadline_s": 10}}}, "request_classes.batch.share"),
    ({"request_classes": {"batch": {"share": 0.5, "deadline_s": 0}}}, "request_classes.batch.deadline_s"),
    ({"request_classes": {"batch": {"share": 0.5}}}, "request_classes.batch.deadline_s"),
    ({"request_classes": {"batch": {"share": 0.5, "deadline_s": 10}}, "dispatch": {"name": "greenest"}},
     "dispatch.name"),
    ({"request_classes": {"batch": {"share": 0.5, "deadline_s": 10}},
      "dispatch": {"name": "carbon_defer", "threshold": 1, "thresold": 2}}, "dispatch.thresold"),
    ({"request_classes": {"batch": {"share": 0.5, "deadline_s": 10}},
      "dispatch": {"name": "carbon_defer"}}, "dispatch.threshold"),
    ({"dispatch": {"name": "carbon_defer", "threshold": 100}}, "set request_classes.batch"),
    ({"request_classes": {"batch": {"share": 0.5, "deadline_s": 10}}, "facility": {},
      "dispatch": {"name": "carbon_defer", "threshold": 100}}, "set facility.carbon_series"),
    ({"router": {"name": "carbon_cost", "lambda": 2}}, "router.lambda"),
])
def test_bad_classes_and_dispatch_exit_2_naming_the_field(tmp_path, capsys, extra, words):
    got = _run(tmp_path, capsys, **extra)
    assert got.get("code") == 2 and words in got["err"] and "Traceback" not in got["err"], got


def test_a_bad_pool_series_exits_2_naming_the_pool(tmp_path, capsys):
    prof = str(write_profile(tmp_path))
    for series, words in (({"path": "nowhere.csv"}, "fleet.0.carbon_series.path"),
                          ({"path": "g.csv", "value_column": "gco2"}, "no column 'gco2'")):
        pools = [{"name": "a", "profile": prof, "count": 1, "carbon_series": series}]
        got = _run(tmp_path, capsys, pools=pools)
        assert got.get("code") == 2 and words in got["err"] and "Traceback" not in got["err"], got


def test_the_shipped_example_scenario_defers_and_saves(tmp_path, capsys):
    from pathlib import Path

    ex = Path(__file__).resolve().parents[1] / "scenarios" / "carbon-defer-h100-azure-conv.yaml"
    assert main(["run", str(ex), "--set", "trace.limit=600", "--set", "arrivals.mean_rate_per_s=0.007",
                 "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    d, b = s["dispatch"], s["request_classes"]["batch"]
    assert s["requests_completed"] == 600 and b["deferred"] > 0 and d["deadline_misses"] == 0
    assert d["carbon_saved_g"] > 0 and d["carbon_g"] == pytest.approx(s["carbon_g"], rel=1e-9)


def test_carbon_cleanest_waits_for_the_cleanest_hour_before_the_latest_start(tmp_path, capsys):
    # 500 until 100 s, 300 until 200 s, 100 from 200 s: due at 1000 s the request starts at 200 s; due at 150 s
    # (latest start 150 - 0.41 - 1 s) it starts at 100 s, the cleanest piece it can reach
    series = "t_s,value\n0,500\n100,300\n200,100\n"
    for due, start in ((1000.0, 200.0), (150.0, 100.0)):
        (tmp_path / str(due)).mkdir()
        s = _run(tmp_path / str(due), capsys, out=tmp_path / str(due) / "o", series=series,
                 request_classes=_classes(due), dispatch={"name": "carbon_cleanest", "margin_s": 1.0})
        req = pd.read_parquet(tmp_path / str(due) / "o" / "requests.parquet")
        assert req["start_s"][0] == start and s["request_classes"]["batch"]["deadline_misses"] == 0
        value = {200.0: 100, 100.0: 300}[start]
        idle = IDLE_W * (start - 100) * 300 + (IDLE_W * 100 * 500)
        assert s["carbon_g"] == pytest.approx((idle + ACTIVE_J * value) / 3.6e6, rel=1e-9)
    # nothing cleaner ahead: at once
    (tmp_path / "flat").mkdir()
    s = _run(tmp_path / "flat", capsys, series="t_s,value\n0,100\n50,400\n", request_classes=_classes(1000.0),
             dispatch={"name": "carbon_cleanest"})
    assert s["request_classes"]["batch"]["deferred"] == 0 and s["makespan_s"] == pytest.approx(SERVICE_S)


def test_a_request_held_past_the_horizon_is_unfinished_and_misses_its_deadline(tmp_path, capsys):
    s = _run(tmp_path, capsys, n_in=[100, 100], n_out=[11, 11], arrival=[0.0, 1.0], horizon_s=50.0,
             request_classes=_classes(1000.0), dispatch={"name": "carbon_defer", "threshold": 200})
    assert (s["requests_total"], s["requests_completed"], s["requests_unfinished"]) == (2, 0, 2)
    assert s["request_classes"]["batch"]["deadline_misses"] == 2
    d = s["dispatch"]
    assert d["deadline_misses"] == 2 and d["deadline_misses_without_deferral"] == 0
    # the window is the horizon: idle all along against the two requests served at arrival, all at 500 g/kWh
    assert d["carbon_g"] == pytest.approx(IDLE_W * 50 * DIRTY / 3.6e6, rel=1e-9)
    assert d["carbon_g_without_deferral"] == pytest.approx(
        (IDLE_W * (50 - 2 * SERVICE_S) + 2 * ACTIVE_J) * DIRTY / 3.6e6, rel=1e-9)


def _csv_run(tmp_path, capsys, rows: str, **kw) -> dict:
    (tmp_path / "g.csv").write_text(SERIES)
    (tmp_path / "t.csv").write_text(rows)
    prof = write_profile(tmp_path)
    sc = write_scenario(tmp_path, scenario(tmp_path / "t.csv", [{"name": "a", "profile": str(prof), "count": 1}],
                                           facility={"carbon_series": {"path": "g.csv"}}, **kw))
    code = main(["run", str(sc), "--out", str(tmp_path / "o")])
    got = capsys.readouterr()
    return {"code": code, "err": got.err}


def test_the_trace_can_say_which_requests_are_batch(tmp_path, capsys):
    # the first request is due 1000 s after it arrives (batch), the second has no deadline (interactive)
    got = _csv_run(tmp_path, capsys, "n_in,n_out,arrival_s,deadline_s\n100,11,0,1000\n100,11,0.5,\n",
                   request_classes={"from_trace": True}, dispatch={"name": "carbon_defer", "threshold": 200})
    assert got["code"] == 0, got
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert req["request_class"].tolist() == ["batch", "interactive"]
    assert req["start_s"].tolist() == [CLEAN_AT, 0.5] and req["due_s"][0] == 1000.0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["request_classes"]["batch"]["deadline_s"] is None and s["request_classes"]["batch"]["deferred"] == 1


@pytest.mark.parametrize("rows, classes, words", [
    ("n_in,n_out,arrival_s,deadline_s\n100,11,0,-5\n", {"from_trace": True}, "deadline_s"),
    ("n_in,n_out,arrival_s,deadline_s\n100,11,0,soon\n", {"from_trace": True}, "line 2"),
    ("n_in,n_out,arrival_s\n100,11,0\n", {"from_trace": True}, "request_classes.from_trace"),
    ("n_in,n_out,arrival_s\n100,11,0\n", {"from_trace": True, "batch": {"share": 1, "deadline_s": 9}},
     "one of the two"),
    ("n_in,n_out,arrival_s\n100,11,0\n", {}, "one of the two"),
])
def test_bad_trace_deadlines_exit_2_naming_the_column(tmp_path, capsys, rows, classes, words):
    got = _csv_run(tmp_path, capsys, rows, request_classes=classes)
    assert got["code"] == 2 and words in got["err"] and "Traceback" not in got["err"], got
    assert not (tmp_path / "o").exists()


def test_request_classes_with_autoscaling_defer_then_load(tmp_path, capsys):
    """Request classes and an autoscaler together: one replica off at the start (reactive, scale from zero, a
    20 s, 2,000 J load); a batch request arriving at 0 in the dirty hour is held to 100 s (carbon_defer), then
    finds the replica off and waits for its load: it starts at 120 and is done at 120.41, its deadline met."""
    prof = write_profile(tmp_path)
    pools = [{"name": "a", "profile": str(prof), "count": 1, "cold_start": {"load_s": 20.0, "load_j": 2000.0}}]
    s = _run(tmp_path, capsys, out=tmp_path / "o", pools=pools, request_classes=_classes(1000.0),
             dispatch={"name": "carbon_defer", "threshold": 200},
             autoscaling={"name": "reactive", "min_replicas": 0, "interval_s": 10})
    assert "code" not in s, s
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert req["released_s"][0] == CLEAN_AT and req["start_s"][0] == pytest.approx(CLEAN_AT + 20.0)
    assert req["cold_wait_s"][0] == pytest.approx(20.0) and bool(req["deadline_met"][0])
    assert req["done_s"][0] == pytest.approx(CLEAN_AT + 20.0 + SERVICE_S)
    assert s["load_j"] == pytest.approx(2000.0) and s["active_j"] == pytest.approx(ACTIVE_J)
    assert s["autoscaling"]["loads"] == 1 and s["request_classes"]["batch"]["deferred"] == 1
    assert s["requests_completed"] == 1


def test_a_pool_with_its_own_price_series_pays_it(tmp_path, capsys):
    """Pool a buys at its own price (0.10 a kWh to 5 s, then 0.50), pool b at the facility's constant 0.20; round
    robin sends requests 0 and 2 to a, 1 to b. Each pool's cost is its energy in each piece at that piece's price,
    by hand, times the PUE; the fleet's is their sum. Carbon is untouched (the facility's constant)."""
    (tmp_path / "a-price.csv").write_text("t_s,value\n0,0.10\n5,0.50\n")
    prof = str(write_profile(tmp_path))
    pools = [{"name": "a", "profile": prof, "count": 1, "price_series": {"path": "a-price.csv"}},
             {"name": "b", "profile": prof, "count": 1}]
    s = _run(tmp_path, capsys, out=tmp_path / "o", n_in=[100] * 3, n_out=[11] * 3, arrival=[0, 0, 6], pools=pools,
             router={"name": "round_robin"}, facility={"price_per_kwh": 0.20, "pue": 1.5})
    assert "code" not in s, s
    end = 6.0 + SERVICE_S
    a = (ACTIVE_J + IDLE_W * (5 - SERVICE_S)) * 0.10 + (IDLE_W * 1.0 + ACTIVE_J) * 0.50
    b = (ACTIVE_J + IDLE_W * (end - SERVICE_S)) * 0.20
    assert s["pools"]["a"]["cost"] == pytest.approx(1.5 * a / 3.6e6, rel=1e-9)
    assert s["pools"]["b"]["cost"] == pytest.approx(1.5 * b / 3.6e6, rel=1e-9)
    assert s["cost"] == pytest.approx(1.5 * (a + b) / 3.6e6, rel=1e-9)
    grid = pd.read_csv(tmp_path / "o" / "grid.csv")
    assert grid["cost"].sum() == pytest.approx(s["cost"], rel=1e-6)
