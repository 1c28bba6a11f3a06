"""What the machine was, read-only: library versions, CPU model and, through the device's module
(calibrate/devices/), what it records of the device: for a GPU its name and which board it was (UUID, serial, PCI
bus, VBIOS), driver, power limit and its range, clocks, persistence. No host names."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from dcsim.calibrate.devices.registry import device_for


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def capture(device: str) -> dict:
    """Environment of this session for the manifest."""
    env = {
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": {p: _version(p) for p in ("dcsim", "torch", "transformers", "zeus", "nvidia-ml-py",
                                              "zeus-apple-silicon", "numpy", "pydantic")},
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    # a device string that starts with cuda is a CUDA device
    kind = "cuda" if device.startswith("cuda") else device.partition(":")[0]
    env.update(device_for(kind).environment(device))
    return env
