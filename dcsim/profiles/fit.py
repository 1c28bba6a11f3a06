"""Measurement table -> Profile: one fit for every source (published sweeps, leaderboards, our own runs).

The fitted curves are exactly the ones the simulator evaluates (profile.py):
  prefill_s(tokens, tokens_sq, batch), decode_step_s(batch, context)  and the same features for power.
A row of kind "run" (batch requests of n_in prompt and n_out output tokens, timed end to end) is
  runtime = prefill_s(B*n_in, B*n_in^2, B) + sum_{j=0}^{n_out-2} decode_step_s(B, B*(n_in+1+j)),
which is linear in the coefficients, so time is fitted by non-negative linear least squares on relative
errors; ttft_s and tpot_s, where given, add equations for the prefill and the mean decode step (with a fixed
per-run overhead after the first token where the output length varies: it is part of prefill_s, see LatencyModel),
and the prefill and decode curves may get floors (lo). A row of kind
"decode" gives one decode step (runtime_s) at context B*(n_in + n_out/2) and its average power. Energy is
then fitted with the fitted times, so the simulator's energy (sum of power x time) is what is minimised.
Every term gets a provenance, a fit error on the points it was fitted to, and terms the source cannot give
are filled from a stated assumption and listed in not_covered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dcsim.errors import UserError
from dcsim.profiles import devices as catalogue
from dcsim.profiles.fit_latency import LatencyModel, assumed_prefill, curve_at
from dcsim.profiles.fit_meta import FitMeta, from_source, memory_of, meta_from_dict
from dcsim.profiles.fit_power import fit_power_curves, idle_powers
from dcsim.profiles.fit_result import FitResult, dedupe
from dcsim.profiles.fit_runs import Runs, Terms, choose_terms
from dcsim.profiles.fit_stats import energy_flags, shape_mean_error, spread_cv
from dcsim.profiles.fit_steps import fit_step_profile
from dcsim.profiles.measurements import normalise
from dcsim.profiles.profile import Curve, EngineInfo, FitError, HostPower, Latency, Power, Profile, Provenance

# what the CLI, the validators and users import from here
__all__ = ["FitMeta", "FitResult", "fit_profile", "held_cache_lengths", "meta_from_dict"]


def fit_profile(table: pd.DataFrame, meta: FitMeta) -> FitResult:
    """Fit every curve of a Profile to one measurement table (see module docstring)."""
    notes = list(meta.notes)
    t = _usable_rows(table, meta, notes)
    if (t["kind"] == "step").any():  # a paged engine's mixed-step sweep: each step measured directly
        return fit_step_profile(t, meta)
    f = _Fit.of(t, meta, notes)
    lm, prefill_s, decode_s = _fit_latency(f)
    pl = _latency_predictions(f, lm, prefill_s, decode_s)
    # idle first: a busy device draws at least its serving idle, which floors the power curves (a prefill too short
    # to weigh in run energies otherwise fits near 0 W); its provenance and gaps are filed where they always were
    idle_prov: dict[str, Provenance] = {}
    idle_gaps: list[str] = []
    serving, deep = idle_powers(t, meta, idle_prov, idle_gaps)
    power_pf, power_dc = _fit_device_power(f, pl, round(serving, 2))  # floored as the profile records serving idle
    host = _fit_host_power(f, pl)
    f.notes += energy_flags(f.errors)
    f.prov.update(idle_prov)
    f.not_covered.extend(idle_gaps)
    return _result(f, Latency(prefill_s=prefill_s, decode_step_s=decode_s),
                   Power(prefill_w=power_pf, decode_w=power_dc, serving_idle_w=round(serving, 2),
                         deep_idle_w=round(deep, 2), host=host))


def _usable_rows(table: pd.DataFrame, meta: FitMeta, notes: list[str]) -> pd.DataFrame:
    """The table normalised, without warm-ups or the shapes whose prompt + output exceed the context window (noted)."""
    t = normalise(table)
    t = t[~t["warmup"]].reset_index(drop=True)
    over = (t["kind"].isin(["run", "decode"])) & (t["n_in"] + t["n_out"] > meta.model.max_context)
    over = t["source"].isin(set(t.loc[over, "source"])) & t["kind"].isin(["run", "decode"])  # whole shapes
    if over.any():
        shapes = sorted(set(t.loc[over, "source"]))
        notes.append(f"{int(over.sum())} rows ({len(shapes)} shapes: {', '.join(shapes)}) left out: prompt + output "
                     f"exceed the model's {meta.model.max_context}-token context window")
        t = t[~over].reset_index(drop=True)
    return t


@dataclass
class _Fit:
    """What the steps of one fit of run and decode rows share: the rows (gaining pred_* columns step by step), the
    terms they identify, and the provenance, errors, gaps and notes filed so far (in the order the profile lists)."""

    t: pd.DataFrame
    meta: FitMeta
    runs: pd.DataFrame
    dec: pd.DataFrame
    r: Runs
    engine: EngineInfo
    dec_ctx: np.ndarray
    terms: Terms
    notes: list[str]
    not_covered: list[str]
    tie: bool
    has_prefill_info: bool
    prov: dict[str, Provenance] = field(default_factory=dict)
    errors: dict[str, FitError] = field(default_factory=dict)

    @staticmethod
    def of(t: pd.DataFrame, meta: FitMeta, notes: list[str]) -> "_Fit":
        runs = t[t["kind"] == "run"].reset_index(drop=True)
        dec = t[t["kind"] == "decode"].reset_index(drop=True)
        if runs.empty and dec.empty:
            raise UserError("no run or decode rows to fit (only idle or warm-up rows)", field="kind")
        r = Runs.of(runs)
        engine = _static_cache(runs, meta.engine)
        dec_ctx = (dec["batch"] * (dec["n_in"] + dec["n_out"] / 2.0)).to_numpy(float)
        terms = choose_terms(runs, dec, r, dec_ctx)
        return _Fit(t=t, meta=meta, runs=runs, dec=dec, r=r, engine=engine, dec_ctx=dec_ctx, terms=terms, notes=notes,
                    not_covered=list(meta.not_covered), tie=meta.tie_prefill_to_decode and len(runs) > 0,
                    has_prefill_info=len(runs) > 0)


def _fit_latency(f: _Fit) -> tuple[LatencyModel, Curve, Curve]:
    """The latency curves (a roofline prefill where the source has none), with their provenance and gaps."""
    t, meta, runs, dec, r, dec_ctx, terms = f.t, f.meta, f.runs, f.dec, f.r, f.dec_ctx, f.terms
    tie, has_prefill_info, prov, not_covered, src = f.tie, f.has_prefill_info, f.prov, f.not_covered, meta.source
    lm = LatencyModel(runs, dec, r, dec_ctx, terms, tie, has_prefill_info)
    n_groups = len(set(zip(t["kind"], t["batch"], t["source"])))
    n_free = len(lm.pf_cols) + len(lm.dc_cols)
    if n_groups < n_free + 1:
        raise UserError(f"{n_groups} measured shapes cannot fix {n_free} latency coefficients; measure more shapes")
    prefill_s, decode_s, _ = lm.fit()
    floor_note = (f"; floor (lo) {decode_s.lo:.4g} s: the step time does not fall below it at small batch or "
                  "context" if decode_s.lo else "")
    if tie:
        prov["latency.prefill_s"] = from_source(src, "tied to the decode curve (no KV cache: a prefill of T tokens "
                                                     "is a forward pass over context T), fitted with it to "
                                                     "end-to-end run times")
    elif prefill_s is not None:
        ov = lm.overhead_s
        prov["latency.prefill_s"] = from_source(src, "fitted jointly with decode to end-to-end run times"
                                                + (" and time to first token" if runs["ttft_s"].notna().any() else "")
                                                + (f"; floor (lo) {prefill_s.lo:.4g} s: short prompts do not go below "
                                                   "it" if prefill_s.lo else "")
                                                + (f"; includes a fixed {ov * 1000:.1f} ms per run that the runs spend "
                                                   "after the first token (TPOT falls with output length): the "
                                                   "measured TTFT is prefill_s minus it, so a simulated TTFT is that "
                                                   "much late while the request time is right" if ov > 1e-4 else ""))
    else:
        prefill_s, note = assumed_prefill(meta, decode_s)
        prov["latency.prefill_s"] = Provenance(source="assumed", citation=catalogue.CITES["kaplan2020"], note=note)
        not_covered.append("prefill time: the source has no prefill sweep (" + note + ")")
    how = " to decode-only rows" if len(dec) else " jointly with prefill"
    prov["latency.decode_step_s"] = from_source(src, "fitted" + how + floor_note
                                                + ("; no context term: context is not separable from batch in this "
                                                   "source" if "context" not in terms.dc else ""))
    if "context" not in terms.dc:
        not_covered.append("decode-step dependence on context length (not separable from batch in this source)")
    if "batch" not in terms.dc:
        not_covered.append("batching: every measured run had the same batch size, so decode_step_s and decode_w "
                           "do not depend on batch")
    return lm, prefill_s, decode_s


def _latency_predictions(f: _Fit, lm: LatencyModel, prefill_s: Curve, decode_s: Curve) -> dict[str, np.ndarray]:
    """The fitted times of every row (pred_* columns on the rows) and the latency fit errors."""
    runs, dec, dec_ctx, has_prefill_info, errors = f.runs, f.dec, f.dec_ctx, f.has_prefill_info, f.errors
    pl = lm.predict(prefill_s if has_prefill_info else None, decode_s, lm.overhead_s)
    runs = runs.assign(pred_runtime_s=pl["run"], pred_prefill_s=pl["prefill"], pred_ttft_s=pl["ttft"],
                       pred_tpot_s=pl["tpot"])
    dec = dec.assign(context=dec_ctx, pred_runtime_s=pl["dec"])
    if len(runs):
        errors["latency.run_s"] = shape_mean_error(runs, "pred_runtime_s", "runtime_s")
        if runs["ttft_s"].notna().any():
            # TTFT as the fit decomposes it (prefill_s less the per-run overhead, if any) ...
            errors["latency.prefill_s"] = shape_mean_error(runs.dropna(subset=["ttft_s"]), "pred_ttft_s", "ttft_s")
            if lm.overhead_s > 1e-4:  # ... and as a simulation reports it (the whole prefill_s)
                errors["latency.ttft_as_simulated_s"] = shape_mean_error(runs.dropna(subset=["ttft_s"]),
                                                                     "pred_prefill_s", "ttft_s")
        if runs["tpot_s"].notna().any():
            errors["latency.tpot_s"] = shape_mean_error(runs.dropna(subset=["tpot_s"]), "pred_tpot_s", "tpot_s")
    if len(dec):
        errors["latency.decode_step_s"] = shape_mean_error(dec, "pred_runtime_s", "runtime_s")
    f.runs, f.dec = runs, dec
    return pl


def _fit_device_power(f: _Fit, pl: dict[str, np.ndarray], floor: float) -> tuple[Curve, Curve]:
    """The device's prefill and decode power curves, floored at the serving idle, with provenance and fit errors."""
    meta, runs, dec, r, terms, tie, has_prefill_info = f.meta, f.runs, f.dec, f.r, f.terms, f.tie, f.has_prefill_info
    prov, errors, not_covered, src = f.prov, f.errors, f.not_covered, meta.source
    cap_hi = meta.device.tdp_w * meta.gpus_per_replica if meta.device.tdp_w else None
    pw = fit_power_curves(runs, dec, r, pl, terms, has_prefill_info, tie, "energy_device_j", cap_hi, lo=floor)
    if pw is None:
        raise UserError("no energy or power measured on run or decode rows (a --latency-only run, or runs too "
                        "short for the energy counter); cannot fit power",
                        field="energy_device_j")
    power_pf, power_dc, pred_e, pred_p, _ = pw
    if len(runs):
        runs = runs.assign(pred_energy_device_j=pred_e)
    if len(dec):
        p = dec["avg_power_w"].to_numpy(float)
        p = np.where(np.isfinite(p), p, dec["energy_device_j"].to_numpy(float) / dec["runtime_s"].to_numpy(float))
        dec = dec.assign(meas_avg_power_w=p, pred_avg_power_w=pred_p)
    if power_pf is None:
        pwf = cap_hi if cap_hi else float(power_dc.intercept)
        power_pf = Curve(intercept=float(pwf), hi=cap_hi)
        prov["power.prefill_w"] = Provenance(
            source="assumed", citation=catalogue.CITES["measured-h100-idle"].split(" with ")[0],
            note="prefill draws the power limit of every GPU of the replica (compute-bound; a bf16 matrix-product "
                 "burst drew 697 W of 700 W on an H100, profiles/measured/h100-idle-2026-11-23)")
        not_covered.append("prefill power (assumed at the power limit)")
    elif tie:
        prov["power.prefill_w"] = from_source(src, "tied to the decode power curve (no KV cache), fitted with it to "
                                                   "run energy")
    elif len(runs) and np.all(curve_at(power_pf, r.b, r.tokens, r.tokens_sq) <= floor):
        # the prefills were too short a part of the runs for their power to show: the floor is a bound, not a fit
        prov["power.prefill_w"] = from_source(src, f"held at its floor, the serving idle {floor:.2f} W, at every "
                                                   "measured prompt: the prefills were too short a part of the run "
                                                   "energies to weigh (a lower bound)")
        not_covered.append("prefill power: not identifiable from these runs (held at the serving-idle floor, a "
                           "lower bound)")
    else:
        prov["power.prefill_w"] = from_source(src, "fitted to run energy with the fitted prefill and decode times")
    prov["power.decode_w"] = from_source(src, "fitted to " + ("decode-row average power" if len(dec) else
                                                              "run energy with the fitted times"))
    if len(runs) and runs["energy_device_j"].notna().any():
        errors["energy.run_device_j"] = shape_mean_error(runs.dropna(subset=["energy_device_j"]),
                                                     "pred_energy_device_j", "energy_device_j")
    if len(dec):
        errors["power.decode_w"] = shape_mean_error(dec, "pred_avg_power_w", "meas_avg_power_w")
    f.runs, f.dec = runs, dec
    return power_pf, power_dc


