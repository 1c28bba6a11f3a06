"""The devices a calibration runs on, one module per vendor behind one interface (base.py), as Zeus lays out its
own: what the run records of the device and, where it has one, its power limit. registry.py loads every module of
this folder (each registers its device by being here) and picks one for a device kind; vendor libraries are
imported only inside those modules, and only when called."""

from __future__ import annotations

from dcsim.calibrate.devices.base import DEVICES, Device, PowerLimits

__all__ = ["DEVICES", "Device", "PowerLimits"]
