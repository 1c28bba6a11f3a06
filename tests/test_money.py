"""Money carries its currency: the scenario names it (ISO 4217, USD by default), the summary, the console line
and the report show it beside the cost; a malformed code is refused naming the field."""

from __future__ import annotations

import json

import pytest
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main


def _scenario(tmp_path, facility: dict):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [100] * 4, [10] * 4, arrival=[0.0, 1.0, 2.0, 3.0])
    return write_scenario(tmp_path, scenario(tr, [{"name": "a", "profile": str(prof), "count": 1}],
                                             facility=facility))


def test_cost_is_in_the_scenarios_currency(tmp_path, capsys):
    sc = _scenario(tmp_path, {"price_per_kwh": 0.25, "currency": "EUR"})
    assert main(["run", str(sc), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["currency"] == "EUR"
    assert s["cost"] == pytest.approx(s["facility_j"] / 3.6e6 * 0.25)
    assert main(["run", str(sc)]) == 0
    assert f"cost {s['cost']:.4f} EUR" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["run", str(sc), "--out", str(out)]) == 0
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    row = page[page.index(">cost<"):][:200]
    assert "EUR" in row


def test_the_default_is_usd_and_a_bad_code_is_refused(tmp_path, capsys):
    assert main(["run", str(_scenario(tmp_path, {"price_per_kwh": 0.1})), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["currency"] == "USD"
    (tmp_path / "b").mkdir()
    assert main(["run", str(_scenario(tmp_path / "b", {"price_per_kwh": 0.1, "currency": "euro"})), "--json"]) == 2
    err = capsys.readouterr().err
    assert "facility.currency" in err and "Traceback" not in err
