"""Latency fit: linear start, then step and prefill floors (LatencyModel); vectorised curves; roofline prefill."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from dcsim.errors import UserError
from dcsim.profiles.fit_meta import FitMeta
from dcsim.profiles.fit_runs import Runs, Terms, group_weights
from dcsim.profiles.fit_stats import ROBUST, nnls_rel, robust_cost
from dcsim.profiles.profile import Curve

# Assumed fraction of peak dense BF16 throughput that a prefill reaches where the source has no prefill data.
PREFILL_MFU = 0.5


class LatencyModel:
    """Parameters <-> curves, and the predictions of every equation the data gives.

    Where runs give TTFT and TPOT at several output lengths, a fixed per-run overhead after the first token
    (`overhead_s`) is fitted too: run = prefill_s + steps still holds (the overhead is part of prefill_s, so the
    simulator's request time is right), while the measured TTFT is prefill_s - overhead and the measured TPOT
    (runtime - TTFT) / (n_out - 1) is the mean step plus overhead / (n_out - 1)."""

    def __init__(self, runs: pd.DataFrame, dec: pd.DataFrame, r: Runs, dec_ctx: np.ndarray, terms: Terms,
                 tie: bool, fit_prefill: bool) -> None:
        self.runs, self.dec, self.r, self.dec_ctx, self.terms = runs, dec, r, dec_ctx, terms
        self.tie = tie
        self.pf_cols = (["1"] + terms.pf) if fit_prefill and not tie else []
        self.dc_cols = ["1"] + terms.dc
        self.has_ttft = runs["ttft_s"].to_numpy(float) if len(runs) else np.zeros(0)
        self.has_tpot = runs["tpot_s"].to_numpy(float) if len(runs) else np.zeros(0)
        ys, ws = [], []
        wr = group_weights(runs) if len(runs) else np.zeros(0)
        wd = group_weights(dec) if len(dec) else np.zeros(0)
        self.m_ttft = np.isfinite(self.has_ttft) & (self.has_ttft > 0) & bool(self.pf_cols or tie)
        self.m_tpot = np.isfinite(self.has_tpot) & (self.has_tpot > 0) & (r.k > 0)
        both = self.m_ttft & self.m_tpot
        self.with_overhead = bool(self.pf_cols) and len(np.unique(r.k[both])) >= 3
        self.overhead_s = 0.0
        ys += [runs["runtime_s"].to_numpy(float), self.has_ttft[self.m_ttft], self.has_tpot[self.m_tpot],
               dec["runtime_s"].to_numpy(float)]
        ws += [wr, wr[self.m_ttft], wr[self.m_tpot], wd]
        self.y = np.concatenate(ys)
        self.w = np.concatenate(ws)

    def split(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(curve coefficients, per-run overhead) of a parameter vector."""
        if self.with_overhead:
            return x[:-1], float(x[-1])
        return x, 0.0

    def curves(self, x: np.ndarray, floor: float | None, pf_floor: float | None = None) -> tuple[Curve | None, Curve]:
        x, _ = self.split(x)
        npf = len(self.pf_cols)
        pf = dict(zip(self.pf_cols, x[:npf]))
        dc = dict(zip(self.dc_cols, x[npf:]))
        decode = Curve(intercept=float(dc["1"]), coef={k: float(dc[k]) for k in self.terms.dc},
                       lo=float(floor) if floor else None)
        if self.tie:
            return tied_prefill(decode), decode
        if not pf:
            return None, decode
        return Curve(intercept=float(pf["1"]), coef={k: float(pf[k]) for k in self.terms.pf},
                     lo=float(pf_floor) if pf_floor else None), decode

    def predict(self, prefill: Curve | None, decode: Curve, overhead: float = 0.0) -> dict[str, np.ndarray]:
        r = self.r
        step = curve_at(decode, r.step_b, r.step_ctx)
        pf = curve_at(prefill, r.b, r.tokens, r.tokens_sq) if prefill is not None else np.zeros(len(r.b))
        dsum = r.per_row(step)
        dec_t = curve_at(decode, self.dec["batch"].to_numpy(float), self.dec_ctx)
        tpot = np.where(r.k > 0, (dsum + overhead) / np.maximum(r.k, 1), 0.0)
        return {"run": pf + dsum, "prefill": pf, "ttft": pf - overhead, "tpot": tpot, "dec": dec_t, "step": step}

    def stack(self, p: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([p["run"], p["ttft"][self.m_ttft], p["tpot"][self.m_tpot], p["dec"]])

    def linear_design(self, floored: np.ndarray | None = None) -> np.ndarray:
        """Columns of the unclamped model (for the linear start). With `floored` (a mask of run rows), those
        rows' prefill is one more parameter (a floor, last column) instead of the prefill curve."""
        r = self.r
        cols = []
        keep = np.ones(len(r.b)) if floored is None else (~floored).astype(float)
        for c in self.pf_cols:
            v = {"1": np.ones(len(r.b)), "tokens": r.tokens, "tokens_sq": r.tokens_sq, "batch": r.b}[c] * keep
            cols.append(np.concatenate([v, v[self.m_ttft], np.zeros(self.m_tpot.sum()), np.zeros(len(self.dec))]))
        for c in self.dc_cols:
            sv = {"1": np.ones(len(r.step_b)), "batch": r.step_b, "context": r.step_ctx}[c]
            dsum = r.per_row(sv)
            pf_part = {"1": np.ones(len(r.b)), "batch": r.b, "context": r.tokens}[c] if self.tie else 0.0
            dv = {"1": np.ones(len(self.dec)), "batch": self.dec["batch"].to_numpy(float),
                  "context": self.dec_ctx}[c]
            run_col = dsum + pf_part
            ttft_col = (np.zeros(len(r.b)) + pf_part)[self.m_ttft]
            tpot_col = (dsum / np.maximum(r.k, 1))[self.m_tpot]
            cols.append(np.concatenate([run_col, ttft_col, tpot_col, dv]))
        if self.with_overhead:
            cols.append(np.concatenate([np.zeros(len(r.b)), -np.ones(self.m_ttft.sum()),
                                        1.0 / np.maximum(r.k, 1)[self.m_tpot], np.zeros(len(self.dec))]))
        if floored is not None:
            f = floored.astype(float)
            cols.append(np.concatenate([f, f[self.m_ttft], np.zeros(self.m_tpot.sum()), np.zeros(len(self.dec))]))
        return np.column_stack(cols)

    def floored_start(self, q: float) -> tuple[np.ndarray, float] | None:
        """Linear start for a prefill floor: rows below the q-quantile of prompt tokens start on the floor; the
        split is then moved to where the fitted line crosses the floor, a few times (an active-set iteration)."""
        r = self.r
        if not self.pf_cols or len(np.unique(r.tokens)) < 4:
            return None
        mask = r.tokens <= np.quantile(np.unique(r.tokens), q)
        x = None
        for _ in range(6):
            v = nnls_rel(self.linear_design(mask), self.y, self.w)
            x, floor = v[:-1], float(v[-1])
            pf, _ = self.curves(x, None)
            new = curve_at(pf, r.b, r.tokens, r.tokens_sq) < floor
            if np.array_equal(new, mask) or not new.any():
                break
            mask = new
        return (x, floor) if x is not None and floor > 0 else None


    def _resid(self, x: np.ndarray, floor: float | None, pf_floor: float | None) -> np.ndarray:
        pf, dc = self.curves(x, floor, pf_floor)
        return self.w * (self.stack(self.predict(pf, dc, self.split(x)[1])) / self.y - 1.0)

    def fit(self) -> tuple[Curve | None, Curve, float]:
        """Linear NNLS, then floors (lo) on the decode step (a memory-bound minimum) and on the prefill (a fixed
        launch cost that short prompts do not go below), each kept only where it lowers the robust relative
        cost by at least 10%. Returns the curves and the weighted relative cost; sets overhead_s."""
        a = self.linear_design()
        x0 = nnls_rel(a, self.y, self.w)
        best: tuple[np.ndarray, float | None, float | None] = (x0, None, None)
        best_cost = cost0 = self.cost(x0, None)
        p0 = self.predict(*self.curves(x0, None), self.split(x0)[1])
        steps = np.concatenate([p0["step"], p0["dec"]])
        ttft = self.has_ttft[self.m_ttft]
        pf_seen = ttft if len(ttft) else p0["prefill"]
        # parameter scales: the linear start, or for a coefficient it left at zero the value that would make its
        # column reach the median measurement (so the refinement can still move it off the bound)
        amax = np.abs(a).max(axis=0)
        col = np.where(amax > 0, float(np.median(self.y)) / np.where(amax > 0, amax, 1.0), 1.0)
        sc = np.where(x0 > 0, x0, col)
        z0 = np.where(x0 > 0, 1.0, 0.0)
        if len(x0):  # robust refit without a floor
            z = least_squares(lambda z: self._resid(z * sc, None, None), z0, bounds=(0.0, np.inf),
                              x_scale="jac", max_nfev=300, **ROBUST).x
            c = self.cost(z * sc, None)
            if c < 0.9 * cost0:
                best, best_cost = (z * sc, None, None), c
        dq = [float(np.quantile(steps, q)) for q in (0.1, 0.25, 0.5)] if len(steps) else []
        pq = ([float(np.quantile(pf_seen, q)) for q in (0.1, 0.5)]
              if self.pf_cols and len(pf_seen) else [])
        starts = {}
        for q in (0.25, 0.5, 0.75):
            fs = self.floored_start(q)
            if fs is not None:
                starts[fs[1]] = fs[0]
        pq = pq + list(starts)
        trials = [(d, None) for d in dq] + [(None, p) for p in pq] + [(d, p) for d in dq for p in pq]
        for d0, p0_ in trials:  # starting floors, fewer first; each refined with plain then robust loss
            if (d0 is not None and d0 <= 0) or (p0_ is not None and p0_ <= 0):
                continue
            extra = [v for v in (d0, p0_) if v is not None]
            xs = starts.get(p0_, x0) if p0_ is not None else x0
            sc_t = np.where(xs > 0, xs, col)
            zs = np.where(xs > 0, 1.0, 0.0)
            scale = np.concatenate([sc_t, extra])
            n = len(x0)

            def unpack(z: np.ndarray, d0=d0, p0_=p0_, scale=scale, n=n) -> tuple:
                v = z * scale
                i = n
                fd = fp = None
                if d0 is not None:
                    fd, i = float(v[i]), i + 1
                if p0_ is not None:
                    fp = float(v[i])
                return v[:n], fd, fp

            def resid(z: np.ndarray, unpack=unpack) -> np.ndarray:
                return self._resid(*unpack(z))

            z = np.concatenate([zs, np.ones(len(extra))])
            for loss in ({}, ROBUST):
                z = least_squares(resid, z, bounds=(0.0, np.inf), x_scale="jac", max_nfev=300, **loss).x
            v, fd, fp = unpack(z)
            c = self.cost(v, fd, fp)
            n_extra = (best[1] is not None) + (best[2] is not None)
            better = c < 0.9 * best_cost if len(extra) > n_extra else c < best_cost
            if better and all(f is None or f > 0 for f in (fd, fp)):
                best, best_cost = (v, fd, fp), c
        x, fd, fp = best
        self.overhead_s = self.split(x)[1]
        pf, dc = self.curves(x, fd, fp)
        return pf, dc, best_cost

    def cost(self, x: np.ndarray, floor: float | None, pf_floor: float | None = None) -> float:
        return robust_cost(self._resid(x, floor, pf_floor))


def curve_at(c: Curve, b: np.ndarray, x: np.ndarray, xsq: np.ndarray | None = None) -> np.ndarray:
    """Vectorised Curve.at: prefill curves get (batch, tokens, tokens_sq), decode curves (batch, context)."""
    v = c.intercept + c.coef.get("batch", 0.0) * b
    if xsq is None:
        v = v + c.coef.get("context", 0.0) * x
    else:
        v = v + c.coef.get("tokens", 0.0) * x + c.coef.get("tokens_sq", 0.0) * xsq
    if c.lo is not None:
        v = np.maximum(v, c.lo)
    if c.hi is not None:
        v = np.minimum(v, c.hi)
    return v


def tied_prefill(c: Curve, hi: float | None = None) -> Curve:
    """A prefill curve equal to a decode curve at batch B and context T (the prefill's tokens)."""
    coef = {}
    if "context" in c.coef:
        coef["tokens"] = c.coef["context"]
    if "batch" in c.coef:
        coef["batch"] = c.coef["batch"]
    return Curve(intercept=c.intercept, coef=coef, lo=c.lo, hi=hi if hi is not None else c.hi)


def assumed_prefill(meta: FitMeta, decode_s: Curve) -> tuple[Curve, str]:
    """A roofline prefill curve, and its note, for a source with no prefill data: PREFILL_MFU of the peak throughput."""
    dspec = meta.device_spec
    if dspec is None or dspec.peak_bf16_tflops is None:
        raise UserError("the source has no prefill data and the device has no peak-throughput figure in "
                        "dcsim/profiles/devices.py to derive one from", field="device")
    per_token = 2.0 * meta.model.params_b * 1e9 / (dspec.peak_bf16_tflops * 1e12 * meta.gpus_per_replica
                                                   * PREFILL_MFU)
    note = (f"roofline: 2 x {meta.model.params_b:g}e9 FLOPs per prompt token at {PREFILL_MFU:g} of "
            f"{dspec.peak_bf16_tflops:g} TFLOPS x {meta.gpus_per_replica} GPU ({dspec.citation('peak_bf16_tflops')}); "
            f"intercept = the fitted decode-step intercept (a step's fixed cost); MFU {PREFILL_MFU:g} assumed")
    return Curve(intercept=float(decode_s.intercept), coef={"tokens": float(per_token)}), note
