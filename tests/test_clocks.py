"""Locked SM clocks: the clock model against hand-worked timelines, its published fit, the scenario field's checks,
and the calibration's clock sweep. Locking a real GPU's clock changes the device for everyone on it, and this
machine has no GPU, so the calibration tests hand the sweep a stand-in device (an in-memory object with Zeus's
locked-clock methods) in place of the GPU: a test double, because the real thing is destructive here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from simkit import profile_dict, run_pool, scenario, write_trace

from dcsim.errors import UserError
from dcsim.profiles.profile import Profile, load_profile
from dcsim.results import summarize
from dcsim.sim.engine import simulate

REPO = Path(__file__).resolve().parents[1]
H200 = REPO / "profiles" / "derived" / "h200--llama-3.1-8b--vllm-mlenergy-v3-bf16--from-h100-sxm-80gb.yaml"

# Toy profile (tests/simkit.py): prefill 0.1 + 0.001*tokens s at 300 W; decode step 0.02 + 0.001*batch s at
# 200 + 10*batch W. Its clock section: default 2000 MHz; prefill wholly compute-bound (beta 1), decode beta 0.2;
# half of each phase's draw independent of the clock; P ~ f^3. At 1000 MHz (r = 0.5): prefill time x 2, decode
# time x (0.2/0.5 + 0.8) = 1.2, both powers x (0.5 + 0.5 * 0.125) = 0.5625.
CLOCK = {"min_mhz": 500.0, "max_mhz": 2000.0, "default_mhz": 2000.0, "compute_bound_prefill": 1.0,
         "compute_bound_decode": 0.2, "static_share_prefill": 0.5, "static_share_decode": 0.5, "exponent": 3.0}


def toy(tmp_path: Path, clock: dict | None = CLOCK) -> Path:
    d = profile_dict()
    if clock is not None:
        d["clock"] = clock
    Profile.model_validate(d)
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def run(tmp_path, n_in, n_out, arrival, batching, clock_mhz=None, profile=None):
    return run_pool(tmp_path, profile or toy(tmp_path), n_in, n_out, arrival, batching, clock_mhz=clock_mhz)


def test_locked_clock_fcfs_timeline_and_energy(tmp_path):
    _, req, s = run(tmp_path, [100], [11], [0.0], {"policy": "fcfs"}, clock_mhz=1000)
    # prefill 0.2 s x 2 = 0.4 s at 300 x 0.5625 = 168.75 W (67.5 J); 10 decode steps of 0.021 x 1.2 = 0.0252 s at
    # 210 x 0.5625 = 118.125 W (0.252 s, 29.7675 J): done at 0.652 s, 97.2675 J
    assert req["first_token_s"].tolist() == pytest.approx([0.4])
    assert req["done_s"].tolist() == pytest.approx([0.652])
    assert req["energy_j"].tolist() == pytest.approx([97.2675])
    assert s["pools"]["p"]["clock_mhz"] == {"prefill": 1000.0, "decode": 1000.0}
    assert s["tpot_s"]["mean"] == pytest.approx(0.0252)


def test_clock_per_phase_fcfs(tmp_path):
    _, req, s = run(tmp_path, [100], [11], [0.0], {"policy": "fcfs"},
                    clock_mhz={"prefill_mhz": 2000, "decode_mhz": 1000})
    # prefill at the default clock: 0.2 s, 60 J; decode as above: 0.252 s, 29.7675 J
    assert req["first_token_s"].tolist() == pytest.approx([0.2])
    assert req["done_s"].tolist() == pytest.approx([0.452])
    assert req["energy_j"].tolist() == pytest.approx([89.7675])
    assert s["active_j"] == pytest.approx(89.7675)


def test_locked_clock_continuous_timeline(tmp_path):
    _, req, _ = run(tmp_path, [100, 100], [11, 6], [0.0, 0.3], {"policy": "continuous", "max_batch": 8},
                    clock_mhz={"prefill_mhz": 2000, "decode_mhz": 1000})
    # A: prefill 0..0.2, steps of 0.0252 s; B arrives at 0.3 during A's 4th step (ends 0.3008) and joins after it:
    # B's prefill 0.3008..0.5008, then 5 steps of both at 0.022 x 1.2 = 0.0264 s (B done 0.6328), A's last alone
    assert req["start_s"].tolist() == pytest.approx([0.0, 0.3008])
    assert req["done_s"].tolist() == pytest.approx([0.6580, 0.6328])


def test_no_clock_reads_as_before(tmp_path):
    """A profile's clock section changes nothing until a scenario locks a clock: same summary, byte for byte."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    kw = dict(n_in=[100, 80, 300], n_out=[11, 40, 7], arrival=[0.0, 0.05, 0.1],
              batching={"policy": "continuous", "max_batch": 8})
    _, _, with_section = run(tmp_path / "a", **kw)
    _, _, without = run(tmp_path / "b", profile=toy(tmp_path / "b", clock=None), **kw)
    assert json.dumps(with_section, sort_keys=True) == json.dumps(without, sort_keys=True)
    assert "clock_mhz" not in with_section["pools"]["p"]