def _fit_host_power(f: _Fit, pl: dict[str, np.ndarray]) -> HostPower | None:
    """The host's (CPU) power curves, where at least half the run rows measured its energy."""
    meta, runs, dec, r, terms, tie = f.meta, f.runs, f.dec, f.r, f.terms, f.tie
    prov, errors, not_covered, src = f.prov, f.errors, f.not_covered, meta.source
    host = None
    if len(runs) and runs["energy_host_j"].notna().mean() >= 0.5:
        hw = fit_power_curves(runs, dec.iloc[0:0], r, pl, terms, True, tie, "energy_host_j", None, per_step=True)
        if hw is not None and hw[0] is not None:
            host = HostPower(prefill_w=hw[0], decode_w=hw[1], idle_w=meta.host_idle_w[0],
                             decode_step_j=round(hw[4], 6))
            prov["power.host"] = from_source(src, "fitted to host (CPU) energy of the runs as power x time plus "
                                                  f"{hw[4]:.4g} J per decode step; idle: " + meta.host_idle_w[1])
            runs = runs.assign(pred_energy_host_j=hw[2])
            errors["energy.run_host_j"] = shape_mean_error(runs.dropna(subset=["energy_host_j"]),
                                                       "pred_energy_host_j", "energy_host_j")
    if host is None:
        not_covered.append("host (CPU, DRAM) power")
    f.runs = runs
    return host


