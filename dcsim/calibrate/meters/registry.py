"""The meters by device kind: loads every vendor meter of this folder (each registers itself in METERS) and opens
the first that can read a device. Loading them loads no vendor library: each imports its own when opened."""

from __future__ import annotations

import importlib
import pkgutil

from dcsim.calibrate import meters as _package
from dcsim.calibrate.meters.base import METERS, Meter, MeterUnavailable, parse_device
from dcsim.errors import UserError

for _m in pkgutil.iter_modules(_package.__path__):
    if _m.name not in ("base", "registry"):
        importlib.import_module(f"{_package.__name__}.{_m.name}")


def select_meter(device: str, latency_only: bool = False, meter_device: str | None = None) -> Meter:
    """Pick the meter for a device: the registered meters of its kind, by rank, the first that opens.
    `meter_device` names what to meter when the work runs elsewhere (an endpoint measured from outside: e.g.
    cuda:0 of this machine). Raises UserError saying why each could not, unless latency_only."""
    if latency_only:
        return Meter()
    kind, idx = parse_device(meter_device or device)
    if kind == "endpoint":
        raise UserError("an endpoint run needs --meter-device (the local device the server uses), "
                        "or --latency-only", None, "--meter-device")
    errors: list[str] = []
    for _, cls in sorted(METERS.items(), key=lambda item: item[1].rank):
        if kind in cls.kinds:
            try:
                return cls.open(kind, idx, meter_device is None)
            except MeterUnavailable as e:
                errors.append(str(e))
    raise UserError("no energy meter is readable for this device: " + "; ".join(errors)
                    + ". Pass --latency-only to measure time alone.", None, "--device")


__all__ = ["METERS", "select_meter"]
