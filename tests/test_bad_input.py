"""Bad input gets one message naming the file and the field, exit status 2, and no traceback: unreadable files,
paths the system cannot take, folders where files belong, negative seeds, text in number columns, corrupt
calibration runs, unknown GPUs, non-finite numbers and non-physical measurements; and every JSON written is
strict (no NaN, no Infinity)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from simkit import profile_dict, scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "calibrate" / "runs" / "h100-llama-2-7b-hf"


def refused(args: list[str], capsys, *words: str) -> str:
    """Run the CLI; it must exit 2 with one `dcsim: error:` line holding every word."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dcsim: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def case(tmp_path):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [100, 200, 300], [10, 20, 30], [0, 1, 2])
    data = scenario(tr, [{"name": "gpu", "profile": str(prof), "count": 1}])
    return tmp_path, data, write_scenario(tmp_path, data)


# ---- unreadable files ----------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x01name: x\n", "name: caf\xe9\n".encode("latin-1")],
                         ids=["binary", "latin-1"])
def test_a_scenario_that_is_not_utf8_text(tmp_path, capsys, content):
    p = tmp_path / "s.yaml"
    p.write_bytes(content)
    refused(["run", str(p)], capsys, "s.yaml", "not UTF-8 text", "line 1")


def test_a_profile_that_is_not_utf8_text_is_named(case, capsys):
    d, data, _ = case
    bad = d / "bad-profile.yaml"
    bad.write_bytes(yaml.safe_dump(profile_dict()).encode() + b"# \xff\n")
    data["fleet"][0]["profile"] = str(bad)
    refused(["run", str(write_scenario(d, data))], capsys, "bad-profile.yaml", "not UTF-8 text")
    refused(["fit", "--derive", "--from", str(bad), "--to", "h200", "-o", str(d / "x.yaml")], capsys,
            "bad-profile.yaml", "not UTF-8")


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x01\x02", "n_in,n_out,source\n1,2,caf\xe9\n".encode("latin-1")],
                         ids=["binary", "latin-1"])
def test_a_csv_trace_that_is_not_utf8_text(tmp_path, capsys, content):
    p = tmp_path / "t.csv"
    p.write_bytes(content)
    refused(["trace", "show", str(p)], capsys, "t.csv", "not UTF-8 text")


def test_a_parquet_trace_that_is_not_parquet(tmp_path, capsys):
    p = tmp_path / "t.parquet"
    p.write_bytes(b"PAR1\x00garbage")
    refused(["trace", "show", str(p)], capsys, "t.parquet", "cannot read Parquet")


# ---- paths ---------------------------------------------------------------------------------------
def test_paths_longer_than_the_system_allows(case, tmp_path, capsys):
    _, _, sc = case
    refused(["run", str(tmp_path / ("a" * 300 + ".yaml"))], capsys, "longer than the system allows")
    deep = "/".join(["abcdefgh"] * 600) + ".yaml"
    refused(["run", deep], capsys, "longer than the system allows")
    refused(["run", str(sc), "--out", str(tmp_path / ("o" * 300))], capsys, "--out", "longer than the system allows")
    refused(["trace", "import", "azure", str(sc), "-o", str(tmp_path / ("t" * 300 + ".parquet"))], capsys,
            "-o", "longer than the system allows")


def test_a_folder_where_a_file_is_expected(case, capsys):
    d, data, _ = case
    (d / "dir.yaml").mkdir()
    refused(["run", str(d / "dir.yaml")], capsys, "dir.yaml", "is a folder; expected a file")
    (d / "dir.parquet").mkdir()
    refused(["trace", "show", str(d / "dir.parquet")], capsys, "dir.parquet", "is a folder; expected a trace file")
    data["trace"] = {"path": str(d / "dir.parquet")}
    refused(["run", str(write_scenario(d, data))], capsys, "scenario.yaml", "'trace.path'", "dir.parquet")


# ---- seed ----------------------------------------------------------------------------------------
def test_a_negative_seed_in_the_file_or_by_set(case, capsys):
    d, data, sc = case
    refused(["run", str(write_scenario(d, {**data, "seed": -1}, "neg.yaml"))], capsys, "neg.yaml", "'seed'",
            "greater than or equal to 0")
    refused(["run", str(sc), "--set", "seed=-1"], capsys, "'seed'", "greater than or equal to 0")
    refused(["run", str(sc), "--set", "seed=99999999999999999999999"], capsys, "'seed'")
    assert main(["run", str(sc), "--set", "seed=0", "--json"]) == 0


