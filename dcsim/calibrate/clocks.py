"""Locked-SM-clock sweeps on the user's own GPU: lock each clock, and always unlock again, after an error, Ctrl-C
or SIGTERM too. Only used behind --allow-clock-changes.

The device object is a `devices.base.ClockLimits`, Zeus's GPUs interface (MHz), which the device's module gives
(`device_for(kind).clock_limits()`): get_supported_graphics_clocks(i) -> list of MHz,
set_gpu_locked_clocks(i, min_mhz, max_mhz), reset_gpu_locked_clocks(i).
"""

from __future__ import annotations

import sys

from dcsim.calibrate.devices.base import ClockLimits
from dcsim.calibrate.powercap import RestoreOnExit
from dcsim.errors import UserError


def parse_clocks(text: str | None) -> list[float]:
    """'990,1410,1980' -> [990.0, 1410.0, 1980.0] (MHz)."""
    if not text:
        return []
    try:
        clocks = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--sm-clocks takes MHz separated by commas, got {text!r}", None, "--sm-clocks") from None
    if any(not c > 0 or c != c or c == float("inf") for c in clocks):
        raise UserError("SM clocks must be positive, finite MHz", None, "--sm-clocks")
    return clocks


class ClockGuard(RestoreOnExit):
    """Context manager: locks the SM clock on request and unlocks it (the device's own clocking) on exit whatever
    happened, and from an atexit hook as a last resort; turns SIGTERM/SIGHUP into KeyboardInterrupt meanwhile so
    that the exit path runs. The twin of powercap.PowerLimitGuard."""

    def __init__(self, dev: ClockLimits, index: int, log=print) -> None:
        self.dev = dev
        self.index = index
        self.log = log
        supported = [float(c) for c in dev.get_supported_graphics_clocks(index)]
        if not supported:
            raise UserError(f"GPU {index} reports no supported graphics clocks", None, "--sm-clocks")
        self.supported = sorted(supported)
        self.min_mhz, self.max_mhz = self.supported[0], self.supported[-1]
        self.locked = False
        self._entered = False
        self._old_handlers: dict[int, object] = {}

    def check(self, clocks_mhz: list[float]) -> None:
        """Refuse clocks outside the device's supported range, before anything changes."""
        bad = [c for c in clocks_mhz if not self.min_mhz <= c <= self.max_mhz]
        if bad:
            raise UserError(f"SM clocks {bad} MHz are outside the device's range {self.min_mhz:g}-{self.max_mhz:g} "
                            "MHz", None, "--sm-clocks")

    def set(self, mhz: float) -> None:
        """Lock the SM clock at mhz (min = max)."""
        self.check([mhz])
        if not self._entered:
            raise RuntimeError("set() outside the guard's with-block")
        self.log(f"SM clock of GPU {self.index} locked at {mhz:g} MHz")
        self.locked = True
        self.dev.set_gpu_locked_clocks(self.index, int(round(mhz)), int(round(mhz)))

    def restore(self) -> None:
        """Unlock the SM clock (nothing to do where none was locked)."""
        if not self.locked:
            return
        try:
            self.dev.reset_gpu_locked_clocks(self.index)
            self.log(f"SM clock of GPU {self.index} unlocked (the device's own clocking restored)")
        except Exception as e:  # tell the user loudly; never swallow silently
            print(f"dcsim: WARNING: could not unlock the SM clock of GPU {self.index}: {e}. Unlock it by hand "
                  f"(nvidia-smi -i {self.index} -rgc).", file=sys.stderr)
            raise
        self.locked = False

    def __enter__(self) -> "ClockGuard":
        self._entered = True
        self._arm()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.restore()
        finally:
            self._entered = False
            self._disarm()
