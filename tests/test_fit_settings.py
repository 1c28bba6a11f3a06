"""Measured caps and locked clocks from a user's own sweep (dcsim/profiles/fit_settings.py): a committed H100 run
folder with each run repeated under a 300 W cap and under a 1,200 MHz clock, at known multipliers (prefill time
x1.2 at x0.8 power, decode time x1.1 at x0.9 power under the cap; x1.5 at x0.7 and x1.02 at x0.75 under the
clock), fits to a profile whose power_cap section is those points, its curves unchanged. The H100's clock range
is not in the catalogue, so its clock points are noted, not used; on a device whose range is (the H200) they
become the clock section and the simulator's multipliers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dcsim.cli import main
from dcsim.profiles.fit_settings import setting_points

RUN = Path(__file__).resolve().parents[1] / "calibrate" / "runs" / "h100-llama-2-7b-hf-graph"


def _scaled(rows: pd.DataFrame, column: str, value: float, pf: tuple[float, float], dc: tuple[float, float]):
    """The run rows again under `column` = value: prefill time and power x pf, decode time and power x dc."""
    r = rows.copy()
    ttft, dec_t = r["ttft_s"], r["runtime_s"] - r["ttft_s"]
    e_pf = r["energy_prefill_device_j"]
    r["ttft_s"] = ttft * pf[0]
    r["runtime_s"] = r["ttft_s"] + dec_t * dc[0]
    r["tpot_s"] = r["tpot_s"] * dc[0]
    r["energy_prefill_device_j"] = e_pf * pf[0] * pf[1]
    r["energy_device_j"] = r["energy_prefill_device_j"] + (r["energy_device_j"] - e_pf) * dc[0] * dc[1]
    r[column] = value
    return r


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / RUN.name
    shutil.copytree(RUN, d)
    raw = pd.read_csv(d / "runs.csv")
    if "sm_clock_mhz" not in raw:
        raw["sm_clock_mhz"] = float("nan")
    runs = raw[(raw["phase"] == "run") & (raw["status"] == "ok")]
    capped = _scaled(runs, "power_cap_w", 300.0, (1.2, 0.8), (1.1, 0.9))
    clocked = _scaled(runs, "sm_clock_mhz", 1200.0, (1.5, 0.7), (1.02, 0.75))
    pd.concat([raw, capped, clocked], ignore_index=True).to_csv(d / "runs.csv", index=False)
    return d


def test_points_are_the_known_multipliers(folder):
    raw = pd.read_csv(folder / "runs.csv")
    (cap,) = setting_points(raw, "power_cap_w", 0.5)
    assert cap["cap_w"] == 300.0 and cap["shapes"] >= 3
    assert [cap[k] for k in ("prefill_time_x", "decode_time_x", "prefill_power_x", "decode_power_x")] == \
        pytest.approx([1.2, 1.1, 0.8, 0.9], abs=2e-4)
    (clk,) = setting_points(raw, "sm_clock_mhz", 0.5)
    assert clk["mhz"] == 1200.0
    assert [clk[k] for k in ("prefill_time_x", "decode_time_x", "prefill_power_x", "decode_power_x")] == \
        pytest.approx([1.5, 1.02, 0.7, 0.75], abs=2e-4)
    assert setting_points(raw[raw["power_cap_w"].isna() & raw["sm_clock_mhz"].isna()], "power_cap_w", 0.5) == []


def test_the_fit_writes_them_as_the_profiles_points_and_keeps_its_curves(folder, tmp_path):
    out, plain = tmp_path / "measured.yaml", tmp_path / "plain.yaml"
    assert main(["fit", str(folder), "-o", str(out), "--no-plot"]) == 0
    assert main(["fit", str(RUN), "-o", str(plain), "--no-plot"]) == 0
    got, base = yaml.safe_load(out.read_text()), yaml.safe_load(plain.read_text())
    assert got["latency"] == base["latency"] and got["power"] == base["power"]  # the device's own rows alone
    pc = got["power_cap"]
    assert pc["method"] == "points" and pc["min_w"] == base["power_cap"]["min_w"]  # the catalogue's range kept
    assert pc["points"][0]["cap_w"] == 300.0 and pc["points"][0]["decode_power_x"] == pytest.approx(0.9, abs=2e-4)
    assert got["provenance"]["power_cap"]["source"] == "measured" and "300 W" in got["provenance"]["power_cap"]["note"]
    assert "clock" not in got and any("locked clocks were measured" in n for n in got["not_covered"])
    # the simulator reads the cap's multipliers at the measured cap
    from dcsim.profiles.profile import load_profile

    full, capped = load_profile(out).evaluator(), load_profile(out).evaluator(300.0)
    assert capped.decode_step(1, 100)[0] == pytest.approx(1.1 * full.decode_step(1, 100)[0])
    assert capped.prefill(128, 128.0 ** 2, 1)[1] == pytest.approx(0.8 * full.prefill(128, 128.0 ** 2, 1)[1], rel=1e-3)


def test_clock_points_on_a_device_with_a_known_range():
    from dcsim.profiles import devices as catalogue
    from dcsim.profiles.clock_fit import clock_for
    from dcsim.profiles.fit_settings import with_clock_points
    from dcsim.profiles.profile import clock_scaling

    cm, _, _ = clock_for(catalogue.device("h200"))
    got = with_clock_points(cm, [{"mhz": 1200.0, "prefill_time_x": 1.5, "decode_time_x": 1.02,
                                  "prefill_power_x": 0.7, "decode_power_x": 0.75, "shapes": 4}])
    assert got.method == "points" and (got.min_mhz, got.max_mhz) == (cm.min_mhz, cm.max_mhz)
    s = clock_scaling(got, 1200.0, "prefill")
    assert (s.time_x, s.power_x) == pytest.approx((1.5, 0.7))
    assert with_clock_points(None, [{"mhz": 1200.0}]) is None


def test_fused_and_split_folders_are_not_fitted_together(tmp_path, capsys):
    """The served-loop sweeps of the split engine (h200d) and of the fused one (h200f): same device, model, engine,
    precision and loop, but mixed steps run as two forwards against one, so one fit of both is refused, naming
    the field; each alone fits, the fused one with its overlap."""
    runs = RUN.parent
    split = runs / "h200d-llama-2-7b-paged-paged-served-steps"
    fused = runs / "h200f-llama-2-7b-paged-paged-served-steps"
    assert main(["fit", str(split), str(fused), "-o", str(tmp_path / "both.yaml"), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "mixed_step" in err and "'fused'" in err and "Traceback" not in err
    assert not (tmp_path / "both.yaml").exists()
    assert main(["fit", str(fused), "-o", str(tmp_path / "f.yaml"), "--no-plot"]) == 0
    got = yaml.safe_load((tmp_path / "f.yaml").read_text())
    assert got["engine"]["mixed_step"] == "fused" and got["latency"]["mixed_overlap_s"] > 0
    assert got["engine"]["kv_data"] == "zeros"  # recorded before the engine filled its cache
    # an H200 is the catalogue's: its power-cap and (published) clock models come with the fit, its memory measured
    assert got["clock"]["max_mhz"] == 1980.0 and got["power_cap"]["min_w"] == 200.0
    assert got["device"]["memory_gb"] == 150.8


def test_folders_whose_kv_caches_held_zeros_and_a_models_values_are_not_fitted_together(tmp_path, capsys):
    """h200f's served sweep read a cache of zeros where no step wrote, h200h's one filled with a model's K/V (the same
    plan, engine and loop): reading zeros draws less power, so one fit of both is refused, naming the field."""
    runs = RUN.parent
    zeros = runs / "h200f-llama-2-7b-paged-paged-served-steps"
    model = runs / "h200h-llama-2-7b-paged-paged-served-steps"
    assert main(["fit", str(zeros), str(model), "-o", str(tmp_path / "both.yaml"), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "kv_data" in err and "'zeros'" in err and "Traceback" not in err
    assert not (tmp_path / "both.yaml").exists()
    assert main(["fit", str(model), "-o", str(tmp_path / "m.yaml"), "--no-plot"]) == 0
    got = yaml.safe_load((tmp_path / "m.yaml").read_text())
    assert got["engine"]["kv_data"] == "model" and got["cold_start"]["load_s"] > 0
