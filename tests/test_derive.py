"""Datasheet transfer (`dcsim fit --derive`): the documented model on a hand-computed case, identity on the same
device, the H100 -> H200 derivation against the H200 measurement, and the CLI's refusals."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from dcsim.cli import main
from dcsim.profiles import devices as catalogue
from dcsim.profiles.check import load_run_rows, run_errors
from dcsim.profiles.derive import derive_profile, roofline_overhead_s, transfer_between
from dcsim.profiles.devices import DeviceSpec
from dcsim.profiles.profile import load_profile

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"
H100_STATIC = PROFILES / "h100-sxm-80gb--llama-2-7b--hf-static-bf16.yaml"
H200_STATIC = PROFILES / "h200--llama-2-7b--hf-static-bf16.yaml"
H200_RUN = REPO / "calibrate" / "runs" / "h200-llama-2-7b-hf-static"
DERIVED = sorted((PROFILES / "derived").glob("*.yaml"))


def _dev(key: str, bw: float, tflops: float, tdp: float, serving: float | None, deep: float | None,
         caps: tuple | None = None) -> DeviceSpec:
    lo, hi, default = caps or (None, None, None)
    return DeviceSpec(key, f"Synthetic {key}", "gpu", 100.0, tdp, tflops, lo, hi, default, deep, serving,
                      mem_bw_tbs=bw)


SRC_DEV = _dev("syn-a", 2.0, 300.0, 400.0, 50.0, 30.0, (100.0, 400.0, 400.0))
DST_DEV = _dev("syn-b", 4.0, 900.0, 600.0, 80.0, 40.0, (150.0, 600.0, 600.0))  # bandwidth x2, FLOPS x3, TDP x1.5

SYNTHETIC = {
    "name": "syn-a--toy--eng-bf16",
    "device": {"name": "Synthetic syn-a", "kind": "gpu", "memory_gb": 50.0, "tdp_w": 400.0},
    "model": {"name": "toy", "params_b": 1.0, "layers": 4, "hidden_size": 256, "kv_bytes_per_token": 4096},
    "engine": {"name": "eng", "precision": "bf16"},
    "latency": {
        "prefill_s": {"intercept": 0.02, "coef": {"tokens": 1e-5, "tokens_sq": 1e-9, "batch": 1e-3}},
        "decode_step_s": {"intercept": 0.010, "coef": {"batch": 1e-4, "context": 1e-8}},
    },
    "power": {
        "prefill_w": {"intercept": 350.0, "coef": {"tokens": 0.01}, "hi": 400.0},
        "decode_w": {"intercept": 300.0, "coef": {"batch": 2.0}, "hi": 400.0},
        "serving_idle_w": 50.0, "deep_idle_w": 30.0,
    },
    "power_cap": {"min_w": 100.0, "max_w": 400.0, "default_w": 400.0, "static_w": 200.0},
    "memory": {"device_gb": 50.0, "weights_gb": 2.0, "activation_reserve_gb": 5.0},
    "provenance": {"source": {"source": "measured", "citation": "synthetic"}},
}


@pytest.fixture
def synthetic(tmp_path):
    path = tmp_path / "syn.yaml"
    path.write_text(yaml.safe_dump(SYNTHETIC))
    return load_profile(path), str(path)


def test_hand_computed_transfer(synthetic):
    src, path = synthetic
    d = derive_profile(src, transfer_between(SRC_DEV, DST_DEV), path)
    evaluator = d.evaluator()
    # decode step at batch 8, context 8000: (0.010 + 8 * 1e-4 + 8000 * 1e-8) x 2/4
    t, w = evaluator.decode_step(8, 8000.0)
    assert t == pytest.approx((0.010 + 8e-4 + 8e-5) * 0.5, rel=1e-12)
    # power: target idle 80 + (600/400) x (source 300 + 2 x 8 - source idle 50)
    assert w == pytest.approx(80.0 + 1.5 * (316.0 - 50.0), rel=1e-12)
    # one prompt of 1000 tokens: intercept kept, work terms x 300/900
    t, w, _ = evaluator.prefill(1000.0, 1e6, 1)
    assert t == pytest.approx(0.02 + (1e-2 + 1e-3 + 1e-3) / 3.0, rel=1e-12)
    assert w == pytest.approx(80.0 + 1.5 * (360.0 - 50.0), rel=1e-12)
    assert d.power.prefill_w.hi == pytest.approx(600.0) and d.power.decode_w.hi == pytest.approx(600.0)
    assert (d.power.serving_idle_w, d.power.deep_idle_w) == (80.0, 40.0)
    # a kept fixed step overhead of 2 ms: 2 ms + (the rest) x 1/2
    d2 = derive_profile(src, transfer_between(SRC_DEV, DST_DEV, step_overhead_s=0.002), path)
    assert d2.evaluator().decode_step(8, 8000.0)[0] == pytest.approx(0.002 + (0.008 + 8e-4 + 8e-5) * 0.5, rel=1e-12)
    # the roofline overhead: the 10 ms intercept less 2 GB of weights read at 2 TB/s (1 ms) = 9 ms kept, so the
    # step at the target is 9 ms + (1 ms + 8e-4 + 8e-5) x 1/2
    assert roofline_overhead_s(src, SRC_DEV) == pytest.approx(0.009, rel=1e-12)
    d4 = derive_profile(src, transfer_between(SRC_DEV, DST_DEV, step_overhead_s=roofline_overhead_s(src, SRC_DEV)),
                        path)
    assert d4.evaluator().decode_step(8, 8000.0)[0] == pytest.approx(0.009 + (0.001 + 8e-4 + 8e-5) * 0.5, rel=1e-12)
    # idle by TDP ratio instead of the catalogue
    d3 = derive_profile(src, transfer_between(SRC_DEV, DST_DEV, idle="tdp-ratio"), path)
    assert (d3.power.serving_idle_w, d3.power.deep_idle_w) == (75.0, 45.0)
    # cap model: range of the target, static floor at the same fraction of the default limit
    assert (d.power_cap.min_w, d.power_cap.max_w, d.power_cap.default_w) == (150.0, 600.0, 600.0)
    assert d.power_cap.static_w == pytest.approx(300.0)
    # memory of the target, the source's reserve fraction; nothing fitted
    assert (d.memory.device_gb, d.memory.activation_reserve_gb) == (100.0, 10.0)
    assert d.fit_error == {} and d.spread_cv == {}
    assert all(p.source in ("derived", "published") for p in d.provenance.values())
    assert "derived from" in d.provenance["latency.decode_step_s"].citation
    assert any("not measured" in s for s in d.not_covered)


def test_same_device_gives_back_the_source():
    src = load_profile(H100_STATIC)
    dev = catalogue.DEVICES["h100-sxm-80gb"]
    d = derive_profile(src, transfer_between(dev, dev), str(H100_STATIC))
    for a, b in ((d.latency.prefill_s, src.latency.prefill_s), (d.latency.decode_step_s, src.latency.decode_step_s),
                 (d.power.prefill_w, src.power.prefill_w), (d.power.decode_w, src.power.decode_w)):
        assert a.intercept == pytest.approx(b.intercept, rel=1e-12)
        assert a.coef == pytest.approx(b.coef, rel=1e-12)
        assert (a.lo is None) == (b.lo is None) and (a.hi is None) == (b.hi is None)
    assert (d.power.serving_idle_w, d.power.deep_idle_w) == (src.power.serving_idle_w, src.power.deep_idle_w)
    assert d.power_cap == src.power_cap


# Measured when the transfer was written (profiles/README.md, "Derived profiles"): derived H100 -> H200 static,
# median APE of run time 6.1 %, of device energy 11.0 %; H100 profile unchanged 23.7 % and 22.3 %; the H200's own
# fitted profile 3.6 % and 1.1 %. Bounds: measured + 1 point.
def test_h100_to_h200_against_the_h200_measurement():
    src = load_profile(H100_STATIC)
    d = derive_profile(src, transfer_between(catalogue.DEVICES["h100-sxm-80gb"], catalogue.DEVICES["h200"]),
                       str(H100_STATIC))
    runs = load_run_rows(H200_RUN)
    derived, naive, floor = run_errors(d, runs), run_errors(src, runs), run_errors(load_profile(H200_STATIC), runs)
    assert derived["latency.run_s"].n_points == 21 and derived["energy.run_device_j"].n_points == 10
    assert derived["latency.run_s"].median_ape_pct < 7.1
    assert derived["energy.run_device_j"].median_ape_pct < 12.0
    for k in ("latency.run_s", "energy.run_device_j"):
        assert derived[k].median_ape_pct < naive[k].median_ape_pct
        assert floor[k].median_ape_pct <= derived[k].median_ape_pct
    # the check reads a run the way the fit does: the measured profile's error equals its own fit_error
    h200 = load_profile(H200_STATIC)
    assert floor["latency.run_s"] == h200.fit_error["latency.run_s"]
    assert floor["energy.run_device_j"] == h200.fit_error["energy.run_device_j"]


# Measured when the roofline rule was added (profiles/README.md, "Derived profiles"), on the H200's standard-plan
# run of hf-graph, median APE of run time / device energy: bandwidth rule 15.4 / 24.7 %, roofline rule 5.0 / 8.4 %,
# H100 profile unchanged 18.6 / 9.0 %. Bounds: measured + 1 point. The rule is no general fix: on the host-bound
# engines it is worse than the bandwidth rule (hf-static 11.3 vs 6.1 %, hf 26.4 vs 14.2 % of run time).
def test_roofline_overhead_carries_the_graph_engine_to_the_h200():
    path = PROFILES / "h100-sxm-80gb--llama-2-7b--hf-graph-bf16.yaml"
    src = load_profile(path)
    h100, h200 = catalogue.DEVICES["h100-sxm-80gb"], catalogue.DEVICES["h200"]
    # 8.68 ms per step at batch 1 on the H100, of which 13.48 GB / 3.35 TB/s = 4.02 ms is reading the weights
    assert roofline_overhead_s(src, h100) == pytest.approx(src.latency.decode_step_s.intercept - 13.48 / 3350.0)
    runs = load_run_rows(REPO / "calibrate" / "runs" / "h200-llama-2-7b-hf-graph-standard")
    plain = run_errors(derive_profile(src, transfer_between(h100, h200), str(path)), runs)
    roof = run_errors(derive_profile(src, transfer_between(h100, h200, roofline_overhead_s(src, h100)), str(path)),
                      runs)
    assert roof["latency.run_s"].median_ape_pct < 6.0 < 14.4 < plain["latency.run_s"].median_ape_pct
    assert roof["energy.run_device_j"].median_ape_pct < 9.4 < 23.7 < plain["energy.run_device_j"].median_ape_pct


def test_the_standard_plan_transfer_carries_the_cache_read_by_bandwidth():
    """Both devices ran the whole standard plan with the same caches, both profiles fitted with them: the
    transferred cache read term lands within 2% of the H200's own fit, and the run errors stay near the figures
    measured when the H200 run completed (profiles/README.md: 4.3 / 11.4 % run time, 6.0 % energy median; the
    H100 profile unchanged: 23.6 and 14.9 %)."""
    path = PROFILES / "h100-sxm-80gb--llama-2-7b--hf-graph-standard-bf16.yaml"
    src = load_profile(path)
    h100, h200 = catalogue.DEVICES["h100-sxm-80gb"], catalogue.DEVICES["h200"]
    got = derive_profile(src, transfer_between(h100, h200, roofline_overhead_s(src, h100)), str(path))
    own = load_profile(PROFILES / "h200--llama-2-7b--hf-graph-standard-bf16.yaml")
    assert own.engine.cache_lengths == got.engine.cache_lengths
    c_src, c_own = src.latency.decode_step_s.coef["context"], own.latency.decode_step_s.coef["context"]
    assert got.latency.decode_step_s.coef["context"] == pytest.approx(c_src * 3.35 / 4.8)
    assert got.latency.decode_step_s.coef["context"] == pytest.approx(c_own, rel=0.02)
    run = load_run_rows(REPO / "calibrate" / "runs" / "h200-llama-2-7b-hf-graph-standard-b")
    err, floor, naive = run_errors(got, run), run_errors(own, run), run_errors(src, run)
    assert err["latency.run_s"].n_points == 31 and err["energy.run_device_j"].n_points == 19
    assert err["latency.run_s"].median_ape_pct < 5.0 and err["latency.run_s"].max_ape_pct < 12.5
    assert err["energy.run_device_j"].median_ape_pct < 6.5
    for k in ("latency.run_s", "energy.run_device_j"):
        assert floor[k].median_ape_pct < err[k].median_ape_pct < naive[k].median_ape_pct / 2
        # the check evaluates runs as the simulator does, the fit with its own arrays: both agree, batch 256
        # (decode power at its ceiling, summed step by step) included
        assert floor[k] == own.fit_error[k]


@pytest.mark.parametrize("path", DERIVED, ids=[p.stem for p in DERIVED])
def test_recorded_command_reproduces_the_derived_profile(path, tmp_path, capsys):
    shipped = load_profile(path)
    cmd = shlex.split(shipped.provenance["source"].command)
    assert cmd[:3] == ["dcsim", "fit", "--derive"] and cmd[cmd.index("-o") + 1] == f"profiles/derived/{path.name}"
    argv = [str(REPO / a) if (REPO / a).exists() else a for a in cmd[1:]]
    argv[argv.index("-o") + 1] = str(tmp_path / path.name)
    assert main(argv + ["--no-plot"]) == 0
    again = load_profile(tmp_path / path.name)
    assert again.latency == shipped.latency and again.power == shipped.power
    assert again.power_cap == shipped.power_cap and again.memory == shipped.memory
    assert shipped.fit_error == {} and shipped.name == path.stem
    assert shipped.provenance["source"].source == "derived" and "/work/" not in path.read_text()
    # a check against a measured run draws its figure; a transfer with nothing to check against has none
    assert path.with_suffix(".png").is_file() == ("--check" in cmd)


def test_cli_derive_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "d.yaml"
    assert main(["fit", "--derive", "--from", str(H100_STATIC), "--to", "h200", "--check", str(H200_RUN),
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "source unchanged" in text and "derived" in text
    p = load_profile(out)
    assert p.name == "d" and "Checked against" in p.notes and out.with_suffix(".png").is_file()


def test_cli_bad_input_exit_2_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "d.yaml"
    assert main(["fit", "--derive", "--from", str(H100_STATIC), "--to", "h300", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "field '--to'" in err and "unknown device 'h300'" in err and "h200" in err
    assert main(["fit", "--derive", "--from", str(tmp_path / "none.yaml"), "--to", "h200", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "field '--from'" in err and "none.yaml" in err and "Traceback" not in err
    assert main(["fit", "--derive", "--from", str(H100_STATIC), "-o", str(out)]) == 2
    assert "field '--to'" in capsys.readouterr().err
    assert main(["fit", "--derive", "--from", str(H100_STATIC), "--to", "h200", "--check", str(tmp_path / "no"),
                 "-o", str(out)]) == 2
    assert "field 'check'" in capsys.readouterr().err
    assert main(["fit", "--derive", "--from", str(H100_STATIC), "--to", "h200", "--step-overhead-ms", "roof",
                 "-o", str(out)]) == 2
    assert "field '--step-overhead-ms'" in capsys.readouterr().err
    assert main(["fit", "--derive", "--from", str(H100_STATIC), "--to", "m1-pro", "-o", str(out)]) == 2
    assert "peak_bf16_tflops" in capsys.readouterr().err
    # the ordinary fit keeps its meaning of --from
    assert main(["fit", "--from", "bogus", str(tmp_path), "-o", str(out)]) == 2
    assert "field '--from'" in capsys.readouterr().err
    assert main(["fit", str(H200_RUN), "--to", "h200", "-o", str(out)]) == 2
    assert not list(tmp_path.glob("*"))  # nothing half-written
