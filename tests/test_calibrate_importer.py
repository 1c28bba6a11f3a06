"""The calibrate_runs importer on the raw runs committed under calibrate/runs/ (measured on the project's
H100 and H200)."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from dcsim.errors import UserError
from dcsim.profiles.importers.calibrate_runs import MIN_ENERGY_S, load

RUNS = Path(__file__).resolve().parents[1] / "calibrate" / "runs"
FOLDERS = sorted(p for p in RUNS.iterdir() if (p / "manifest.json").exists())


def test_committed_runs_are_there():
    assert {p.name for p in FOLDERS} >= {"h100-llama-2-7b-hf", "h100-llama-2-7b-hf-static", "h200-llama-2-7b-hf",
                                         "h200-llama-2-7b-hf-static"}


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_every_ok_row_becomes_one_table_row(folder):
    raw = list(csv.DictReader(open(folder / "runs.csv")))
    table, meta = load(folder)
    ok = [r for r in raw if r["status"] == "ok" and r["power_cap_w"] == ""]
    loads = [r for r in ok if r["phase"] == "load"]  # the model's loads: the profile's cold start, not table rows
    assert len(table) == len(ok) - len(loads)
    assert (meta["cold_start"] is not None) == bool(loads)
    if loads:
        assert meta["cold_start"]["n"] == len(loads)
    assert int(table["warmup"].sum()) == sum(r["phase"] == "warmup" for r in ok)
    runs = table[table["kind"] == "run"]
    assert (runs["batch"] >= 1).all() and (runs["n_out"] >= 1).all()
    # energy kept exactly where the run is long enough, dropped where the counter is too coarse
    long = runs["runtime_s"] >= MIN_ENERGY_S
    assert runs.loc[~long, "energy_device_j"].isna().all()
    assert runs.loc[long, "energy_device_j"].notna().all()
    assert meta["source_kind"] == "measured" and meta["path"].endswith(folder.name)


def test_hand_checked_rows_of_the_h100_eager_run():
    table, meta = load(RUNS / "h100-llama-2-7b-hf")
    r = table[(table["source"] == "h100-llama-2-7b-hf:i32-o1024-b1") & (table["repeat"] == 0)].iloc[0]
    # printed by the device run: "i32-o1024-b1-r0: 82.721 s, ttft 40.1 ms, 12214.1 J, 148 W"
    assert r["runtime_s"] == pytest.approx(82.721, abs=1e-3)
    assert r["ttft_s"] == pytest.approx(0.0401, abs=1e-4)
    assert r["energy_device_j"] == pytest.approx(12214.1, abs=0.1)
    assert r["avg_power_w"] == pytest.approx(12214.1 / 82.721, rel=1e-4)
    assert r["tpot_s"] == pytest.approx((82.721 - 0.0401) / 1023, rel=1e-3)
    # idle: the last third of each window (printed: 124.5 W serving, 74.7 W deep)
    assert meta["serving_idle_w"]["value"] == pytest.approx(124.49, abs=0.01)
    assert meta["deep_idle_w"]["value"] == pytest.approx(74.66, abs=0.01)
    assert meta["device_key"] == "h100-sxm-80gb" and meta["model"] == "llama-2-7b"
    assert meta["device"]["memory_gb"] == 80.0  # the datasheet's, as the H100 profiles were fitted
    assert len(meta["notes"]) >= 3 and "2 session(s)" in meta["notes"][-1]


def test_counter_and_power_timeline_agree_on_long_runs():
    """Two independent meters in the raw files: the NVML energy counter (via Zeus) and the integral of the
    20 Hz power timeline. On runs over 2 s they agree within a few percent."""
    ratios = []
    for f in FOLDERS:
        for r in csv.DictReader(open(f / "runs.csv")):
            if r["phase"] == "run" and r["status"] == "ok" and float(r["runtime_s"]) > 2:
                ratios.append(float(r["energy_timeline_j"]) / float(r["energy_device_j"]))
    assert len(ratios) > 50
    assert np.median(ratios) == pytest.approx(1.0, abs=0.01)
    assert np.percentile(ratios, 10) > 0.9 and np.percentile(ratios, 90) < 1.1


def test_h200_metadata_describes_the_device_from_the_manifest():
    """An H200 is the catalogue's (its power-cap and clock models come with it), with the memory NVML measured:
    143,771 MiB = 150.8 GB, not the datasheet's 141."""
    table, meta = load(RUNS / "h200-llama-2-7b-hf-static")
    dev = meta["device"]
    assert meta["device_key"] == "h200" and dev["name"] == "NVIDIA H200 (SXM, 141 GB)" and dev["tdp_w"] == 700.0
    assert dev["memory_gb"] == 150.8
    assert {"idle_serving", "idle_deep"} <= set(table["kind"])
    assert all(math.isfinite(meta[k]["value"]) for k in ("serving_idle_w", "deep_idle_w"))


