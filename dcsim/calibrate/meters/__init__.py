"""Energy meters, one module per vendor behind one interface (base.py): Zeus (NVIDIA, AMD, RAPL, Apple), our own
RAPL reader, macOS powermetrics. registry.py loads every module of this folder (each registers its meter by being
here) and picks one for a device; importing this package loads the interface alone, no vendor meter."""

from __future__ import annotations

from dcsim.calibrate.meters.base import Meter, MeterUnavailable, Reading, parse_device

__all__ = ["Meter", "MeterUnavailable", "Reading", "parse_device"]
