"""Power-limit sweeps on the user's own GPU: set each cap, and always put the original limit back, after
an error, Ctrl-C or SIGTERM too. Only used behind --allow-power-limit-changes.

The device object is a `devices.base.PowerLimits`, Zeus's GPUs interface (milliwatts), which the device's
module gives (`device_for(kind).power_limits()`): get_power_management_limit_constraints(i) -> (min, max),
get_power_management_limit(i), set_power_management_limit(i, mw).
"""

from __future__ import annotations

import atexit
import signal
import sys

from dcsim.calibrate.devices.base import PowerLimits
from dcsim.errors import UserError


def parse_caps(text: str | None) -> list[float]:
    """'150,200,250' -> [150.0, 200.0, 250.0] (watts)."""
    if not text:
        return []
    try:
        caps = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--power-caps takes watts separated by commas, got {text!r}", None, "--power-caps") from None
    if any(c <= 0 for c in caps):
        raise UserError("power caps must be positive watts", None, "--power-caps")
    return caps


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class RestoreOnExit:
    """A guard that calls restore() on exit, at interpreter exit and on SIGTERM/SIGHUP (raised as an interrupt):
    what a device setting changed for a sweep needs, whatever ends the sweep. Subclasses define restore()."""

    _old_handlers: dict[int, object]

    def restore(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _arm(self) -> None:
        """Register restore() at exit and route SIGTERM/SIGHUP to an interrupt (main thread only)."""
        self._old_handlers = {}
        atexit.register(self.restore)
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                try:
                    self._old_handlers[sig] = signal.signal(sig, _raise_interrupt)
                except ValueError:  # not the main thread
                    pass

    def _disarm(self) -> None:
        """Put the signal handlers back and drop the exit hook."""
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers.clear()
        atexit.unregister(self.restore)


class PowerLimitGuard(RestoreOnExit):
    """Context manager: remembers the limit on entry, restores it on exit whatever happened (and from an
    atexit hook as a last resort); turns SIGTERM/SIGHUP into KeyboardInterrupt meanwhile so that the exit
    path runs."""

    def __init__(self, dev: PowerLimits, index: int, log=print) -> None:
        self.dev = dev
        self.index = index
        self.log = log
        lo, hi = dev.get_power_management_limit_constraints(index)
        self.min_w, self.max_w = lo / 1000.0, hi / 1000.0
        self.original_mw: int | None = None
        self._old_handlers: dict[int, object] = {}

    def check(self, caps_w: list[float]) -> None:
        bad = [c for c in caps_w if not self.min_w <= c <= self.max_w]
        if bad:
            raise UserError(f"power caps {bad} W are outside the device's range {self.min_w:g}-{self.max_w:g} W",
                            None, "--power-caps")

    def set(self, cap_w: float) -> None:
        self.check([cap_w])
        if self.original_mw is None:
            raise RuntimeError("set() outside the guard's with-block")
        self.log(f"power limit of GPU {self.index} -> {cap_w:g} W")
        self.dev.set_power_management_limit(self.index, int(round(cap_w * 1000)))

    def restore(self) -> None:
        if self.original_mw is None:
            return
        try:
            if self.dev.get_power_management_limit(self.index) != self.original_mw:
                self.dev.set_power_management_limit(self.index, self.original_mw)
            self.log(f"power limit of GPU {self.index} restored to {self.original_mw / 1000:g} W")
        except Exception as e:  # tell the user loudly; never swallow silently
            print(f"dcsim: WARNING: could not restore the power limit of GPU {self.index} to "
                  f"{self.original_mw / 1000:g} W: {e}. Restore it by hand (nvidia-smi -i {self.index} "
                  f"-pl {self.original_mw / 1000:g}).", file=sys.stderr)
            raise
        self.original_mw = None

    def __enter__(self) -> "PowerLimitGuard":
        self.original_mw = self.dev.get_power_management_limit(self.index)
        self._arm()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.restore()
        finally:
            self._disarm()
