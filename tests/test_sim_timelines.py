"""Each batching policy against a timeline worked by hand, energies to the joule."""

from __future__ import annotations

import pytest
from simkit import scenario, write_profile, write_trace

from dcsim.results import requests_table, summarize
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate

# Toy profile (tests/simkit.py): prefill 0.1 + 0.001*tokens s at 300 W; decode step 0.02 + 0.001*batch s
# at 200 + 10*batch W; serving idle 50 W.


def run(tmp_path, n_in, n_out, arrival, batching, **kw):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, n_in, n_out, arrival)
    sc = Scenario.model_validate(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1,
                                                "batching": batching}], **kw))
    raw = simulate(sc)
    return raw, requests_table(raw), summarize(raw)


def test_fcfs_timeline_and_energy(tmp_path):
    raw, req, s = run(tmp_path, [100, 100], [11, 11], [0.0, 10.0], {"policy": "fcfs"})
    # prefill 0.2 s (60 J) then 10 decode steps of 0.021 s at 210 W (44.1 J): 0.41 s, 104.1 J each
    assert req["done_s"].tolist() == pytest.approx([0.41, 10.41])
    assert req["first_token_s"].tolist() == pytest.approx([0.2, 10.2])
    assert req["energy_j"].tolist() == pytest.approx([104.1, 104.1])
    assert s["active_j"] == pytest.approx(208.2)
    assert s["idle_j"] == pytest.approx(50.0 * (10.41 - 0.82))
    assert s["energy_j"] == pytest.approx(208.2 + 479.5)
    assert s["tpot_s"]["mean"] == pytest.approx(0.021)


def test_fcfs_queueing_order(tmp_path):
    raw, req, s = run(tmp_path, [100, 100, 100], [11, 11, 11], [0.0, 0.1, 0.2], {"policy": "fcfs"})
    assert req["start_s"].tolist() == pytest.approx([0.0, 0.41, 0.82])
    assert req["wait_s"].tolist() == pytest.approx([0.0, 0.31, 0.62])
    assert s["idle_j"] == pytest.approx(0.0)


def test_static_batch_timeline(tmp_path):
    raw, req, s = run(tmp_path, [100, 50, 100], [11, 21, 11], [0.0, 0.5, 3.0],
                      {"policy": "static", "max_batch": 2, "max_wait_s": 1.0})
    # A and B run together from 0.5, padded to 100 in / 21 out: prefill 200 tokens 0.3 s (90 J), 20 steps
    # of 0.022 s at 220 W (96.8 J) -> both done at 1.24. C waits its 1 s and runs alone from 4.0 to 4.41.
    assert req["start_s"].tolist() == pytest.approx([0.5, 0.5, 4.0])
    assert req["first_token_s"].tolist() == pytest.approx([0.8, 0.8, 4.2])
    assert req["done_s"].tolist() == pytest.approx([1.24, 1.24, 4.41])
    assert req["energy_j"].tolist() == pytest.approx([93.4, 93.4, 104.1])
    assert s["idle_j"] == pytest.approx(50.0 * (4.41 - 0.74 - 0.41))


def test_continuous_batch_timeline(tmp_path):
    raw, req, s = run(tmp_path, [100, 100], [11, 6], [0.0, 0.3], {"policy": "continuous", "max_batch": 8})
    # A: prefill 0..0.2, decodes alone; B arrives at 0.3 during A's 5th step (0.2 + 5*0.021 = 0.305),
    # joins after it: B's prefill 0.305..0.505, then both decode 5 steps of 0.022 s -> done 0.615.
    assert req["start_s"].tolist() == pytest.approx([0.0, 0.305])
    assert req["first_token_s"].tolist() == pytest.approx([0.2, 0.505])
    assert req["done_s"].tolist() == pytest.approx([0.615, 0.615])
    # A: 60 + 5*0.021*210 + half of 5*0.022*220;  B: 60 + the other half
    assert req["energy_j"].tolist() == pytest.approx([60 + 22.05 + 12.1, 60 + 12.1])
    assert s["active_j"] == pytest.approx(req["energy_j"].sum())
    assert s["idle_j"] == pytest.approx(0.0, abs=1e-9)


def test_continuous_respects_max_batch_and_kv(tmp_path):
    # KV capacity 250 tokens: two requests of 100+11 fit (222), a third must wait for one to finish.
    prof = write_profile(tmp_path, kv_tokens=250)
    tr = write_trace(tmp_path, [100, 100, 100, 300], [11, 11, 11, 1], [0, 0, 0, 0])
    sc = Scenario.model_validate(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1,
                                                "batching": {"policy": "continuous", "max_batch": 8}}]))
    req = requests_table(simulate(sc))
    # first two prefill together (200 tokens: 0.3 s), decode 10 steps at batch 2 (0.22 s) -> done 0.52
    assert req["done_s"].iloc[:2].tolist() == pytest.approx([0.52, 0.52])
    assert req["start_s"].iloc[2] == pytest.approx(0.52)
    assert req["status"].iloc[3] == "rejected" and req["reason"].iloc[3] == "does not fit in KV memory"


def test_horizon_leaves_unfinished_and_prorates_energy(tmp_path):
    raw, req, s = run(tmp_path, [100, 100], [11, 11], [0.0, 10.0], {"policy": "fcfs"}, horizon_s=10.1)
    assert req["status"].tolist() == ["done", "unfinished"]
    assert s["requests_unfinished"] == 1
    # second request: prefill from 10.0 to 10.2 (0.41 s segment, 104.1 J) cut at 10.1 -> 0.1/0.41 of it
    assert s["active_j"] == pytest.approx(104.1 + 104.1 * 0.1 / 0.41)
