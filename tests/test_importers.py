"""Importers on the real published files: row counts, units and the published values read from the files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dcsim.errors import UserError
from dcsim.profiles.importers import mlenergy, wilkins2024


@pytest.fixture
def wilkins(shared_data):
    return shared_data / "wilkins2024-energy-inference"


def test_wilkins_keeps_only_inference_rows(wilkins):
    raw = wilkins2024.read(wilkins)
    # 740 + 1487 rows in the files, of which 19 + 32 are tokenizer / model-load rows
    assert raw["file"].value_counts().to_dict() == {"all-output-stats.csv": 1455, "all-input-stats.csv": 721}
    assert raw["Phase"].str.contains("inference").all()


def test_wilkins_rows_and_published_values(wilkins):
    t, meta = wilkins2024.load(wilkins, "Palmetto Intel+A100", "Llama-2 (7B)")
    assert len(t) == 351 and int(t["warmup"].sum()) == 19  # iteration 0 of each of the 19 shapes
    r = t[t["source"] == "all-input-stats.csv:in=2048"].sort_values("repeat").iloc[0]
    # published row: start-inference-I-0, 7.378 s, GPU 1827.084 J, CPU 58.217 J, 2166 tokens in total
    assert (r["n_in"], r["n_out"], r["batch"]) == (2166 - 32, 32, 1)
    assert r["runtime_s"] == pytest.approx(7.378369569778442)
    assert r["energy_device_j"] == pytest.approx(1827.084)
    assert r["energy_host_j"] == pytest.approx(58.21715226661682)
    assert bool(r["warmup"]) and r["repeat"] == 0
    assert meta["device"] == "a100-pcie-40gb" and meta["engine"]["precision"] == "bf16"
    assert meta["path"].startswith("wilkins2024-energy-inference/")
    out = t[t["source"] == "all-output-stats.csv:out=8"]
    assert set(out["n_in"]) == {38} and set(out["n_out"]) == {8}  # 46 tokens in total - 38 prompt tokens


def test_wilkins_m1_subtracts_the_scripts_sleep(wilkins):
    t, meta = wilkins2024.load(wilkins, "M1-Pro", "Llama-2 (7B)")
    assert len(t) == 158
    r = t[(t["source"] == "all-input-stats.csv:in=8") & (t["repeat"] == 1)].iloc[0]
    assert r["runtime_s"] == pytest.approx(9.500931024551392 - 2.0)  # published 9.5009 s includes sleep(2)
    assert meta["engine"]["precision"] == "fp16" and meta["device"] == "m1-pro"


def test_wilkins_negative_cpu_energy_becomes_missing(wilkins):
    t, meta = wilkins2024.load(wilkins, "Palmetto Intel+V100", "Mistral (7B)")
    assert int(t["energy_host_j"].isna().sum()) == 10
    assert (t["energy_host_j"].dropna() >= 0).all()
    assert any("negative CPU energy" in n for n in meta["notes"])


def test_wilkins_bad_choices_name_the_field(wilkins, tmp_path):
    with pytest.raises(UserError) as e:
        wilkins2024.load(wilkins, "Cray-1", "Llama-2 (7B)")
    assert e.value.field == "system"
    with pytest.raises(UserError, match="no rows"):
        wilkins2024.load(wilkins, "M1-Pro", "Falcon (7B)")
    with pytest.raises(UserError, match="file not found"):
        wilkins2024.load(tmp_path, "M1-Pro", "Llama-2 (7B)")


def test_mlenergy_v2_decode_rows(shared_data):
    d = shared_data / "mlenergy-leaderboard-v2"
    t, meta = mlenergy.load(d, "H100", "Llama-3.1-8B-Instruct")
    assert len(t) == 8 and (t["kind"] == "decode").all()
    j = json.loads((d / "chat/H100_80GB_HBM3/meta-llama/Meta-Llama-3.1-8B-Instruct/bs1024+tp1+pp1.json").read_text())
    r = t.sort_values("batch").iloc[-1]
    assert r["batch"] == 976  # Avg BS 975.74
    assert r["runtime_s"] == pytest.approx(j["Avg BS (reqs)"] / j["Token tput (tok/s)"])  # 0.448 s per step
    assert r["avg_power_w"] == pytest.approx(53.931404195254245 / 482.116 * 2177.6859839035324)  # 243.6 W
    assert r["tpot_s"] == pytest.approx(0.27897055166793744)
    assert r["energy_device_j"] == pytest.approx(r["avg_power_w"] * r["runtime_s"])
    assert meta["gpus_per_replica"] == 1 and meta["device"] == "h100-sxm-80gb"
    t, meta = mlenergy.load(d, "A100", "Llama-3.1-70B-Instruct")
    assert len(t) == 8 and meta["gpus_per_replica"] == 8


def test_mlenergy_v3_decode_rows(shared_data):
    d = shared_data / "mlenergy-leaderboard-v3"
    t, meta = mlenergy.load(d, "H100", "Llama-3.1-8B-Instruct")
    assert len(t) == 11
    first = t.sort_values("batch").iloc[0]
    assert first["avg_power_w"] == pytest.approx(486.4380535594687, rel=1e-12)  # avg_power_watts
    assert first["tpot_s"] == pytest.approx(7.316112e-3, rel=1e-6)  # median ITL, in seconds
    assert first["runtime_s"] == pytest.approx(7.978202 / 1069.568851, rel=1e-6)
    assert len(mlenergy.load(d, "B200", "Llama-3.1-8B-Instruct")[0]) == 9
    t, meta = mlenergy.load(d, "H100", "Llama-3.1-70B-Instruct")
    assert len(t) == 12 and meta["gpus_per_replica"] == 4 and meta["engine"]["precision"] == "bf16"
    assert np.all(t["n_in"] == 0)  # the leaderboard gives no prompt lengths


def test_mlenergy_ambiguous_or_missing_choices(shared_data):
    d = shared_data / "mlenergy-leaderboard-v3"
    with pytest.raises(UserError) as e:
        mlenergy.load(d, "H100", "Qwen3-30B-A3B-Instruct-2507")  # run on 1 and 2 GPUs
    assert e.value.field == "gpus"
    assert len(mlenergy.load(d, "H100", "Qwen3-30B-A3B-Instruct-2507", gpus=2)[0]) == 14
    with pytest.raises(UserError, match="not found"):
        mlenergy.load(d, "H100", "Llama-9-1T")
    with pytest.raises(UserError) as e:
        mlenergy.load(d, "TPU", "Llama-3.1-8B-Instruct")
    assert e.value.field == "gpu"
    with pytest.raises(UserError, match="not an ML.ENERGY"):
        mlenergy.load(shared_data / "gsm8k", "H100", "x")
