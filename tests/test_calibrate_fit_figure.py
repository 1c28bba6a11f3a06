"""Fit figure of a calibration run: one row of panels per sweep line (input, output, batch), off-axis shapes apart,
on a hand-built table and on a run folder committed under calibrate/runs/."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd

from dcsim.profiles.fit import fit_profile, meta_from_dict
from dcsim.profiles.importers.calibrate_runs import load
from dcsim.profiles.plots import fit_figure, sweep_lines

RUNS = Path(__file__).resolve().parents[1] / "calibrate" / "runs"


def _shapes(pts: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame([dict(n_in=n, n_out=m, batch=b, repeat=r) for n, m, b in pts for r in range(2)])


def test_sweep_lines_split_a_calibration_plan():
    ins = [(n, 32, 1) for n in (8, 32, 256, 2048)]
    outs = [(32, m, 1) for m in (8, 32, 128, 1024)]   # (32, 32, 1) is on both lines
    batches = [(256, 64, b) for b in (1, 4, 16, 64)]
    off = [(512, 128, 32), (2048, 32, 4)]
    lines, rest = sweep_lines(_shapes(ins + outs + batches + off))
    got = {x: (fixed, sorted(set(zip(d["n_in"], d["n_out"], d["batch"])))) for x, fixed, d in lines}
    assert got["n_in"] == ({"n_out": 32.0, "batch": 1.0}, sorted(ins))
    assert got["n_out"] == ({"n_in": 32.0, "batch": 1.0}, sorted(set(outs)))
    assert got["batch"] == ({"n_in": 256.0, "n_out": 64.0}, sorted(batches))
    assert sorted(set(zip(rest["n_in"], rest["n_out"], rest["batch"]))) == sorted(off)
    assert len(rest) == 4  # both repeats of the two off-axis shapes


def test_figure_of_a_run_folder_has_a_row_per_sweep_and_one_for_off_axis(tmp_path):
    table, meta = load(RUNS / "h100-llama-2-7b-hf")   # three sweeps + three off-axis shapes
    res = fit_profile(table, meta_from_dict(meta))
    img = mpimg.imread(fit_figure(res.profile, res.rows, tmp_path / "f.png"))
    assert img.shape[0] == round((3.6 * 4 + 0.6) * 100)  # 4 rows of panels at 100 dpi
    table, meta = load(RUNS / "h200-llama-2-7b-hf-static")  # no off-axis shape
    res = fit_profile(table, meta_from_dict(meta))
    img = mpimg.imread(fit_figure(res.profile, res.rows, tmp_path / "g.png"))
    assert img.shape[0] == round((3.6 * 3 + 0.6) * 100)
