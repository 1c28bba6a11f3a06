"""The devices by kind: loads every vendor device of this folder (each registers itself in DEVICES) and gives the
one that serves a device kind. Loading them loads no vendor library: each imports its own when called."""

from __future__ import annotations

import importlib
import pkgutil

from dcsim.calibrate import devices as _package
from dcsim.calibrate.devices.base import DEVICES, Device

for _m in pkgutil.iter_modules(_package.__path__):
    if _m.name not in ("base", "registry"):
        importlib.import_module(f"{_package.__name__}.{_m.name}")


def device_for(kind: str) -> Device:
    """The registered device serving `kind` (cuda, cpu, mps, endpoint), or the base Device, which records nothing
    of its own and sets no power limit, for a kind no vendor module serves."""
    for _, cls in sorted(DEVICES.items()):
        if kind in cls.kinds:
            return cls()
    return Device()


__all__ = ["DEVICES", "device_for"]