def _result(f: _Fit, latency: Latency, power: Power) -> FitResult:
    """The profile (memory, ranges and spread added) and the rows with their predictions."""
    meta, runs, dec, r, t, prov, src = f.meta, f.runs, f.dec, f.r, f.t, f.prov, f.meta.source
    errors, not_covered, notes = f.errors, f.not_covered, f.notes
    memory, mem_prov = memory_of(meta)
    prov["memory"] = mem_prov
    prov["source"] = src
    if meta.power_cap is not None and meta.power_cap_provenance is not None:
        prov["power_cap"] = meta.power_cap_provenance
    if meta.clock is not None and meta.clock_provenance is not None:
        prov["clock"] = meta.clock_provenance
    if meta.cold_start is not None and meta.cold_start_provenance is not None:
        prov["cold_start"] = meta.cold_start_provenance
    profile = Profile(
        name=meta.name or "unnamed", device=meta.device, model=meta.model, engine=f.engine,
        gpus_per_replica=meta.gpus_per_replica, latency=latency, power=power,
        power_cap=meta.power_cap, clock=meta.clock, cold_start=meta.cold_start, memory=memory, provenance=prov,
        valid_range=_valid_range(runs, dec, r),
        fit_error=errors, spread_cv=spread_cv(t), not_covered=dedupe(not_covered),
        notes="\n".join(notes) if notes else None,
    )
    return FitResult(profile=profile, rows=pd.concat([runs, dec], ignore_index=True), terms=f.terms)


