"""Queueing theory: one fcfs replica under Poisson arrivals matches Pollaczek-Khinchine (M/D/1, M/M/1)."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import scenario, write_profile, write_trace

from dcsim.results import requests_table
from dcsim.scenario import Scenario
from dcsim.sim.engine import simulate

N = 200_000


def mean_wait(tmp_path, n_in, rate, seed=3):
    # Service = prefill only (n_out = 1): 0.001 s per prompt token, no intercept.
    prof = write_profile(tmp_path, prefill=(0.0, 0.001))
    tr = write_trace(tmp_path, n_in, np.ones_like(n_in))
    sc = Scenario.model_validate(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1}],
                                          arrivals={"kind": "poisson", "rate_per_s": rate}, seed=seed))
    req = requests_table(simulate(sc))
    return req["wait_s"].mean()


def test_md1_mean_wait(tmp_path):
    s = 0.5  # 500 tokens -> 0.5 s each
    lam = 1.4  # rho = 0.7
    w = mean_wait(tmp_path, np.full(N, 500), lam)
    rho = lam * s
    theory = rho * s / (2 * (1 - rho))  # M/D/1
    assert w == pytest.approx(theory, rel=0.03)


def test_mm1_mean_wait(tmp_path):
    rng = np.random.default_rng(7)
    n_in = rng.geometric(1 / 500, size=N)  # service in 1 ms steps: geometric ~ exponential, mean 0.5 s
    lam = 1.2
    w = mean_wait(tmp_path, n_in, lam)
    s = n_in * 0.001
    rho = lam * s.mean()
    mm1 = rho / (1 / s.mean() - lam)  # M/M/1: Wq = rho / (mu - lambda)
    pk = lam * np.mean(s**2) / (2 * (1 - rho))  # exact M/G/1 for this discrete service
    assert w == pytest.approx(pk, rel=0.05)
    assert w == pytest.approx(mm1, rel=0.05)
    # and a wrong (deterministic) model would be far off:
    assert abs(w - rho * s.mean() / (2 * (1 - rho))) / w > 0.4
