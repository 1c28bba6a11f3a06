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
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, lsq_linear

from dcsim.errors import UserError
from dcsim.profiles import devices as catalogue
from dcsim.profiles.measurements import idle_power_w, normalise
from dcsim.profiles.powercap_fit import power_cap_for
from dcsim.profiles.profile import (
    Curve,
    DeviceInfo,
    EngineInfo,
    FitError,
    HostPower,
    Latency,
    Memory,
    ModelInfo,
    Power,
    PowerCap,
    Profile,
    Provenance,
)

PF_FEATURES = ("tokens", "tokens_sq", "batch")
DC_FEATURES = ("batch", "context")
# Assumed fraction of peak dense BF16 throughput that a prefill reaches where the source has no prefill data.
PREFILL_MFU = 0.5
# Derived idle rule where neither the source nor the catalogue has a figure: fractions of the power limit
# measured on the project's H100 (70.2 W and 120.1 W of 700 W; devices.CITES['measured-h100-idle']).
IDLE_DEEP_FRAC = 70.2 / 700.0
IDLE_SERVING_FRAC = 120.1 / 700.0


# ---------------------------------------------------------------------------------------------------------
# identity metadata
@dataclass
class FitMeta:
    """Who the measurements are about and where they came from (everything a table cannot say)."""

    device: DeviceInfo
    model: ModelInfo
    engine: EngineInfo
    gpus_per_replica: int = 1
    name: str | None = None
    source: Provenance = field(default_factory=lambda: Provenance(source="measured"))
    device_spec: catalogue.DeviceSpec | None = None
    model_spec: catalogue.ModelSpec | None = None
    power_cap: PowerCap | None = None
    power_cap_provenance: Provenance | None = None
    serving_idle: tuple[float, Provenance] | None = None
    deep_idle: tuple[float, Provenance] | None = None
    host_idle_w: tuple[float, str] = (0.0, "host idle not measured by the source; 0 W assumed")
    kv_capacity_tokens: int | None = None
    activation_reserve_frac: float = 0.1
    # For engines without a KV cache (every step is a full forward pass): the prefill of T tokens is then the
    # same computation as a decode step over context T, so prefill_s/prefill_w are tied to the decode curves.
    tie_prefill_to_decode: bool = False
    notes: list[str] = field(default_factory=list)
    not_covered: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    s = "".join(c.lower() if c.isalnum() or c == "." else "-" for c in text)
    while "--" in s:
        s = s.replace("--", "-")
    return s.strip("-")


def profile_name(device_key: str, model_key: str, engine: str, precision: str, gpus: int = 1) -> str:
    """<device>--<model>--<engine>-<precision>, lower-case slugs; a replica of k GPUs is '<device>-x<k>'."""
    dev = slug(device_key) + (f"-x{gpus}" if gpus > 1 else "")
    return f"{dev}--{slug(model_key)}--{slug(engine)}-{slug(precision)}"


