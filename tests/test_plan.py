"""`dcsim plan`: the cheapest fleet that meets service-level objectives, found by bisection, is the one an
exhaustive grid finds, with fewer simulations; the planner resumes from its folder; bad input exits 2 naming the
option. Real SimPy runs of a small two-pool case throughout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.capacity import Axis, meets, parse_objective, plan
from dcsim.cli import main
from dcsim.results import summarize
from dcsim.scenario import load_scenario
from dcsim.sim.engine import simulate
from dcsim.sweep.tables import flatten

SLO = ["wait_s.p99<=0.5", "e2e_s.p50<=2.5"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Two pools of one-at-a-time replicas (a slow and a fast kind) under Poisson arrivals: 300 requests at 6/s."""
    d = tmp_path_factory.mktemp("plan")
    slow = write_profile(d, name="slow", prefill=(0.05, 0.0005), decode=(0.012, 0.0), prefill_w=250,
                         decode_w=(180.0, 0.0), idle_w=60.0)
    fast = write_profile(d, name="fast", prefill=(0.03, 0.0003), decode=(0.006, 0.0), prefill_w=450,
                         decode_w=(330.0, 0.0), idle_w=110.0)
    rng = np.random.default_rng(4)
    tr = write_trace(d, rng.integers(50, 400, 300), rng.integers(20, 120, 300))
    sc = scenario(tr, [{"name": "slow", "profile": str(slow), "count": 1, "batching": {"policy": "fcfs"}},
                       {"name": "fast", "profile": str(fast), "count": 1, "batching": {"policy": "fcfs"}}],
                  arrivals={"kind": "poisson", "rate_per_s": 6.0}, router={"name": "least_outstanding"})
    return write_scenario(d, sc)


def _summary(path, slow: int, fast: int) -> dict:
    sc = load_scenario(path, [f"fleet.slow.count={slow}", f"fleet.fast.count={fast}"])
    return flatten(summarize(simulate(sc, path)))


def test_bisection_finds_the_exhaustive_grids_cheapest_fleet_with_fewer_simulations(case):
    objectives = [parse_objective(s) for s in SLO]
    axes = [Axis("fleet.slow.count", 1, 12), Axis("fleet.fast.count", 1, 3)]
    grid = {(s, f): _summary(case, s, f) for s in range(1, 13) for f in range(1, 4)}
    ok = {k: meets(v, objectives) for k, v in grid.items()}
    # the planner's assumptions hold on this case: meeting the objectives is monotone in the slow count, and
    # energy grows with replicas among the fleets that meet them
    for f in range(1, 4):
        col = [ok[(s, f)] for s in range(1, 13)]
        assert col == sorted(col), f  # False ... False True ... True
    assert any(ok.values()) and not all(ok.values())
    calls = []

    def evaluate(fleets):
        calls.append(len(fleets))
        return {k: grid[k] for k in fleets}

    res = plan(axes, objectives, evaluate)
    for f in range(1, 4):
        want = min((s for s in range(1, 13) if ok[(s, f)]), default=None)
        assert res.minimal[(f,)] == want, f
    cheapest_grid = min((k for k in grid if ok[k]), key=lambda k: (grid[k]["energy_j"], sum(k)))
    got, summary = res.cheapest("energy_j")
    assert got == cheapest_grid and summary["energy_j"] == grid[cheapest_grid]["energy_j"]
    assert len(res.evaluated) == sum(calls) < len(grid) / 2
    assert res.rounds == len(calls) <= 2 + int(np.ceil(np.log2(12)))


def test_the_command_writes_the_frontier_and_resumes_from_its_folder(case, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["plan", str(case), "--vary", "fleet.slow.count=1..12", "--vary", "fleet.fast.count=1..2",
            "--slo", SLO[0], "--slo", SLO[1], "--minimise", "energy", "--workers", "0", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    info = json.loads((out / "plan.json").read_text())
    assert info["ran_now"] == info["fleets_evaluated"] < info["grid_fleets"] == 24 and info["reused"] == 0
    front = pd.read_csv(out / "frontier.csv")
    assert list(front["fleet.fast.count"]) == [1, 2]
    ans = info["answer"]
    direct = _summary(case, ans["fleet.slow.count"], ans["fleet.fast.count"])
    assert ans["energy_j"] == pytest.approx(direct["energy_j"], rel=1e-12)  # the point files hold the summary
    assert f"fleet.slow.count={ans['fleet.slow.count']}" in text and "cheapest by energy" in text
    ev = pd.read_csv(out / "evaluated.csv")
    assert len(ev) == info["fleets_evaluated"] and ev["meets"].any() and not ev["meets"].all()
    # its report: the question, the chosen fleet, the figure
    assert main(["report", str(out), "-o", str(tmp_path / "plan.html")]) == 0
    html = (tmp_path / "plan.html").read_text()
    assert "dcsim plan" in html and SLO[0].replace("<", "&lt;") in html and "data:image/png;base64" in html
    answer = html.split("<h2>Answer</h2>")[1].split("</section>")[0]
    for k in ("fleet.slow.count", "fleet.fast.count"):
        row = answer.split(k)[1].split("</tr>")[0]
        assert f">{ans[k]}<" in row, (k, row)
    # again on the same folder: nothing simulated, the same answer; a lost point file is simulated again
    assert main(argv) == 0
    again = json.loads((out / "plan.json").read_text())
    assert again["ran_now"] == 0 and again["reused"] == info["fleets_evaluated"] and again["answer"] == ans
    next(iter((out / "points").glob("*.json"))).unlink()
    assert main(argv) == 0
    assert json.loads((out / "plan.json").read_text())["ran_now"] == 1


@pytest.mark.parametrize("change, field, words", [
    ({"--vary": "fleet.slow.count=5..2"}, "--vary", "LO <= HI"),
    ({"--vary": "fleet.slow.count=1-4"}, "--vary", "FIELD=LO..HI"),
    ({"--vary": "fleet.slow.profile=1..4"}, "--vary", "replica counts"),
    ({"--slo": "ttft_s.p99 =< 2"}, "--slo", "METRIC<=VALUE"),
    ({"--slo": "ttft_s.p999<=2"}, "--slo", "no summary metric"),
    ({"--slo": "wait_s.p99<=1e999"}, "--slo", "not finite"),
])
def test_bad_input_exits_2_naming_the_option_and_writes_nothing(case, tmp_path, capsys, change, field, words):
    opts = {"--vary": "fleet.slow.count=1..4", "--slo": "wait_s.p99<=0.5", **change}
    out = tmp_path / "p"
    argv = ["plan", str(case), "--workers", "0", "--out", str(out)] + [x for k, v in opts.items() for x in (k, v)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"field '{field}'" in err and words in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_a_fleet_that_leaves_requests_unserved_meets_no_objective():
    s = {"requests_total": 10, "requests_completed": 9, "wait_s.p99": 0.0}
    assert not meets(s, [parse_objective("wait_s.p99<=1")])
    assert meets({**s, "requests_completed": 10}, [parse_objective("wait_s.p99<=1")])
    assert not meets({**s, "requests_completed": 10, "wait_s.p99": float("nan")}, [parse_objective("wait_s.p99<=1")])