# ---- trace columns -------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["n_in", "n_out", "arrival_s"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_text_in_a_number_column_names_the_column_and_row(case, capsys, column, fmt):
    d, data, _ = case
    df = pd.DataFrame({"n_in": ["10", "20", "30"], "n_out": ["5", "5", "5"], "arrival_s": ["0", "1", "2"]})
    df.loc[1, column] = "fast"
    p = d / f"t.{fmt}"
    df.to_csv(p, index=False) if fmt == "csv" else df.to_parquet(p)
    where = "row 1 (line 3)" if fmt == "csv" else "row 1"
    refused(["trace", "show", str(p)], capsys, f"t.{fmt}", f"'{column}'", where, "'fast'")
    data["trace"] = {"path": str(p)}
    refused(["run", str(write_scenario(d, data))], capsys, f"t.{fmt}", f"'{column}'", "'fast'")


def test_a_header_only_csv_trace_holds_no_requests(case, capsys):
    d, data, _ = case
    p = d / "empty.csv"
    p.write_text("n_in,n_out,arrival_s\n")
    refused(["trace", "show", str(p)], capsys, "empty.csv", "the trace holds no requests")
    data["trace"] = {"path": str(p)}
    refused(["run", str(write_scenario(d, data))], capsys, "empty.csv", "the trace holds no requests")
    p.write_text("")
    refused(["trace", "show", str(p)], capsys, "empty.csv", "the file is empty")


# ---- calibration runs ----------------------------------------------------------------------------
def _run_copy(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(RUN, d)
    return d


def _edit_rows(d: Path, edit) -> None:
    p = d / "runs.csv"
    with p.open(newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0])
    edit(rows)
    with p.open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)


def _first_run(rows: list[dict]) -> int:
    return next(i for i, r in enumerate(rows) if r["phase"] == "run" and r["status"] == "ok" and r["energy_device_j"])


def test_fit_on_a_runs_csv_with_a_word_for_a_number(tmp_path, capsys):
    d = _run_copy(tmp_path)
    line = {}

    def edit(rows):
        i = _first_run(rows)
        rows[i]["runtime_s"] = "fast"
        line["n"] = i + 2

    _edit_rows(d, edit)
    refused(["fit", str(d), "-o", str(tmp_path / "p.yaml")], capsys, "runs.csv", "'runtime_s'",
            f"line {line['n']} holds 'fast'")


def test_fit_on_a_runs_csv_of_random_bytes_or_an_unterminated_quote(tmp_path, capsys):
    d = _run_copy(tmp_path)
    import random

    rnd = random.Random(4)
    (d / "runs.csv").write_bytes(bytes([0xFF] + [rnd.randrange(256) for _ in range(3000)]))
    refused(["fit", str(d), "-o", str(tmp_path / "p.yaml")], capsys, "runs.csv", "not UTF-8 text")
    text = RUN.joinpath("runs.csv").read_text()
    (d / "runs.csv").write_text(text + 'run,run,"i1-o1-b1,1,1')  # a last row whose quote never closes
    refused(["fit", str(d), "-o", str(tmp_path / "p.yaml")], capsys, "runs.csv")
    (d / "runs.csv").write_text("")
    refused(["fit", str(d), "-o", str(tmp_path / "p.yaml")], capsys, "runs.csv", "not a readable CSV table")
    (d / "runs.csv").write_text(text.splitlines()[0] + "\n")
    refused(["fit", str(d), "-o", str(tmp_path / "p.yaml")], capsys, "runs.csv", "holds no finished run")


def test_fit_on_a_runs_csv_missing_a_column(tmp_path, capsys):
    d = _run_copy(tmp_path)
    df = pd.read_csv(d / "runs.csv", dtype=str, keep_default_na=False)
    df.drop(columns=["tail_power_w", "energy_timeline_j", "extra"]).to_csv(d / "runs.csv", index=False)
    out = tmp_path / "p.yaml"
    assert main(["fit", str(d), "-o", str(out), "--no-plot"]) == 0  # optional columns: fitted without them
    ref = tmp_path / "ref.yaml"
    assert main(["fit", str(RUN), "-o", str(ref), "--no-plot"]) == 0
    got, want = yaml.safe_load(out.read_text()), yaml.safe_load(ref.read_text())
    assert got["latency"] == want["latency"]  # the same runs, the same curves
    capsys.readouterr()
    df.drop(columns=["runtime_s"]).to_csv(d / "runs.csv", index=False)
    refused(["fit", str(d), "-o", str(out)], capsys, "runs.csv", "'runtime_s'", "missing column runtime_s")


@pytest.mark.parametrize("column, value", [("energy_device_j", "-5"), ("energy_device_j", "0"),
                                           ("runtime_s", "0"), ("runtime_s", "-1.5")])
