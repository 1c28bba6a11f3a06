"""Fit a profile to a paged engine's mixed-step sweep (rows of kind "step"): each row is one serving step, run
many times over, so its time and energy are measured directly rather than taken apart from whole requests.

A step of B decodes (padded to a graph of G rows) reading C KV tokens, and a prefill chunk of P tokens after H
cached ones, is modelled as the simulator's paged policy composes it (dcsim/sim/batching/paged.py):
    time   = [B > 0] decode_step_s(batch=G, context=C) + [P > 0] prefill_s(tokens=P, tokens_sq=(H+P)^2-H^2, batch=1)
    energy = decode part x decode_w + prefill part x prefill_w
so the fitted curves are the ones the simulation evaluates. On a fused engine (engine.mixed_step: fused, one forward
over a mixed step's tokens) a mixed step takes the sum less an overlap (latency.mixed_overlap_s, fitted to the mixed
steps: their one fixed part), the saved seconds at decode power. A step of M chunks (rows with prefill_chunks) sums
tokens, tokens_sq and prefix over its chunks and adds (M - 1) x a cost per chunk (the curve's `batch` term, taken
off its intercept), fitted where the sweep has steps of several chunks. The time model is linear in its coefficients
and is fitted to all step rows at once (non-negative least squares on relative errors), then, where short chunks
sit on a floor, refitted with the prefill as the larger of the curve and a launch floor (prefill_launch_s: per
step, per extra chunk, per chunk after cached tokens; see _with_prefill_floor); decode power is fitted to
the rows without a chunk and prefill power to the rows without decodes (average power = energy / time), both floored
at the serving idle; the rows that mix both are checked, not fitted. Request-batch rows (kind "run") in the same
table, where present, are predicted with the fitted curves and reported as a check.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dcsim.errors import UserError
from dcsim.profiles.fit_meta import FitMeta, from_source, memory_of
from dcsim.profiles.fit_power import idle_powers
from dcsim.profiles.fit_result import FitResult, dedupe
from dcsim.profiles.fit_runs import Terms
from dcsim.profiles.fit_stats import energy_flags, fit_error, nnls_rel, spread_cv
from dcsim.profiles.profile import Curve, FitError, Latency, Power, Profile, Provenance


def step_features(steps: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per row: time and energy of one step, and the features of its decode and prefill parts."""
    k = steps["n_out"].to_numpy(float)
    b = steps["batch"].to_numpy(float)
    g = steps["graph_batch"].fillna(steps["batch"]).to_numpy(float)
    g = np.where(b > 0, np.maximum(g, b), 0.0)
    p = steps["n_in"].to_numpy(float)
    h = steps["prefill_prefix"].fillna(0.0).to_numpy(float)
    m = steps["prefill_chunks"].fillna(1.0).to_numpy(float) if "prefill_chunks" in steps else np.ones(len(p))
    m = np.where(p > 0, m, 0.0)
    # m chunks of p, p + 1, ..., p + m - 1 tokens, each after h cached: as the simulator sums them over a step's
    # chunks, tokens = sum p_j, tokens_sq = sum (h + p_j)^2 - h^2, prefix = m h and batch (chunks) = m
    s1, s2 = m * (m - 1) / 2.0, (m - 1) * m * (2 * m - 1) / 6.0
    ctx = steps["context"].fillna(0.0).to_numpy(float)
    return {"t": steps["runtime_s"].to_numpy(float) / k, "e": steps["energy_device_j"].to_numpy(float) / k,
            "dec": (b > 0).astype(float), "g": g, "ctx": ctx, "seq": np.where(b > 0, ctx / np.maximum(b, 1.0), 0.0),
            "pf": (p > 0).astype(float), "p": m * p + s1, "sq": m * ((h + p) ** 2 - h ** 2) + 2 * (h + p) * s1 + s2,
            "h": m * h, "m": m, "hp": np.where(h > 0, m, 0.0), "mx": ((b > 0) & (p > 0)).astype(float)}