def meta_from_dict(d: dict[str, Any], file: str | None = None) -> FitMeta:
    """Build FitMeta from an importer's metadata dict.

    Keys: device (catalogue key or mapping of DeviceInfo fields), model (key or ModelInfo mapping), engine
    (mapping of EngineInfo), gpus_per_replica, name, citation, path, command, licence, notes, not_covered,
    serving_idle_w / deep_idle_w (value, or mapping with value + Provenance fields), host_idle_w, host_note,
    kv_capacity_tokens, activation_reserve_frac, source_kind (measured|published).
    """
    try:
        gpus = int(d.get("gpus_per_replica", 1))
        dspec = mspec = None
        dev = d["device"]
        if isinstance(dev, str):
            dspec = catalogue.device(dev)
            device = DeviceInfo(name=dspec.name, kind=dspec.kind, memory_gb=dspec.memory_gb, tdp_w=dspec.tdp_w)
        else:
            device = DeviceInfo(**dev)
            if dev.get("name") in catalogue.DEVICES:
                dspec = catalogue.DEVICES[dev["name"]]
        mod = d["model"]
        if isinstance(mod, str):
            mspec = catalogue.model(mod)
            bpv = 2 if d.get("engine", {}).get("precision", "bf16") in ("bf16", "fp16") else 1
            model = ModelInfo(name=mspec.name, params_b=mspec.params_b, layers=mspec.layers,
                              hidden_size=mspec.hidden_size, kv_bytes_per_token=mspec.kv_bytes_per_token(bpv),
                              max_context=mspec.max_context)
        else:
            model = ModelInfo(**mod)
        engine = EngineInfo(**d["engine"])
    except KeyError as e:
        raise UserError(f"fit metadata lacks {e.args[0]!r}", file, str(e.args[0])) from None
    except (TypeError, ValueError) as e:
        raise UserError(f"bad fit metadata: {e}", file) from None
    src = Provenance(source=d.get("source_kind", "published"), citation=d.get("citation"), path=d.get("path"),
                     command=d.get("command"), note=d.get("licence"))
    meta = FitMeta(device=device, model=model, engine=engine, gpus_per_replica=gpus, name=d.get("name"),
                   source=src, device_spec=dspec, model_spec=mspec, notes=list(d.get("notes", [])),
                   not_covered=list(d.get("not_covered", [])), kv_capacity_tokens=d.get("kv_capacity_tokens"),
                   activation_reserve_frac=float(d.get("activation_reserve_frac", 0.1)),
                   tie_prefill_to_decode=bool(d.get("tie_prefill_to_decode", False)))
    for key in ("serving_idle_w", "deep_idle_w"):
        v = d.get(key)
        if v is None:
            continue
        if isinstance(v, dict):
            val = float(v["value"])
            prov = Provenance(**{k: v[k] for k in ("source", "citation", "path", "command", "note") if k in v})
        else:
            val, prov = float(v), Provenance(source="published", citation=src.citation)
        setattr(meta, key.replace("_w", ""), (val, prov))
    if "host_idle_w" in d:
        meta.host_idle_w = (float(d["host_idle_w"]), d.get("host_note", "as given by the importer"))
    if dspec is not None:
        meta.power_cap, meta.power_cap_provenance, why = power_cap_for(dspec)
        if why:
            meta.not_covered.append(f"power caps: {why}")
    if meta.name is None:
        meta.name = profile_name(dspec.key if dspec else device.name, mspec.key if mspec else model.name,
                                 engine.name, engine.precision, gpus)
    return meta


