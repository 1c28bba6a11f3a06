"""Bad input gets one message naming the file and the field, exit status 2, and no traceback: unreadable files,
paths the system cannot take, folders where files belong, negative seeds, text in number columns, corrupt
calibration runs, unknown GPUs, non-finite numbers and non-physical measurements; and every JSON written is
strict (no NaN, no Infinity)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dcsim.cli import main
from simkit import profile_dict, scenario, write_profile, write_scenario, write_trace

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
