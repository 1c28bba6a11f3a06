"""`dcsim run` end to end: outputs on disk, --set, --json, and every bad-input case (exit 2, no traceback,
no output directory left behind)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from simkit import profile_dict, scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main

CAP = {"min_w": 100, "max_w": 400, "default_w": 400, "static_w": 60, "exponent": 3}


@pytest.fixture
def case(tmp_path):
    prof = write_profile(tmp_path, cap=CAP)
    tr = write_trace(tmp_path, [100, 200, 300, 50], [10, 20, 30, 5], [0, 1, 2, 3])
    data = scenario(tr, [{"name": "gpu", "profile": str(prof), "count": 2}])
    return tmp_path, data


def run_cli(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_run_writes_every_output(case, capsys):
    d, data = case
    sc = write_scenario(d, data)
    rc, out, err = run_cli(["run", str(sc), "--out", str(d / "res")], capsys)
    assert rc == 0, err
    files = {p.name for p in (d / "res").iterdir()}
    assert {"summary.json", "requests.parquet", "replicas.csv", "power.csv", "power.png", "latency_cdf.png",
            "energy_breakdown.png"} <= files
    s = json.loads((d / "res" / "summary.json").read_text())
    req = pd.read_parquet(d / "res" / "requests.parquet")
    assert s["requests_completed"] == 4 and len(req) == 4
    assert s["tokens_out"] == 65 and s["tokens_in"] == 650
    for k in ("wait_s", "ttft_s", "tpot_s", "e2e_s"):
        assert set(s[k]) == {"mean", "p50", "p90", "p99"}
    assert s["tokens_per_joule"] == pytest.approx(65 / s["energy_j"])
    assert "gpu" in out and "kWh" in out


def test_set_overrides_and_json(case, capsys):
    d, data = case
    sc = write_scenario(d, data)
    rc, out, _ = run_cli(["run", str(sc), "--set", "fleet.gpu.count=3", "--set", "fleet.0.power_cap_w=200",
                          "--json"], capsys)
    assert rc == 0
    s = json.loads(out)
    assert s["pools"]["gpu"]["replicas"] == 3 and s["pools"]["gpu"]["power_cap_w"] == 200


def test_cap_slows_and_saves(case, capsys):
    d, data = case
    sc = write_scenario(d, data)
    _, base, _ = run_cli(["run", str(sc), "--json"], capsys)
    _, capped, _ = run_cli(["run", str(sc), "--json", "--set", "fleet.0.power_cap_w=150"], capsys)
    b, c = json.loads(base), json.loads(capped)
    assert c["e2e_s"]["mean"] > b["e2e_s"]["mean"]
    assert c["active_j"] < b["active_j"]


BAD = [
    ("missing scenario file", None, "file not found", None),
    ("malformed YAML", "fleet: [unclosed", "malformed YAML", None),
    ("unknown key", {"fleet": [{"name": "gpu", "profile": "P", "count": 1, "cuont": 2}]}, "unknown key",
     "fleet.0.cuont"),
    ("negative count", {"fleet": [{"name": "gpu", "profile": "P", "count": -1}]}, "greater than 0",
     "fleet.0.count"),
    ("cap out of range", {"fleet": [{"name": "gpu", "profile": "P", "count": 1, "power_cap_w": 50}]},
     "outside the device's range 100-400 W", "fleet.0.power_cap_w"),
    ("missing trace", {"trace": {"path": "nope.parquet"}}, "trace file not found", "trace.path"),
    ("missing profile", {"fleet": [{"name": "gpu", "profile": "nope.yaml", "count": 1}]}, "profile not found",
     "fleet.0.profile"),
    ("bad arrivals kind", {"arrivals": {"kind": "poison"}}, "arrivals", None),
]


@pytest.mark.parametrize("label,patch,message,field", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exit_2(case, capsys, label, patch, message, field):
    d, data = case
    prof = data["fleet"][0]["profile"]
    if patch is None:
        sc = d / "absent.yaml"
    elif isinstance(patch, str):
        sc = d / "bad.yaml"
        sc.write_text(patch)
    else:
        data.update(patch)
        for p in data["fleet"]:
            if p["profile"] == "P":
                p["profile"] = prof
        sc = write_scenario(d, data)
    rc, out, err = run_cli(["run", str(sc), "--out", str(d / "res")], capsys)
    assert rc == 2
    assert message in err and str(sc) in err
    if field:
        assert f"'{field}'" in err
    assert "Traceback" not in err
    assert not (d / "res").exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".res.")]


def test_profile_without_needed_field(case, capsys):
    d, data = case
    bad = profile_dict(name="broken")
    del bad["power"]["serving_idle_w"]
    (d / "broken.yaml").write_text(yaml.safe_dump(bad))
    data["fleet"][0]["profile"] = str(d / "broken.yaml")
    rc, _, err = run_cli(["run", str(write_scenario(d, data))], capsys)
    assert rc == 2 and "broken.yaml" in err and "power.serving_idle_w" in err


@pytest.mark.parametrize("n_in,n_out,msg", [([10, -3], [5, 5], "must be >= 1"), ([10.5, 3], [5, 5], "integers")])
def test_bad_trace_values(case, capsys, n_in, n_out, msg):
    d, data = case
    pd.DataFrame({"n_in": n_in, "n_out": n_out}).to_csv(d / "t.csv", index=False)
    data["trace"] = {"path": str(d / "t.csv")}
    rc, _, err = run_cli(["run", str(write_scenario(d, data))], capsys)
    assert rc == 2 and "t.csv" in err and "'n_in'" in err and msg in err


def test_real_process_exit_status_and_no_traceback(case):
    d, data = case
    data["fleet"][0]["count"] = 0
    sc = write_scenario(d, data)
    p = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc)], capture_output=True, text=True)
    assert p.returncode == 2
    assert "fleet.0.count" in p.stderr and "Traceback" not in p.stderr


def test_a_sweep_file_given_to_run_says_to_use_sweep_and_a_pool_that_served_nothing_prints_dashes(case, capsys):
    d, data = case
    sweep = d / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "scenario.yaml", "grid": {"fleet.0.count": [1, 2]}}))
    rc, out, err = run_cli(["run", str(sweep), "--out", str(d / "res")], capsys)
    assert rc == 2 and "dcsim sweep" in err and "field 'base'" in err and "Traceback" not in err
    assert not (d / "res").exists()
    # a second pool the router never sends to (every prompt is above the threshold): dashes, not 'nan'
    data["fleet"].append({**data["fleet"][0], "name": "idle", "count": 1})
    data["router"] = {"name": "token_threshold", "input_threshold": 10, "small_pool": "idle", "large_pool": "gpu"}
    rc, out, err = run_cli(["run", str(write_scenario(d, data))], capsys)
    assert rc == 0, err
    row = next(ln for ln in out.splitlines() if ln.strip().startswith("idle"))
    assert "nan" not in row and row.split()[-2:] == ["-", "-"]