def test_fit_refuses_a_non_physical_measurement(tmp_path, capsys, column, value):
    d = _run_copy(tmp_path)
    point = {}

    def edit(rows):
        i = _first_run(rows)
        rows[i][column] = value
        point["id"] = rows[i]["point"]

    _edit_rows(d, edit)
    refused(["fit", str(d), "-o", str(tmp_path / "p.yaml")], capsys, "runs.csv", f"'{column}'", point["id"],
            "finite number above zero")
    assert not (tmp_path / "p.yaml").exists()


def test_fit_names_an_unknown_gpu_without_a_memory_size(tmp_path, capsys):
    d = _run_copy(tmp_path)
    man = json.loads((d / "manifest.json").read_text())
    for s in man["sessions"]:
        gpu = s.get("environment", {}).get("gpu")
        if gpu:
            gpu["name"] = "NVIDIA Z9000"
            gpu.pop("memory_total_gb", None)
    (d / "manifest.json").write_text(json.dumps(man))
    refused(["fit", str(d), "-o", str(tmp_path / "p.yaml")], capsys, "manifest.json", "memory_total_gb",
            "'NVIDIA Z9000'", "device catalogue does not know")


# ---- non-finite numbers --------------------------------------------------------------------------
@pytest.mark.parametrize("override", ["facility.pue=inf", "facility.pue=.inf", "arrivals.rate_per_s=.inf",
                                      "facility.price_per_kwh=1e400", "warmup_s=.nan"])
def test_non_finite_numbers_are_refused(case, capsys, override):
    _, data, sc = case
    data["arrivals"] = {"kind": "poisson", "rate_per_s": 1.0}
    sc.write_text(yaml.safe_dump(data))
    refused(["run", str(sc), "--set", override], capsys, "scenario.yaml", f"'{override.split('=')[0]}'")


def test_an_overflow_in_the_file_is_refused(case, capsys):
    d, data, _ = case
    text = yaml.safe_dump({**data, "facility": {"pue": 1.2, "price_per_kwh": 0.1}}).replace("0.1", "1e400")
    (d / "ovf.yaml").write_text(text)
    refused(["run", str(d / "ovf.yaml")], capsys, "ovf.yaml", "'facility.price_per_kwh'", "finite")


def test_a_non_finite_profile_number_is_refused(case, capsys):
    d, data, _ = case
    prof = profile_dict()
    prof["power"]["serving_idle_w"] = float("inf")
    (d / "inf.yaml").write_text(yaml.safe_dump(prof))
    data["fleet"][0]["profile"] = str(d / "inf.yaml")
    refused(["run", str(write_scenario(d, data))], capsys, "inf.yaml", "'power.serving_idle_w'", "finite")


# ---- strict JSON ---------------------------------------------------------------------------------
def _strict(text: str) -> object:
    def bad(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=bad)


def test_summary_json_is_strict_even_when_statistics_are_undefined(case, capsys):
    d, data, _ = case
    # every request longer than the model's context: all rejected, so latency statistics have no values
    data["fleet"][0]["profile"] = str(write_profile(d, max_context=50))
    sc = write_scenario(d, data)
    assert main(["run", str(sc), "--out", str(d / "res"), "--no-plots"]) == 0
    s = _strict((d / "res" / "summary.json").read_text())
    assert s["requests_completed"] == 0 and s["e2e_s"]["p50"] is None and s["ttft_s"]["mean"] is None


def test_run_json_output_is_strict(case, capsys):
    d, data, _ = case
    data["fleet"][0]["profile"] = str(write_profile(d, max_context=50))
    assert main(["run", str(write_scenario(d, data)), "--json"]) == 0
    s = _strict(capsys.readouterr().out)
    assert s["wait_s"]["mean"] is None


# ---- degenerate windows, rates and samples ---------------------------------------------------------
def test_a_warmup_at_or_past_the_horizon_is_refused(case, capsys):
    d, data, sc = case
    for w in ("5", "7.5"):
        refused(["run", str(sc), "--set", "horizon_s=5", "--set", f"warmup_s={w}"], capsys, "scenario.yaml",
                "'warmup_s'", "before horizon_s (5 s)")
    refused(["run", str(write_scenario(d, {**data, "horizon_s": 2, "warmup_s": 3}, "w.yaml"))], capsys, "w.yaml",
            "'warmup_s'", "no request would be counted")
    assert main(["run", str(sc), "--set", "horizon_s=5", "--set", "warmup_s=0.5", "--json"]) == 0


