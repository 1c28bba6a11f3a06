"""Power-cap sweeps restore the original limit whatever happens. The lent GPUs' limits must never be
changed, and this machine has no GPU, so a stand-in device object plays the GPU here (an in-memory
object with Zeus's power-limit methods, milliwatts)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from dcsim.calibrate.powercap import PowerLimitGuard, parse_caps
from dcsim.errors import UserError


class StandInGPU:
    """Stand-in for zeus.device.gpu GPUs: range 200-700 W, limit 700 W, records every change."""

    def __init__(self) -> None:
        self.limit_mw = 700_000
        self.history: list[int] = []

    def get_power_management_limit_constraints(self, i: int) -> tuple[int, int]:
        return 200_000, 700_000

    def get_power_management_limit(self, i: int) -> int:
        return self.limit_mw

    def set_power_management_limit(self, i: int, mw: int, block: bool = True) -> None:
        self.limit_mw = mw
        self.history.append(mw)


def test_parse_caps():
    assert parse_caps("150, 200,250") == [150.0, 200.0, 250.0]
    assert parse_caps(None) == []
    with pytest.raises(UserError):
        parse_caps("150,abc")


def test_caps_outside_the_range_are_refused_before_anything_changes():
    gpu = StandInGPU()
    g = PowerLimitGuard(gpu, 0, log=lambda m: None)
    with pytest.raises(UserError) as e:
        g.check([150.0, 300.0, 800.0])
    assert "[150.0, 800.0]" in e.value.message and "200-700" in e.value.message
    assert gpu.history == []


@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()])
def test_limit_restored_after_error_or_ctrl_c(exc):
    gpu = StandInGPU()
    with pytest.raises(type(exc)):
        with PowerLimitGuard(gpu, 0, log=lambda m: None) as g:
            g.set(250.0)
            assert gpu.limit_mw == 250_000
            g.set(300.0)
            raise exc
    assert gpu.limit_mw == 700_000
    assert gpu.history == [250_000, 300_000, 700_000]


def test_limit_restored_after_sigterm():
    gpu = StandInGPU()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with PowerLimitGuard(gpu, 0, log=lambda m: None) as g:
            g.set(200.0)
            os.kill(os.getpid(), signal.SIGTERM)  # turned into KeyboardInterrupt inside the guard
            time.sleep(5)  # the handler interrupts this
            pytest.fail("SIGTERM did not interrupt")
    assert gpu.limit_mw == 700_000
    assert signal.getsignal(signal.SIGTERM) == before  # handler put back


def test_sweep_refuses_caps_without_the_flag(tmp_path):
    from dcsim.calibrate.run import Settings, Sweep

    plan = tmp_path / "p.yaml"
    plan.write_text("name: t\nsweeps: [{name: x, n_in: [8], n_out: [2]}]\n")
    s = Settings(out=tmp_path / "o", plan_path=plan, device="cuda:0", identity={}, power_caps=[200.0])
    with pytest.raises(UserError) as e:
        Sweep(s, backend=None)
    assert "--allow-power-limit-changes" in e.value.message
    assert not (tmp_path / "o").exists()


def test_a_capped_sweep_sets_each_cap_through_the_device_and_restores_it(tmp_path, monkeypatch, capsys):
    """The sweep driver takes the power limit from the CUDA device's module (devices/nvidia.py, Zeus's GPUs on a
    real machine). Changing a real limit is what must never happen here, and there is no GPU, so the module hands
    the sweep the stand-in instead; the model runs on the CPU, the device string says cuda:0."""
    pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
    pytest.importorskip("transformers", reason="transformers not installed (pip install transformers)")
    import csv
    import json

    from dcsim.calibrate.backends.hf import HFBackend
    from dcsim.calibrate.devices.nvidia import NvidiaGPU
    from dcsim.calibrate.meters import Meter
    from dcsim.calibrate.run import Settings, calibrate

    gpu = StandInGPU()
    monkeypatch.setattr(NvidiaGPU, "power_limits", lambda self: gpu)
    plan = tmp_path / "p.yaml"
    plan.write_text("name: t\nsweeps: [{name: x, n_in: [8], n_out: [2]}]\nrepeats: {min: 1, max: 1}\n"
                    "warmup: {runs: 1, n_in: 8, n_out: 2, batch: 1}\nidle: {deep_s: 0, serving_s: 0}\n")
    s = Settings(out=tmp_path / "o", plan_path=plan, device="cuda:0", identity={}, power_caps=[250.0, 300.0],
                 allow_power_limit_changes=True, latency_only=True, progress=False)
    res = calibrate(s, HFBackend("cpu", arch="tiny-llama", dtype="fp32"), Meter())
    assert res == {"status": "complete", "runs": 3, "left": 0}  # the point uncapped, at 250 W and at 300 W
    assert gpu.history == [250_000, 300_000, 700_000] and gpu.limit_mw == 700_000
    with open(tmp_path / "o" / "runs.csv") as f:
        caps = [r["power_cap_w"] for r in csv.DictReader(f) if r["phase"] == "run"]
    assert caps == ["", "250", "300"]
    sess = json.loads((tmp_path / "o" / "manifest.json").read_text())["sessions"][0]
    assert sess["power_limit_restored"] is True
    log = capsys.readouterr().err.splitlines()
    assert [m for m in log if "power limit" in m] == ["power limit of GPU 0 -> 250 W", "power limit of GPU 0 -> 300 W",
                                                      "power limit of GPU 0 restored to 700 W"]
