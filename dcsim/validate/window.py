"""The metered window both replays share (in-process and against an endpoint): idle before it, one meter window
from the first arrival to `tail_s` after the last request, a sampled power timeline, and the facts a
comparison reads from replay.json."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from dcsim.calibrate.meters import Meter, Reading
from dcsim.calibrate.timeline import PowerTimeline, csv_energy_j


class Window:
    """`with Window(...) as w:` settles, starts the timeline and opens the meter window; `w.now()` is seconds
    since the window opened; `w.close(last_end_s)` idles the tail and reads the window's energy. The timeline
    stops however the block ends."""

    def __init__(self, meter: Meter, out: Path, tail_s: float, settle_s: float, timeline_hz: float) -> None:
        self.meter, self.tail_s, self.settle_s = meter, tail_s, settle_s
        self.timeline = PowerTimeline(meter.power_w, out / "power.csv", 1.0 / timeline_hz,
                                      read_temp=meter.temperature_c)
        self.total: Reading | None = None
        self.window_s = self.last_end_s = math.nan

    def __enter__(self) -> "Window":
        self.timeline.start()
        time.sleep(self.settle_s)  # idle before the window, as a server between bursts
        self.wall0 = time.time()
        self.t0 = time.perf_counter()
        self.meter.begin("window")
        return self

    def __exit__(self, *exc: object) -> None:
        self.timeline.stop()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def close(self, last_end_s: float) -> None:
        """The last request ended at `last_end_s`: idle the tail, then read the whole window's energy."""
        self.last_end_s = last_end_s
        time.sleep(self.tail_s)
        self.total = self.meter.end("window")
        self.window_s = self.now()

    def timeline_share_j(self, intervals: list[tuple[float, float]]) -> float:
        """The window's counter joules that fall in `intervals` (seconds since the window opened), by the sampled
        power's share of the window: read from power.csv once the block has ended and every sample is written."""
        assert self.total is not None, "close() the window first"
        return timeline_share_j(self.timeline.path, self.wall0, self.window_s, intervals, self.total.device_total)

    def facts(self, active_j: float, **extra: object) -> dict:
        """The window's facts for replay.json: length, timing, and the measured total/active/idle energy."""
        assert self.total is not None, "close() the window first"
        t = self.total
        return {"window_s": self.window_s, "last_end_s": self.last_end_s, "tail_s": self.tail_s,
                "settle_s": self.settle_s, "wall_start": self.wall0, **extra,
                "energy_j": t.device_total, "active_j": active_j, "idle_j": t.device_total - active_j,
                "energy_by_device": t.device_j, "host_j": None if math.isnan(t.host_total) else t.host_total}


def timeline_share_j(power_csv: Path, wall0: float, window_s: float, intervals: object, counter_j: float) -> float:
    """Joules of a window's counter energy `counter_j` that fall in `intervals` (seconds from `wall0`), by the
    timeline's share: the counter is the device's own total, the 20 Hz timeline says where in the window it went.
    Taking the timeline's integral as one part and the counter's remainder as the other puts the two meters'
    disagreement (up to 0.45% of a window on the committed H200 replays) all in the other part."""
    a, b = np.array(list(intervals), float).reshape(-1, 2).T
    j = csv_energy_j(power_csv, wall0 + np.r_[a, 0.0], wall0 + np.r_[b, window_s])  # one read: the spans, the window
    part, whole = float(j[:-1].sum()), float(j[-1])
    return counter_j * part / whole if whole > 0 and math.isfinite(counter_j) else part
