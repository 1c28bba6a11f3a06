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


def test_sweep_and_plan_print_cost_with_its_currency(tmp_path, capsys):
    """Wherever a cost is printed (the sweep's console table, the plan's answer, the plan's page and figure) its
    currency stands beside it."""
    import re

    import yaml

    sc = _scenario(tmp_path, {"price_per_kwh": 0.25, "currency": "EUR"})
    sw = tmp_path / "sw.yaml"
    sw.write_text(yaml.safe_dump({"base": sc.name, "grid": {"fleet.a.count": [1, 2]}, "seeds": [1],
                                  "metrics": ["cost", "energy_j"]}))
    assert main(["sweep", str(sw), "--out", str(tmp_path / "sw"), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cost EUR (±95%)" in out and "energy_j (±95%)" in out
    assert main(["report", str(tmp_path / "sw"), "-o", str(tmp_path / "s.html"), "--static-plots"]) == 0
    page = (tmp_path / "s.html").read_text()
    assert ">cost (EUR)<" in page and ">cost<" not in page  # the summary's and the points' columns
    assert main(["plan", str(sc), "--vary", "fleet.a.count=1..3", "--slo", "e2e_s.p99<=1000", "--minimise", "cost",
                 "--out", str(tmp_path / "plan"), "--workers", "0"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("cheapest by cost"))
    assert re.search(r"\(cost [0-9.e-]+ EUR\)$", line), line
    assert main(["report", str(tmp_path / "plan"), "-o", str(tmp_path / "p.html")]) == 0
    page = (tmp_path / "p.html").read_text()
    assert "cost (EUR)" in page and ">cost<" not in page  # every table's cost column and row marked
