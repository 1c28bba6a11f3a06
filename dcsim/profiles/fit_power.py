"""Power fit: busy power curves from run energies and decode power, idle powers from the source or fallbacks."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from dcsim.errors import UserError
from dcsim.profiles import devices as catalogue
from dcsim.profiles.fit_latency import curve_at, tied_prefill
from dcsim.profiles.fit_meta import FitMeta, from_source
from dcsim.profiles.fit_runs import Runs, Terms, group_weights
from dcsim.profiles.fit_stats import ROBUST, nnls_rel, robust_cost
from dcsim.profiles.measurements import idle_power_w
from dcsim.profiles.profile import Curve, Provenance

# Derived idle rule where neither the source nor the catalogue has a figure: fractions of the power limit
# measured on the project's H100 (70.2 W and 120.1 W of 700 W; devices.CITES['measured-h100-idle']).
IDLE_DEEP_FRAC = 70.2 / 700.0
IDLE_SERVING_FRAC = 120.1 / 700.0


def fit_power_curves(runs: pd.DataFrame, dec: pd.DataFrame, r: Runs, pl: dict[str, np.ndarray], terms: Terms,
                     has_prefill_info: bool, tie: bool, energy_col: str, hi: float | None, lo: float | None = None,
                     per_step: bool = False) -> tuple[Curve | None, Curve, np.ndarray, np.ndarray, float] | None:
    """Power curves from run energies (sum over the fitted step times) and decode-row average power.
    Returns (prefill power or None, decode power, predicted run energies, predicted decode-row power, joules per
    decode step). `lo` floors both curves (the serving idle: a busy device draws no less). `per_step` (run rows
    only) adds a fixed energy per decode step beside power x time: work a step costs whatever its length, as a
    host's CPU spends on each step of an engine it waits on."""
    pf_cols = (["1"] + terms.pf) if has_prefill_info and not tie and len(runs) else []
    dc_cols = ["1"] + terms.dc
    per_step = per_step and len(runs) > 0 and not len(dec)
    steps_per_run = r.per_row(np.ones(len(r.step_b))) if per_step else np.zeros(len(runs))
    blocks_a, blocks_y, blocks_w = [], [], []
    t_pf = pl["prefill"]
    if len(runs):
        step_t = pl["step"]
        feat = {}
        for c in dc_cols:
            sv = {"1": np.ones(len(r.step_b)), "batch": r.step_b, "context": r.step_ctx}[c]
            feat[c] = r.per_row(sv * step_t)
            if tie:  # the prefill is one more step at context T drawing the decode power there
                feat[c] = feat[c] + {"1": np.ones(len(r.b)), "batch": r.b, "context": r.tokens}[c] * t_pf
        pff = {"1": t_pf, "tokens": r.tokens * t_pf, "tokens_sq": r.tokens_sq * t_pf, "batch": r.b * t_pf}
        e = runs[energy_col].to_numpy(float)
        ok = np.isfinite(e) & (e > 0)
        a = np.column_stack([pff[c] for c in pf_cols] + [feat[c] for c in dc_cols]
                            + ([steps_per_run] if per_step else []))
        blocks_a.append(a[ok])
        blocks_y.append(e[ok])
        blocks_w.append(group_weights(runs)[ok])
    ok_p = np.zeros(0, bool)
    if len(dec):
        p = dec["avg_power_w"].to_numpy(float)
        p = np.where(np.isfinite(p), p, dec["energy_device_j"].to_numpy(float) / dec["runtime_s"].to_numpy(float))
        ok = ok_p = np.isfinite(p) & (p > 0)
        dv = {"1": np.ones(len(dec)), "batch": dec["batch"].to_numpy(float), "context": dec["context"].to_numpy(float)}
        a = np.column_stack([np.zeros(len(dec)) for _ in pf_cols] + [dv[c] for c in dc_cols])
        blocks_a.append(a[ok])
        blocks_y.append(p[ok])
        blocks_w.append(group_weights(dec)[ok])
    if not blocks_a or sum(len(y) for y in blocks_y) == 0:
        return None
    a_all, y_all, w_all = np.vstack(blocks_a), np.concatenate(blocks_y), np.concatenate(blocks_w)
    x = nnls_rel(a_all, y_all, w_all)
    npf = len(pf_cols)
    has_runs = len(runs) > 0
    e_meas = runs[energy_col].to_numpy(float) if has_runs else np.zeros(0)
    ok_e = np.isfinite(e_meas) & (e_meas > 0)
    p_meas = blocks_y[-1] if len(dec) else np.zeros(0)

    def curves(v: np.ndarray, top: float | None) -> tuple[Curve | None, Curve]:
        xpf = dict(zip(pf_cols, v[:npf]))
        xdc = dict(zip(dc_cols, v[npf:npf + len(dc_cols)]))
        dc = Curve(intercept=float(xdc["1"]), coef={k: float(xdc[k]) for k in terms.dc}, lo=lo, hi=top)
        if tie and has_runs:
            return tied_prefill(dc, top), dc
        if xpf:
            return Curve(intercept=float(xpf["1"]), coef={k: float(xpf[k]) for k in terms.pf}, lo=lo, hi=top), dc
        return None, dc

    def step_j(v: np.ndarray) -> float:
        return float(v[-1]) if per_step else 0.0

    def predict(pf: Curve | None, dc: Curve, j: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        pe = np.zeros(len(runs))
        if has_runs:  # energy as the simulator computes it: clamped power x time, step by step
            pf_w = curve_at(pf, r.b, r.tokens, r.tokens_sq) if pf is not None else np.zeros(len(r.b))
            pe = pf_w * t_pf + r.per_row(curve_at(dc, r.step_b, r.step_ctx) * pl["step"]) + j * steps_per_run
        pp = curve_at(dc, dec["batch"].to_numpy(float), dec["context"].to_numpy(float)) if len(dec) else np.zeros(0)
        return pe, pp

    def cost(v: np.ndarray, top: float | None) -> np.ndarray:
        pe, pp = predict(*curves(v, top), step_j(v))
        return np.concatenate([pe[ok_e] / e_meas[ok_e] - 1.0, pp[ok_p] / p_meas - 1.0]) * w_all

    best_v, best_top = x, hi
    c0 = robust_cost(cost(x, hi))
    # A ceiling below the power limit where the draw saturates (e.g. at long contexts): refine with it free.
    # start the ceiling at the highest average power measured (energy / time of a run, or a decode row)
    seen = list(p_meas[np.isfinite(p_meas)]) if len(dec) else []
    if has_runs:
        seen += list((e_meas / runs["runtime_s"].to_numpy(float))[ok_e])
    top0 = float(max(seen)) if seen else 0.0
    if hi is not None:
        top0 = min(top0, hi)
    if np.isfinite(top0) and top0 > 0:
        scale = np.concatenate([np.maximum(np.abs(x), 1e-9), [top0]])

        def resid(z: np.ndarray) -> np.ndarray:
            v = z * scale
            return cost(v[:-1], v[-1])

        ub = np.concatenate([np.full(len(x), np.inf), [hi / top0 if hi is not None else np.inf]])
        z0 = np.concatenate([np.ones(len(x)), [min(1.0, ub[-1])]])
        z = z0
        for loss in ({}, ROBUST):
            z = least_squares(resid, z, bounds=(0.0, ub), x_scale="jac", max_nfev=300, **loss).x
        v = z * scale
        c1 = robust_cost(resid(z))
        if c1 < 0.9 * c0:
            best_v, best_top = v[:-1], float(v[-1])
    pw_pf, pw_dc = curves(best_v, best_top)
    pred_e, pred_p = predict(pw_pf, pw_dc, step_j(best_v))
    return pw_pf, pw_dc, pred_e, pred_p, step_j(best_v)


def idle_powers(t: pd.DataFrame, meta: FitMeta, prov: dict[str, Provenance],
                not_covered: list[str]) -> tuple[float, float]:
    """(serving, deep) idle power of the replica: measured by the source, else given, else the catalogue's, else
    derived from the H100's measured ratios; files each one's provenance in prov and any gap in not_covered."""
    g = meta.gpus_per_replica
    dspec = meta.device_spec
    out = {}
    for kind, attr, frac, label in (("idle_serving", "serving_idle", IDLE_SERVING_FRAC, "serving idle"),
                                    ("idle_deep", "deep_idle", IDLE_DEEP_FRAC, "deep idle")):
        key = f"power.{attr}_w"
        m = idle_power_w(t, kind)
        given = getattr(meta, attr)
        cat = getattr(dspec, f"{attr}_w") if dspec else None
        if m is not None:
            out[attr] = m
            prov[key] = from_source(meta.source, f"median of the {kind} windows of the source")
        elif given is not None:
            out[attr] = given[0]
            prov[key] = given[1]
        elif cat is not None:
            out[attr] = cat * g
            prov[key] = Provenance(source=dspec.idle_source, citation=dspec.citation(f"{attr}_w"),
                                   note=f"{cat:g} W per device x {g} (catalogue figure; not from this source)")
            not_covered.append(f"{label} power (from the device catalogue, not this source)")
        elif attr == "serving_idle" and "deep_idle" in out and dspec and dspec.deep_idle_w:
            out[attr] = out["deep_idle"] * IDLE_SERVING_FRAC / IDLE_DEEP_FRAC
            prov[key] = Provenance(source="derived", citation=catalogue.CITES["measured-h100-idle"],
                                   note=f"deep idle x {IDLE_SERVING_FRAC / IDLE_DEEP_FRAC:.3f}, the serving/deep "
                                        "idle ratio measured on an H100")
            not_covered.append(f"{label} power (derived from deep idle by the ratio measured on an H100)")
        elif meta.device.tdp_w:
            out[attr] = frac * meta.device.tdp_w * g
            prov[key] = Provenance(source="derived", citation=catalogue.CITES["measured-h100-idle"],
                                   note=f"{frac:.4f} x power limit {meta.device.tdp_w:g} W x {g}: the fraction "
                                        "measured on an H100")
            not_covered.append(f"{label} power (derived as the fraction of the power limit measured on an H100)")
        else:
            raise UserError(f"no {label} power: not measured by the source, none in the device catalogue and no "
                            "power limit to derive it from", field=key)
    if out["serving_idle"] < out["deep_idle"]:
        out["serving_idle"] = out["deep_idle"]
    return out["serving_idle"], out["deep_idle"]
