"""`dcsim sweep`: axes expansion, each point equal to its own simulation, t-intervals against hand-computed
values, process pool = in-process, resume without recomputation, and every bad-input case."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main
from dcsim.errors import UserError
from dcsim.results import summarize
from dcsim.scenario import load_scenario
from dcsim.sim.engine import simulate
from dcsim.sweep import flatten, load_sweep, run_sweep, summary_table, t_interval

# Student t quantiles t(0.975, df) from published tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
T975 = {1: 12.706, 2: 4.303, 3: 3.182}


def make_case(d: Path, n: int = 60, pools: int = 1) -> Path:
    """A small base scenario: n requests, Poisson arrivals, one (or two) pools of the toy profile."""
    prof = write_profile(d)
    rng = np.random.default_rng(3)
    tr = write_trace(d, rng.integers(10, 400, n), rng.integers(5, 120, n))
    fleet = [{"name": "gpu", "profile": str(prof), "count": 2,
              "batching": {"policy": "continuous", "max_batch": 4}}]
    if pools == 2:
        fleet.append({"name": "gpu2", "profile": str(prof), "count": 1})
    data = scenario(tr, fleet, arrivals={"kind": "poisson", "rate_per_s": 3.0},
                    router={"name": "least_outstanding"})
    return write_scenario(d, data, "base.yaml")


def write_sweep(d: Path, body: dict, name: str = "sweep.yaml") -> Path:
    p = d / name
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


GRID = {"base": "base.yaml", "grid": {"fleet.gpu.count": [1, 2, 3], "fleet.gpu.batching.max_batch": [2, 8]},
        "seeds": [1, 2]}


@pytest.fixture
def case(tmp_path):
    make_case(tmp_path)
    return tmp_path


# ---- expansion -------------------------------------------------------------------------------
def test_grid_3x2_times_2_seeds_is_12_points(case):
    sw = load_sweep(write_sweep(case, GRID))
    assert len(sw.points) == 12
    combos = {(p.values["fleet.gpu.count"], p.values["fleet.gpu.batching.max_batch"], p.seed) for p in sw.points}
    assert combos == {(c, b, s) for c in (1, 2, 3) for b in (2, 8) for s in (1, 2)}
    assert len({p.id for p in sw.points}) == 12
    assert len({p.config for p in sw.points}) == 6  # seeds share a configuration
    p = sw.points[0]
    assert p.overrides == ("fleet.gpu.count=1", "fleet.gpu.batching.max_batch=2", "seed=1")
    # ids are stable: the same file gives the same ids; a different seed list keeps the shared points' ids
    assert [q.id for q in load_sweep(write_sweep(case, GRID)).points] == [q.id for q in sw.points]
    other = load_sweep(write_sweep(case, {**GRID, "seeds": [2, 7]}, "other.yaml"))
    assert {q.id for q in other.points if q.seed == 2} == {q.id for q in sw.points if q.seed == 2}


def test_zip_varies_together_and_replications_count_from_base_seed(case):
    body = {"base": "base.yaml", "set": ["seed=10"], "grid": {"fleet.gpu.count": [1, 2]},
            "zip": {"arrivals.rate_per_s": [1.0, 2.0, 4.0], "fleet.gpu.batching.max_batch": [1, 2, 4]},
            "replications": 3}
    sw = load_sweep(write_sweep(case, body))
    assert len(sw.points) == 2 * 3 * 3
    assert sw.seeds == [10, 11, 12]
    pairs = {(p.values["arrivals.rate_per_s"], p.values["fleet.gpu.batching.max_batch"]) for p in sw.points}
    assert pairs == {(1.0, 1), (2.0, 2), (4.0, 4)}
    assert sw.axes == [["fleet.gpu.count"], ["arrivals.rate_per_s", "fleet.gpu.batching.max_batch"]]
    # no axes at all: the base scenario, once per seed
    sw = load_sweep(write_sweep(case, {"base": "base.yaml", "seeds": [4, 5, 6]}, "s.yaml"))
    assert [(p.values, p.seed) for p in sw.points] == [({}, 4), ({}, 5), ({}, 6)]


# ---- results ---------------------------------------------------------------------------------
def test_each_point_equals_its_own_simulation_and_ci_matches_hand(case):
    sw = load_sweep(write_sweep(case, {**GRID, "seeds": [1, 2, 3],
                                       "grid": {"fleet.gpu.count": [1, 3]}}))
    res = run_sweep(sw, case / "out", workers=0, progress=False)
    df = res.results
    assert len(df) == 6
    assert list(df["fleet.gpu.count"]) == [1, 1, 1, 3, 3, 3] and list(df["seed"]) == [1, 2, 3] * 2
    assert (df["pools.gpu.replicas"] == df["fleet.gpu.count"]).all()
    assert {"e2e_s.p99", "pools.gpu.energy_j", "tokens_per_joule", "wait_s.mean", "requests_rejected"} <= set(df)
    # a point's row is exactly the summary of the same scenario simulated on its own
    row = df.iloc[4]
    own = flatten(summarize(simulate(load_scenario(case / "base.yaml", ["fleet.gpu.count=3", "seed=2"]),
                                     case / "base.yaml")))
    for k in ("energy_j", "e2e_s.p99", "pools.gpu.utilisation", "tokens_out", "makespan_s"):
        assert row[k] == own[k], k
    # 95% t-interval over the three seeds, by hand with the published t quantile (df = 2)
    s = res.summary.set_index("fleet.gpu.count")
    assert list(s["n_seeds"]) == [3, 3]
    x = df.loc[df["fleet.gpu.count"] == 3, "energy_j"].to_numpy()
    mean = x.sum() / 3
    sd = math.sqrt(((x - mean) ** 2).sum() / 2)
    half = T975[2] * sd / math.sqrt(3)
    assert s.loc[3, "energy_j.mean"] == pytest.approx(mean, rel=1e-12)
    assert s.loc[3, "energy_j.ci95_hi"] - s.loc[3, "energy_j.mean"] == pytest.approx(half, rel=2e-4)
    assert s.loc[3, "energy_j.mean"] - s.loc[3, "energy_j.ci95_lo"] == pytest.approx(half, rel=2e-4)
    assert half > 0
    # files: one row per point in results.{parquet,csv}, one per configuration in summary.{parquet,csv}
    out = case / "out"
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), df)
    assert len(pd.read_csv(out / "results.csv")) == 6 and len(pd.read_csv(out / "summary.csv")) == 2
    assert len(list((out / "points").glob("*.json"))) == 6


@pytest.mark.parametrize("values, n, t", [([1.0, 2.0, 3.0, 4.0], 4, T975[3]), ([10.0, 14.0], 2, T975[1]),
                                          ([5.0, np.nan, 7.0], 2, T975[1])])
def test_t_interval_hand_values(values, n, t):
    x = np.array(values)
    m, lo, hi, k = t_interval(x)
    v = x[~np.isnan(x)]
    sd = math.sqrt(((v - v.mean()) ** 2).sum() / (n - 1))
    assert k == n and m == pytest.approx(v.mean())
    assert (hi - lo) / 2 == pytest.approx(t * sd / math.sqrt(n), rel=2e-4)
    # [1,2,3,4]: mean 2.5, sd 1.29099, half-width 3.182 * 1.29099 / 2 = 2.0541
    if n == 4:
        assert (hi - lo) / 2 == pytest.approx(2.0541, abs=2e-4)
    assert math.isnan(t_interval(np.array([3.0]))[1])


def test_summary_table_matches_t_interval(case):
    sw = load_sweep(write_sweep(case, {"base": "base.yaml", "grid": {"fleet.gpu.count": [1, 2]},
                                       "seeds": [1, 2, 3, 4]}))
    results = pd.DataFrame({"point": list("abcdefgh"), "config": ["c1"] * 4 + ["c2"] * 4, "seed": [1, 2, 3, 4] * 2,
                            "fleet.gpu.count": [1] * 4 + [2] * 4,
                            "m": [1.0, 2.0, 3.0, 4.0, 7.0, 7.0, 7.0, np.nan]})
    s = summary_table(sw, results, ["m"])
    assert list(s["m.mean"]) == [2.5, 7.0]
    assert s["m.ci95_hi"][0] - 2.5 == pytest.approx(2.0541, abs=2e-4)
    assert s["m.ci95_lo"][1] == s["m.ci95_hi"][1] == 7.0  # no spread, NaN ignored


def test_process_pool_equals_in_process(case):
    sw = load_sweep(write_sweep(case, GRID))
    a = run_sweep(sw, case / "pool", workers=2, progress=False).results
    b = run_sweep(sw, case / "here", workers=0, progress=False).results
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a["energy_j"].nunique() == 12  # every point differs: values reached the right scenario


# ---- resume ----------------------------------------------------------------------------------
def test_resume_skips_finished_points(case):
    sw = load_sweep(write_sweep(case, GRID))
    out = case / "out"
    first = run_sweep(sw, out, workers=0, progress=False)
    files = sorted((out / "points").glob("*.json"))
    assert len(files) == 12
    for f in files[::2]:
        f.unlink()
    kept = {f: f.stat().st_mtime_ns for f in files[1::2]}
    again = run_sweep(sw, out, workers=0, progress=False)
    assert (again.ran, again.reused) == (6, 6)
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())  # finished points not rewritten
    pd.testing.assert_frame_equal(first.results, again.results, check_exact=True)
    # a changed base scenario makes every point stale: all rerun
    base = yaml.safe_load((case / "base.yaml").read_text())
    base["facility"] = {"pue": 1.5}
    (case / "base.yaml").write_text(yaml.safe_dump(base))
    third = run_sweep(load_sweep(case / "sweep.yaml"), out, workers=0, progress=False)
    assert (third.ran, third.reused) == (12, 0)
    assert third.results["facility_j"].to_numpy() == pytest.approx(1.5 * third.results["energy_j"].to_numpy())


def test_killed_sweep_resumes_without_redoing_points(tmp_path):
    """Kill a real `dcsim sweep` process mid-run, then resume: finished point files are kept untouched."""
    import os
    import signal
    import subprocess
    import sys
    import time

    make_case(tmp_path, n=1500)
    sw_file = write_sweep(tmp_path, {"base": "base.yaml", "grid": {"fleet.gpu.count": [1, 2, 3, 4]},
                                     "seeds": [1, 2, 3, 4, 5]})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "dcsim.cli", "sweep", str(sw_file), "--out", str(out),
                             "--workers", "0", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    def points() -> list:  # point files, not the hidden temporaries they are written through
        return sorted(f for f in (out / "points").glob("*.json") if not f.name.startswith("."))

    while time.time() < deadline and len(points()) < 3 and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    files = points()
    assert 3 <= len(files) < 20, "the sweep should have been killed part-way"
    assert all(json.loads(f.read_text())["summary"] for f in files)  # atomic writes: no half file
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    (out / "points" / f".{files[0].name}.k1ll3d.tmp.json").write_text('{"half')  # as a kill mid-write leaves
    (out / "points" / "my-notes.txt").write_text("a user's file")
    rc = main(["sweep", str(sw_file), "--out", str(out), "--workers", "0", "--no-progress"])
    assert rc == 0
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())
    assert len(points()) == 20
    assert len(pd.read_parquet(out / "results.parquet")) == 20
    assert not list((out / "points").glob(".*.tmp.json"))  # the temporaries a kill left are gone
    assert (out / "points" / "my-notes.txt").read_text() == "a user's file"


# ---- command line ----------------------------------------------------------------------------
def test_cli_sweep_writes_tables_and_progress(case, capsys):
    sw_file = write_sweep(case, {**GRID, "metrics": ["e2e_s.p99", "pools.*.energy_j"]})
    rc = main(["sweep", str(sw_file), "--out", str(case / "out"), "--workers", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "12 points: 12 run now, 0 from earlier runs" in cap.out
    assert "12/12" in cap.err  # tqdm's bar
    assert "e2e_s.p99 (±95%)" in cap.out and "pools.gpu.energy_j (±95%)" in cap.out
    res = pd.read_csv(case / "out" / "results.csv")
    assert len(res) == 12
    assert {"point", "config", "seed", "fleet.gpu.count", "fleet.gpu.batching.max_batch", "e2e_s.p99",
            "pools.gpu.energy_j", "ttft_s.p50", "tpot_s.p90"} <= set(res.columns)
    summ = pd.read_csv(case / "out" / "summary.csv")
    assert len(summ) == 6 and {"e2e_s.p99.mean", "e2e_s.p99.ci95_lo", "e2e_s.p99.ci95_hi"} <= set(summ.columns)
    info = json.loads((case / "out" / "sweep.json").read_text())
    assert info["axes"] == [["fleet.gpu.count"], ["fleet.gpu.batching.max_batch"]] and info["seeds"] == [1, 2]
    rc = main(["sweep", str(sw_file), "--dry-run"])
    assert rc == 0 and "12 points (6 configurations x 2 seeds)" in capsys.readouterr().out


# ---- bad input -------------------------------------------------------------------------------
BAD = [
    ({"grids": {}}, "field 'grids'", "unknown key"),
    ({"grid": {"fleet.gpu.batchin.max_batch": [1, 2]}}, "field 'grid.fleet.gpu.batchin.max_batch'", "batchin"),
    ({"grid": {"fleet.gpu.count": [2, -1]}}, "field 'grid.fleet.gpu.count'", "-1"),
    ({"grid": {"fleet.h100.count": [2]}}, "field 'grid.fleet.h100.count'", "no list item 'h100'"),
    ({"grid": {"fleet.gpu.profile": ["missing.yaml"]}}, "field 'grid.fleet.gpu.profile'", "profile not found"),
    ({"grid": {"fleet.gpu.count": []}}, "field 'grid.fleet.gpu.count'", "at least one value"),
    ({"grid": {"fleet.gpu.count": [1, 1]}}, "field 'grid.fleet.gpu.count'", "repeated"),
    ({"grid": {"seed": [1, 2]}}, "field 'grid.seed'", "seeds"),
    ({"zip": {"fleet.gpu.batching.max_batch": [1, 2], "arrivals.rate_per_s": [1.0]}}, "field 'zip'", "same length"),
    ({"zip": {"fleet.gpu.count": [1, 2]}}, "field 'zip'", "both grid and zip"),
    ({"zip": {"arrivals.rate_per_s": [1.0, 1.0]}}, "field 'zip'", "same overrides"),
    ({"seeds": [1, 2], "replications": 3}, "field 'replications'", "not both"),
    ({"seeds": [1, 1]}, "field 'seeds'", "repeated"),
    ({"base": "nope.yaml"}, "field 'base'", "not found"),
    ({"set": ["fleet.gpu.count"]}, "field 'set.0'", "KEY=VALUE"),
    ({"set": ["router.name=nosuch"]}, "field 'set'", "unknown router 'nosuch'"),
    ({"grid": {"router.name": ["random", "nosuch"]}}, "field 'grid.router.name'", "unknown router 'nosuch'"),
    ({"metrics": ["energy_kwh"]}, "field 'metrics.0'", "no metric matches 'energy_kwh'"),
]


@pytest.mark.parametrize("change, field, words", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_sweep_files_name_file_and_field(case, capsys, change, field, words):
    body = {"base": "base.yaml", "grid": {"fleet.gpu.count": [1, 2]}, "seeds": [1]}
    body.update(change)
    sw_file = write_sweep(case, body)
    rc = main(["sweep", str(sw_file), "--out", str(case / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(sw_file) in err and field in err and words in err, err
    assert "Traceback" not in err
    assert not (case / "out").exists()  # checked before anything ran or was written


def test_invalid_combination_is_caught_before_running(tmp_path):
    """Each axis value is valid alone; the combination repeats a pool name."""
    make_case(tmp_path, pools=2)
    sw_file = write_sweep(tmp_path, {"base": "base.yaml",
                                     "grid": {"fleet.0.name": ["a", "b"], "fleet.1.name": ["a", "c"]}})
    sw = load_sweep(sw_file)
    with pytest.raises(UserError) as e:
        run_sweep(sw, tmp_path / "out", workers=0, progress=False)
    assert "pool names must be unique" in e.value.message and "'fleet.0.name': 'a'" in e.value.message
    assert str(sw_file) in e.value.message
    assert not (tmp_path / "out").exists()


def test_malformed_yaml_and_bad_options(case, capsys):
    p = case / "broken.yaml"
    p.write_text("base: base.yaml\ngrid: {a: [1, 2\n")
    assert main(["sweep", str(p), "--out", str(case / "o")]) == 2
    assert "malformed YAML" in capsys.readouterr().err
    ok = write_sweep(case, GRID)
    assert main(["sweep", str(ok), "--out", str(case / "o"), "--workers", "2", "--scheduler", "tcp://x:1"]) == 2
    assert "--scheduler" in capsys.readouterr().err
    assert main(["sweep", str(ok)]) == 2
    assert "--out" in capsys.readouterr().err


def test_shipped_example_sweep_expands(capsys):
    root = Path(__file__).resolve().parents[1]
    sw = load_sweep(root / "scenarios" / "studies" / "example-sweep.yaml")
    assert len(sw.points) == 3 * 2 * 2 * 3
    assert main(["sweep", str(root / "scenarios" / "studies" / "example-sweep.yaml"), "--dry-run"]) == 0
    assert "36 points (12 configurations x 3 seeds), all scenarios valid" in capsys.readouterr().out
