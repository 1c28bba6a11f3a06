"""Conservation of requests and joules, and byte-for-byte reproducibility, for every batching policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dcsim.results import power_timeline, replicas_table, requests_table, summarize
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate
from simkit import scenario, write_profile, write_trace

POLICIES = [{"policy": "fcfs"}, {"policy": "static", "max_batch": 8, "max_wait_s": 0.5},
            {"policy": "continuous", "max_batch": 16}]


def workload(tmp_path, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    n_in = rng.integers(1, 2000, n)
    n_out = rng.integers(1, 600, n)
    n_in[::97] = 5000  # too long for the small pool's KV: must be rejected, not lost
    return write_trace(tmp_path, n_in, n_out)


def build(tmp_path, batching, **kw):
    host = {"prefill_w": {"intercept": 40.0}, "decode_w": {"intercept": 30.0}, "idle_w": 20.0}
    a = write_profile(tmp_path, name="a", host=host)
    b = write_profile(tmp_path, name="b", prefill=(0.05, 0.0005), kv_tokens=4000, idle_w=70)
    tr = workload(tmp_path)
    pools = [{"name": "a", "profile": str(a), "count": 3, "batching": batching},
             {"name": "b", "profile": str(b), "count": 2, "batching": batching}]
    return Scenario.model_validate(scenario(tr, pools, arrivals={"kind": "poisson", "rate_per_s": 4.0},
                                            router={"name": "least_outstanding"}, **kw))


@pytest.mark.parametrize("batching", POLICIES, ids=lambda b: b["policy"])
def test_requests_and_joules_are_conserved(tmp_path, batching):
    raw = simulate(build(tmp_path, batching))
    s = summarize(raw)
    req = requests_table(raw)
    assert s["requests_completed"] + s["requests_rejected"] + s["requests_unfinished"] == 3000
    assert s["requests_unfinished"] == 0
    rejected = req[req["status"] == "rejected"]
    assert len(rejected) > 0 and set(rejected["pool"]) == {"b"}
    assert set(rejected["reason"]) == {"does not fit in KV memory"}
    # per-request energies sum to the active total
    done = req[req["status"] == "done"]
    assert done["energy_j"].sum() == pytest.approx(s["active_j"], rel=1e-9)
    # per-pool parts sum to the fleet
    for key in ("energy_j", "active_j", "idle_j", "host_j"):
        assert sum(p[key] for p in s["pools"].values()) == pytest.approx(s[key], rel=1e-12)
    # busy + idle time = replicas x makespan; idle energy = idle watts x idle time
    rep = replicas_table(raw)
    assert (rep["busy_s"] + rep["idle_s"]).to_numpy() == pytest.approx(s["makespan_s"])
    idle_w = np.where(rep["pool"] == "a", 50.0, 70.0)
    assert rep["idle_j"].to_numpy() == pytest.approx(idle_w * rep["idle_s"].to_numpy())
    # host: active share + 20 W idle on pool a only
    assert s["pools"]["b"]["host_j"] == 0.0
    assert s["host_j"] == pytest.approx(done["host_j"].sum() + 20.0 * rep.loc[rep["pool"] == "a", "idle_s"].sum())
    # the power timeline integrates to the same joules
    pw = power_timeline(raw)
    e_timeline = float(((pw["t_end_s"] - pw["t_start_s"]) * pw["fleet_w"]).sum())
    assert e_timeline == pytest.approx(s["energy_j"], rel=1e-9)
    # facility = IT energy x PUE
    assert s["facility_j"] == pytest.approx(s["energy_j"])


def test_same_seed_same_summary_bytes(tmp_path):
    sc = build(tmp_path, POLICIES[2], facility={"pue": 1.3, "carbon_g_per_kwh": 400, "price_per_kwh": 0.1})
    a = json.dumps(summarize(simulate(sc)), sort_keys=True)
    b = json.dumps(summarize(simulate(sc)), sort_keys=True)
    assert a == b
    c = json.dumps(summarize(simulate(sc.model_copy(update={"seed": 2}))), sort_keys=True)
    assert a != c
    s = json.loads(a)
    assert s["facility_j"] == pytest.approx(1.3 * s["energy_j"])
    assert s["carbon_g"] == pytest.approx(s["facility_j"] / 3.6e6 * 400)


def test_warmup_excludes_early_requests(tmp_path):
    sc = build(tmp_path, POLICIES[0], warmup_s=100.0)
    raw = simulate(sc)
    s = summarize(raw)
    req = requests_table(raw)
    assert s["requests_total"] == int((req["arrival_s"] >= 100.0).sum())
    assert s["makespan_s"] == pytest.approx(raw.end_s - 100.0)
