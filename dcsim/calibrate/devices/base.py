"""What the calibration needs of a device: the facts environment.json records of it (read-only) and, for a
power-cap sweep, its power limit. A vendor's `Device` subclass lives in its own module of this folder,
registered in DEVICES with the device kinds (cuda, cpu, mps) it serves. Importing this module imports no vendor
library and no vendor device."""

from __future__ import annotations

from typing import ClassVar, Protocol

from dcsim.errors import UserError
from dcsim.registry import Registry


class PowerLimits(Protocol):
    """A device's power limit by device index, in milliwatts: Zeus's GPUs interface (zeus.device.get_gpus())."""

    def get_power_management_limit_constraints(self, gpu_index: int) -> tuple[int, int]: ...
    def get_power_management_limit(self, gpu_index: int) -> int: ...
    def set_power_management_limit(self, gpu_index: int, power_limit_mw: int, block: bool = True) -> None: ...


class ClockLimits(Protocol):
    """A device's locked SM clock by device index, in MHz: Zeus's GPUs interface (zeus.device.get_gpus())."""

    def get_supported_graphics_clocks(self, gpu_index: int) -> list[int]: ...
    def set_gpu_locked_clocks(self, gpu_index: int, min_clock_mhz: int, max_clock_mhz: int,
                              block: bool = True) -> None: ...
    def reset_gpu_locked_clocks(self, gpu_index: int, block: bool = True) -> None: ...


class Device:
    """Base class: a device kind of which nothing is recorded beyond the machine (CPU model, packages) and whose
    power limit cannot be set: what a CPU, an Apple SoC or an endpoint gets today. A vendor device sets `kinds`
    and overrides what it can say."""

    name = "none"
    kinds: ClassVar[tuple[str, ...]] = ()

    def environment(self, device: str) -> dict:
        """Entries environment.json adds for `device` (e.g. "cuda:1"); empty where there is nothing to say."""
        return {}

    def power_limits(self) -> PowerLimits:
        """The object through which the power limit is read and set (PowerLimitGuard holds it)."""
        raise UserError("this device's power limit cannot be set; --power-caps needs a CUDA device", None,
                        "--power-caps")

    def clock_limits(self) -> ClockLimits:
        """The object through which the SM clock is locked and unlocked (ClockGuard holds it)."""
        raise UserError("this device's SM clock cannot be locked; --sm-clocks needs a CUDA device", None,
                        "--sm-clocks")


DEVICES: Registry[Device] = Registry("device")
