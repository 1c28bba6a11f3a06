"""Fit the analytic power-cap model of profile.PowerCap to published cap measurements.

The model (see PowerCap): below the phase's uncapped draw P, a cap C sets the clock to
f = ((C - static) / (P - static)) ** (1 / exponent); a phase whose compute-bound share is beta takes
t * (beta / f + 1 - beta) and draws C. The fit evaluates exactly `profile.cap_scaling`, the function the
simulator uses, so the fitted numbers mean in the simulator what they meant in the fit.

Published anchor: Samsi et al. 2023, "From Words to Watts: Benchmarking the Energy Costs of Large Language
Model Inference" (IEEE HPEC 2023), Table III: whole-run energy and time of LLaMA inference at power caps of
250 W (the default), 175 W and 150 W.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from dcsim.profiles.devices import DeviceSpec
from dcsim.profiles.profile import PowerCap, Provenance, cap_scaling

SAMSI_CITATION = (
    "Samsi et al. 2023, 'From Words to Watts: Benchmarking the Energy Costs of Large Language Model Inference', "
    "IEEE HPEC 2023, Table III (power caps 250/175/150 W)"
)


@dataclass(frozen=True)
class PublishedCap:
    """One published cap: whole-run time and energy relative to the uncapped (default-limit) run."""

    cap_w: float
    time_x: float
    energy_x: float


# Table III of Samsi et al. 2023 (default limit 250 W): 175 W cut energy 23.2% for 6.7% more time;
# 150 W cut energy about 33% for 19.5% more time.
SAMSI_DEFAULT_W = 250.0
SAMSI_2023 = (PublishedCap(175.0, 1.067, 1 - 0.232), PublishedCap(150.0, 1.195, 1 - 0.33))

# Dynamic CMOS power ~ C V^2 f with V roughly proportional to f over the DVFS range gives power ~ f^3
# (Hennessy & Patterson, "Computer Architecture: A Quantitative Approach", ch. 1). Fixed, not fitted: with two
# published points the exponent and the static floor cannot both be identified.
EXPONENT = 3.0
# Prefill at long prompts is a chain of large matrix products, compute-bound on every GPU here; the default
# of PowerCap is kept and marked as assumed.
COMPUTE_BOUND_PREFILL = 0.9


@dataclass(frozen=True)
class CapFit:
    """Fitted parameters, as fractions of the default limit so they transfer between devices."""

    static_frac: float
    compute_bound: float
    uncapped_frac: float
    exponent: float
    errors_pct: dict[str, float]

    def max_abs_error_pct(self) -> float:
        return max(abs(v) for v in self.errors_pct.values())


def predict(static_w: float, exponent: float, beta: float, uncapped_w: float, cap_w: float) -> tuple[float, float]:
    """(time_x, energy_x) of a run drawing `uncapped_w` under a cap, as the simulator computes them."""
    pc = PowerCap(min_w=min(cap_w, uncapped_w), max_w=max(cap_w, uncapped_w), default_w=max(cap_w, uncapped_w),
                  static_w=static_w, exponent=exponent)
    s = cap_scaling(pc, cap_w, uncapped_w, beta, "decode")
    power = min(uncapped_w * s.power_x, s.ceiling_w)
    return s.time_x, s.time_x * power / uncapped_w


def fit_samsi(points: tuple[PublishedCap, ...] = SAMSI_2023, default_w: float = SAMSI_DEFAULT_W,
              exponent: float = EXPONENT) -> CapFit:
    """Least squares on the relative errors of time and energy ratios; static floor, compute-bound share and
    uncapped draw (at most the default limit) are free."""

    def residuals(x: np.ndarray) -> list[float]:
        sf, beta, pf = x
        r = []
        for p in points:
            t, e = predict(sf * default_w, exponent, beta, pf * default_w, p.cap_w)
            r += [t / p.time_x - 1.0, e / p.energy_x - 1.0]
        return r

    lo_p = max(p.cap_w for p in points) / default_w + 1e-4  # every published cap must bind
    best = None
    for x0 in ([0.2, 0.5, 0.95], [0.4, 0.3, 0.85], [0.05, 0.9, 1.0]):
        f = least_squares(residuals, x0, bounds=([0.0, 0.0, lo_p], [0.7, 1.0, 1.0]))
        if best is None or f.cost < best.cost:
            best = f
    sf, beta, pf = (float(v) for v in best.x)
    errs = {}
    for p in points:
        t, e = predict(sf * default_w, exponent, beta, pf * default_w, p.cap_w)
        errs[f"time_x@{p.cap_w:g}W"] = 100.0 * (t / p.time_x - 1.0)
        errs[f"energy_x@{p.cap_w:g}W"] = 100.0 * (e / p.energy_x - 1.0)
    return CapFit(sf, beta, pf, exponent, errs)


def power_cap_for(dev: DeviceSpec, fit: CapFit | None = None) -> tuple[PowerCap | None, Provenance, str | None]:
    """The PowerCap section for a device: its limit range from the catalogue, the DVFS parameters from the
    Samsi fit scaled by the device's default limit. None (and the reason) where the range is not known."""
    if dev.cap_min_w is None or dev.cap_max_w is None or dev.cap_default_w is None:
        why = (f"power-limit range of {dev.name} not known from a public source "
               f"(min {dev.cap_min_w}, max {dev.cap_max_w}, default {dev.cap_default_w})")
        return None, Provenance(source="assumed", note=why + "; no power_cap section, so capped runs are refused"), why
    fit = fit or fit_samsi()
    pc = PowerCap(
        min_w=dev.cap_min_w, max_w=dev.cap_max_w, default_w=dev.cap_default_w, method="analytic",
        static_w=round(fit.static_frac * dev.cap_default_w, 1), exponent=fit.exponent,
        compute_bound_prefill=COMPUTE_BOUND_PREFILL, compute_bound_decode=round(fit.compute_bound, 3),
    )
    errs = ", ".join(f"{k} {v:+.1f}%" for k, v in fit.errors_pct.items())
    note = (
        f"limits: min {dev.citation('cap_min_w')}; max/default {dev.citation('cap_max_w')}. DVFS parameters fitted "
        f"by `dcsim.profiles.powercap_fit.fit_samsi` to the published cap ratios: static floor "
        f"{fit.static_frac:.3f} x default limit, compute-bound share {fit.compute_bound:.3f} (used for decode: the "
        f"published runs are generation-dominated), uncapped draw {fit.uncapped_frac:.3f} x default; exponent "
        f"{fit.exponent:g} fixed (P ~ f^3); compute_bound_prefill {COMPUTE_BOUND_PREFILL} assumed. Errors against "
        f"the published ratios: {errs}. Transfer to this device by the fraction of its default limit is an "
        f"assumption."
    )
    return pc, Provenance(source="derived", citation=SAMSI_CITATION, command="dcsim.profiles.powercap_fit.fit_samsi",
                          note=note), None
