"""Energy meters: one interface over Zeus (NVML, AMD SMI, RAPL, Apple), our own RAPL reader and macOS
powermetrics, so the sweep driver never cares which hardware it runs on.

A meter measures windows (begin/end by key, windows may overlap) and reports joules per device label
("gpu0", "cpu0", "dram0", "soc_gpu", ...), split into the accelerator doing the work (`device_j`) and the
host around it (`host_j`). `power_w` gives instantaneous watts for the power timeline where supported.

Each vendor's meter is a `Meter` subclass in its own module of this folder, registered in METERS with the device
kinds it can meter and its rank among them; `select_meter` (registry.py) opens the first that can read the
device. Importing this module imports no vendor library and no vendor meter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dcsim.errors import UserError
from dcsim.registry import Registry


@dataclass
class Reading:
    """Energy of one window: joules per device label, accelerator and host separately."""

    device_j: dict[str, float] = field(default_factory=dict)
    host_j: dict[str, float] = field(default_factory=dict)

    @property
    def device_total(self) -> float:
        return sum(self.device_j.values()) if self.device_j else float("nan")

    @property
    def host_total(self) -> float:
        return sum(self.host_j.values()) if self.host_j else float("nan")


class MeterUnavailable(Exception):
    """A meter cannot read this device here; the message says why (collected into select_meter's error)."""


class Meter:
    """Base class: a meter that measures nothing (latency-only runs). A vendor meter sets `kinds` (the device
    kinds it meters: cuda, cpu, mps), `rank` (lower is tried first) and `open`."""

    name = "none"
    kinds: ClassVar[tuple[str, ...]] = ()
    rank: ClassVar[int] = 100

    @classmethod
    def open(cls, kind: str, index: int | None, sync: bool) -> "Meter":
        """A meter of device `kind`/`index`, or MeterUnavailable saying why not."""
        return cls()

    def begin(self, key: str, sync: bool = True) -> None:
        pass

    def end(self, key: str, sync: bool = True) -> Reading:
        return Reading()

    def power_w(self) -> dict[str, float]:
        """Instantaneous power per device label; empty where the meter cannot sample power."""
        return {}

    def temperature_c(self) -> dict[str, float]:
        """Device temperature per label (degrees C); empty where the meter cannot read one. Power at a fixed
        load rises as the die warms, so the timeline keeps it beside the power."""
        return {}

    def describe(self) -> dict:
        return {"meter": self.name}

    def close(self) -> None:
        pass


def parse_device(device: str) -> tuple[str, int | None]:
    """'cuda:1' -> ('cuda', 1); 'cuda' -> ('cuda', 0); 'cpu' -> ('cpu', None); 'mps' -> ('mps', None);
    'endpoint' -> ('endpoint', None)."""
    kind, _, idx = device.partition(":")
    if kind not in ("cuda", "cpu", "mps", "endpoint"):
        raise UserError(f"unknown device {device!r}; expected cuda[:N], cpu, mps", None, "--device")
    if kind == "cuda":
        try:
            return kind, int(idx) if idx else 0
        except ValueError:
            raise UserError(f"bad CUDA index in {device!r}", None, "--device") from None
    return kind, None


METERS: Registry[Meter] = Registry("meter")