def test_a_warmup_that_leaves_no_request_to_count_is_refused(case, capsys):
    _, _, sc = case  # arrivals at 0, 1 and 2 s
    refused(["run", str(sc), "--set", "warmup_s=2.5"], capsys, "scenario.yaml", "'warmup_s'",
            "no request arrives after the warm-up (2.5 s; the last arrives at 2 s)")
    refused(["run", str(sc), "--set", "warmup_s=1.5", "--set", "horizon_s=1.9"], capsys, "'warmup_s'",
            "none arrives between it and horizon_s (1.9 s)")
    refused(["run", str(sc), "--set", "warmup_s=1e6", "--set", "arrivals.kind=all_at_once"], capsys, "'warmup_s'",
            "the last arrives at 0 s")


def test_a_warmup_lasting_to_the_end_of_the_run_is_refused(case, capsys):
    d, data, _ = case
    # the one request arriving at the warm-up's end is longer than the model's context: refused at once, so the
    # run ends there and no time is left to measure
    tr = write_trace(d, [100, 200, 300_000], [10, 20, 30], [0, 1, 2], name="long.parquet")
    sc = write_scenario(d, {**data, "trace": {"path": str(tr)}, "warmup_s": 2}, "end.yaml")
    refused(["run", str(sc)], capsys, "end.yaml", "'warmup_s'", "lasts to or past the end of the run (2 s)")


def test_no_request_completed_is_said_not_left_as_nan(case, capsys):
    d, data, _ = case
    data["fleet"][0]["profile"] = str(write_profile(d, max_context=50))
    assert main(["run", str(write_scenario(d, data)), "--json"]) == 0
    s = _strict(capsys.readouterr().out)
    assert any("no request completed in the measured window (3 counted: 3 rejected" in w for w in s["warnings"])
    assert main(["run", str(write_scenario(d, data))]) == 0
    assert "note: no request completed" in capsys.readouterr().out


@pytest.mark.parametrize("arrivals, field", [
    ({"kind": "poisson", "rate_per_s": 1e-12}, "arrivals.rate_per_s"),
    ({"kind": "gamma", "rate_per_s": 1e-300, "cv": 2.0}, "arrivals.rate_per_s"),
    ({"kind": "diurnal", "mean_rate_per_s": 1e-320}, "arrivals.mean_rate_per_s"),  # once drew forever
    ({"kind": "replay", "time_scale": 1e300}, "arrivals.time_scale"),
])
def test_a_rate_so_small_that_the_run_would_last_for_ages_is_refused(case, capsys, arrivals, field):
    d, data, _ = case
    sc = write_scenario(d, {**data, "arrivals": arrivals})
    refused(["run", str(sc)], capsys, "scenario.yaml", f"'{field}'", "limited to 1e+09 s of arrivals")


def test_a_slow_rate_within_the_limit_runs(case, capsys):
    _, _, sc = case
    assert main(["run", str(sc), "--set", "arrivals={kind: poisson, rate_per_s: 1e-6}", "--json"]) == 0
    assert _strict(capsys.readouterr().out)["requests_completed"] == 3


def test_a_diurnal_day_shorter_than_a_millisecond_is_refused(case, capsys):
    _, _, sc = case
    refused(["run", str(sc), "--set", "arrivals={kind: diurnal, mean_rate_per_s: 1, day_s: 1e-300}"], capsys,
            "'arrivals.diurnal.day_s'", "greater than or equal to 0.001")


def test_a_sample_larger_than_the_trace_is_refused(case, capsys):
    _, _, sc = case
    refused(["run", str(sc), "--set", "trace.sample=4"], capsys, "scenario.yaml", "'trace.sample'",
            "cannot draw 4 requests from a trace of 3", "trace.parquet")
    assert main(["run", str(sc), "--set", "trace.sample=3", "--json"]) == 0
    assert _strict(capsys.readouterr().out)["requests_completed"] == 3


def test_replay_without_timestamps_names_the_files_being_read(case, capsys):
    from dcsim.traces.trace import Trace

    d, data, _ = case
    p = d / "untimed.parquet"
    Trace(np.array([10, 20]), np.array([5, 5]), None, None, {"input": "somewhere-else.csv"}).to_parquet(p)
    err = refused(["run", str(write_scenario(d, {**data, "trace": {"path": str(p)}}, "rp.yaml"))], capsys,
                  "rp.yaml", "'arrivals.kind'", f"the trace {p} has none")
    assert "somewhere-else" not in err


