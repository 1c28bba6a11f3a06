"""The paged replay's step probe (`dcsim validate --step-probe`): serving steps timed on the replay's own engine
before and after its window, named as the calibration names its steps, refused up front when they cannot run,
and leaving the replay itself unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dcsim.cli import main as cli
from dcsim.validate.step_probe import StepShape, parse_shapes, read_against

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "h200--llama-2-7b--paged-bf16.yaml"
GSM8K = ROOT / "traces" / "gsm8k-test.parquet"
SERVED = ROOT / "calibrate" / "runs" / "h200d-llama-2-7b-paged-paged-served-steps"


def test_shapes_parse_in_the_plans_order_and_bad_ones_are_named():
    a, b = parse_shapes("16:1024:0, 0:0:256:1024:2")
    assert (a.decode_batch, a.context, a.prefill_tokens, a.prefix, a.chunks) == (16, 1024, 0, 0, 1)
    assert (b.decode_batch, b.context, b.prefill_tokens, b.prefix, b.chunks) == (0, 0, 256, 1024, 2)
    assert [s.point() for s in (a, b)] == ["s-b16-l1024-p0-h0", "s-b0-l0-p256-h1024-k2"]
    for bad in ("4:1024", "0:0:0", "4:0:16", "a:1:2", "1:2:3:4:5:6", "1:10:4:0:0", "-1:10:4"):
        with pytest.raises(ValueError, match="bad step shape") as e:
            parse_shapes(f"16:1024:0,{bad}")
        assert repr(bad) in str(e.value)
    with pytest.raises(ValueError, match="no step shape"):
        parse_shapes(" , ")


def test_a_shape_is_named_as_the_served_sweep_named_the_same_step():
    runs = pd.read_csv(SERVED / "runs.csv")
    steps = runs[(runs["phase"] == "step") & ~runs["point"].str.contains("-v")]
    steps = steps.fillna({"prefill_prefix": 0, "prefill_chunks": 1})  # blank: no prefix, one chunk
    assert len(steps) > 80 and (steps["prefill_chunks"] > 1).any() and (steps["prefill_prefix"] > 0).any()
    for r in steps.itertuples():
        b = int(r.batch)
        s = StepShape(b, int(r.context) // b if b else 0, int(r.n_in), int(r.prefill_prefix), int(r.prefill_chunks))
        assert s.point() == r.point


def test_bad_probes_are_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "v"
    base = ["validate", "--profile", str(PROFILE), "--trace", str(GSM8K), "--arrivals", "poisson", "--rate", "2",
            "--limit", "20", "--out", str(out), "--dry-run"]
    paged = ["--backend", "paged", "--batching", "paged", "--max-num-seqs", "8"]
    assert cli(base + ["--step-probe", "default"]) == 2  # fcfs: no steps to probe
    assert "--step-probe" in capsys.readouterr().err
    assert cli(base + paged + ["--step-probe", "9:128:0"]) == 2
    assert "--max-num-seqs 8" in capsys.readouterr().err
    assert cli(base + paged + ["--step-probe", "4:128"]) == 2
    assert "'4:128'" in capsys.readouterr().err
    assert cli(base + paged + ["--step-probe", "4:100000:0"]) == 2  # longer than any request sizes the engine
    assert "longest request" in capsys.readouterr().err
    assert cli(base + paged + ["--step-probe", "4:64:0", "--step-probe-steps", "0"]) == 2
    assert "--step-probe-steps" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def torch_present():
    pytest.importorskip("torch", reason="torch is needed to run the tiny model")
    pytest.importorskip("transformers", reason="transformers is needed to build the tiny model")


def test_the_probe_runs_before_and_after_the_window_and_is_recorded(torch_present, tmp_path):
    out = tmp_path / "v"
    assert cli(["validate", "--device", "cpu", "--model-arch", "tiny-llama", "--random-weights", "--dtype", "fp32",
                "--latency-only", "--profile", str(PROFILE), "--backend", "paged", "--batching", "paged",
                "--max-num-seqs", "4", "--max-num-batched-tokens", "64", "--trace", str(GSM8K), "--arrivals",
                "poisson", "--rate", "50", "--limit", "6", "--clip-in", "48", "--clip-out", "8", "--settle-s", "0",
                "--tail-s", "0.1", "--step-probe", "2:32:0,1:40:8,0:0:16:16", "--step-probe-steps", "4",
                "--out", str(out)]) in (0, 1)  # 1: the tiny CPU model misses the H200 profile's targets
    text = (out / "step_probe.csv").read_text()
    assert "nan" not in text.lower()  # no meter here: the energy cells are empty, not NaN
    p = pd.read_csv(out / "step_probe.csv")
    assert len(p) == 2 * 2 * 3  # before and after, 2 repeats, 3 shapes
    assert p.groupby(["when", "decode_batch", "context", "prefill_tokens", "prefill_prefix"]).size().eq(2).all()
    assert list(p["when"].unique()) == ["before", "after"] and (p["steps"] == 4).all()
    assert (p["ms_per_step"] - 1e3 * p["runtime_s"] / 4).abs().max() < 1e-3
    assert p["energy_j"].isna().all() and (p["runtime_s"] > 0).all()
    meta = json.loads((out / "replay.json").read_text())
    assert meta["step_probe"] == {"shapes": ["2:32:0:0:1", "1:40:8:0:1", "0:0:16:16:1"], "skipped": [],
                                  "loop": "served", "repeats": 2, "steps": 4}
    assert "step_probe.csv" in json.loads((out / ".dcsim-output.json").read_text())["files"]
    # read against a calibration: the probe's points, which this sweep lacks (NaN), and the columns' shape
    t = read_against(out / "step_probe.csv", SERVED)
    assert sorted(t.index) == ["s-b0-l0-p16-h16", "s-b1-l40-p8-h0", "s-b2-l32-p0-h0"]
    assert t["ms_calibration"].isna().all() and {"ms_before_x", "ms_after_x"} <= set(t.columns)


def test_a_probe_before_the_window_leaves_the_replay_as_it_was(torch_present, tmp_path):
    """Same requests, all at once (a schedule that does not depend on speed), with and without a probe of
    decodes and a chunk after cached tokens run first on the same engine: the same tokens, steps and blocks."""
    from test_calibrate_run import StandInMeter
    from test_paged_backend import serve_on_cpu

    from dcsim.validate import paged_replay as PR
    from dcsim.validate import step_probe as SP

    wl = pd.DataFrame({"n_in": [20, 40, 8, 30], "n_out": [12, 6, 10, 8], "arrival_s": [0.0] * 4})
    pol = PR.PagedPolicy(max_num_seqs=4, max_num_batched_tokens=32, kv_blocks=24)
    (tmp_path / "plain").mkdir()
    be, _ = serve_on_cpu(wl, pol, tmp_path / "plain")
    (tmp_path / "probed").mkdir()
    SP.run(be, StandInMeter(), parse_shapes("3:40:0,1:30:8:16"), 1, 3, tmp_path / "probed", "before")
    PR.serve(wl, be, StandInMeter(), pol, tmp_path / "probed", tail_s=0.05, settle_s=0.0)
    p = pd.read_csv(tmp_path / "probed" / "step_probe.csv")
    # the stand-in meter draws 50 W: each row's energy is 50 W over its window, which holds the timed steps
    assert ((p["avg_power_w"] >= 50.0) & (p["avg_power_w"] < 75.0)).all()
    for name, cols in (("tokens.csv", ["id", "k", "token"]),
                       ("steps.csv", ["decodes", "chunks", "prefill_tokens", "free_blocks", "cached_tokens"])):
        a = pd.read_csv(tmp_path / "plain" / name)[cols]
        b = pd.read_csv(tmp_path / "probed" / name)[cols]
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
