"""Conservation of requests and joules, and byte-for-byte reproducibility, for every batching policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from simkit import scenario, write_profile, write_trace

from dcsim.results import cumulative, power_timeline, replicas_table, requests_table, summarize
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate

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


# ---- the identity with a horizon or a warm-up ------------------------------------------------------------------
ALL_POLICIES = POLICIES + [{"policy": "paged", "max_num_seqs": 16, "max_num_batched_tokens": 2048}]


def _counted_energy(req, lo, pool=None):
    done = req[(req["status"] == "done") & (req["arrival_s"] >= lo)]
    if pool is not None:
        done = done[done["pool"] == pool]
    return float(done["energy_j"].sum())


@pytest.mark.parametrize("window", ["horizon", "warmup", "both", "neither"])
@pytest.mark.parametrize("batching", ALL_POLICIES, ids=lambda b: b["policy"])
def test_counted_energy_plus_unattributed_is_the_active_energy(tmp_path, batching, window):
    """Counted requests' energies plus `unattributed_active_j` make the window's active energy, fleet and pools,
    in every run; the unattributed part is exactly what warm-up requests drew after the warm-up and what
    requests unfinished at the horizon drew, so it is zero when neither applies."""
    kw = {"horizon": {"horizon_s": 300.0}, "warmup": {"warmup_s": 100.0},
          "both": {"horizon_s": 300.0, "warmup_s": 100.0}, "neither": {}}[window]
    raw = simulate(build(tmp_path, batching, **kw))
    s = summarize(raw)
    req = requests_table(raw)
    lo = float(raw.scenario.warmup_s)
    counted = _counted_energy(req, lo)
    assert counted + s["unattributed_active_j"] == pytest.approx(s["active_j"], rel=1e-12, abs=1e-6)
    for name, p in s["pools"].items():
        assert (_counted_energy(req, lo, name) + p["unattributed_active_j"]
                == pytest.approx(p["active_j"], rel=1e-12, abs=1e-6))
    assert (sum(p["unattributed_active_j"] for p in s["pools"].values())
            == pytest.approx(s["unattributed_active_j"], rel=1e-9, abs=1e-6))
    assert "warm-up" in s["unattributed_active_note"] and "horizon" in s["unattributed_active_note"]
    # what the part is, from the raw steps: all active energy drawn by the end, less the energy drawn before the
    # warm-up ended, less what the counted requests carry
    drawn = sum(float(e.sum()) for _, _, e, _ in raw.segments)
    before = sum(float(cumulative(t0, t1, e, np.array([lo]))[0]) for t0, t1, e, _ in raw.segments)
    done_all = float(req.loc[req["status"] == "done", "energy_j"].sum())
    early = done_all - counted  # what the finished warm-up requests carry, before and after the warm-up
    in_flight = drawn - done_all  # steps of requests unfinished at the horizon
    assert s["unattributed_active_j"] == pytest.approx(in_flight + early - before, rel=1e-9, abs=1e-6)
    if window == "neither":
        assert abs(s["unattributed_active_j"]) <= 1e-9 * s["active_j"]
    else:  # the part the issue measured missing (5.85e-3 and 1.54e-3 relative)
        assert s["unattributed_active_j"] > 1e-4 * s["active_j"]
    if "horizon_s" in kw:
        assert s["requests_unfinished"] > 0 and in_flight > 0
    else:
        assert in_flight == pytest.approx(0.0, abs=1e-9 * drawn)


def test_run_out_files_carry_the_identity(tmp_path, capsys):
    """Through `dcsim run --out`: requests.parquet's counted energies plus summary.json's unattributed line
    make replicas.csv's active energy; the console says how much no request carries."""
    import pandas as pd
    import yaml

    from dcsim.cli import main

    sc = build(tmp_path, ALL_POLICIES[3], horizon_s=300.0, warmup_s=100.0)
    f = tmp_path / "sc.yaml"
    f.write_text(yaml.safe_dump(sc.model_dump(mode="json")))
    assert main(["run", str(f), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    console = capsys.readouterr().out
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    req = pd.read_parquet(tmp_path / "out" / "requests.parquet")
    rep = pd.read_csv(tmp_path / "out" / "replicas.csv")
    assert _counted_energy(req, 100.0) + s["unattributed_active_j"] == pytest.approx(rep["active_j"].sum(), rel=1e-12)
    assert f"{s['unattributed_active_j'] / 3.6e6:.4f} kWh" in console and "no counted request" in console
