"""Energy meters, one module per vendor behind one interface (base.py): Zeus (NVIDIA, AMD, RAPL, Apple), our own
RAPL reader, macOS powermetrics. Every module in this folder registers its meter by being here."""

from __future__ import annotations

import importlib
import pkgutil

from dcsim.calibrate.meters.base import METERS, Meter, MeterUnavailable, Reading, parse_device
from dcsim.errors import UserError

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")


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


__all__ = ["METERS", "Meter", "MeterUnavailable", "Reading", "parse_device", "select_meter"]
