"""Power timeline: a thread samples the meter's instantaneous power at ~20 Hz for the whole session,
appends it to power.csv (t, device, watts, label of what was running) and keeps recent samples in
memory so each run's energy can be cross-checked against the integral of sampled power. Where the meter
reads a temperature, the same thread appends it once a second to temperature.csv (t, device, temp_c, label)."""

from __future__ import annotations

import bisect
import csv
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np


def integrate(t: np.ndarray, w: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Joules over each window [t0[k], t1[k]] of one device's samples (times `t` ascending, watts `w`): power
    linear between samples (trapezoids), held at the first / last sample's value beyond them."""
    t, w = np.asarray(t, float), np.asarray(w, float)
    cum = np.concatenate(([0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(t))))

    def at(x: np.ndarray) -> np.ndarray:  # the integral from t[0] to x
        x = np.asarray(x, float)
        if len(t) == 1:
            return (x - t[0]) * w[0]
        xc = np.clip(x, t[0], t[-1])
        i = np.clip(np.searchsorted(t, xc, side="right") - 1, 0, len(t) - 2)
        dt = t[i + 1] - t[i]
        u = xc - t[i]
        slope = np.divide(w[i + 1] - w[i], dt, out=np.zeros_like(dt), where=dt > 0)
        inside = cum[i] + w[i] * u + 0.5 * slope * u * u
        return inside + np.minimum(x - t[0], 0.0) * w[0] + np.maximum(x - t[-1], 0.0) * w[-1]

    return at(t1) - at(t0)


def frame_energy_j(power, t0: np.ndarray, t1: np.ndarray) -> dict[str, np.ndarray]:
    """Joules per device over each window [t0[k], t1[k]] (Unix times) from a power.csv's rows (a DataFrame)."""
    return {str(dev): integrate(g["t"].to_numpy(float), g["power_w"].to_numpy(float), t0, t1)
            for dev, g in power.sort_values("t", kind="stable").groupby("device", sort=True)}


def csv_energy_j(path: Path, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Joules over each window [t0[k], t1[k]] (Unix times) from a power.csv, all devices summed."""
    import pandas as pd

    return sum(frame_energy_j(pd.read_csv(path), t0, t1).values(), np.zeros(len(np.atleast_1d(t0))))


class PowerTimeline:
    """Samples `read()` (device label -> watts) every `interval_s` in a daemon thread."""

    FIELDS = ("t", "device", "power_w", "label")

    TEMP_FIELDS = ("t", "device", "temp_c", "label")

    def __init__(self, read: Callable[[], dict[str, float]], path: Path, interval_s: float = 0.05,
                 keep_s: float = 900.0, read_temp: Callable[[], dict[str, float]] | None = None,
                 temp_interval_s: float = 1.0) -> None:
        self.read = read
        self.path = path
        self.read_temp = read_temp
        self.temp_interval_s = temp_interval_s
        self._tw = None
        self.interval_s = interval_s
        self.label = ""
        self.samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=int(keep_s / interval_s) + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> "PowerTimeline":
        if self.read() == {}:
            return self  # meter cannot sample power: no timeline
        new = not self.path.exists()
        self._fh = self.path.open("a", newline="")
        self._w = csv.writer(self._fh)
        if new:
            self._w.writerow(self.FIELDS)
        if self.read_temp is not None and self.read_temp():
            tpath = self.path.with_name("temperature.csv")
            new_t = not tpath.exists()
            self._tfh = tpath.open("a", newline="")
            self._tw = csv.writer(self._tfh)
            if new_t:
                self._tw.writerow(self.TEMP_FIELDS)
        self._thread = threading.Thread(target=self._run, daemon=True, name="power-timeline")
        self._thread.start()
        return self

    @property
    def active(self) -> bool:
        return self._thread is not None

    def _run(self) -> None:
        nxt = time.time()
        last_flush = nxt
        next_temp = nxt
        while not self._stop.is_set():
            t = time.time()
            try:
                p = self.read()
            except Exception:  # noqa: BLE001 - a failed sample is counted, the sampler goes on
                self.errors += 1
                p = {}
            if p:
                with self._lock:
                    self.samples.append((t, p))
                for dev, w in p.items():
                    self._w.writerow((f"{t:.3f}", dev, f"{w:.2f}", self.label))
            if self._tw is not None and t >= next_temp:
                next_temp = t + self.temp_interval_s
                try:
                    for dev, c in self.read_temp().items():
                        self._tw.writerow((f"{t:.3f}", dev, f"{c:.1f}", self.label))
                except Exception:  # noqa: BLE001 - a failed temperature read is counted, the sampler goes on
                    self.errors += 1
            if t - last_flush > 1.0:
                self._fh.flush()
                if self._tw is not None:
                    self._tfh.flush()
                last_flush = t
            nxt += self.interval_s
            self._stop.wait(max(0.0, nxt - time.time()))

    def energy_j(self, t0: float, t1: float) -> dict[str, float]:
        """Integral of sampled power over [t0, t1] per device (`integrate`: a window between or beyond the
        samples takes the nearest ones' values); empty before the first sample."""
        with self._lock:
            samples = list(self.samples)
        # the samples inside the window plus the nearest one on each side of it
        ts = [t for t, _ in samples]
        lo = max(bisect.bisect_left(ts, t0) - 1, 0)
        hi = bisect.bisect_right(ts, t1) + 1
        pts = samples[lo:hi]
        out: dict[str, float] = {}
        if not pts:
            return out
        for dev in pts[0][1]:
            series = np.array([(t, p[dev]) for t, p in pts if dev in p])
            out[dev] = float(integrate(series[:, 0], series[:, 1], np.array([t0]), np.array([t1]))[0])
        return out

    def mean_w(self, t0: float, t1: float) -> dict[str, float]:
        e = self.energy_j(t0, t1)
        return {k: v / (t1 - t0) for k, v in e.items()} if t1 > t0 else {}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._fh.flush()
            self._fh.close()
            if self._tw is not None:
                self._tfh.close()
