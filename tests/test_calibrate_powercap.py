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