def test_published_fit_reproduces_its_figures():
    from dcsim.profiles.clock_fit import best_decode_saving, fit_published
    from dcsim.profiles.profile import clock_scaling

    cm = load_profile(H200).clock
    assert (cm.min_mhz, cm.default_mhz) == (345.0, 1980.0)
    # Ma et al. 2026 (H200): clock locking recovers up to 32% of decode energy at minimal throughput loss
    saving, at = best_decode_saving(cm)
    assert saving == pytest.approx(0.32, abs=2e-4)
    assert clock_scaling(cm, at, "decode").time_x < 1.02
    # Maliakel et al. 2025: 2842 -> 180 MHz costs 1-6% latency (3.5% taken)
    fit = fit_published(345.0, 1980.0, 0.474)
    assert 0.035 / (2842 / 180 - 1) == pytest.approx(fit.compute_bound_decode)
    # prefill is compute-bound: half the clock, 1.9 x the time (beta 0.9)
    assert clock_scaling(cm, 990.0, "prefill").time_x == pytest.approx(0.9 / 0.5 + 0.1)
    prov = load_profile(H200).provenance["clock"]
    assert prov.source == "published" and "arXiv:2605.11999" in prov.citation


def test_evaluator_refuses_what_it_cannot_model(tmp_path):
    prof = load_profile(toy(tmp_path))
    with pytest.raises(UserError, match="outside the device's range 500-2000 MHz") as e:
        prof.evaluator(None, "x.yaml", (1000.0, 400.0))
    assert e.value.field == "clock_mhz.decode_mhz"
    with pytest.raises(UserError, match="not modelled together"):
        prof.evaluator(300.0, "x.yaml", (1000.0, 1000.0))
    bare = load_profile(toy(tmp_path / ".", clock=None))
    with pytest.raises(UserError, match="no clock section"):
        bare.evaluator(None, "x.yaml", (1000.0, 1000.0))


@pytest.mark.parametrize("clock, field", [
    ("3000", "fleet.0.clock_mhz"),
    ('{"prefill_mhz": 1980, "decode_mhz": 100}', "fleet.0.clock_mhz.decode_mhz"),
    ("-5", "fleet.0.clock_mhz"),
    ('{"prefill_mhz": 1980}', "fleet.0.clock_mhz"),
])
def test_bad_clock_exits_2_naming_the_field(tmp_path, clock, field):
    tr = write_trace(tmp_path, [100], [5], [0.0])
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump(scenario(tr, [{"name": "p", "profile": str(H200), "count": 1,
                                                "clock_mhz": yaml.safe_load(clock)}])))
    r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(sc), "--json"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert field in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


# ---- calibration: locked-clock sweeps on the user's own GPU, rehearsed on a stand-in -------------------------

class StandInClocks:
    """Stand-in for zeus.device.gpu GPUs' clock methods: supported 345-1980 MHz, records every change."""

    def __init__(self) -> None:
        self.locked: tuple[int, int] | None = None
        self.history: list[object] = []

    def get_supported_graphics_clocks(self, i: int) -> list[int]:
        return [1980, 1410, 990, 345]

    def set_gpu_locked_clocks(self, i: int, lo: int, hi: int, block: bool = True) -> None:
        self.locked = (lo, hi)
        self.history.append((lo, hi))

    def reset_gpu_locked_clocks(self, i: int, block: bool = True) -> None:
        self.locked = None
        self.history.append("reset")


def test_clocks_outside_the_range_are_refused_before_anything_changes():
    from dcsim.calibrate.clocks import ClockGuard, parse_clocks

    assert parse_clocks("990, 1410") == [990.0, 1410.0]
    with pytest.raises(UserError):
        parse_clocks("990,fast")
    gpu = StandInClocks()
    g = ClockGuard(gpu, 0, log=lambda m: None)
    with pytest.raises(UserError) as e:
        g.check([300.0, 990.0, 2100.0])
    assert "[300.0, 2100.0]" in e.value.message and "345-1980" in e.value.message
    assert gpu.history == []