def test_not_a_run_folder(tmp_path):
    with pytest.raises(UserError) as e:
        load(tmp_path)
    assert "runs.csv and manifest.json" in e.value.message


def test_the_temperature_note_reads_only_the_measured_runs(tmp_path):
    """temperature.csv samples inside a measured run count, the idle windows and warm-ups between them do not."""
    d = tmp_path / "run"
    shutil.copytree(RUNS / "h100-llama-2-7b-hf-graph-busy-power-cool-2080", d)
    raw = list(csv.DictReader(open(d / "runs.csv")))
    runs = [(float(r["t_start"]), float(r["t_end"])) for r in raw if r["phase"] == "run" and r["status"] == "ok"]
    t0, t1 = min(a for a, _ in runs) - 60, max(b for _, b in runs) + 60
    rows = ["t,device,temp_c,label"]
    for i in range(int(t1 - t0)):
        t = t0 + i
        inside = any(a - 0.5 <= t <= b + 0.5 for a, b in runs)
        rows.append(f"{t:.3f},gpu0,{(50 + i % 3) if inside else 90},")  # 50, 51, 52 inside; 90 between runs
    (d / "temperature.csv").write_text("\n".join(rows) + "\n")
    note = next(n for n in load(d)[1]["notes"] if n.startswith("Device temperature"))
    assert "median 51 C," in note and "range 50-52 C." in note
    (d / "temperature.csv").write_text("t,device\n1,gpu0\n")
    with pytest.raises(UserError) as e:
        load(d)
    assert e.value.file.endswith("temperature.csv") and "unreadable temperature timeline" in e.value.message


def test_idle_from_another_run_on_the_same_device(tmp_path, capsys):
    """A run without idle windows takes them from another run of the same device model, by the statistic the fit
    takes from a run's own windows; another device, or a run with its own windows, is refused (exit 2)."""
    from dcsim.cli import main
    from dcsim.profiles.profile import load_profile

    small, h200 = RUNS / "h200-llama-3.2-1b-hf-graph-small-model-graph", RUNS / "h200-llama-2-7b-hf-graph-standard-b"
    out = tmp_path / "p.yaml"
    assert main(["fit", str(small), "--idle-from", str(h200), "-o", str(out), "--no-plot"]) == 0
    got = load_profile(out)
    own = load_profile(RUNS.parents[1] / "profiles" / "h200--llama-2-7b--hf-graph-standard-bf16.yaml")
    assert (got.power.serving_idle_w, got.power.deep_idle_w) == (own.power.serving_idle_w, own.power.deep_idle_w)
    assert got.provenance["power.serving_idle_w"].path.endswith(h200.name)
    assert "--idle-from" in got.provenance["source"].command
    # its prefills (18 ms of 0.2-6 s runs) do not weigh in the run energies: the prefill power rests on its floor,
    # the serving idle (a busy GPU draws no less; unfloored it fitted 0 W), and the profile says so
    assert got.power.prefill_w.lo == got.power.decode_w.lo == got.power.serving_idle_w
    evaluator = got.evaluator()
    assert evaluator.prefill(32, 32 * 32, 1)[1] == pytest.approx(got.power.serving_idle_w)
    assert any(g.startswith("prefill power: not identifiable") for g in got.not_covered)
    capsys.readouterr()
    assert main(["fit", str(small), "--idle-from", str(RUNS / "h100-llama-2-7b-hf-graph-standard"),
                 "-o", str(tmp_path / "q.yaml")]) == 2
    err = capsys.readouterr().err
    assert "field '--idle-from'" in err and "not on this run's 'NVIDIA H200 (SXM, 141 GB)'" in err
    assert main(["fit", str(h200), "--idle-from", str(small), "-o", str(tmp_path / "q.yaml")]) == 2
    assert "measured its own idle windows" in capsys.readouterr().err and not (tmp_path / "q.yaml").exists()
