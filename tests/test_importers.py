"""Importers on the real published files: on the samples in tests/data (every row checked against the sample file,
read with the standard library), and on the full data sets (row counts and published values)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dcsim.cli import main
from dcsim.errors import UserError
from dcsim.profiles.importers import mlenergy, wilkins2024
from dcsim.profiles.profile import load_profile


@pytest.fixture
def wilkins(shared_data):
    return shared_data / "wilkins2024-energy-inference"


@pytest.fixture
def wilkins_sample(sample_data):
    return sample_data / "wilkins2024-energy-inference"


def records(path: Path) -> list[dict]:
    """A CSV's records by the standard library's reader (quoted prompts span several lines)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def expected_wilkins_rows(folder: Path, system: str, model: str) -> list[tuple]:
    """The importer's rows worked out from the CSV records: the input sweep's n_out is its output token limit and
    n_in the rest of the total; the output sweep's n_in is given and n_out the rest; M1-Pro loses the 2 s sleep."""
    offset = 2.0 if system == "M1-Pro" else 0.0
    out = []
    for name in wilkins2024.FILES:
        for r in records(folder / name):
            if "inference" not in r["Phase"] or (r["System"], r["Model"]) != (system, model):
                continue
            total, given_in = int(r["Total Number of Tokens"]), int(r["Number of Input Tokens"])
            if name == "all-input-stats.csv":
                limit = int(float(r["Output Token Limit"] or 32))
                n_in, n_out, label = total - limit, limit, f"in={given_in}"
            else:
                n_in, n_out, label = given_in, total - given_in, f"out={int(float(r['Number of Output Tokens']))}"
            cpu = float(r["CPU Energy (J)"])
            out.append((f"{name}:{label}", int(r["Iteration"]), max(n_in, 1), max(n_out, 1),
                        float(r["Runtime (s)"]) - offset, float(r["GPU Energy (J)"]), cpu if cpu >= 0 else None))
    return sorted(out, key=lambda x: (x[0], x[1], x[4]))


SAMPLE_PAIRS = [(s, m) for s in ("M1-Pro", "Palmetto Intel+V100") for m in ("Llama-2 (7B)", "Mistral (7B)")]


def test_wilkins_sample_keeps_only_inference_rows(wilkins_sample):
    raw = wilkins2024.read(wilkins_sample)
    kept = {n: sum("inference" in r["Phase"] for r in records(wilkins_sample / n)) for n in wilkins2024.FILES}
    startup = sum("inference" not in r["Phase"] for n in wilkins2024.FILES for r in records(wilkins_sample / n))
    assert startup > 0 and min(kept.values()) > 0  # the sample holds tokenizer / model-load rows to drop
    assert raw["file"].value_counts().to_dict() == kept
    assert raw["Phase"].str.contains("inference").all()


@pytest.mark.parametrize("system, model", SAMPLE_PAIRS)
def test_wilkins_sample_rows_are_the_files_records(wilkins_sample, system, model):
    t, meta = wilkins2024.load(wilkins_sample, system, model)
    want = expected_wilkins_rows(wilkins_sample, system, model)
    got = sorted(((r.source, int(r.repeat), int(r.n_in), int(r.n_out), r.runtime_s, r.energy_device_j,
                   None if np.isnan(r.energy_host_j) else r.energy_host_j) for r in t.itertuples()),
                 key=lambda x: (x[0], x[1], x[4]))
    assert len(got) == len(want) > 10
    for g, w in zip(got, want):
        assert g[:4] == w[:4]
        assert g[4:6] == pytest.approx(w[4:6], rel=1e-12)
        assert (g[6] is None) == (w[6] is None) and (g[6] is None or g[6] == pytest.approx(w[6], rel=1e-12))
    assert (t["batch"] == 1).all() and (t["kind"] == "run").all()
    assert t["warmup"].tolist() == (t["repeat"] == 0).tolist()  # iteration 0 of each shape is the warm-up
    assert meta["device"] == wilkins2024.SYSTEMS[system][0] and meta["model"] == wilkins2024.MODELS[model]
    negative = sum(w[6] is None for w in want)
    assert any(f"{negative} rows with negative CPU energy" in n for n in meta["notes"]) == (negative > 0)


