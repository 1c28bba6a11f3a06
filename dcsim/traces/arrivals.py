"""Arrival processes: one arrival time per request of a trace, from the scenario's `arrivals` spec.

All vectorised numpy: a million arrivals take well under a second. Times are float64 seconds, sorted; request i
of the trace arrives at times[i].
"""

from __future__ import annotations

import numpy as np

from dcsim.errors import UserError
from dcsim.scenario import (
    AllAtOnceArrivals,
    DiurnalArrivals,
    GammaArrivals,
    PoissonArrivals,
    ReplayArrivals,
)
from dcsim.traces.trace import Trace

ArrivalSpec = ReplayArrivals | PoissonArrivals | GammaArrivals | DiurnalArrivals | AllAtOnceArrivals


def replay(spec: ReplayArrivals, trace: Trace) -> np.ndarray:
    """The trace's own times, shifted so its first request is at 0, with every gap multiplied by time_scale."""
    if trace.arrival_s is None:
        raise UserError(
            "replay needs a trace with arrival times (arrival_s); this trace has none: "
            "use poisson, gamma, diurnal or all_at_once",
            trace.provenance.get("input"),
            "arrivals.kind",
        )
    a = np.asarray(trace.arrival_s, np.float64)
    if a.size == 0:
        return a.copy()
    if np.any(np.diff(a) < 0):
        raise UserError("arrival times must be non-decreasing", trace.provenance.get("input"), "arrival_s")
    return (a - a[0]) * float(spec.time_scale)


def poisson(rate_per_s: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Homogeneous Poisson process: exponential gaps with mean 1/rate; the first request after one gap."""
    return np.cumsum(rng.exponential(1.0 / rate_per_s, n))


def gamma(rate_per_s: float, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Renewal process with gamma gaps: mean 1/rate, coefficient of variation cv (cv > 1 is bursty)."""
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate_per_s * shape)
    return np.cumsum(rng.gamma(shape, scale, n))


def diurnal_multiplier(spec: DiurnalArrivals, t: np.ndarray) -> np.ndarray:
    """Relative rate at simulated times t (mean 1 over a cycle): hourly steps, or 1 + A cos(2pi (h - peak)/24)."""
    hour = (np.asarray(t, np.float64) / spec.day_s * 24.0 + spec.start_hour) % 24.0
    if spec.hourly is not None:
        h = np.asarray(spec.hourly, np.float64)
        h = h / h.mean()
        return h[np.minimum(hour.astype(np.int64), 23)]
    return 1.0 + spec.amplitude * np.cos(2.0 * np.pi * (hour - spec.peak_hour) / 24.0)


def diurnal(spec: DiurnalArrivals, n: int, rng: np.random.Generator) -> np.ndarray:
    """Non-homogeneous Poisson process by thinning (Lewis & Shedler 1979): candidates at the peak rate, each kept
    with probability rate(t) / peak rate. Candidates are drawn in vectorised blocks until n are kept."""
    if spec.hourly is not None:
        h = np.asarray(spec.hourly, np.float64)
        m_max = float(h.max() / h.mean())
    else:
        m_max = 1.0 + spec.amplitude
    lam_max = spec.mean_rate_per_s * m_max
    accept_p = 1.0 / m_max  # long-run fraction kept (the multiplier averages 1 over a cycle)
    out: list[np.ndarray] = []
    have = 0
    t0 = 0.0
    while have < n:
        need = n - have
        block = int(need / accept_p * 1.05) + 64
        cand = t0 + np.cumsum(rng.exponential(1.0 / lam_max, block))
        keep = rng.random(block) * m_max < diurnal_multiplier(spec, cand)
        kept = cand[keep][:need]
        out.append(kept)
        have += kept.size
        t0 = float(cand[-1])
    return np.concatenate(out) if out else np.empty(0)


def arrival_times(spec: ArrivalSpec, trace: Trace, rng: np.random.Generator) -> np.ndarray:
    """Arrival time in seconds of each of the trace's requests (float64, sorted, len(trace) values)."""
    n = len(trace)
    if isinstance(spec, ReplayArrivals):
        times = replay(spec, trace)
    elif isinstance(spec, PoissonArrivals):
        times = poisson(spec.rate_per_s, n, rng)
    elif isinstance(spec, GammaArrivals):
        times = gamma(spec.rate_per_s, spec.cv, n, rng)
    elif isinstance(spec, DiurnalArrivals):
        times = diurnal(spec, n, rng)
    elif isinstance(spec, AllAtOnceArrivals):
        times = np.zeros(n)
    else:
        raise UserError(f"unknown arrival process {type(spec).__name__}", field="arrivals.kind")
    return np.ascontiguousarray(times, dtype=np.float64)
