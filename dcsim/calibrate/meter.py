"""Energy meters: one interface over Zeus (NVML, AMD SMI, RAPL, Apple), our own RAPL reader and macOS
powermetrics, so the sweep driver never cares which hardware it runs on.

A meter measures windows (begin/end by key, windows may overlap) and reports joules per device label
("gpu0", "cpu0", "dram0", "soc_gpu", ...), split into the accelerator doing the work (`device_j`) and the
host around it (`host_j`). `power_w` gives instantaneous watts for the power timeline where supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dcsim.errors import UserError


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


class Meter:
    """Base class: a meter that measures nothing (latency-only runs)."""

    name = "none"

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


def select_meter(device: str, latency_only: bool = False, meter_device: str | None = None) -> Meter:
    """Pick the meter for a device. `meter_device` names what to meter when the work runs elsewhere
    (an endpoint measured from outside: e.g. cuda:0 of this machine). Raises UserError when nothing
    can be read, unless latency_only."""
    if latency_only:
        return Meter()
    kind, idx = parse_device(meter_device or device)
    errors: list[str] = []
    if kind == "endpoint":
        raise UserError("an endpoint run needs --meter-device (the local device the server uses), "
                        "or --latency-only", None, "--meter-device")
    try:
        from dcsim.calibrate.meters.zeus_meter import ZeusMeter

        return ZeusMeter(kind, idx, sync=meter_device is None)
    except ImportError as e:
        errors.append(f"zeus not importable ({e}); pip install 'dcsim[calibrate]'")
    except RuntimeError as e:
        errors.append(f"zeus: {e}")
    if kind == "cpu":
        from dcsim.calibrate.meters.rapl import RaplMeter, rapl_zones

        if rapl_zones():
            return RaplMeter()
        errors.append("RAPL: /sys/class/powercap has no readable intel-rapl zone (needs root on recent kernels)")
    if kind == "mps":
        from dcsim.calibrate.meters.powermetrics import PowermetricsMeter, powermetrics_usable

        ok, why = powermetrics_usable()
        if ok:
            return PowermetricsMeter()
        errors.append(f"powermetrics: {why}")
    raise UserError("no energy meter is readable for this device: " + "; ".join(errors)
                    + ". Pass --latency-only to measure time alone.", None, "--device")
