"""`dcsim calibrate` end to end on the CPU with a tiny random-weight Llama: forced output lengths, timing
columns, a stand-in meter's energy bookkeeping, and resume after a real subprocess is killed mid-sweep.

Needs torch and transformers (pip install torch==2.13.0 transformers); skipped without them."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
pytest.importorskip("transformers", reason="transformers not installed (pip install transformers)")

from dcsim.calibrate.backends.hf import HFBackend
from dcsim.calibrate.meters import Meter, Reading
from dcsim.calibrate.plan import expand, load_plan
from dcsim.calibrate.run import Settings, calibrate
from dcsim.calibrate.schedule import Schedule
from dcsim.commands.calibrate import main

REPO = Path(__file__).resolve().parents[1]
PLAN = """name: test
seed: 3
sweeps:
  - {name: input, n_in: [8, 24], n_out: [3]}
  - {name: batch, n_in: [8], n_out: [5], batch: [1, 3]}
repeats: {min: 3, max: 3}
warmup: {runs: 1, n_in: 8, n_out: 2, batch: 1}
idle: {deep_s: IDLE, serving_s: IDLE}
"""


def _plan(tmp_path: Path, idle: float = 0.0, cooldown_s: float = 0.0) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_text(PLAN.replace("IDLE", str(idle)) + (f"cooldown_s: {cooldown_s}\n" if cooldown_s else ""))
    return p


def _rows(d: Path) -> list[dict]:
    with open(d / "runs.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_model_latency_only_end_to_end(tmp_path):
    out = tmp_path / "run"
    s = Settings(out=out, plan_path=_plan(tmp_path), device="cpu", identity={"backend": "hf", "arch": "tiny-llama"},
                 latency_only=True, progress=False)
    res = calibrate(s, HFBackend("cpu", arch="tiny-llama", dtype="fp32"))
    assert res == {"status": "complete", "runs": 12, "left": 0}  # 4 points x 3 repeats (+1 warm-up not counted)
    rows = _rows(out)
    assert [r["phase"] for r in rows].count("warmup") == 1 and len(rows) == 13
    for r in rows:
        n_out = int(r["n_out"])
        assert int(r["gen_tokens"]) == n_out  # EOS cannot end a sequence early
        rt, ttft, tpot = float(r["runtime_s"]), float(r["ttft_s"]), float(r["tpot_s"])
        assert 0 < ttft < rt
        assert tpot == pytest.approx((rt - ttft) / (n_out - 1), rel=1e-4)
        assert r["energy_device_j"] == "" and r["meter"] == "none"
    man = json.loads((out / "manifest.json").read_text())
    b = man["sessions"][0]["backend"]
    assert b["model_config"]["hidden_size"] == 64 and b["weights"].startswith("random")
    assert man["sessions"][0]["status"] == "complete" and "idle_deep" not in {r["phase"] for r in rows}

    from dcsim.profiles.importers.calibrate_runs import load

    table, meta = load(out)
    assert len(table) == 13 and table["warmup"].sum() == 1
    assert sorted(table.loc[~table["warmup"], "source"].unique()) == sorted(
        f"run:{p.id}" for p in expand(load_plan(out / "plan.yaml")))
    assert table["energy_device_j"].isna().all()


def test_per_prompt_warm_ups_precede_the_first_run_of_each_prompt_length_and_batch(tmp_path):
    """`warmup.per_prompt`: one unmeasured 2-token run of each new (prompt length, batch size), right before its
    first measured run; (8, 1) is already warm from the session's warm-up, so only (24, 1) and (8, 3) get one."""
    plan = _plan(tmp_path)
    plan.write_text(plan.read_text().replace("batch: 1}\n", "batch: 1, per_prompt: true}\n"))
    out = tmp_path / "run"
    s = Settings(out=out, plan_path=plan, device="cpu", identity={"backend": "hf", "arch": "tiny-llama"},
                 latency_only=True, progress=False)
    assert calibrate(s, HFBackend("cpu", arch="tiny-llama", dtype="fp32"))["runs"] == 12
    rows = _rows(out)
    warm = [(i, r) for i, r in enumerate(rows) if r["entry"].endswith("-prompt")]
    assert sorted((int(r["n_in"]), int(r["batch"])) for _, r in warm) == [(8, 3), (24, 1)]
    for i, r in warm:
        assert r["phase"] == "warmup" and int(r["n_out"]) == int(r["gen_tokens"]) == 2
        first = min(j for j, x in enumerate(rows)
                    if x["phase"] == "run" and (x["n_in"], x["batch"]) == (r["n_in"], r["batch"]))
        assert i == first - 1
    from dcsim.profiles.importers.calibrate_runs import load

    table, _ = load(out)  # the fit leaves them out like every warm-up
    assert table["warmup"].sum() == 3 and (~table["warmup"]).sum() == 12


class StandInMeter(Meter):
    """No meter is readable on this machine (no GPU, no RAPL): a stand-in that draws a constant 50 W, so every
    window's energy must be 50 W x its length."""

    name = "standin"

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def begin(self, key, sync=True):
        self.t[key] = time.perf_counter()

    def end(self, key, sync=True):
        return Reading(device_j={"gpu0": 50.0 * (time.perf_counter() - self.t.pop(key))})

    def power_w(self):
        return {"gpu0": 50.0}