@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()])
def test_clock_unlocked_after_error_or_ctrl_c(exc):
    from dcsim.calibrate.clocks import ClockGuard

    gpu = StandInClocks()
    with pytest.raises(type(exc)):
        with ClockGuard(gpu, 0, log=lambda m: None) as g:
            g.set(990.0)
            assert gpu.locked == (990, 990)
            raise exc
    assert gpu.locked is None and gpu.history == [(990, 990), "reset"]


def test_clock_unlocked_after_sigterm():
    from dcsim.calibrate.clocks import ClockGuard

    gpu = StandInClocks()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with ClockGuard(gpu, 0, log=lambda m: None) as g:
            g.set(1410.0)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            pytest.fail("SIGTERM did not interrupt")
    assert gpu.locked is None
    assert signal.getsignal(signal.SIGTERM) == before


def test_sweep_refuses_clocks_without_the_flag(tmp_path):
    from dcsim.calibrate.run import Settings, Sweep

    plan = tmp_path / "p.yaml"
    plan.write_text("name: t\nsweeps: [{name: x, n_in: [8], n_out: [2]}]\n")
    s = Settings(out=tmp_path / "o", plan_path=plan, device="cuda:0", identity={}, sm_clocks=[990.0])
    with pytest.raises(UserError) as e:
        Sweep(s, backend=None)
    assert "--allow-clock-changes" in e.value.message and e.value.field == "--sm-clocks"
    assert not (tmp_path / "o").exists()


def test_a_clock_sweep_locks_each_clock_through_the_device_and_unlocks_it(tmp_path, monkeypatch, capsys):
    """The sweep takes the clock interface from the CUDA device's module; the module hands it the stand-in (no
    real clock may change), the model runs on the CPU, the device string says cuda:0."""
    pytest.importorskip("torch", reason="torch not installed (pip install torch)")
    pytest.importorskip("transformers", reason="transformers not installed (pip install transformers)")
    import csv

    from dcsim.calibrate.backends.hf import HFBackend
    from dcsim.calibrate.devices.nvidia import NvidiaGPU
    from dcsim.calibrate.meters import Meter
    from dcsim.calibrate.run import Settings, calibrate

    gpu = StandInClocks()
    monkeypatch.setattr(NvidiaGPU, "clock_limits", lambda self: gpu)
    plan = tmp_path / "p.yaml"
    plan.write_text("name: t\nsweeps: [{name: x, n_in: [8], n_out: [2]}]\nrepeats: {min: 1, max: 1}\n"
                    "warmup: {runs: 1, n_in: 8, n_out: 2, batch: 1}\nidle: {deep_s: 0, serving_s: 0}\n")
    s = Settings(out=tmp_path / "o", plan_path=plan, device="cuda:0", identity={}, sm_clocks=[990.0, 1410.0],
                 allow_clock_changes=True, latency_only=True, progress=False)
    res = calibrate(s, HFBackend("cpu", arch="tiny-llama", dtype="fp32"), Meter())
    assert res == {"status": "complete", "runs": 3, "left": 0}
    assert gpu.history == [(990, 990), "reset", (1410, 1410), "reset"] and gpu.locked is None
    with open(tmp_path / "o" / "runs.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "run"]
    assert [r["sm_clock_mhz"] for r in rows] == ["", "990", "1410"]
    assert [r["power_cap_w"] for r in rows] == ["", "", ""]
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["sessions"][0]["sm_clock_restored"] is True
    # the same command resumes with nothing left
    res = calibrate(s, HFBackend("cpu", arch="tiny-llama", dtype="fp32"), Meter())
    assert res["runs"] == 0 and res["left"] == 0


def test_shipped_clock_scenario_runs_and_saves_decode_energy():
    """scenarios/clocks-h200-azure-conv.yaml on 300 requests: with the decode clock at 990 MHz the same requests cost
    less device energy than at the device's own clocking, and every request completes either way."""
    from dcsim.scenario import load_scenario

    path = REPO / "scenarios" / "clocks-h200-azure-conv.yaml"
    sc = load_scenario(path)
    sc = sc.model_copy(update={"trace": sc.trace.model_copy(update={"limit": 300})})
    locked = summarize(simulate(sc, path))
    own = summarize(simulate(sc.model_copy(update={"fleet": [sc.fleet[0].model_copy(update={"clock_mhz": None})]}),
                             path))
    assert locked["requests_completed"] == own["requests_completed"] == 300
    assert locked["pools"]["h200"]["clock_mhz"] == {"prefill": 1980.0, "decode": 990.0}
    assert locked["active_j"] < 0.8 * own["active_j"]
