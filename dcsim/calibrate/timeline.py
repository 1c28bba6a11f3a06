"""Power timeline: a thread samples the meter's instantaneous power at ~20 Hz for the whole session,
appends it to power.csv (t, device, watts, label of what was running) and keeps recent samples in
memory so each run's energy can be cross-checked against the integral of sampled power."""

from __future__ import annotations

import bisect
import csv
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable


class PowerTimeline:
    """Samples `read()` (device label -> watts) every `interval_s` in a daemon thread."""

    FIELDS = ("t", "device", "power_w", "label")

    def __init__(self, read: Callable[[], dict[str, float]], path: Path, interval_s: float = 0.05,
                 keep_s: float = 900.0) -> None:
        self.read = read
        self.path = path
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
        self._thread = threading.Thread(target=self._run, daemon=True, name="power-timeline")
        self._thread.start()
        return self

    @property
    def active(self) -> bool:
        return self._thread is not None

    def _run(self) -> None:
        nxt = time.time()
        last_flush = nxt
        while not self._stop.is_set():
            t = time.time()
            try:
                p = self.read()
            except Exception:
                self.errors += 1
                p = {}
            if p:
                with self._lock:
                    self.samples.append((t, p))
                for dev, w in p.items():
                    self._w.writerow((f"{t:.3f}", dev, f"{w:.2f}", self.label))
            if t - last_flush > 1.0:
                self._fh.flush()
                last_flush = t
            nxt += self.interval_s
            self._stop.wait(max(0.0, nxt - time.time()))

    def energy_j(self, t0: float, t1: float) -> dict[str, float]:
        """Trapezoid integral of sampled power over [t0, t1] per device (NaN-free only where samples
        bracket the window)."""
        with self._lock:
            samples = list(self.samples)
        # the samples inside the window plus the nearest one on each side of it
        ts = [t for t, _ in samples]
        lo = max(bisect.bisect_left(ts, t0) - 1, 0)
        hi = bisect.bisect_right(ts, t1) + 1
        pts = samples[lo:hi]
        out: dict[str, float] = {}
        if len(pts) < 2:
            return out
        for dev in pts[0][1]:
            series = [(t, p[dev]) for t, p in pts if dev in p]
            # hold the first/last sample's value out to the window's edges where sampling lagged
            if series[0][0] > t0:
                series.insert(0, (t0, series[0][1]))
            if series[-1][0] < t1:
                series.append((t1, series[-1][1]))
            e = 0.0
            for (ta, wa), (tb, wb) in zip(series, series[1:]):
                a, b = max(ta, t0), min(tb, t1)
                if b <= a:
                    continue
                # linear interpolation of power at the clipped ends
                fa = wa + (wb - wa) * (a - ta) / (tb - ta)
                fb = wa + (wb - wa) * (b - ta) / (tb - ta)
                e += 0.5 * (fa + fb) * (b - a)
            out[dev] = e
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