# ---------------------------------------------------------------------------------------------------------
# linear least squares on relative errors
def nnls_rel(a: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Non-negative x minimising sum (w * (a@x - y) / y)^2; columns scaled for conditioning."""
    rows = a * (w / y)[:, None]
    scale = np.abs(rows).max(axis=0)
    scale[scale == 0] = 1.0
    res = lsq_linear(rows / scale, w, bounds=(0.0, np.inf), method="bvls", lsmr_tol="auto")
    return res.x / scale


# The refinement stage uses a soft-L1 loss on relative residuals with a 5% scale, so one anomalous published
# configuration cannot bend a curve that the other points agree on; the linear start is plain least squares.
ROBUST = {"loss": "soft_l1", "f_scale": 0.05}


def robust_cost(r: np.ndarray) -> float:
    z = (np.asarray(r) / ROBUST["f_scale"]) ** 2
    return float(np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)))


# an energy component that fits its own source points worse than this (median) is flagged in the profile's notes
ENERGY_FLAG_PCT = 10.0


def energy_flags(errors: dict[str, FitError]) -> list[str]:
    """Notes flagging each energy component whose median error on its source points exceeds ENERGY_FLAG_PCT."""
    return [f"Flag: {k} fits its source points with a {e.median_ape_pct:.1f}% median error (max {e.max_ape_pct:.1f}%), "
            f"above {ENERGY_FLAG_PCT:g}%: forecasts of that component carry an error of that size"
            for k, e in errors.items() if k.startswith("energy.") and e.median_ape_pct > ENERGY_FLAG_PCT]


def ape(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return 100.0 * np.abs(pred - meas) / np.abs(meas)


def fit_error(pred: np.ndarray, meas: np.ndarray) -> FitError:
    e = ape(np.asarray(pred, float), np.asarray(meas, float))
    return FitError(median_ape_pct=round(float(np.median(e)), 2), max_ape_pct=round(float(np.max(e)), 2),
                    n_points=int(e.size))


# ---------------------------------------------------------------------------------------------------------
# runs expanded into decode steps
@dataclass
class Runs:
    """Per-row arrays of the run rows and their decode steps (step j of row i at context B*(n_in+1+j), or
    B*cache_len for a row measured on a static KV cache)."""

    b: np.ndarray
    n: np.ndarray
    k: np.ndarray
    tokens: np.ndarray
    tokens_sq: np.ndarray
    mean_ctx: np.ndarray
    step_row: np.ndarray
    step_b: np.ndarray
    step_ctx: np.ndarray

    @staticmethod
    def of(runs: pd.DataFrame) -> "Runs":
        b = runs["batch"].to_numpy(float)
        n = runs["n_in"].to_numpy(float)
        k = np.maximum(runs["n_out"].to_numpy(int) - 1, 0)
        if k.sum() > 20_000_000:
            raise UserError(f"{int(k.sum())} decode steps in the run rows: too many to fit step by step", field="n_out")
        row = np.repeat(np.arange(len(runs)), k)
        j = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
        sb = b[row]
        ctx = sb * (n[row] + 1.0 + j)
        mean_ctx = np.where(k > 0, b * (n + 1.0 + (k - 1) / 2.0), b * (n + 1.0))
        cache = runs["cache_len"].to_numpy(float) if "cache_len" in runs else np.full(len(b), np.nan)
        static = np.isfinite(cache)
        if static.any():  # a static cache is read whole at every step: context = batch x allocated length
            ctx = np.where(static[row], sb * np.nan_to_num(cache)[row], ctx)
            mean_ctx = np.where(static, b * np.nan_to_num(cache), mean_ctx)
        return Runs(b, n, k.astype(float), b * n, b * n * n, mean_ctx, row, sb, ctx)

    def per_row(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.step_row, weights=v, minlength=len(self.b))


@dataclass
class Terms:
    """Which coefficients a source can identify."""

    pf: list[str]
    dc: list[str]


def _choose_terms(runs: pd.DataFrame, dec: pd.DataFrame, r: Runs, dec_ctx: np.ndarray) -> Terms:
    pf: list[str] = []
    if len(runs):
        if len(np.unique(r.tokens)) >= 3:
            pf.append("tokens")
            if r.tokens.max() / max(r.tokens.min(), 1.0) >= 16:
                pf.append("tokens_sq")
        if runs["batch"].nunique() >= 2:
            pf.append("batch")
    bs = np.concatenate([r.b, dec["batch"].to_numpy(float)])
    dc: list[str] = []
    if len(np.unique(bs)) >= 2:
        dc.append("batch")
    ctx = np.concatenate([r.mean_ctx, dec_ctx])
    if len(np.unique(np.round(ctx))) >= 3:
        x = np.column_stack([np.ones_like(bs), bs]) if "batch" in dc else np.ones((len(bs), 1))
        coef, *_ = np.linalg.lstsq(x, ctx, rcond=None)
        resid = ctx - x @ coef
        r2 = 1.0 - resid.var() / ctx.var() if ctx.var() > 0 else 1.0
        if r2 < 0.995:  # context varies independently of batch: its coefficient is identifiable
            dc.append("context")
    return Terms(pf, dc)


def _group_weights(df: pd.DataFrame) -> np.ndarray:
    """1/sqrt(rows in the same shape) so each measured shape counts once, however often it was repeated."""
    key = df["kind"].astype(str) + "|" + df["batch"].astype(str) + "|" + df["source"].astype(str)
    counts = key.map(key.value_counts())
    return 1.0 / np.sqrt(counts.to_numpy(float))


# ---------------------------------------------------------------------------------------------------------
# latency: linear start, then refinements with floors on the decode step and the prefill
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
        wr = _group_weights(runs) if len(runs) else np.zeros(0)
        wd = _group_weights(dec) if len(dec) else np.zeros(0)
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
            return _tied(decode), decode
        if not pf:
            return None, decode
        return Curve(intercept=float(pf["1"]), coef={k: float(pf[k]) for k in self.terms.pf},
                     lo=float(pf_floor) if pf_floor else None), decode

    def predict(self, prefill: Curve | None, decode: Curve, overhead: float = 0.0) -> dict[str, np.ndarray]:
        r = self.r
        step = _lin(decode, r.step_b, r.step_ctx)
        pf = _lin(prefill, r.b, r.tokens, r.tokens_sq) if prefill is not None else np.zeros(len(r.b))
        dsum = r.per_row(step)
        dec_t = _lin(decode, self.dec["batch"].to_numpy(float), self.dec_ctx)
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
            new = _lin(pf, r.b, r.tokens, r.tokens_sq) < floor
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


def _lin(c: Curve, b: np.ndarray, x: np.ndarray, xsq: np.ndarray | None = None) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """The profile and the per-row comparison that the plot and the tests read."""

    profile: Profile
    rows: pd.DataFrame  # measured table (warm-ups dropped) with pred_* columns
    terms: Terms


def fit_profile(table: pd.DataFrame, meta: FitMeta) -> FitResult:
    """Fit every curve of a Profile to one measurement table (see module docstring)."""
    t = normalise(table)
    t = t[~t["warmup"]].reset_index(drop=True)
    notes = list(meta.notes)
    over = (t["kind"].isin(["run", "decode"])) & (t["n_in"] + t["n_out"] > meta.model.max_context)
    over = t["source"].isin(set(t.loc[over, "source"])) & t["kind"].isin(["run", "decode"])  # whole shapes
    if over.any():
        shapes = sorted(set(t.loc[over, "source"]))
        notes.append(f"{int(over.sum())} rows ({len(shapes)} shapes: {', '.join(shapes)}) left out: prompt + output "
                     f"exceed the model's {meta.model.max_context}-token context window")
        t = t[~over].reset_index(drop=True)
    if (t["kind"] == "step").any():  # a paged engine's mixed-step sweep: each step measured directly
        from dcsim.profiles.fit_steps import fit_step_profile

        return fit_step_profile(t, meta)
    runs = t[t["kind"] == "run"].reset_index(drop=True)
    dec = t[t["kind"] == "decode"].reset_index(drop=True)
    if runs.empty and dec.empty:
        raise UserError("no run or decode rows to fit (only idle or warm-up rows)", field="kind")
    r = Runs.of(runs)
    engine = _static_cache(runs, meta.engine)
    dec_ctx = (dec["batch"] * (dec["n_in"] + dec["n_out"] / 2.0)).to_numpy(float)
    terms = _choose_terms(runs, dec, r, dec_ctx)
    prov: dict[str, Provenance] = {}
    errors: dict[str, FitError] = {}
    not_covered = list(meta.not_covered)
    src = meta.source
    tie = meta.tie_prefill_to_decode and len(runs) > 0
    has_prefill_info = len(runs) > 0

    # ---- latency -------------------------------------------------------------------------------------
    lm = LatencyModel(runs, dec, r, dec_ctx, terms, tie, has_prefill_info)
    n_groups = len(set(zip(t["kind"], t["batch"], t["source"])))
    n_free = len(lm.pf_cols) + len(lm.dc_cols)
    if n_groups < n_free + 1:
        raise UserError(f"{n_groups} measured shapes cannot fix {n_free} latency coefficients; measure more shapes")
    prefill_s, decode_s, _ = lm.fit()
    floor_note = (f"; floor (lo) {decode_s.lo:.4g} s: the step time does not fall below it at small batch or "
                  "context" if decode_s.lo else "")
    if tie:
        prov["latency.prefill_s"] = _src(src, "tied to the decode curve (no KV cache: a prefill of T tokens is a "
                                              "forward pass over context T), fitted with it to end-to-end run times")
    elif prefill_s is not None:
        ov = lm.overhead_s
        prov["latency.prefill_s"] = _src(src, "fitted jointly with decode to end-to-end run times"
                                         + (" and time to first token" if runs["ttft_s"].notna().any() else "")
                                         + (f"; floor (lo) {prefill_s.lo:.4g} s: short prompts do not go below it"
                                            if prefill_s.lo else "")
                                         + (f"; includes a fixed {ov * 1000:.1f} ms per run that the runs spend after "
                                            "the first token (TPOT falls with output length): the measured TTFT is "
                                            "prefill_s minus it, so a simulated TTFT is that much late while the "
                                            "request time is right" if ov > 1e-4 else ""))
    else:
        prefill_s, note = _assumed_prefill(meta, decode_s)
        prov["latency.prefill_s"] = Provenance(source="assumed", citation=catalogue.CITES["kaplan2020"], note=note)
        not_covered.append("prefill time: the source has no prefill sweep (" + note + ")")
    how = " to decode-only rows" if len(dec) else " jointly with prefill"
    prov["latency.decode_step_s"] = _src(src, "fitted" + how + floor_note
                                         + ("; no context term: context is not separable from batch in this source"
                                            if "context" not in terms.dc else ""))
    if "context" not in terms.dc:
        not_covered.append("decode-step dependence on context length (not separable from batch in this source)")
    if "batch" not in terms.dc:
        not_covered.append("batching: every measured run had the same batch size, so decode_step_s and decode_w "
                           "do not depend on batch")
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

    # ---- power ----------------------------------------------------------------------------------------
    cap_hi = meta.device.tdp_w * meta.gpus_per_replica if meta.device.tdp_w else None
    # idle first: a busy device draws at least its serving idle, which floors the power curves (a prefill too short
    # to weigh in run energies otherwise fits near 0 W); its provenance and gaps are filed where they always were
    idle_prov: dict[str, Provenance] = {}
    idle_gaps: list[str] = []
    serving, deep = _idle(t, meta, idle_prov, idle_gaps)
    floor = round(serving, 2)  # as the profile records the serving idle
    pw = _fit_power(runs, dec, r, pl, terms, has_prefill_info, tie, "energy_device_j", cap_hi, lo=floor)
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
        prov["power.prefill_w"] = _src(src, "tied to the decode power curve (no KV cache), fitted with it to run "
                                            "energy")
    elif len(runs) and np.all(_lin(power_pf, r.b, r.tokens, r.tokens_sq) <= floor):
        # the prefills were too short a part of the runs for their power to show: the floor is a bound, not a fit
        prov["power.prefill_w"] = _src(src, f"held at its floor, the serving idle {floor:.2f} W, at every measured "
                                            "prompt: the prefills were too short a part of the run energies to "
                                            "weigh (a lower bound)")
        not_covered.append("prefill power: not identifiable from these runs (held at the serving-idle floor, a "
                           "lower bound)")
    else:
        prov["power.prefill_w"] = _src(src, "fitted to run energy with the fitted prefill and decode times")
    prov["power.decode_w"] = _src(src, "fitted to " + ("decode-row average power" if len(dec) else
                                                       "run energy with the fitted times"))
    if len(runs) and runs["energy_device_j"].notna().any():
        errors["energy.run_device_j"] = shape_mean_error(runs.dropna(subset=["energy_device_j"]),
                                                     "pred_energy_device_j", "energy_device_j")
    if len(dec):
        errors["power.decode_w"] = shape_mean_error(dec, "pred_avg_power_w", "meas_avg_power_w")

    # ---- host -------------------------------------------------------------------------------------------
    host = None
    if len(runs) and runs["energy_host_j"].notna().mean() >= 0.5:
        hw = _fit_power(runs, dec.iloc[0:0], r, pl, terms, True, tie, "energy_host_j", None, per_step=True)
        if hw is not None and hw[0] is not None:
            host = HostPower(prefill_w=hw[0], decode_w=hw[1], idle_w=meta.host_idle_w[0],
                             decode_step_j=round(hw[4], 6))
            prov["power.host"] = _src(src, "fitted to host (CPU) energy of the runs as power x time plus "
                                      f"{hw[4]:.4g} J per decode step; idle: " + meta.host_idle_w[1])
            runs = runs.assign(pred_energy_host_j=hw[2])
            errors["energy.run_host_j"] = shape_mean_error(runs.dropna(subset=["energy_host_j"]),
                                                       "pred_energy_host_j", "energy_host_j")
    if host is None:
        not_covered.append("host (CPU, DRAM) power")

    notes += energy_flags(errors)

    # ---- idle, memory, ranges, spread --------------------------------------------------------------------
    prov.update(idle_prov)
    not_covered.extend(idle_gaps)
    memory, mem_prov = _memory(meta)
    prov["memory"] = mem_prov
    prov["source"] = src
    if meta.power_cap is not None and meta.power_cap_provenance is not None:
        prov["power_cap"] = meta.power_cap_provenance
    profile = Profile(
        name=meta.name or "unnamed", device=meta.device, model=meta.model, engine=engine,
        gpus_per_replica=meta.gpus_per_replica, latency=Latency(prefill_s=prefill_s, decode_step_s=decode_s),
        power=Power(prefill_w=power_pf, decode_w=power_dc, serving_idle_w=round(serving, 2),
                    deep_idle_w=round(deep, 2), host=host),
        power_cap=meta.power_cap, memory=memory, provenance=prov, valid_range=_valid_range(runs, dec, r),
        fit_error=errors, spread_cv=_spread(t), not_covered=_dedupe(not_covered),
        notes="\n".join(notes) if notes else None,
    )
    return FitResult(profile=profile, rows=pd.concat([runs, dec], ignore_index=True), terms=terms)


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


# ---------------------------------------------------------------------------------------------------------
def _src(src: Provenance, note: str) -> Provenance:
    return Provenance(source=src.source, citation=src.citation, path=src.path, command=src.command, note=note)


def _tied(c: Curve, hi: float | None = None) -> Curve:
    """A prefill curve equal to a decode curve at batch B and context T (the prefill's tokens)."""
    coef = {}
    if "context" in c.coef:
        coef["tokens"] = c.coef["context"]
    if "batch" in c.coef:
        coef["batch"] = c.coef["batch"]
    return Curve(intercept=c.intercept, coef=coef, lo=c.lo, hi=hi if hi is not None else c.hi)


def _dedupe(items: list[str]) -> list[str]:
    seen, out = set(), []
    for s in items:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def shape_mean_error(df: pd.DataFrame, pred: str, meas: str) -> FitError:
    """APE of the shape means (repeats of a shape averaged), so a shape measured 100 times counts once."""
    g = df.groupby(["kind", "batch", "source"], sort=False)[[pred, meas]].mean()
    g = g[np.isfinite(g[meas]) & (g[meas] != 0)]
    return fit_error(g[pred].to_numpy(), g[meas].to_numpy())


def _assumed_prefill(meta: FitMeta, decode_s: Curve) -> tuple[Curve, str]:
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


def _fit_power(runs: pd.DataFrame, dec: pd.DataFrame, r: Runs, pl: dict[str, np.ndarray], terms: Terms,
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
        blocks_w.append(_group_weights(runs)[ok])
    ok_p = np.zeros(0, bool)
    if len(dec):
        p = dec["avg_power_w"].to_numpy(float)
        p = np.where(np.isfinite(p), p, dec["energy_device_j"].to_numpy(float) / dec["runtime_s"].to_numpy(float))
        ok = ok_p = np.isfinite(p) & (p > 0)
        dv = {"1": np.ones(len(dec)), "batch": dec["batch"].to_numpy(float), "context": dec["context"].to_numpy(float)}
        a = np.column_stack([np.zeros(len(dec)) for _ in pf_cols] + [dv[c] for c in dc_cols])
        blocks_a.append(a[ok])
        blocks_y.append(p[ok])
        blocks_w.append(_group_weights(dec)[ok])
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
            return _tied(dc, top), dc
        if xpf:
            return Curve(intercept=float(xpf["1"]), coef={k: float(xpf[k]) for k in terms.pf}, lo=lo, hi=top), dc
        return None, dc

    def step_j(v: np.ndarray) -> float:
        return float(v[-1]) if per_step else 0.0

    def predict(pf: Curve | None, dc: Curve, j: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        pe = np.zeros(len(runs))
        if has_runs:  # energy as the simulator computes it: clamped power x time, step by step
            pf_w = _lin(pf, r.b, r.tokens, r.tokens_sq) if pf is not None else np.zeros(len(r.b))
            pe = pf_w * t_pf + r.per_row(_lin(dc, r.step_b, r.step_ctx) * pl["step"]) + j * steps_per_run
        pp = _lin(dc, dec["batch"].to_numpy(float), dec["context"].to_numpy(float)) if len(dec) else np.zeros(0)
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


def _idle(t: pd.DataFrame, meta: FitMeta, prov: dict[str, Provenance], not_covered: list[str]) -> tuple[float, float]:
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
            prov[key] = _src(meta.source, f"median of the {kind} windows of the source")
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


def _memory(meta: FitMeta) -> tuple[Memory, Provenance]:
    g = meta.gpus_per_replica
    dev_gb = meta.device.memory_gb * g
    bpv = 2 if meta.engine.precision in ("bf16", "fp16") else 1
    weights = meta.model.params_b * bpv
    reserve = round(meta.activation_reserve_frac * dev_gb, 2)
    mem = Memory(device_gb=dev_gb, weights_gb=round(weights, 2), activation_reserve_gb=reserve,
                 kv_capacity_tokens=meta.kv_capacity_tokens)
    note = (f"device memory {meta.device.memory_gb:g} GB x {g} (catalogue); weights {meta.model.params_b:g}e9 "
            f"parameters x {bpv} bytes; reserve {meta.activation_reserve_frac:g} of device memory for "
            "activations and the engine (assumed)")
    return mem, Provenance(source="derived", note=note)


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


POOLED_SPREAD_DF = 6  # the fewest degrees of freedom (repeats beyond the first, over all shapes) a pooled spread takes


def _spread(t: pd.DataFrame) -> dict[str, float]:
    """Run-to-run coefficient of variation per term: the median over shapes repeated at least 3 times; where no
    shape was, the CV pooled over the shapes repeated twice (root of the df-weighted mean of their squared CVs),
    given at least POOLED_SPREAD_DF degrees of freedom, so a two-repeat calibration still lends the comparison a
    band; otherwise none."""
    out = {}
    for col, key in (("runtime_s", "latency.run_s"), ("energy_device_j", "energy.run_device_j"),
                     ("energy_host_j", "energy.run_host_j")):
        sub = t[(t["kind"] == "run") & t[col].notna()]
        if sub.empty:
            continue
        g = sub.groupby(["batch", "source", "n_in"])[col]
        n, cv_all = g.count(), g.std(ddof=1) / g.mean()
        cv = cv_all.where(n >= 3).dropna()
        if len(cv):
            out[key] = round(float(cv.median()), 4)
            continue
        df = (n - 1).where(n >= 2).dropna()
        if df.sum() >= POOLED_SPREAD_DF:
            out[key] = round(float(np.sqrt((df * cv_all[df.index] ** 2).sum() / df.sum())), 4)
    return out
