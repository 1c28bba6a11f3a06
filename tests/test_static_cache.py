"""Static KV cache engines (hf-static, hf-graph): a decode step reads the whole allocated cache, so its cost follows
batch x cache length, not the live context. Checked by hand on the evaluator, on the committed H100 standard-plan
run (whose batch sizes held caches of 384 to 4,096 tokens), and on a committed replay whose engine held another
cache than the calibration's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dcsim.errors import UserError
from dcsim.profiles.fit import fit_profile, meta_from_dict
from dcsim.profiles.importers import calibrate_runs
from dcsim.profiles.profile import load_profile
from dcsim.validate.compare import compare

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "calibrate/runs/h100-llama-2-7b-hf-graph-standard"
STANDARD = ROOT / "profiles/h100-sxm-80gb--llama-2-7b--hf-graph-standard-bf16.yaml"
OLD_CACHE = ROOT / "validation/h100n-azure-code"  # replayed with a 2,080-token cache at batch 1


def _with_cache(lengths: dict[int, int] | None):
    p = load_profile(STANDARD)
    return p.model_copy(update={"engine": p.engine.model_copy(update={"cache_lengths": lengths})})


def test_a_static_cache_step_costs_the_same_at_any_live_context():
    p = _with_cache({1: 4096, 8: 1280})
    evaluator = p.evaluator()
    a, b, c, _ = evaluator.decode_time_terms
    # hand-computed: step = a + b*B + c*B*L, whatever the live context
    assert evaluator.decode_step(1, 40.0)[0] == pytest.approx(a + b + c * 4096)
    assert evaluator.decode_step(8, 9000.0)[0] == pytest.approx(a + 8 * b + c * 8 * 1280)
    t_short, e_short, _ = evaluator.decode_run(1, 33, 500)
    t_long, e_long, _ = evaluator.decode_run(1, 3000, 500)
    assert t_short == pytest.approx(t_long) and e_short == pytest.approx(e_long)
    assert t_short == pytest.approx(500 * (a + b + c * 4096))
    # a sequence longer than the cache gets a cache of its full length (the engine grows it): 33 + 1000 tokens
    small = _with_cache({1: 512}).evaluator()
    assert small.decode_run(1, 33, 1000)[0] == pytest.approx(1000 * (a + b + c * 1033))
    assert small.decode_step(1, 900.0)[0] == pytest.approx(a + b + c * 900)
    assert small.decode_step(1, 100.0)[0] == pytest.approx(a + b + c * 512)
    # a dynamic cache (no lengths) grows with the live context instead
    dyn = _with_cache(None).evaluator()
    assert dyn.decode_run(1, 3000, 500)[0] > dyn.decode_run(1, 33, 500)[0]


def test_a_clamped_static_cache_run_holds_its_cache():
    """Where the power curve meets its ceiling the run is summed step by step; the cache stays the allocated one
    there too (it once grew by the batch each step, 5% long at batch 256 on the H200 standard-plan profile)."""
    p = _with_cache({256: 384})
    p = p.model_copy(update={"power": p.power.model_copy(update={"decode_w": p.power.decode_w.model_copy(
        update={"hi": 500.0})})})
    evaluator = p.evaluator()
    a, b, c, _ = evaluator.decode_time_terms
    step = a + 256 * b + c * 256 * 384
    assert evaluator.decode_step(256, 256 * 257.0)[1] == 500.0  # the ceiling binds: the step-by-step branch
    t, e, _ = evaluator.decode_run(256, 256 * 257, 127)
    assert t == pytest.approx(127 * step) and e == pytest.approx(127 * step * 500.0)


def test_cache_length_lookup():
    e = _with_cache({1: 4096, 8: 1280, 64: 384}).engine
    assert [e.cache_length(b) for b in (1, 8, 64)] == [4096, 1280, 384]
    assert e.cache_length(4) == 1280  # nearest listed batch size above
    assert e.cache_length(200) == 384  # past the largest: the largest's
    assert _with_cache(None).engine.cache_length(1) is None


def _fit(live: bool):
    table, meta = calibrate_runs.load(RUN)
    if live:
        table = table.assign(cache_len=float("nan"))
    return fit_profile(table, meta_from_dict(meta, str(RUN))).profile


def test_the_standard_run_fits_once_the_cache_is_modelled():
    static, live = _fit(live=False), _fit(live=True)
    # the batch sweep's caches (4096 at batch 1, 384 at 2, 2112 at 4, ... 384 at 256) broke the live-context fit
    assert live.fit_error["latency.run_s"].max_ape_pct > 25
    assert static.fit_error["latency.run_s"].max_ape_pct < 6
    assert static.fit_error["energy.run_device_j"].max_ape_pct < 10
    assert static.engine.cache_lengths[1] == 4096 and static.engine.cache_lengths[256] == 384
    # the per-token term is the KV cache's read: 0.5 MiB per token (Llama-2-7B, bf16) at an effective bandwidth
    # below the H100 SXM's 3.35 TB/s datasheet figure and above 2/3 of it
    per_token = static.latency.decode_step_s.coef["context"]
    bandwidth = static.model.kv_bytes_per_token / per_token
    assert 2.2e12 < bandwidth < 3.35e12


def test_mixed_static_and_dynamic_rows_are_refused():
    table, meta = calibrate_runs.load(RUN)
    measured = table.index[(table["kind"] == "run") & ~table["warmup"]]
    table.loc[measured[:3], "cache_len"] = float("nan")
    with pytest.raises(UserError, match="record no static cache length"):
        fit_profile(table, meta_from_dict(meta, str(RUN)))


def test_a_profile_calibrated_on_one_cache_forecasts_a_replay_on_another(tmp_path):
    """The standard profile held 4,096 tokens at batch 1; the replay's engine 2,080 (replay.json). Simulated with
    the replay's cache, busy time and latencies come within 1%; with the calibration's own cache, busy time is
    3.9% too long."""
    meta = json.loads((OLD_CACHE / "replay.json").read_text())
    assert meta["cache_lengths"] == {"1": 2080}
    work = tmp_path / "case"
    shutil.copytree(OLD_CACHE, work)
    out = compare(work, STANDARD)["metrics"]
    for k in ("busy_s", "e2e_p50_s", "e2e_p95_s", "wait_mean_s"):
        assert abs(out[k]["rel_error"]) < 0.01, k
    # the same forecast on the calibration's own caches: a profile copy without the replay's override
    own = tmp_path / "own.yaml"
    load_profile(STANDARD).to_yaml(own)
    (work / "replay.json").write_text(json.dumps({**meta, "cache_lengths": None}))
    slow = compare(work, own)["metrics"]
    assert 0.03 < slow["busy_s"]["rel_error"] < 0.05


def test_cache_lengths_on_a_dynamic_profile_are_refused(tmp_path):
    from dcsim.scenario import load_scenario
    from dcsim.sim.engine import simulate

    sc = tmp_path / "s.yaml"
    sc.write_text(
        "name: t\ntrace: {path: " + str(ROOT / "traces/gsm8k-test.parquet") + ", limit: 5}\n"
        "arrivals: {kind: poisson, rate_per_s: 1.0}\n"
        "fleet:\n  - {name: a, profile: " + str(ROOT / "profiles/h100-sxm-80gb--llama-2-7b--hf-bf16.yaml")
        + ", count: 1, cache_lengths: {1: 2048}}\n")
    with pytest.raises(UserError, match="dynamic KV cache") as e:
        simulate(load_scenario(sc), str(sc))
    assert e.value.field == "fleet.0.cache_lengths"


def test_a_check_against_another_run_uses_that_runs_caches():
    """The standard profile checked against the older H100 run (2,080 tokens at batch 1, 320 above): its long
    batch-1 runs come within 1.5% with their own caches, 5.4% off with the profile's 4,096."""
    from dcsim.profiles.check import load_run_rows, run_errors

    runs = load_run_rows(ROOT / "calibrate/runs/h100-llama-2-7b-hf-graph")
    long_b1 = runs[(runs["batch"] == 1) & (runs["n_out"] >= 512)]
    profile = load_profile(STANDARD)
    assert run_errors(profile, long_b1)["latency.run_s"].max_ape_pct < 2.0
    assert run_errors(profile, long_b1.drop(columns="cache_len"))["latency.run_s"].median_ape_pct > 5.0
