"""A profile's run-to-run spread: the median CV over shapes repeated 3+ times, else pooled over twice-repeated
shapes (given 6 degrees of freedom), so a two-repeat calibration still gives comparisons a band."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from dcsim.profiles.fit_stats import spread_cv


def _runs(pairs: list[tuple[float, ...]]) -> pd.DataFrame:
    rows = [{"kind": "run", "batch": 1, "source": f"s{i}", "n_in": 10 * i, "runtime_s": v, "energy_device_j": 100 * v,
             "energy_host_j": float("nan")} for i, vals in enumerate(pairs) for v in vals]
    return pd.DataFrame(rows)


def test_twice_repeated_shapes_pool_their_spread():
    cv = 0.2 / math.sqrt(2) / 1.1  # (1.0, 1.2): sample sd 0.1414, mean 1.1
    got = spread_cv(_runs([(1.0, 1.2)] * 6))
    assert got == {"latency.run_s": pytest.approx(round(cv, 4)), "energy.run_device_j": pytest.approx(round(cv, 4))}
    # two shapes whose CVs differ: the df-weighted root mean square, not their mean
    got = spread_cv(_runs([(1.0, 1.2)] * 3 + [(1.0, 1.0)] * 3))
    assert got["latency.run_s"] == pytest.approx(round(math.sqrt(cv ** 2 / 2), 4))


def test_too_few_repeats_give_no_spread_and_three_repeats_keep_the_median():
    assert spread_cv(_runs([(1.0, 1.2)] * 5)) == {}  # 5 degrees of freedom: no band rather than a guessed one
    three = spread_cv(_runs([(1.0, 1.1, 1.2)] + [(1.0, 1.2)] * 6))
    assert three["latency.run_s"] == pytest.approx(round(0.1 / 1.1, 4))  # the one shape repeated 3 times
