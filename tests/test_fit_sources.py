"""`dcsim fit` sources chosen by name from one registry, and several calibration run folders fitted together:
rows conserved, the same data twice fitting as once, refusals of folders that do not belong together."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dcsim.cli import main
from dcsim.commands.fit import SOURCES
from dcsim.profiles.importers import IMPORTERS
from dcsim.profiles.importers.calibrate_runs import load, load_many
from dcsim.profiles.profile import load_profile

RUNS = Path(__file__).resolve().parents[1] / "calibrate" / "runs"
STEPS = RUNS / "h200b-llama-2-7b-paged-paged-mixed-steps"  # a paged engine's mixed-step sweep on an H200


def test_the_help_names_every_registered_source():
    assert sorted(SOURCES) == IMPORTERS.names() == ["mlenergy", "run", "wilkins2024"]
    assert IMPORTERS["run"].many and not IMPORTERS["mlenergy"].many and not IMPORTERS["wilkins2024"].many


def _copy(src: Path, dst: Path, drop_idle: bool = False) -> Path:
    shutil.copytree(src, dst)
    if drop_idle:
        lines = (dst / "runs.csv").read_text().splitlines(keepends=True)
        (dst / "runs.csv").write_text("".join(x for x in lines if ",idle_" not in x))
    return dst


def test_two_folders_make_one_table_and_the_same_data_twice_fits_as_once(tmp_path):
    twin = _copy(STEPS, tmp_path / "twin-steps", drop_idle=True)
    one, meta_one = load(STEPS)
    both, meta = load_many([twin, STEPS])
    n_idle = int(one["kind"].isin(["idle_serving", "idle_deep"]).sum())
    assert n_idle == 2 and len(both) == 2 * len(one) - n_idle
    assert set(both["source"].str.split(":").str[0]) == {"twin-steps", STEPS.name}
    # the twin measured no idle windows: the idle powers are the second folder's
    assert meta["serving_idle_w"] == meta_one["serving_idle_w"] and meta["deep_idle_w"] == meta_one["deep_idle_w"]
    assert meta["command"].startswith(f"dcsim fit {twin.as_posix()} {STEPS.as_posix()}")

    out1, out2 = tmp_path / "one.yaml", tmp_path / "two.yaml"
    assert main(["fit", str(STEPS), "-o", str(out1), "--no-plot"]) == 0
    assert main(["fit", str(twin), str(STEPS), "-o", str(out2), "--no-plot"]) == 0
    a, b = load_profile(out1), load_profile(out2)
    # every step row twice: the relative least squares has the same minimum, so the same curves
    for name in ("prefill_s", "decode_step_s"):
        ca, cb = getattr(a.latency, name), getattr(b.latency, name)
        assert cb.intercept == pytest.approx(ca.intercept, rel=1e-3)
        assert cb.coef.keys() == ca.coef.keys()
        for k, v in ca.coef.items():
            assert cb.coef[k] == pytest.approx(v, rel=1e-3, abs=1e-12), (name, k)
    assert b.fit_error["latency.step_s"].n_points == 2 * a.fit_error["latency.step_s"].n_points
    assert b.fit_error["latency.step_s"].median_ape_pct == pytest.approx(a.fit_error["latency.step_s"].median_ape_pct,
                                                                         abs=0.05)
    assert "twin-steps" in b.provenance["source"].path and STEPS.name in b.provenance["source"].path


@pytest.mark.parametrize("other, field", [
    ("h100-llama-2-7b-hf-graph-standard", "device"),             # an H100, not an H200
    ("h200-llama-3.2-1b-hf-graph-small-model-graph", "model"),   # another model on an H200
    ("h200-llama-2-7b-hf-graph-standard-b", "engine"),           # Llama-2-7B on an H200, another engine
])
def test_folders_that_do_not_belong_together_are_refused(other, field, tmp_path, capsys):
    out = tmp_path / "x.yaml"
    assert main(["fit", str(STEPS), str(RUNS / other), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"field '{field}'" in err and other in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_one_folder_name_twice_and_several_published_folders_are_refused(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    twin = _copy(STEPS, tmp_path / "a" / STEPS.name)
    assert main(["fit", str(STEPS), str(twin), "-o", str(tmp_path / "x.yaml")]) == 2
    assert "two run folders named" in capsys.readouterr().err
    assert main(["fit", "--from", "wilkins2024", str(tmp_path), str(tmp_path), "--system", "M1-Pro", "--model", "m",
                 "-o", str(tmp_path / "x.yaml")]) == 2
    assert "reads one data folder, not 2" in capsys.readouterr().err
    assert main(["fit", str(STEPS), "--gpu", "H100", "-o", str(tmp_path / "x.yaml")]) == 2
    assert "--gpu is for --from mlenergy, not run" in capsys.readouterr().err
    assert main(["fit", "--from", "nope", str(STEPS), "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unknown measurement source 'nope'" in err and "wilkins2024" in err
    assert not (tmp_path / "x.yaml").exists()


def test_served_and_pipelined_step_folders_are_refused_together_and_a_served_fit_says_so(tmp_path, capsys):
    import json

    served = _copy(STEPS, tmp_path / "served-steps")
    man = json.loads((served / "manifest.json").read_text())
    man["plan"]["step_loop"] = "served"  # as a served plan's manifest records it
    (served / "manifest.json").write_text(json.dumps(man))
    assert load(STEPS)[1]["step_loop"] == "pipelined" and load(served)[1]["step_loop"] == "served"
    out = tmp_path / "x.yaml"
    assert main(["fit", str(STEPS), str(served), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "field 'step_loop'" in err and "served" in err and "Traceback" not in err and not out.exists()
    assert main(["fit", str(served), "-o", str(out), "--no-plot"]) == 0
    assert "step_loop: served" in load_profile(out).notes