def test_a_folder_named_as_a_trace_or_profile_says_it_is_a_folder(case, capsys):
    d, data, _ = case
    (d / "traces.parquet").mkdir()
    (d / "prof.yaml").mkdir()
    refused(["run", str(write_scenario(d, {**data, "trace": {"path": "traces.parquet"}}, "t.yaml"))], capsys,
            "t.yaml", "'trace.path'", "is a folder; expected a trace file")
    data["fleet"][0]["profile"] = "prof.yaml"
    sc = write_scenario(d, data, "p.yaml")
    refused(["run", str(sc)], capsys, "p.yaml", "'fleet.0.profile'", "is a folder; expected a profile")
    (d / "sw.yaml").write_text(yaml.safe_dump({"base": "p.yaml", "grid": {"fleet.gpu.count": [1, 2]}}))
    refused(["sweep", str(d / "sw.yaml"), "--out", str(d / "o")], capsys, "is a folder; expected a profile")
    assert not (d / "o").exists()
    # a too-long name in the scenario is named with its field, not as a crash of the file system
    data["fleet"][0]["profile"] = "p" * 300 + ".yaml"
    refused(["run", str(write_scenario(d, data, "l.yaml"))], capsys, "l.yaml", "'fleet.0.profile'",
            "longer than the system allows")


# ---- strict JSON in every file a sweep or a validation writes ------------------------------------------
def test_sweep_point_files_are_strict_json(case, capsys):
    d, data, _ = case
    data["fleet"][0]["profile"] = str(write_profile(d, max_context=50))  # every request refused: no latencies
    write_scenario(d, data, "base.yaml")
    (d / "sw.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"fleet.gpu.count": [1, 2]}}))
    assert main(["sweep", str(d / "sw.yaml"), "--out", str(d / "out"), "--workers", "1"]) == 0, capsys.readouterr()
    points = sorted((d / "out" / "points").glob("*.json"))
    assert len(points) == 2
    for f in points + [d / "out" / "sweep.json"]:
        _strict(f.read_text())
    rec = _strict(points[0].read_text())
    assert rec["summary"]["e2e_s"]["p50"] is None
    # a resumed sweep reads its point files back and writes the same tables
    first = pd.read_csv(d / "out" / "results.csv")
    assert main(["sweep", str(d / "sw.yaml"), "--out", str(d / "out"), "--workers", "1"]) == 0
    assert "0 run now, 2 from earlier runs" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(d / "out" / "results.csv"), first)


def test_validate_json_files_are_strict(tmp_path):
    from dcsim.validate.compare import compare
    from dcsim.validate.replay import write_json

    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), np.float64(-np.inf), np.int64(3)],
                                     "c": np.array([1.0, np.nan]), "p": tmp_path})
    assert _strict((tmp_path / "r.json").read_text()) == {"a": None, "b": [None, None, 3], "c": [1.0, None],
                                                         "p": str(tmp_path)}
    # a comparison whose replay could not see some metrics (NaN measured): null in comparison.json
    prof = write_profile(tmp_path)
    folder = tmp_path / "case"
    folder.mkdir()
    pd.DataFrame({"id": [0, 1], "n_in": [100, 200], "n_out": [10, 20], "arrival_s": [0.0, 5.0]}).to_csv(
        folder / "workload.csv", index=False)
    pd.DataFrame({"id": [0, 1], "arrival_s": [0.0, 5.0], "n_in": [100, 200], "n_out": [10, 20],
                  "start_s": [0.0, 5.0], "first_token_s": [np.nan, np.nan], "end_s": [0.4, 5.6]}).to_csv(
        folder / "requests.csv", index=False)
    write_json(folder / "replay.json", {"policy": {"policy": "fcfs", "max_batch": 1, "max_wait_s": 0.0},
                                        "window_s": 10.0, "profile": str(prof), "workload": {"requests": 2},
                                        "wall_start": 0.0, "energy_j": 1000.0, "active_j": float("nan"),
                                        "idle_j": float("nan")})
    compare(folder)
    out = _strict((folder / "comparison.json").read_text())
    assert any(m["measured"] is None for m in out["metrics"].values())


def test_a_fleet_too_large_to_build_is_refused_before_allocating(case, capsys):
    d, data, sc = case
    refused(["run", str(sc), "--set", "fleet.0.count=1000000000000"], capsys, "'fleet.0.count'",
            "less than or equal to 100000")
    prof = data["fleet"][0]["profile"]
    data["fleet"] = [{"name": "a", "profile": prof, "count": 60_000}, {"name": "b", "profile": prof, "count": 70_000}]
    refused(["run", str(write_scenario(d, data, "big.yaml"))], capsys, "big.yaml", "'fleet.1.count'",
            "130,000 replicas in all", "at most 100,000")