def test_energy_bookkeeping_and_idle_windows_with_a_stand_in_meter(tmp_path):
    out = tmp_path / "run"
    s = Settings(out=out, plan_path=_plan(tmp_path, idle=0.6), device="cpu", identity={"backend": "hf"},
                 progress=False)
    calibrate(s, HFBackend("cpu", arch="tiny-llama", dtype="fp32"), StandInMeter())
    rows = _rows(out)
    phases = [r["phase"] for r in rows]
    # deep idle before the model, its load metered, serving idle after the warm-up
    assert phases[:4] == ["idle_deep", "load", "warmup", "idle_serving"]
    for r in rows:
        if r["phase"] == "load":  # the model's load, its own meter window: 50 W over its time
            assert float(r["energy_device_j"]) == pytest.approx(50.0 * float(r["runtime_s"]), rel=0.05, abs=0.01)
        elif r["phase"].startswith("idle"):
            assert float(r["avg_power_w"]) == pytest.approx(50.0, rel=1e-2)
            assert float(r["runtime_s"]) == pytest.approx(0.6, abs=0.05)
            assert float(r["tail_power_w"]) == pytest.approx(50.0, rel=1e-2)
        else:
            # the meter window encloses the timed region, and only just (a few ms of bookkeeping)
            e, rt = float(r["energy_device_j"]), float(r["runtime_s"])
            assert 50.0 * rt <= e <= 50.0 * (rt + 0.01)
            assert float(r["energy_prefill_device_j"]) < e
    power = list(csv.DictReader(open(out / "power.csv")))
    assert power and {p["device"] for p in power} == {"gpu0"}
    assert "idle_serving" in {p["label"] for p in power}
    from dcsim.profiles.importers.calibrate_runs import load

    table, meta = load(out, min_energy_s=0.0)
    assert meta["serving_idle_w"]["value"] == pytest.approx(50.0, rel=1e-2)
    assert set(table["kind"]) == {"run", "idle_deep", "idle_serving"}
    # the model's load, metered: the profile's cold start (the autoscaler's load when the pool names none)
    load_row = next(r for r in rows if r["phase"] == "load")
    cs = meta["cold_start"]
    assert cs["n"] == 1 and cs["load_s"] == pytest.approx(float(load_row["runtime_s"]))
    assert cs["load_j"] == pytest.approx(float(load_row["energy_device_j"])) and cs["random_weights"] is False
    from dcsim.profiles.fit import meta_from_dict

    fm = meta_from_dict(meta)
    assert fm.cold_start.load_s == pytest.approx(cs["load_s"]) and fm.cold_start_provenance.source == "measured"


def _cmd(out: Path, plan: Path, arch: str = "tiny-llama") -> list[str]:
    return [sys.executable, "-m", "dcsim.commands.calibrate", "--device", "cpu", "--model-arch", arch,
            "--dtype", "fp32", "--plan", str(plan), "--out", str(out), "--latency-only", "--no-progress"]


def _wait_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError("no progress")


def test_resume_after_ctrl_c_and_a_killed_process(tmp_path, capsys):
    # a pause between runs, so a fast machine cannot finish the sweep between two polls of runs.csv
    plan = _plan(tmp_path, cooldown_s=0.15)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # 1) Ctrl-C after the warm-up and 3 runs
    p = subprocess.Popen(_cmd(out, plan), cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    _wait_rows(out / "runs.csv", 1 + 1 + 3, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "the same command resumes" in err
    after_int = (out / "runs.csv").read_text()
    # 2) the same command, killed outright (no clean-up at all) a few runs later
    p = subprocess.Popen(_cmd(out, plan), cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    _wait_rows(out / "runs.csv", after_int.count("\n") + 4, p)
    p.kill()
    p.wait()
    after_kill = (out / "runs.csv").read_text()
    assert after_kill.startswith(after_int)
    # 3) the same command finishes the sweep
    done = subprocess.run(_cmd(out, plan), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    final = (out / "runs.csv").read_text()
    assert final.startswith(after_kill[: after_kill.rfind("\n") + 1])  # nothing finished was lost or redone
    runs = [(r["point"], int(r["repeat"])) for r in _rows(out) if r["phase"] == "run"]
    assert len(runs) == len(set(runs)) == 12
    # the interrupted sweep ran its entries in the very order of an uninterrupted one
    pl = load_plan(plan)
    sch = Schedule(pl, expand(pl))
    order = []
    for pt, r in sch:
        order.append((pt.id, r))
        sch.record(pt.id, r, {"runtime_s": 1.0})
    assert runs == order
    man = json.loads((out / "manifest.json").read_text())
    assert [s["status"] for s in man["sessions"]] == ["interrupted", "running", "complete"]
    assert [r["phase"] for r in _rows(out)].count("warmup") == 3  # one per session
    # 4) a different sweep in the same folder is refused, nothing written
    assert main(["--device", "cpu", "--model-arch", "llama-2-7b", "--plan", str(plan), "--out", str(out),
                 "--latency-only"]) == 2
    assert (out / "runs.csv").read_text() == final
    # 5) so is a folder whose runs read the prefill's energy from the counter inside the timed run (recorded
    # before that read moved out): its runs are 3-4 ms longer and would not mix
    man["identity"].pop("prefill_energy")
    (out / "manifest.json").write_text(json.dumps(man))
    assert main(_cmd(out, plan)[3:]) == 2
    assert "prefill_energy" in capsys.readouterr().err
    assert (out / "runs.csv").read_text() == final
