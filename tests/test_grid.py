"""Carbon intensity and price over time (dcsim/grid.py): a run's carbon and cost integrate its power against step
series, checked against hand-worked joules; a flat series gives the constant's figures; bad series files exit 2."""

from __future__ import annotations

import json

import pytest
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main

# toy profile: idle 50 W; a request of 100 tokens in and 11 out runs a 0.2 s prefill at 300 W (60 J) and 10 decode
# steps of 0.021 s at 210 W (44.1 J): 0.41 s. Two arrive, at 0 and 20 s, so the run ends at 20.41 s.
ACTIVE_J, END_S = 60.0 + 10 * 0.021 * 210.0, 20.41


def _run(tmp_path, capsys, facility: dict, rows: str | None = None, name: str = "grid.csv") -> dict:
    if rows is not None:
        (tmp_path / name).write_text(rows)
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [100, 100], [11, 11], arrival=[0.0, 20.0])
    sc = write_scenario(tmp_path, scenario(tr, [{"name": "a", "profile": str(prof), "count": 1}], facility=facility))
    code = main(["run", str(sc), "--json"])
    out = capsys.readouterr()
    return json.loads(out.out) if code == 0 else {"code": code, "err": out.err}


def test_carbon_follows_when_the_energy_was_drawn(tmp_path, capsys):
    s = _run(tmp_path, capsys, {"carbon_series": {"path": "grid.csv"}}, "t_s,value\n0,100\n10,500\n")
    assert s["makespan_s"] == pytest.approx(END_S)
    # [0, 10): the first request and 9.59 s idle at 100 g/kWh; [10, 20.41]: 10 s idle and the second at 500
    want = ((ACTIVE_J + 50.0 * (10 - 0.41)) * 100 + (50.0 * 10 + ACTIVE_J) * 500) / 3.6e6
    assert s["carbon_g"] == pytest.approx(want, rel=1e-9)
    assert s["pools"]["a"]["carbon_g"] == pytest.approx(want, rel=1e-9)


def test_a_daily_profile_repeats_and_prices_make_the_cost(tmp_path, capsys):
    facility = {"pue": 1.5, "price_series": {"path": "p.csv", "time_column": "start", "value_column": "eur",
                                             "period_s": 10}, "currency": "EUR"}
    s = _run(tmp_path, capsys, facility, "start,eur\n0,0\n5,1000\n", "p.csv")
    # free in [0, 5), [10, 15) and from 20 s on (where the requests ran); 1000 a kWh of idle in [5, 10), [15, 20)
    assert s["cost"] == pytest.approx(1.5 * 2 * 50.0 * 5 * 1000 / 3.6e6, rel=1e-9)
    assert s["currency"] == "EUR" and s["carbon_g"] == 0.0


def test_a_flat_series_is_the_constant(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    flat = _run(tmp_path, capsys, {"pue": 1.2, "carbon_series": {"path": "g.csv"}}, "t_s,value\n0,400\n", "g.csv")
    const = _run(tmp_path / "c", capsys, {"pue": 1.2, "carbon_g_per_kwh": 400})
    assert flat["carbon_g"] == pytest.approx(const["carbon_g"], rel=1e-12)
    assert const["carbon_g"] == pytest.approx(const["facility_j"] / 3.6e6 * 400, rel=1e-12)


@pytest.mark.parametrize("facility, rows, words", [
    ({"carbon_g_per_kwh": 300, "carbon_series": {"path": "grid.csv"}}, "t_s,value\n0,1\n", "not both"),
    ({"carbon_series": {"path": "missing.csv"}}, None, "facility.carbon_series.path"),
    ({"carbon_series": {"path": "grid.csv"}}, "time,value\n0,1\n", "no column 't_s'"),
    ({"carbon_series": {"path": "grid.csv"}}, "t_s,value\n0,1\n10,-2\n", "negative"),
    ({"carbon_series": {"path": "grid.csv"}}, "t_s,value\n0,1\n10,2\n10,3\n", "times must increase"),
    ({"carbon_series": {"path": "grid.csv"}}, "t_s,value\n0,1\n5,x\n", "line 3"),
    ({"carbon_series": {"path": "grid.csv", "period_s": 8}}, "t_s,value\n0,1\n9,2\n", "[0, 8)"),
])
def test_bad_series_are_refused_naming_what_is_wrong(tmp_path, capsys, facility, rows, words):
    got = _run(tmp_path, capsys, facility, rows)
    assert got.get("code") == 2 and words in got["err"] and "Traceback" not in got["err"], got


def test_the_shipped_example_series_reads_and_bounds_the_carbon(tmp_path, capsys):
    from pathlib import Path

    ex = Path(__file__).resolve().parents[1] / "scenarios" / "grid" / "example-carbon-daily.csv"
    s = _run(tmp_path, capsys, {"carbon_series": {"path": str(ex), "period_s": 86400}})
    kwh = s["facility_j"] / 3.6e6
    # the run lies in the first hour of the day (420 g/kWh)
    assert s["carbon_g"] == pytest.approx(420 * kwh, rel=1e-12)
