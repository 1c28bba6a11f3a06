"""macOS `powermetrics` meter: a parser for its text output and a meter that runs it in the background
(needs root) and integrates its power samples over each window. Used on Apple silicon when
zeus-apple-silicon is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from dcsim.calibrate.meters.base import METERS, Meter, MeterUnavailable, Reading

_HEADER = re.compile(r"^\*\*\* Sampled system activity \((?P<when>[^)]*)\) \((?P<ms>[\d.]+)ms elapsed\) \*\*\*")
_POWER = re.compile(r"^(?P<name>[A-Za-z0-9+\- ]+?) Power(?: \([^)]*\))?: (?P<val>[\d.]+) ?(?P<unit>mW|W)\s*$")

# Which powermetrics rails count as the accelerator and which as the host.
DEVICE_RAILS = ("gpu", "ane")
HOST_RAILS = ("cpu", "dram")


@dataclass
class PowerSample:
    """One powermetrics sample: its stated length and the average watts of each rail over it."""

    when: str
    elapsed_s: float
    watts: dict[str, float] = field(default_factory=dict)
    t_end: float | None = None  # host clock when the sample arrived (live meter only)


def _rail(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


class SampleParser:
    """Incremental parser: feed lines, get each sample once the next one (or the end) starts."""

    def __init__(self) -> None:
        self._cur: PowerSample | None = None

    def feed(self, line: str, now: float | None = None) -> PowerSample | None:
        line = line.rstrip("\n")
        m = _HEADER.match(line)
        if m:
            done = self._cur
            self._cur = PowerSample(m["when"], float(m["ms"]) / 1000.0, t_end=now)
            return done
        if self._cur is not None:
            p = _POWER.match(line.strip())
            if p and not line.startswith((" ", "\t")):
                w = float(p["val"]) / (1000.0 if p["unit"] == "mW" else 1.0)
                self._cur.watts[_rail(p["name"])] = w
        return None

    def flush(self) -> PowerSample | None:
        done, self._cur = self._cur, None
        return done


def parse_powermetrics(text: str) -> list[PowerSample]:
    """All samples of a powermetrics text dump, in order."""
    parser = SampleParser()
    out = [s for line in text.splitlines() if (s := parser.feed(line)) is not None]
    last = parser.flush()
    if last is not None:
        out.append(last)
    return out


def energy_j(samples: list[PowerSample], rail: str) -> float:
    """Energy of one rail over the samples: sum of watts x stated sample length."""
    return sum(s.watts.get(rail, 0.0) * s.elapsed_s for s in samples)


def window_energy_j(samples: list[PowerSample], rail: str, t0: float, t1: float) -> float:
    """Energy of a rail inside [t0, t1] from live samples, each covering [t_end - elapsed, t_end],
    pro-rated by overlap."""
    total = 0.0
    for s in samples:
        if s.t_end is None:
            continue
        a, b = s.t_end - s.elapsed_s, s.t_end
        overlap = min(b, t1) - max(a, t0)
        if overlap > 0 and s.elapsed_s > 0:
            total += s.watts.get(rail, 0.0) * overlap
    return total


def powermetrics_usable() -> tuple[bool, str]:
    if sys.platform != "darwin":
        return False, "only on macOS"
    if not shutil.which("powermetrics"):
        return False, "powermetrics not found"
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
        return False, "needs root (run with sudo, or allow passwordless sudo for powermetrics)"
    return True, ""


@METERS.register("powermetrics")
class PowermetricsMeter(Meter):
    """Runs `powermetrics -i interval_ms --samplers cpu_power,gpu_power` and integrates its samples."""

    name = "powermetrics"
    kinds = ("mps",)
    rank = 1

    @classmethod
    def open(cls, kind: str, index: int | None, sync: bool) -> "PowermetricsMeter":
        ok, why = powermetrics_usable()
        if not ok:
            raise MeterUnavailable(f"powermetrics: {why}")
        return cls()

    def __init__(self, interval_ms: int = 100) -> None:
        cmd = ["powermetrics", "-i", str(interval_ms), "--samplers", "cpu_power,gpu_power"]
        if os.geteuid() != 0:
            cmd = ["sudo", "-n", *cmd]
        self.interval_s = interval_ms / 1000.0
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.samples: list[PowerSample] = []
        self._windows: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        parser = SampleParser()
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            s = parser.feed(line, now=time.time())
            if s is not None:
                with self._lock:
                    self.samples.append(s)

    def begin(self, key: str, sync: bool = True) -> None:
        self._windows[key] = time.time()

    def end(self, key: str, sync: bool = True) -> Reading:
        t0, t1 = self._windows.pop(key), time.time()
        deadline = t1 + 3 * self.interval_s + 1.0
        while time.time() < deadline:  # wait for the sample that covers the window's end
            with self._lock:
                if self.samples and (self.samples[-1].t_end or 0) >= t1:
                    break
            time.sleep(self.interval_s / 4)
        with self._lock:
            samples = [s for s in self.samples if s.t_end is not None and s.t_end >= t0]
        return Reading(device_j={r: window_energy_j(samples, r, t0, t1) for r in DEVICE_RAILS},
                       host_j={r: window_energy_j(samples, r, t0, t1) for r in HOST_RAILS})

    def power_w(self) -> dict[str, float]:
        with self._lock:
            last = self.samples[-1] if self.samples else None
        return {r: last.watts.get(r, 0.0) for r in DEVICE_RAILS} if last else {}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