def held_cache_lengths(runs: pd.DataFrame) -> dict[int, int] | None:
    """The static cache each batch size of the runs held (its longest), or None where no run row records one
    (a dynamic cache); a table mixing the two is refused: one profile describes one engine."""
    cache = runs["cache_len"] if "cache_len" in runs else pd.Series(np.nan, index=runs.index)
    known = cache.notna()
    if not known.any():
        return None
    if not known.all():
        raise UserError(f"{int((~known).sum())} of {len(runs)} run rows record no static cache length while the "
                        "others do: fit one engine at a time", field="cache_len")
    return {int(b): int(v) for b, v in cache.groupby(runs["batch"]).max().items()}


def _static_cache(runs: pd.DataFrame, engine: EngineInfo) -> EngineInfo:
    """The engine with the static cache lengths its runs held, where they held one."""
    lengths = held_cache_lengths(runs)
    return engine if lengths is None else engine.model_copy(update={"cache_lengths": lengths})


def _valid_range(runs: pd.DataFrame, dec: pd.DataFrame, r: Runs) -> dict[str, tuple[float, float]]:
    vr: dict[str, tuple[float, float]] = {}
    bs, ctx, outs = [], [], []
    if len(runs):
        vr["prefill_tokens"] = (float(r.tokens.min()), float(r.tokens.max()))
        bs.append(r.b)
        ctx += [r.b * (r.n + 1), r.b * (runs["n_in"] + runs["n_out"] - 1).to_numpy(float)]
        outs.append(runs["n_out"].to_numpy(float))
    if len(dec):  # decode rows carry average output lengths, not bounds on a request's: no output range
        bs.append(dec["batch"].to_numpy(float))
        ctx.append(dec["context"].to_numpy(float))
    b = np.concatenate(bs)
    vr["batch"] = (float(b.min()), float(b.max()))
    c = np.concatenate(ctx)
    vr["context"] = (float(c.min()), float(c.max()))
    if outs:
        o = np.concatenate(outs)
        vr["output_tokens"] = (float(o.min()), float(o.max()))
    return vr