def _time_design(f: dict[str, np.ndarray], with_sq: bool, with_ctx: bool, with_h: bool,
                 with_m: bool = False, with_ov: bool = False, with_seq: bool = False) -> tuple[np.ndarray, list[str]]:
    cols = [f["dec"], f["dec"] * f["g"]] + ([f["dec"] * f["ctx"]] if with_ctx else [])
    cols += [f["dec"] * f["seq"]] if with_seq else []
    cols += [f["pf"], f["pf"] * f["p"]] + ([f["pf"] * f["sq"]] if with_sq else []) + ([f["pf"] * f["h"]] if with_h
                                                                                         else [])
    cols += [f["pf"] * (f["m"] - 1.0)] if with_m else []
    cols += [-f["mx"]] if with_ov else []  # a fused step's one fixed part: the overlap taken off the sum
    names = (["d0", "dg"] + (["dc"] if with_ctx else []) + (["ds"] if with_seq else []) + ["p0", "pp"]
             + (["psq"] if with_sq else []) + (["ph"] if with_h else []) + (["pm"] if with_m else [])
             + (["ov"] if with_ov else []))
    return np.column_stack(cols), names


def _floor(f: dict[str, np.ndarray], fl: tuple[float, float, float]) -> np.ndarray:
    """The launch-bound floor of each step's prefill: fl = (one chunk, per chunk beyond the first, per chunk after
    a cached prefix)."""
    return fl[0] + fl[1] * (f["m"] - 1.0) + fl[2] * f["hp"]


