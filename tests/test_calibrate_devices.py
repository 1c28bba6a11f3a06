"""The device interface: each device kind finds its vendor module through the registry, the calibration's other
modules import no vendor library (only calibrate/devices/ and calibrate/meters/ do, lazily), and environment.json
records what the device's module says."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from dcsim.calibrate.devices import Device
from dcsim.calibrate.devices.nvidia import NvidiaGPU
from dcsim.calibrate.devices.registry import DEVICES, device_for
from dcsim.calibrate.environment import capture
from dcsim.errors import UserError

REPO = Path(__file__).resolve().parents[1]
VENDOR_LIBRARIES = {"zeus", "pynvml", "amdsmi", "zeus_apple_silicon"}


def test_each_device_kind_gets_its_vendor_module():
    assert sorted(DEVICES) == ["nvidia"]
    assert type(device_for("cuda")) is NvidiaGPU
    for kind in ("cpu", "mps", "endpoint"):
        dev = device_for(kind)
        assert type(dev) is Device and dev.environment(kind) == {}
        with pytest.raises(UserError) as e:
            dev.power_limits()
        assert e.value.field == "--power-caps" and "CUDA" in e.value.message


def test_environment_records_the_device_modules_facts():
    cpu = capture("cpu")
    assert "gpu" not in cpu and cpu["device"] == "cpu" and cpu["cpu_count"] >= 1
    gpu = capture("cuda:0")["gpu"]
    if importlib.util.find_spec("pynvml") is None:
        assert gpu == {}  # NVML's Python binding is not installed here: nothing is read, nothing fails
    else:
        assert "nvml_error" in gpu or "name" in gpu


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_vendor_libraries_are_imported_only_behind_the_device_and_meter_interfaces():
    calibrate = REPO / "dcsim" / "calibrate"
    outside = {str(p.relative_to(REPO)): sorted(_imported_roots(p) & VENDOR_LIBRARIES)
               for p in calibrate.rglob("*.py") if p.parent.name not in ("devices", "meters")}
    assert {k: v for k, v in outside.items() if v} == {}
    for base in (calibrate / "devices" / "base.py", calibrate / "meters" / "base.py"):
        assert not _imported_roots(base) & VENDOR_LIBRARIES


def test_loading_the_devices_loads_no_vendor_library_and_the_base_no_vendor_device():
    pkg = "dcsim.calibrate.devices"
    code = (f"import sys, {pkg}.base; print(sorted(m for m in sys.modules if m.startswith('{pkg}.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"['{pkg}.base']"
    code = ("import sys, dcsim.calibrate.run, dcsim.calibrate.environment, dcsim.calibrate.powercap; "
            f"print(sorted(m for m in {sorted(VENDOR_LIBRARIES)} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = f"import {pkg}.nvidia; from {pkg}.base import DEVICES; print(sorted(DEVICES))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['nvidia']"
