"""Our own RAPL reader (Intel/AMD CPUs under Linux), for machines without Zeus: the powercap energy
counters and the wraparound arithmetic they need.

Each zone's `energy_uj` counts up to `max_energy_range_uj` and then starts again from zero, which at a
few hundred watts happens every minute or so. `RaplCounter.update` must therefore run more often than
one wrap period; it accumulates the true energy across any number of wraps as long as it does.
"""

from __future__ import annotations

import threading
from pathlib import Path

from dcsim.calibrate.meters.base import METERS, Meter, MeterUnavailable, Reading

POWERCAP = Path("/sys/class/powercap")


def wrap_delta_uj(previous: int, current: int, max_range_uj: int) -> int:
    """Energy between two readings of a counter that wraps at `max_range_uj` (at most one wrap between
    them): current - previous, plus the range when the counter went backwards."""
    if current >= previous:
        return current - previous
    return current + max_range_uj - previous


def rapl_zones(root: Path = POWERCAP) -> list[Path]:
    """Top-level package zones (intel-rapl:N, not their subzones) whose counter this user can read."""
    zones = []
    if not root.is_dir():
        return zones
    for z in sorted(root.glob("intel-rapl:*")):
        if z.name.count(":") != 1:
            continue
        try:
            int((z / "energy_uj").read_text())
            int((z / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            continue
        zones.append(z)
    return zones


class RaplCounter:
    """One zone's counter, unwrapped: `update()` reads it and adds the energy since the last read."""

    def __init__(self, zone: Path) -> None:
        self.zone = zone
        self.max_range_uj = int((zone / "max_energy_range_uj").read_text())
        self._last = self._read()
        self.total_uj = 0
        self._lock = threading.Lock()

    def _read(self) -> int:
        return int((self.zone / "energy_uj").read_text())

    def update(self) -> int:
        with self._lock:
            cur = self._read()
            self.total_uj += wrap_delta_uj(self._last, cur, self.max_range_uj)
            self._last = cur
            return self.total_uj


@METERS.register("rapl")
class RaplMeter(Meter):
    """Package (and DRAM subzone) energy of every readable RAPL zone, polled by a thread every
    `poll_s` seconds so that no wrap goes unseen."""

    name = "rapl"
    kinds = ("cpu",)
    rank = 1

    @classmethod
    def open(cls, kind: str, index: int | None, sync: bool) -> "RaplMeter":
        if not rapl_zones():
            raise MeterUnavailable("RAPL: /sys/class/powercap has no readable intel-rapl zone (needs root on "
                                   "recent kernels)")
        return cls()

    def __init__(self, root: Path = POWERCAP, poll_s: float = 1.0) -> None:
        self.counters: dict[str, RaplCounter] = {}
        for z in rapl_zones(root):
            pkg = int(z.name.split(":")[1])
            self.counters[f"cpu{pkg}"] = RaplCounter(z)
            for sub in sorted(z.glob(f"{z.name}:*")):
                try:
                    if (sub / "name").read_text().strip() == "dram":
                        self.counters[f"dram{pkg}"] = RaplCounter(sub)
                except OSError:
                    continue
        if not self.counters:
            raise RuntimeError("no readable RAPL zone")
        self._windows: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(poll_s,), daemon=True)
        self._thread.start()

    def _poll(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            for c in self.counters.values():
                c.update()

    def begin(self, key: str, sync: bool = True) -> None:
        self._windows[key] = {k: c.update() for k, c in self.counters.items()}

    def end(self, key: str, sync: bool = True) -> Reading:
        start = self._windows.pop(key)
        return Reading(device_j={k: (c.update() - start[k]) / 1e6 for k, c in self.counters.items()})

    def describe(self) -> dict:
        return {"meter": self.name, "zones": {k: str(c.zone.name) for k, c in self.counters.items()}}

    def close(self) -> None:
        self._stop.set()
