"""SimPy events per run: an arrival that joins a decode run in progress cuts it without an interrupt, with the
same results as the interrupt gives, event for event in the same order."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import scenario, write_profile, write_trace

import dcsim.sim.engine as engine
from dcsim.results import requests_table
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate
from dcsim.traces.trace import Trace


def test_continuous_timeline_counts_its_events(tmp_path, monkeypatch):
    # the continuous timeline of test_sim_timelines: A alone from 0, B arrives at 0.3 during A's decode run and
    # joins after the step in progress (0.305). Events: the replica's and the arrival process's start (2), A's
    # wake (1), B's arrival (1), A's prefill (1), A's decode run to 0.41 (1), the arrival process's end (1), and
    # one for the rest, planned at B's arrival: A's run cut at 0.305, B's prefill and the run of both to 0.615
    # (1): 8. Interrupting instead, the cut, B's prefill and the run are an event each, and the interrupt one more.
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [100, 100], [11, 6], [0.0, 0.3])
    sc = Scenario.model_validate(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1,
                                                "batching": {"policy": "continuous", "max_batch": 8}}]))
    raw = simulate(sc)
    assert raw.events == 8
    req = requests_table(raw)
    assert req["start_s"].tolist() == pytest.approx([0.0, 0.305])
    assert req["done_s"].tolist() == pytest.approx([0.615, 0.615])
    monkeypatch.setattr(engine, "CUT_WITHOUT_INTERRUPT", False)
    assert simulate(sc).events == 11


def fleet_case(tmp_path, batching: dict, n: int = 2000) -> Scenario:
    """Three pools of toy replicas under Poisson arrivals, with shared prefixes for the paged engine."""
    rng = np.random.default_rng(3)
    n_in = np.clip(rng.lognormal(5.0, 1.0, n), 1, 3000).astype(np.int64)
    n_out = np.clip(rng.lognormal(4.0, 0.9, n), 1, 800).astype(np.int64)
    pid = np.where(rng.random(n) < 0.5, rng.integers(0, 20, n), -1)
    plen = np.where(pid >= 0, np.minimum(n_in, 128), 0)
    tr = tmp_path / "trace.parquet"
    Trace(n_in, n_out, None, None, {"source": "test"}, pid, plen).validate().to_parquet(tr)
    profs = [write_profile(tmp_path, name="s", decode=(0.03, 0.0005), kv_tokens=30_000),
             write_profile(tmp_path, name="m", prefill=(0.02, 0.0002), decode=(0.015, 0.0002), kv_tokens=90_000),
             write_profile(tmp_path, name="b", prefill=(0.01, 0.0001), decode=(0.01, 0.0001), kv_tokens=200_000)]
    pools = [{"name": p.stem, "profile": str(p), "count": c, "batching": batching} for p, c in zip(profs, (2, 3, 2))]
    return Scenario.model_validate(scenario(tr, pools, arrivals={"kind": "poisson", "rate_per_s": 25.0},
                                            router={"name": "least_outstanding"}))


@pytest.mark.parametrize("batching", [
    {"policy": "continuous", "max_batch": 32},
    {"policy": "paged", "max_num_seqs": 32, "max_num_batched_tokens": 512, "block_size": 16},
    {"policy": "paged", "max_num_seqs": 16, "max_num_batched_tokens": 256, "block_size": 16, "kv_blocks": 200},
], ids=["continuous", "paged", "paged-preempting"])
def test_a_cut_without_interrupt_gives_the_interrupts_results(tmp_path, monkeypatch, batching):
    sc = fleet_case(tmp_path, batching)
    cut = simulate(sc)
    monkeypatch.setattr(engine, "CUT_WITHOUT_INTERRUPT", False)
    intr = simulate(sc)
    assert cut.end_s == intr.end_s
    for k in intr.log:
        assert np.array_equal(cut.log[k], intr.log[k]), k
    for a, b in zip(cut.segments, intr.segments):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for a, b in zip(cut.itl, intr.itl):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert cut.policy_stats == intr.policy_stats
    # every cut saves the interrupt's event (the preempting case, its queue rarely empty, cuts fewer runs)
    assert intr.events - cut.events > (50 if "kv_blocks" in batching else 300)
    if "kv_blocks" in batching:
        assert sum(s["preemptions"] for s in cut.policy_stats) > 0