def _parts(f: dict[str, np.ndarray], x: dict[str, float],
           fl: tuple[float, float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Each step's decode and prefill seconds under coefficients x (the prefill held at its floor, if any; a
    mixed step's decode part less the overlap `ov`, at most the shorter part, as ProfileEvaluator.overlap)."""
    t_dec = f["dec"] * (x["d0"] + x["dg"] * f["g"] + x.get("dc", 0.0) * f["ctx"] + x.get("ds", 0.0) * f["seq"])
    lin = (x["p0"] + x["pp"] * f["p"] + x.get("psq", 0.0) * f["sq"] + x.get("ph", 0.0) * f["h"]
           + x.get("pm", 0.0) * (f["m"] - 1.0))
    t_pf = f["pf"] * (np.maximum(lin, _floor(f, fl)) if fl else lin)
    if x.get("ov"):
        t_dec = t_dec - f["mx"] * np.minimum(x["ov"], np.minimum(t_dec, t_pf))
    return t_dec, t_pf


def _with_prefill_floor(f: dict[str, np.ndarray], x: dict[str, float], a_lin: np.ndarray,
                        names: list[str]) -> tuple[dict[str, float], tuple[float, float, float] | None]:
    """Where short chunks all take about the same time (an eager forward paced by the host's kernel launches, not
    by the GPU), a prefill is the larger of a floor and the linear curve: refit the time model with the floor and
    keep it if it cuts the median relative error by a fifth. The floor is one figure, or, where the sweep has
    steps of several chunks or chunks after a cached prefix, it also grows by a cost per extra chunk and per
    prefixed chunk (each its own launches in every layer), kept if that cuts the one-figure floor's median error
    by a tenth. Returns the coefficients and the floor (one chunk, per extra chunk, per prefixed chunk).

    Which steps sit on the floor is found by alternation: given that set the model is linear (those steps' prefill
    is the floor's, the others' the curve's), so one non-negative least squares fits both; the set is then the
    steps whose floor exceeds their curve, until it stops changing. It starts from each of a few token cut-offs
    (the chunks up to it on the floor) and keeps the best."""
    pf = f["pf"] > 0
    if ((f["pf"] > 0) & (f["dec"] == 0)).sum() < 3:
        return x, None
    is_pf = np.array([n.startswith("p") for n in names])
    has_m = np.unique(f["m"][pf]).size > 1
    has_hp = np.unique(f["hp"][pf] > 0).size > 1
    w = np.ones(len(f["t"]))

    def solve(on: np.ndarray, full: bool) -> tuple[float, dict[str, float], tuple[float, float, float], np.ndarray]:
        extra = [on * 1.0] + ([on * (f["m"] - 1.0)] if full and has_m else []) + ([on * f["hp"]] if full and has_hp
                                                                                   else [])
        a = np.column_stack([np.where(on[:, None] & is_pf[None, :], 0.0, a_lin), *extra])
        z = nnls_rel(a, f["t"], w)
        xx = dict(zip(names, z[:len(names)]))
        rest = list(z[len(names):])
        fl = (float(rest.pop(0)), float(rest.pop(0)) if full and has_m else 0.0,
              float(rest.pop(0)) if full and has_hp else 0.0)
        td, tp = _parts(f, xx, fl)
        lin = _parts(f, xx, None)[1]
        return float(np.median(np.abs((td + tp) / f["t"] - 1.0))), xx, fl, pf & (_floor(f, fl) > lin)

    td, tp = _parts(f, x, None)
    before = float(np.median(np.abs((td + tp) / f["t"] - 1.0)))
    found: dict[bool, tuple] = {}
    for full in (False, True):
        if full and not (has_m or has_hp):
            break
        best = None
        for cut in np.unique(f["p"][pf]):
            on = pf & (f["p"] <= cut)
            for _ in range(30):
                err, xx, fl, nxt = solve(on, full)
                if (nxt == on).all():
                    break
                on = nxt
            if best is None or err < best[0]:
                best = (err, xx, fl)
        found[full] = best
    err, xx, fl = found[False]
    full = True in found and found[True][0] < 0.9 * err
    if full:
        err, xx, fl = found[True]
    err, xx, fl = _polish(f, names, xx, fl, full and has_m, full and has_hp, err)
    if err < 0.8 * before:
        return xx, fl
    return x, None


def _polish(f: dict[str, np.ndarray], names: list[str], x: dict[str, float], fl: tuple[float, float, float],
            with_m: bool, with_hp: bool, err: float) -> tuple[float, dict[str, float], tuple[float, float, float]]:
    """The alternation's fit, refined by a robust (soft-L1) least squares from where it stands, so that a few
    noisy steps do not pull the curve: kept where it lowers the median relative error."""
    from scipy.optimize import least_squares

    k = len(names)

    def unpack(z: np.ndarray) -> tuple[dict[str, float], tuple[float, float, float]]:
        rest = list(z[k + 1:])
        return dict(zip(names, z[:k])), (float(z[k]), float(rest.pop(0)) if with_m else 0.0,
                                         float(rest.pop(0)) if with_hp else 0.0)

    def resid(z: np.ndarray) -> np.ndarray:
        xx, ff = unpack(z)
        td, tp = _parts(f, xx, ff)
        return (td + tp) / f["t"] - 1.0

    z0 = np.array([x[n] for n in names] + [fl[0]] + ([fl[1]] if with_m else []) + ([fl[2]] if with_hp else []))
    res = least_squares(resid, z0, bounds=(0.0, np.inf), x_scale=np.maximum(np.abs(z0), 1e-9), loss="soft_l1",
                        f_scale=0.05)
    got = float(np.median(np.abs(res.fun)))
    if got < err:
        xx, ff = unpack(res.x)
        return got, xx, ff
    return err, x, fl


def _power_ceiling(p: np.ndarray, w: np.ndarray, x0: np.ndarray,
                   cap: float | None) -> tuple[np.ndarray, float] | None:
    """Prefill power that rises with the chunk and then levels off (compute-bound at the clock the power limit
    allows): a line capped at a fitted ceiling (the curve's `hi`), kept where it cuts the median relative error of
    the line alone by a fifth."""
    from scipy.optimize import least_squares

    def resid(z: np.ndarray) -> np.ndarray:
        return np.minimum(z[0] + z[1] * p, z[2]) / w - 1.0

    z0 = np.array([float(x0[0]), float(x0[1]) * 2.0, float(np.max(w))])
    hi = [np.inf, np.inf, cap if cap else np.inf]
    res = least_squares(resid, np.minimum(z0, np.array(hi) - 1e-9), bounds=([0.0, 0.0, 0.0], hi))
    line = np.median(np.abs((x0[0] + x0[1] * p) / w - 1.0))
    if np.median(np.abs(res.fun)) < 0.8 * line:
        return res.x[:2], float(res.x[2])
    return None


def fit_step_profile(t: pd.DataFrame, meta: FitMeta) -> FitResult:
    """A Profile from the step rows of a normalised table (and its idle windows)."""
    steps = t[t["kind"] == "step"].reset_index(drop=True)
    f = step_features(steps)
    if not (f["dec"] > 0).any() or not (f["pf"] > 0).any():
        raise UserError("a step sweep needs steps with decodes and steps with a prefill chunk", field="kind")
    with_ctx = np.unique(f["ctx"][f["dec"] > 0] / np.maximum(f["g"][f["dec"] > 0], 1)).size > 1
    with_sq = np.unique(f["sq"][f["pf"] > 0]).size > 2
    with_h = np.unique(f["h"][f["pf"] > 0]).size > 1
    with_m = np.unique(f["m"][f["pf"] > 0]).size > 1  # steps of several chunks: a cost per chunk beyond the first
    # a fused engine's mixed steps pay one fixed part for both: an overlap fitted where the sweep has mixed steps
    with_ov = meta.engine.mixed_step == "fused" and bool(f["mx"].any())
    # a term per KV token of each sequence, where asked and the sweep's decodes vary in batch at one length
    with_seq = meta.decode_per_seq and with_ctx and np.unique(f["g"][f["dec"] > 0]).size > 2
    a, names = _time_design(f, with_sq, with_ctx, with_h, with_m, with_ov, with_seq)
    if len(np.unique(steps["source"].str.replace(r"-r\d+$", "", regex=True))) < a.shape[1] + 1:
        raise UserError(f"{len(steps)} step rows cannot fix {a.shape[1]} latency coefficients; measure more shapes")
    x = dict(zip(names, nnls_rel(a, f["t"], np.ones(len(f["t"])))))
    x, floor = _with_prefill_floor(f, x, a, names)
    decode_s = Curve(intercept=x["d0"], coef={"batch": x["dg"], **({"context": x["dc"]} if with_ctx else {}),
                                              **({"context_per_seq": x["ds"]} if with_seq else {})})
    # the per-chunk term is fitted on (chunks - 1) so the intercept stays a one-chunk step's; in the simulator's
    # curve (batch = chunks) that is batch x pm with pm taken off the intercept
    pm = x.get("pm", 0.0)
    prefill_s = Curve(intercept=x["p0"] - pm, coef={"tokens": x["pp"], **({"tokens_sq": x["psq"]} if with_sq else {}),
                                                    **({"prefix": x["ph"]} if with_h else {}),
                                                    **({"batch": pm} if with_m else {})},
                      lo=floor[0] if floor and not any(floor[1:]) else None)
    launch = (Curve(intercept=floor[0] - floor[1], coef={"batch": floor[1], "prefixed": floor[2]})
              if floor and any(floor[1:]) else None)
    t_dec, t_pf = _parts(f, x, floor)
    pred_t = t_dec + t_pf

    prov: dict[str, Provenance] = {}
    not_covered = list(meta.not_covered)
    src = meta.source
    errors: dict[str, FitError] = {"latency.step_s": fit_error(pred_t, f["t"])}
    how = "fitted with the prefill curve to the time of every measured step (decode-only, prefill-only, mixed)"
    ov_note = (f"; a step mixing decodes and chunks is one forward on this engine (mixed_step fused): it takes the "
               f"decode step plus the prefill less latency.mixed_overlap_s, {x['ov'] * 1e3:.2f} ms" if with_ov else "")
    prov["latency.decode_step_s"] = from_source(src, how + "; batch is the padded graph batch, context the live KV "
                                                     "tokens" + ov_note)
    floor_note = ""
    if launch is not None:
        floor_note = (f"; at least prefill_launch_s: {floor[0] * 1e3:.1f} ms a one-chunk step, "
                      f"+{floor[1] * 1e3:.2f} ms a chunk beyond the first, +{floor[2] * 1e3:.2f} ms a chunk after "
                      "cached tokens (an eager forward paced by the host's launches)")
    elif floor:
        floor_note = (f"; floor (lo) {floor[0] * 1e3:.1f} ms: chunks up to a size take that long whatever their "
                      "tokens (an eager forward paced by the host)")
    prov["latency.prefill_s"] = from_source(src, how + "; a chunk after h cached tokens adds (h+p)^2 - h^2 to "
                                                 "tokens_sq and h to prefix" + floor_note)
    if not with_ctx:
        not_covered.append("decode-step dependence on context length (one context per batch in this sweep)")

    # ---- power: decode-only and prefill-only rows, floored at the serving idle ---------------------------------
    idle_prov: dict[str, Provenance] = {}
    idle_gaps: list[str] = []
    serving, deep = idle_powers(t, meta, idle_prov, idle_gaps)
    floor = round(serving, 2)
    cap_hi = meta.device.tdp_w * meta.gpus_per_replica if meta.device.tdp_w else None
    has_e = np.isfinite(f["e"])
    w = np.where(has_e, f["e"] / f["t"], np.nan)
    dec_only = has_e & (f["dec"] > 0) & (f["pf"] == 0)
    pf_only = has_e & (f["pf"] > 0) & (f["dec"] == 0)
    if dec_only.sum() < 3 or pf_only.sum() < 2:
        raise UserError(f"energy on {int(dec_only.sum())} decode-only and {int(pf_only.sum())} prefill-only steps "
                        "(rows under 0.5 s carry none): too few to fit power; run more steps per row",
                        field="energy_device_j")
    cd = [np.ones(dec_only.sum()), f["g"][dec_only]] + ([f["ctx"][dec_only]] if with_ctx else [])
    xd = nnls_rel(np.column_stack(cd), w[dec_only], np.ones(dec_only.sum()))
    decode_w = Curve(intercept=float(xd[0]), coef={"batch": float(xd[1]),
                                                   **({"context": float(xd[2])} if with_ctx else {})},
                     lo=floor, hi=cap_hi)
    cp = np.column_stack([np.ones(pf_only.sum()), f["p"][pf_only]])
    xp = nnls_rel(cp, w[pf_only], np.ones(pf_only.sum()))
    pf_top = _power_ceiling(f["p"][pf_only], w[pf_only], xp, cap_hi)
    if pf_top is not None:
        xp, top = pf_top
    prefill_w = Curve(intercept=float(xp[0]), coef={"tokens": float(xp[1])}, lo=floor,
                      hi=top if pf_top is not None else cap_hi)
    w_dec = np.clip(decode_w.intercept + xd[1] * f["g"] + (xd[2] * f["ctx"] if with_ctx else 0.0), floor,
                    cap_hi or np.inf)
    w_pf = np.clip(prefill_w.intercept + xp[1] * f["p"], floor, prefill_w.hi or np.inf)
    pred_e = t_dec * w_dec + t_pf * w_pf
    errors["energy.step_device_j"] = fit_error(pred_e[has_e], f["e"][has_e])
    mixed = has_e & (f["dec"] > 0) & (f["pf"] > 0)
    if mixed.any():
        errors["energy.mixed_step_device_j"] = fit_error(pred_e[mixed], f["e"][mixed])
        errors["latency.mixed_step_s"] = fit_error(pred_t[f["dec"] * f["pf"] > 0], f["t"][f["dec"] * f["pf"] > 0])
    prov["power.decode_w"] = from_source(src, "fitted to the average power of the decode-only steps (energy / time)")
    prov["power.prefill_w"] = from_source(src, "fitted to the average power of the prefill-only steps (energy / time)")
    prov.update(idle_prov)
    not_covered.extend(idle_gaps)
    not_covered.append("host (CPU, DRAM) power")
    memory, mem_prov = memory_of(meta)
    prov["memory"] = mem_prov
    prov["source"] = src
    if meta.clock is not None and meta.clock_provenance is not None:
        prov["clock"] = meta.clock_provenance
    if meta.cold_start is not None and meta.cold_start_provenance is not None:
        prov["cold_start"] = meta.cold_start_provenance
    vr = {"batch": (float(steps["batch"][steps["batch"] > 0].min()), float(steps["batch"].max())),
          "prefill_tokens": (float(steps["n_in"][steps["n_in"] > 0].min()), float(steps["n_in"].max()))}
    spread = spread_cv(t)
    point = steps["source"].str.replace(r"-r\d+$", "", regex=True)
    for key, col in (("latency.step_s", "t"), ("energy.step_device_j", "e")):  # each step point's repeats
        g = steps.assign(_v=f[col]).dropna(subset=["_v"]).groupby(point)["_v"]
        cv = (g.std() / g.mean()).dropna()
        if len(cv):
            spread[key] = round(float(cv.median()), 4)
    profile = Profile(
        name=meta.name or "unnamed", device=meta.device, model=meta.model, engine=meta.engine,
        gpus_per_replica=meta.gpus_per_replica,
        latency=Latency(prefill_s=prefill_s, decode_step_s=decode_s, prefill_launch_s=launch,
                        mixed_overlap_s=x["ov"] if with_ov else None),
        power=Power(prefill_w=prefill_w, decode_w=decode_w, serving_idle_w=floor, deep_idle_w=round(deep, 2)),
        power_cap=meta.power_cap, clock=meta.clock, cold_start=meta.cold_start, memory=memory, provenance=prov,
        valid_range=vr, fit_error=errors,
        spread_cv=spread, not_covered=dedupe(not_covered), notes="\n".join(meta.notes + energy_flags(errors)) or None,
    )
    rows = steps.assign(pred_step_s=pred_t, step_s=f["t"], pred_step_j=pred_e, step_j=f["e"])
    return FitResult(profile=profile, rows=rows, terms=Terms(pf=[], dc=[]))