def test_wilkins_sample_has_the_cases_the_rules_are_for(wilkins_sample):
    """The sample holds M1-Pro rows (the 2 s sleep) and negative Palmetto CPU energies (missing), so the row test
    above checks both rules."""
    rows = {p: expected_wilkins_rows(wilkins_sample, *p) for p in SAMPLE_PAIRS}
    assert any(w[6] is None for w in rows[("Palmetto Intel+V100", "Mistral (7B)")])
    t, _ = wilkins2024.load(wilkins_sample, "M1-Pro", "Llama-2 (7B)")
    r = t[(t["source"] == "all-input-stats.csv:in=8") & (t["repeat"] == 1)].iloc[0]
    assert r["runtime_s"] == pytest.approx(9.500931024551392 - 2.0)  # published 9.5009 s includes sleep(2)


def test_wilkins_sample_fits_with_the_cli(wilkins_sample, tmp_path):
    out = tmp_path / "m1.yaml"
    assert main(["fit", "--from", "wilkins2024", str(wilkins_sample), "--system", "M1-Pro", "--model",
                 "Llama-2 (7B)", "-o", str(out), "--no-plot"]) == 0
    p = load_profile(out)
    assert p.provenance["source"].command.startswith(
        "dcsim fit --from wilkins2024 DATA/wilkins2024-energy-inference --system 'M1-Pro' --model 'Llama-2 (7B)'")
    assert p.engine.precision == "fp16" and p.gpus_per_replica == 1
    shapes = {w[0] for w in expected_wilkins_rows(wilkins_sample, "M1-Pro", "Llama-2 (7B)")}
    # the fit errors are taken over shape means: one point per measured shape of the sample
    assert p.fit_error["latency.run_s"].n_points == p.fit_error["energy.run_device_j"].n_points == len(shapes)


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


def test_wilkins_bad_choices_name_the_field(wilkins_sample, tmp_path):
    with pytest.raises(UserError) as e:
        wilkins2024.load(wilkins_sample, "Cray-1", "Llama-2 (7B)")
    assert e.value.field == "system"
    with pytest.raises(UserError, match="no rows"):
        wilkins2024.load(wilkins_sample, "M1-Pro", "Falcon (7B)")
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


def test_mlenergy_ambiguous_choice_on_the_full_v3(shared_data):
    d = shared_data / "mlenergy-leaderboard-v3"
    with pytest.raises(UserError) as e:
        mlenergy.load(d, "H100", "Qwen3-30B-A3B-Instruct-2507")  # run on 1 and 2 GPUs
    assert e.value.field == "gpus"
    assert len(mlenergy.load(d, "H100", "Qwen3-30B-A3B-Instruct-2507", gpus=2)[0]) == 14


# ---- the ML.ENERGY samples: whole files of the leaderboards, every row checked against its file -------------
V3_GEMMA = "models/google__gemma-3-27b-it__lm-arena-chat.json"


