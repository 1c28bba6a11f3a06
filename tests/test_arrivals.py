"""Arrival processes: statistics of the generated gaps and hourly counts against the requested ones."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dcsim.errors import UserError
from dcsim.scenario import AllAtOnceArrivals, DiurnalArrivals, GammaArrivals, PoissonArrivals, ReplayArrivals
from dcsim.traces.arrivals import arrival_times, diurnal_multiplier
from dcsim.traces.trace import Trace


def trace_of(n: int, arrival_s=None) -> Trace:
    return Trace(np.ones(n, np.int64), np.ones(n, np.int64), arrival_s)


def gaps(times: np.ndarray) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], times]))


def test_poisson_mean_gap_and_cv() -> None:
    t = arrival_times(PoissonArrivals(rate_per_s=4.0), trace_of(200_000), np.random.default_rng(1))
    g = gaps(t)
    assert t.dtype == np.float64 and t.shape == (200_000,) and np.all(np.diff(t) >= 0)
    assert g.mean() == pytest.approx(0.25, rel=0.015)
    assert g.std() / g.mean() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_cv_matches_request(cv: float) -> None:
    t = arrival_times(GammaArrivals(rate_per_s=10.0, cv=cv), trace_of(200_000), np.random.default_rng(2))
    g = gaps(t)
    assert g.mean() == pytest.approx(0.1, rel=0.02)
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.03)


def test_same_seed_same_times_other_seed_other_times() -> None:
    spec = GammaArrivals(rate_per_s=3.0, cv=1.5)
    a = arrival_times(spec, trace_of(1000), np.random.default_rng(7))
    b = arrival_times(spec, trace_of(1000), np.random.default_rng(7))
    c = arrival_times(spec, trace_of(1000), np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


HOURLY = [0, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 6, 5, 4, 3, 3, 3, 2, 2, 1, 1, 1]


def hour_counts(t: np.ndarray, spec: DiurnalArrivals) -> tuple[np.ndarray, float]:
    """Arrivals per hour of day over whole days only, and the number of whole days."""
    days = np.floor(t[-1] / spec.day_s)
    t = t[t < days * spec.day_s]
    hour = np.floor((t / spec.day_s * 24 + spec.start_hour) % 24).astype(int)
    return np.bincount(hour, minlength=24).astype(float), float(days)


def test_diurnal_hourly_counts_follow_the_curve() -> None:
    spec = DiurnalArrivals(mean_rate_per_s=20.0, hourly=HOURLY, day_s=3600.0)
    t = arrival_times(spec, trace_of(200_000), np.random.default_rng(3))
    assert t.shape == (200_000,) and np.all(np.diff(t) >= 0)
    counts, days = hour_counts(t, spec)
    assert days >= 2
    h = np.asarray(HOURLY, float)
    expected = spec.mean_rate_per_s * (spec.day_s / 24) * days * h / h.mean()
    assert counts[0] == 0  # a zero hour gets nothing
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected) + 1)
    assert counts.sum() / (days * spec.day_s) == pytest.approx(20.0, rel=0.02)


def test_diurnal_sine_peaks_at_peak_hour_with_amplitude() -> None:
    spec = DiurnalArrivals(mean_rate_per_s=50.0, amplitude=0.6, peak_hour=15.0, day_s=2400.0)
    t = arrival_times(spec, trace_of(200_000), np.random.default_rng(4))
    counts, days = hour_counts(t, spec)
    edges = np.arange(25.0)
    # expected per hour: integral of 1 + A cos(2 pi (h - peak) / 24) over the hour
    integ = 1.0 + spec.amplitude * 24 / (2 * np.pi) * (
        np.sin(2 * np.pi * (edges[1:] - 15.0) / 24) - np.sin(2 * np.pi * (edges[:-1] - 15.0) / 24)
    )
    expected = spec.mean_rate_per_s * (spec.day_s / 24) * days * integ
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected) + 1)
    assert int(np.argmax(counts)) in (14, 15)  # the hours either side of 15:00


def test_diurnal_start_hour_shifts_the_clock() -> None:
    spec = DiurnalArrivals(mean_rate_per_s=1.0, hourly=HOURLY, start_hour=6.0)
    h = np.asarray(HOURLY, float)
    assert diurnal_multiplier(spec, np.array([0.0]))[0] == pytest.approx(h[6] / h.mean())
    assert diurnal_multiplier(spec, np.array([3 * 3600.0 + 1]))[0] == pytest.approx(h[9] / h.mean())


def test_replay_scales_gaps_and_starts_at_zero() -> None:
    tr = trace_of(4, np.array([10.0, 11.0, 13.0, 13.0]))
    t = arrival_times(ReplayArrivals(time_scale=0.5), tr, np.random.default_rng(0))
    assert list(t) == [0.0, 0.5, 1.5, 1.5]
    assert list(arrival_times(ReplayArrivals(), trace_of(2, np.array([0.0, 2.0])), np.random.default_rng(0))) == [
        0.0,
        2.0,
    ]


def test_replay_without_timestamps_is_a_user_error() -> None:
    with pytest.raises(UserError) as e:
        arrival_times(ReplayArrivals(), trace_of(3), np.random.default_rng(0))
    assert e.value.field == "arrivals.kind"


def test_all_at_once_and_empty_trace() -> None:
    assert list(arrival_times(AllAtOnceArrivals(), trace_of(3), np.random.default_rng(0))) == [0.0, 0.0, 0.0]
    assert arrival_times(PoissonArrivals(rate_per_s=1), trace_of(0), np.random.default_rng(0)).shape == (0,)


def test_a_million_arrivals_is_fast() -> None:
    tr = trace_of(1_000_000)
    rng = np.random.default_rng(5)
    start = time.perf_counter()
    for spec in (
        PoissonArrivals(rate_per_s=100),
        GammaArrivals(rate_per_s=100, cv=3),
        DiurnalArrivals(mean_rate_per_s=100, hourly=HOURLY),
    ):
        assert arrival_times(spec, tr, rng).shape == (1_000_000,)
    assert time.perf_counter() - start < 5.0
