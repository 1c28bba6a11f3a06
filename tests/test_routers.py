"""Each router's defining behaviour, on small fleets where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import scenario, write_profile, write_trace

from dcsim.errors import UserError
from dcsim.results import requests_table, summarize
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate


def fleet_run(tmp_path, router, n_in, n_out, arrival, pools=None, **kw):
    fast = write_profile(tmp_path, name="fast", prefill=(0.05, 0.0005), decode=(0.01, 0.0005),
                         prefill_w=600, decode_w=(400, 10))
    slow = write_profile(tmp_path, name="slow", prefill=(0.2, 0.002), decode=(0.04, 0.001),
                         prefill_w=60, decode_w=(40, 1), idle_w=5)
    tr = write_trace(tmp_path, n_in, n_out, arrival)
    pools = pools or [{"name": "small", "profile": str(slow), "count": 2},
                      {"name": "big", "profile": str(fast), "count": 2}]
    sc = Scenario.model_validate(scenario(tr, pools, router=router, **kw))
    raw = simulate(sc)
    return requests_table(raw), summarize(raw)


def test_round_robin_cycles_replicas(tmp_path):
    req, _ = fleet_run(tmp_path, {"name": "round_robin"}, [10] * 8, [5] * 8, np.arange(8) * 0.01)
    assert req["replica"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_random_is_seeded_and_spreads(tmp_path):
    n = 4000
    args = ({"name": "random"}, [10] * n, [2] * n, np.arange(n) * 10.0)
    a, _ = fleet_run(tmp_path, *args)
    b, _ = fleet_run(tmp_path, *args)
    assert a["replica"].tolist() == b["replica"].tolist()
    counts = np.bincount(a["replica"], minlength=4)
    assert counts.min() > 900 and counts.max() < 1100  # uniform: 1000 +- 3.2 sigma


def test_least_outstanding_fills_the_emptiest(tmp_path):
    # all at t=0 and long: each new request goes to the replica with fewest outstanding, ties to the first
    req, _ = fleet_run(tmp_path, {"name": "least_outstanding"}, [1000] * 6, [100] * 6, [0.0] * 6)
    assert req["replica"].tolist() == [0, 1, 2, 3, 0, 1]


def test_token_threshold_splits_by_input_and_output(tmp_path):
    n_in = [10, 100, 64, 65, 30, 30]
    n_out = [5, 5, 5, 5, 500, 10]
    r = {"name": "token_threshold", "input_threshold": 64, "small_pool": "small", "large_pool": "big"}
    req, _ = fleet_run(tmp_path, r, n_in, n_out, np.arange(6) * 100.0)
    assert req["pool"].tolist() == ["small", "big", "small", "big", "small", "small"]
    r["output_threshold"] = 100
    req, _ = fleet_run(tmp_path, r, n_in, n_out, np.arange(6) * 100.0)
    assert req["pool"].tolist() == ["small", "big", "small", "big", "big", "small"]


def test_token_threshold_unknown_pool_is_a_user_error(tmp_path):
    r = {"name": "token_threshold", "input_threshold": 64, "small_pool": "tiny", "large_pool": "big"}
    with pytest.raises(UserError, match="no pool named 'tiny'") as e:
        fleet_run(tmp_path, r, [10], [5], [0.0])
    assert e.value.field == "router.small_pool"


def test_unknown_router_parameter_is_rejected(tmp_path):
    with pytest.raises(UserError) as e:
        fleet_run(tmp_path, {"name": "round_robin", "treshold": 3}, [10], [5], [0.0])
    assert e.value.field == "router.treshold" and "unknown key" in e.value.reason


def test_least_work_prefers_the_earliest_finish(tmp_path):
    # one slow and one fast replica; alone, a request finishes sooner on the fast one, so it goes there
    # until the fast replica's backlog makes the slow one finish earlier.
    req, _ = fleet_run(tmp_path, {"name": "least_work"}, [100] * 4, [10] * 4, [0.0] * 4)
    # fast alone: 0.05 + 0.05 + 9 * 0.0105 = 0.1945 s; slow alone: 0.2 + 0.2 + 9 * 0.041 = 0.769 s
    # replicas 2, 3 are fast: r0 -> 2, r1 -> 3, r2 -> 2 (0.39 < 0.769), r3 -> 3
    assert req["replica"].tolist() == [2, 3, 2, 3]


def test_energy_cost_lambda_trades_energy_for_time(tmp_path):
    n = 6
    args = ([100] * n, [10] * n, np.arange(n) * 100.0)
    cheap, _ = fleet_run(tmp_path, {"name": "energy_cost", "lambda": 1.0}, *args)
    quick, _ = fleet_run(tmp_path, {"name": "energy_cost", "lambda": 0.0}, *args)
    assert set(cheap["pool"]) == {"small"}  # slow pool: 0.6 s * 60 W-ish, far fewer joules
    assert set(quick["pool"]) == {"big"}
    # energies predicted and realised agree with the choice
    assert cheap["energy_j"].sum() < quick["energy_j"].sum()
    assert cheap["e2e_s"].mean() > quick["e2e_s"].mean()