def test_mlenergy_v2_sample_decode_rows(sample_data):
    d = sample_data / "mlenergy-leaderboard-v2"
    for model, gpus in (("Llama-3.1-8B-Instruct", 1), ("Llama-3.1-70B-Instruct", 4)):
        files = sorted((d / "chat/H100_80GB_HBM3/meta-llama" / f"Meta-{model}").glob("bs*.json"))
        js = sorted((json.loads(f.read_text()) for f in files), key=lambda j: j["Avg BS (reqs)"])
        t, meta = mlenergy.load(d, "H100", model)
        assert len(t) == len(js) >= 2 and (t["kind"] == "decode").all() and (t["n_in"] == 0).all()
        for r, j in zip(t.sort_values("batch").itertuples(), js):
            assert r.batch == max(round(j["Avg BS (reqs)"]), 1) and r.n_out == round(j["Avg Output Tokens"])
            assert r.runtime_s == pytest.approx(j["Avg BS (reqs)"] / j["Token tput (tok/s)"])
            j_per_token = j["Energy/req (J)"] / j["Avg Output Tokens"]
            assert r.avg_power_w == pytest.approx(j_per_token * j["Token tput (tok/s)"])
            assert r.tpot_s == pytest.approx(j["Avg TPOT (s)"])
            assert r.energy_device_j == pytest.approx(r.avg_power_w * r.runtime_s)
            assert j["TP"] * j["PP"] == gpus
        assert meta["gpus_per_replica"] == gpus and meta["device"] == "h100-sxm-80gb"
        assert meta["path"].endswith(f"({len(js)} files)")


def test_mlenergy_v3_sample_decode_rows(sample_data):
    d = sample_data / "mlenergy-leaderboard-v3"
    j = json.loads((d / V3_GEMMA).read_text())
    for gpu, gpus in (("B200", 1), ("H100", 1), ("H100", 2)):
        want = {i for i, c in enumerate(j["configurations"]) if (c["gpu_model"], c["num_gpus"]) == (gpu, gpus)}
        t, meta = mlenergy.load(d, gpu, "gemma-3-27b-it", gpus=gpus)
        got = {int(s.rsplit("[", 1)[1].rstrip("]")) for s in t["source"]}
        assert got == want and len(t) == len(want) >= 2
        for r in t.itertuples():
            c = j["configurations"][int(r.source.rsplit("[", 1)[1].rstrip("]"))]
            assert r.avg_power_w == pytest.approx(c["avg_power_watts"], rel=1e-12)
            assert r.tpot_s == pytest.approx(c["median_itl_ms"] / 1e3, rel=1e-12)  # median ITL, in seconds
            assert r.runtime_s == pytest.approx(c["avg_batch_size"] / c["output_throughput_tokens_per_sec"])
            assert r.energy_device_j == pytest.approx(c["energy_per_token_joules"] * c["avg_batch_size"])
            assert r.batch == max(round(c["avg_batch_size"]), 1) and r.n_out == round(c["avg_output_len"])
        assert (t["n_in"] == 0).all()  # the leaderboard gives no prompt lengths
        assert meta["gpus_per_replica"] == gpus and meta["engine"]["precision"] == "bf16"  # weight_precision
        assert meta["path"].endswith(f"num_gpus {gpus}: {len(want)})")


def test_mlenergy_ambiguous_or_missing_choices(sample_data):
    d = sample_data / "mlenergy-leaderboard-v3"
    j = json.loads((d / V3_GEMMA).read_text())
    with pytest.raises(UserError) as e:
        mlenergy.load(d, "H100", "gemma-3-27b-it")  # run on 1 and 2 GPUs
    assert e.value.field == "gpus"
    two = sum((c["gpu_model"], c["num_gpus"]) == ("H100", 2) for c in j["configurations"])
    assert len(mlenergy.load(d, "H100", "gemma-3-27b-it", gpus=2)[0]) == two
    with pytest.raises(UserError) as e:
        mlenergy.load(d, "H100", "gemma-3-27b-it", gpus=8)
    assert e.value.field == "gpus"
    with pytest.raises(UserError, match="not found"):
        mlenergy.load(d, "H100", "Llama-9-1T")
    with pytest.raises(UserError) as e:
        mlenergy.load(d, "TPU", "gemma-3-27b-it")
    assert e.value.field == "gpu"
    with pytest.raises(UserError) as e:
        mlenergy.load(d, "H100", "gemma-3-27b-it", task="gpqa")  # the sample has no gpqa file
    assert e.value.field == "task"
    with pytest.raises(UserError, match="not an ML.ENERGY"):
        mlenergy.load(sample_data / "gsm8k", "H100", "x")
