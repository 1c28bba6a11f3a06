"""No command loses a user's files (dcsim/outputs.py): per command, a folder (or file) holding something of the
user's survives, with and without --force, and `--out .` leaves the working folder as it was. Plus: a failed write
leaves the old output whole and no temporary sibling, and two sweeps into one folder are refused by its lock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "calibrate" / "runs" / "h100-llama-2-7b-hf"
USER = b"my own notes\n"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative path -> bytes), hidden ones included."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_bytes(USER)
    (path / "summary.json").write_text('{"mine": true}\n')  # a name dcsim also writes
    (path / "sub").mkdir()
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return path


def refused(args: list[str], capsys, *words: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("dcsim: error: ")
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def scen(tmp_path):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [100, 200, 300], [10, 20, 30], [0, 1, 2])
    return write_scenario(tmp_path, scenario(tr, [{"name": "gpu", "profile": str(prof), "count": 1}]))


def no_siblings(parent: Path) -> None:
    """No temporary folder or file of a write left beside the output."""
    left = [p.name for p in parent.iterdir() if p.name.startswith(".") and (".partial" in p.name
                                                                             or p.name.endswith((".old", ".tmp")))]
    assert not left, left


# ---- run ---------------------------------------------------------------------------------------
def test_run_keeps_a_users_folder(scen, tmp_path, capsys):
    d = user_folder(tmp_path / "res")
    before = snapshot(d)
    refused(["run", str(scen), "--out", str(d), "--no-plots"], capsys, "--out", "dcsim did not write", "--force")
    assert snapshot(d) == before
    assert main(["run", str(scen), "--out", str(d), "--no-plots", "--force"]) == 0
    after = snapshot(d)
    assert after["notes.txt"] == USER and after["sub/data.bin"] == b"\x00\x01"
    assert json.loads(after["summary.json"])["requests_completed"] == 3  # forced: its own name replaced
    marker = json.loads(after[".dcsim-output.json"])
    assert marker["command"] == "run" and "notes.txt" not in marker["files"]
    # now a folder of ours: a second run, with plots this time, needs no --force and still keeps the user's files
    assert main(["run", str(scen), "--out", str(d)]) == 0
    again = snapshot(d)
    assert again["notes.txt"] == USER and "power.png" in again
    # and one without plots removes only its own old plots
    assert main(["run", str(scen), "--out", str(d), "--no-plots"]) == 0
    last = snapshot(d)
    assert "power.png" not in last and last["notes.txt"] == USER and last["sub/data.bin"] == b"\x00\x01"
    no_siblings(tmp_path)


def test_run_out_dot_leaves_the_working_folder_as_it_was(scen, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_bytes(USER)
    before = snapshot(tmp_path)
    refused(["run", str(scen), "--out", ".", "--no-plots"], capsys, "dcsim did not write")
    assert snapshot(tmp_path) == before
    assert main(["run", str(scen), "--out", ".", "--no-plots", "--force"]) == 0  # writes beside, deletes nothing
    after = snapshot(tmp_path)
    assert all(after[k] == v for k, v in before.items()) and "requests.parquet" in after
    no_siblings(tmp_path.parent)


def test_a_run_that_fails_while_writing_leaves_the_old_output_whole(scen, tmp_path, monkeypatch, capsys):
    out = tmp_path / "res"
    assert main(["run", str(scen), "--out", str(out), "--no-plots"]) == 0
    before = snapshot(out)
    import dcsim.plots

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dcsim.plots, "run_plots", broken)
    with pytest.raises(RuntimeError):
        main(["run", str(scen), "--out", str(out), "--set", "fleet.gpu.count=2"])
    assert snapshot(out) == before
    no_siblings(tmp_path)
    with pytest.raises(RuntimeError):
        main(["run", str(scen), "--out", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()
    no_siblings(tmp_path)


def test_run_out_naming_a_file_or_an_unwritable_place(scen, tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_bytes(USER)
    refused(["run", str(scen), "--out", str(f)], capsys, "file.txt", "is a file, not a folder")
    assert f.read_bytes() == USER
    refused(["run", str(scen), "--out", str(f / "res")], capsys, "file.txt", "is a file")
    import os

    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # as root every folder is writable by its mode bits; /proc takes no new folders from anyone
        place = locked if os.access(locked, os.W_OK) is False else Path("/proc")
        if not place.is_dir():
            pytest.skip("no unwritable folder to try")
        refused(["run", str(scen), "--out", str(place / "res")], capsys, str(place), "cannot write")
        assert not (place / "res").exists()
    finally:
        locked.chmod(0o700)


# ---- sweep -------------------------------------------------------------------------------------
def write_sweep(d: Path, seeds: list[int]) -> Path:
    p = d / "sweep.yaml"
    p.write_text(yaml.safe_dump({"base": "scenario.yaml", "grid": {"fleet.gpu.count": [1, 2]}, "seeds": seeds}))
    return p


def test_sweep_keeps_a_users_folder(scen, tmp_path, capsys):
    sw = write_sweep(tmp_path, [1])
    d = user_folder(tmp_path / "out")
    before = snapshot(d)
    refused(["sweep", str(sw), "--out", str(d), "--workers", "0", "--no-progress"], capsys, "dcsim did not write")
    assert snapshot(d) == before
    assert main(["sweep", str(sw), "--out", str(d), "--workers", "0", "--no-progress", "--force"]) == 0
    after = snapshot(d)
    assert all(after[k] == v for k, v in before.items())  # a sweep writes no name of the user's
    assert "results.csv" in after and json.loads(after[".dcsim-output.json"])["command"] == "sweep"
    # a run into the sweep's folder is refused: it is dcsim's, but another command's
    refused(["run", str(scen), "--out", str(d)], capsys, "written by `dcsim sweep`")


def test_sweep_out_dot_leaves_the_working_folder_as_it_was(scen, tmp_path, monkeypatch, capsys):
    sw = write_sweep(tmp_path, [1])
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    refused(["sweep", str(sw), "--out", ".", "--workers", "0", "--no-progress"], capsys, "dcsim did not write")
    assert snapshot(tmp_path) == before


def test_a_second_sweep_into_the_same_folder_is_refused_by_its_lock(scen, tmp_path, capsys):
    import numpy as np

    from dcsim.traces.trace import (
        Trace,  # a longer trace, so the first sweep is still running
    )

    rng = np.random.default_rng(1)
    n = 3000
    Trace(rng.integers(10, 400, n), rng.integers(5, 200, n), None, None, {}).to_parquet(tmp_path / "trace.parquet")
    data = yaml.safe_load(scen.read_text())
    data["arrivals"] = {"kind": "poisson", "rate_per_s": 2.0}
    scen.write_text(yaml.safe_dump(data))
    sw = write_sweep(tmp_path, list(range(1, 21)))
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "dcsim.cli", "sweep", str(sw), "--out", str(out),
                              "--workers", "0", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock, deadline = out / ".dcsim-lock", time.time() + 60
        while time.time() < deadline and not (lock.is_file() and lock.read_text()):  # holds its pid once locked
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.02)
        second = subprocess.run([sys.executable, "-m", "dcsim.cli", "sweep", str(sw), "--out", str(out),
                                 "--workers", "0", "--no-progress"], check=False, capture_output=True, text=True,
                                timeout=120)
        assert first.poll() is None, "the first sweep ended before the second started; make it longer"
        assert second.returncode == 2, second.stderr
        assert "another dcsim sweep is writing into this folder" in second.stderr
        assert f"process {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    # the lock died with its process: the same command now resumes
    assert main(["sweep", str(sw), "--out", str(out), "--workers", "0", "--no-progress"]) == 0


# ---- report ------------------------------------------------------------------------------------
def test_report_keeps_a_users_file(scen, tmp_path, monkeypatch, capsys):
    assert main(["run", str(scen), "--out", str(tmp_path / "res"), "--no-plots"]) == 0
    page = tmp_path / "page.html"
    page.write_bytes(b"<!DOCTYPE html><p>my page</p>")
    refused(["report", str(tmp_path / "res"), "-o", str(page)], capsys, "page.html", "dcsim did not write")
    assert page.read_bytes() == b"<!DOCTYPE html><p>my page</p>"
    own = tmp_path / "own.html"
    assert main(["report", str(tmp_path / "res"), "-o", str(own)]) == 0
    assert main(["report", str(tmp_path / "res"), "-o", str(own)]) == 0  # its own report: replaced
    assert main(["report", str(tmp_path / "res"), "-o", str(page), "--force"]) == 0
    assert b'name="generator" content="dcsim' in page.read_bytes()
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    refused(["report", "res", "-o", "."], capsys, "is a folder")
    assert snapshot(tmp_path) == before
    no_siblings(tmp_path)


# ---- fit ---------------------------------------------------------------------------------------
def test_fit_keeps_a_users_files(tmp_path, monkeypatch, capsys):
    prof, png = tmp_path / "p.yaml", tmp_path / "p.png"
    prof.write_text("my: settings\n")
    refused(["fit", str(RUN), "-o", str(prof)], capsys, "p.yaml", "dcsim did not write")
    assert prof.read_text() == "my: settings\n"
    prof.unlink()
    png.write_bytes(b"\x89PNG my drawing")
    refused(["fit", str(RUN), "-o", str(prof)], capsys, "p.png", "dcsim did not write")
    assert png.read_bytes() == b"\x89PNG my drawing" and not prof.exists()
    assert main(["fit", str(RUN), "-o", str(prof), "--no-plot"]) == 0  # no PNG drawn: the user's is left alone
    assert png.read_bytes() == b"\x89PNG my drawing"
    assert main(["fit", str(RUN), "-o", str(prof), "--force"]) == 0
    assert main(["fit", str(RUN), "-o", str(prof)]) == 0  # its own profile and figure: replaced without --force
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    refused(["fit", str(RUN), "-o", "."], capsys, "must end in .yaml")
    assert snapshot(tmp_path) == before
    no_siblings(tmp_path)


# ---- trace -------------------------------------------------------------------------------------
AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:50.99,396,109\n"


def test_trace_keeps_a_users_file(tmp_path, monkeypatch, capsys):
    import pandas as pd

    src = tmp_path / "az.csv"
    src.write_text(AZURE)
    theirs = tmp_path / "t.parquet"
    pd.DataFrame({"x": [1, 2]}).to_parquet(theirs)  # a parquet file of the user's, not a dcsim trace
    before = theirs.read_bytes()
    refused(["trace", "import", "azure", str(src), "-o", str(theirs)], capsys, "t.parquet", "dcsim did not write")
    assert theirs.read_bytes() == before
    ours = tmp_path / "ours.parquet"
    assert main(["trace", "import", "azure", str(src), "-o", str(ours)]) == 0
    assert main(["trace", "import", "azure", str(src), "-o", str(ours)]) == 0  # a dcsim trace: replaced
    assert main(["trace", "import", "azure", str(src), "-o", str(theirs), "--force"]) == 0
    monkeypatch.chdir(tmp_path)
    snap = snapshot(tmp_path)
    refused(["trace", "import", "azure", "az.csv", "-o", "."], capsys, ".parquet")
    (tmp_path / "d.parquet").mkdir()
    snap = snapshot(tmp_path)
    refused(["trace", "import", "azure", "az.csv", "-o", "d.parquet"], capsys, "d.parquet", "is a folder")
    assert snapshot(tmp_path) == snap
    no_siblings(tmp_path)


# ---- validate ----------------------------------------------------------------------------------
def _partial(case: Path, tmp: Path) -> list[str]:
    """A committed replay as its process would have left it had it died after its window (see
    test_validate_recover): OUT.partial with the raw files, and the command that finishes it."""
    import shlex

    meta = json.loads((case / "replay.json").read_text())
    part = tmp / (case.name + ".partial")
    part.mkdir()
    for name in ("workload.csv", "requests.csv", "batches.csv", "power.csv"):
        shutil.copy(case / name, part / name)
    argv = shlex.split(meta["command"])[2:]
    argv[argv.index("--out") + 1] = str(tmp / case.name)
    return [a if not a.startswith(("traces/", "profiles/", "calibrate/")) else str(ROOT / a) for a in argv]


def test_validate_keeps_a_users_folder(tmp_path, capsys):
    case = ROOT / "validation" / "h100g-gsm8k-poisson"
    argv = _partial(case, tmp_path)
    out = user_folder(tmp_path / case.name)
    before = snapshot(out)
    refused(["validate", *argv, "--recover"], capsys, "output folder exists", "--force")
    assert snapshot(out) == before
    assert main(["validate", *argv, "--recover", "--force"]) == 0
    after = snapshot(out)
    assert after["notes.txt"] == USER and after["sub/data.bin"] == b"\x00\x01" and "replay.json" in after
    assert json.loads(after[".dcsim-output.json"])["command"] == "validate"
    no_siblings(tmp_path)


def test_validate_out_dot_leaves_the_working_folder_as_it_was(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_bytes(USER)
    before = snapshot(tmp_path)
    refused(["validate", "--profile", str(ROOT / "profiles" / "h100-sxm-80gb--llama-2-7b--hf-bf16.yaml"),
             "--trace", str(ROOT / "traces" / "gsm8k-test.parquet"), "--device", "cpu", "--model-arch",
             "tiny-llama", "--limit", "3", "--arrivals", "poisson", "--rate", "0.5", "--out", "."], capsys,
            "output folder exists")
    assert snapshot(tmp_path) == before


def test_validate_does_not_clear_a_partial_folder_it_did_not_write(tmp_path, capsys):
    from dcsim.errors import UserError
    from dcsim.outputs import start_staging

    part = user_folder(tmp_path / "x.partial")
    before = snapshot(part)
    with pytest.raises(UserError, match="dcsim did not write it"):
        start_staging(part, "validate")
    assert snapshot(part) == before


# ---- calibrate ---------------------------------------------------------------------------------
def test_calibrate_refuses_a_folder_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    plan = ROOT / "calibrate" / "plans" / "smoke.yaml"
    if not plan.is_file():
        plan = next((ROOT / "calibrate" / "plans").glob("*.yaml"))
    d = user_folder(tmp_path / "runs")
    before = snapshot(d)
    args = ["calibrate", "--device", "cpu", "--model-arch", "tiny-llama", "--latency-only", "--no-progress",
            "--plan", str(plan), "--out"]
    refused([*args, str(d)], capsys, "not a calibration run")
    assert snapshot(d) == before
    (d / "manifest.json").write_text('{"name": "my web app"}')  # a manifest.json of something else
    refused([*args, str(d)], capsys, "not a calibration run")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_bytes(USER)
    before = snapshot(tmp_path)
    refused([*args, "."], capsys, "not a calibration run")
    assert snapshot(tmp_path) == before
