"""Arrival processes: one arrival time per request of a trace, from the scenario's `arrivals` spec.

All vectorised numpy: a million arrivals take well under a second. Times are float64 seconds, sorted; request i
of the trace arrives at times[i].
"""

from __future__ import annotations

from pathlib import Path

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

# The longest span of arrivals a run may have, in simulated seconds (about 32 years). Past it the clock (float64
# seconds) resolves less than 0.1 microsecond, and a run that long is a rate typed wrong, not a study.
MAX_SPAN_S = 1e9


def replay(spec: ReplayArrivals, trace: Trace, trace_file: str | Path | None = None,
           scenario_file: str | Path | None = None) -> np.ndarray:
    """The trace's own times, shifted so its first request is at 0, with every gap multiplied by time_scale.
    Errors name the files being read (the scenario and its trace), not the trace's source in its provenance."""
    if trace.arrival_s is None:
        where = f"the trace {trace_file} has none" if trace_file is not None else "this trace has none"
        raise UserError(f"replay needs a trace with arrival times (an arrival_s column); {where}: use poisson, "
                        "gamma, diurnal or all_at_once", scenario_file or trace_file, "arrivals.kind")
    a = np.asarray(trace.arrival_s, np.float64)
    if a.size == 0:
        return a.copy()
    if np.any(np.diff(a) < 0):
        raise UserError("arrival times must be non-decreasing", trace_file, "arrival_s")
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


def arrival_times(spec: ArrivalSpec, trace: Trace, rng: np.random.Generator, trace_file: str | Path | None = None,
                  scenario_file: str | Path | None = None) -> np.ndarray:
    """Arrival time in seconds of each of the trace's requests (float64, sorted, len(trace) values). Arrivals
    spanning more than MAX_SPAN_S (a rate so small that the run would last for ages) are refused, before drawing
    where the rate says so."""
    n = len(trace)
    field = {"replay": "arrivals.time_scale", "poisson": "arrivals.rate_per_s", "gamma": "arrivals.rate_per_s",
             "diurnal": "arrivals.mean_rate_per_s"}.get(spec.kind, "arrivals")
    rate = getattr(spec, "rate_per_s", None) or getattr(spec, "mean_rate_per_s", None)
    if rate is not None and n / rate > MAX_SPAN_S:
        raise UserError(f"{n} requests at {rate:g} per second would arrive over about {n / rate:.3g} s; runs "
                        f"are limited to {MAX_SPAN_S:.0e} s of arrivals (about 32 years): is the rate per second?",
                        scenario_file, field)
    if isinstance(spec, ReplayArrivals):
        times = replay(spec, trace, trace_file, scenario_file)
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
    times = np.ascontiguousarray(times, dtype=np.float64)
    if times.size and not times[-1] <= MAX_SPAN_S:  # NaN and infinity fail too
        raise UserError(f"the arrivals span {times[-1]:.3g} s; runs are limited to {MAX_SPAN_S:.0e} s of arrivals "
                        "(about 32 years)", scenario_file, field)
    return times
