"""Run rows expanded into decode steps (Runs), the terms a source can identify, and once-per-shape weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dcsim.errors import UserError

PF_FEATURES = ("tokens", "tokens_sq", "batch")
DC_FEATURES = ("batch", "context")


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


def choose_terms(runs: pd.DataFrame, dec: pd.DataFrame, r: Runs, dec_ctx: np.ndarray) -> Terms:
    """The prefill and decode terms the rows vary enough to identify (context only where it varies apart from batch)."""
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


def group_weights(df: pd.DataFrame) -> np.ndarray:
    """1/sqrt(rows in the same shape) so each measured shape counts once, however often it was repeated."""
    key = df["kind"].astype(str) + "|" + df["batch"].astype(str) + "|" + df["source"].astype(str)
    counts = key.map(key.value_counts())
    return 1.0 / np.sqrt(counts.to_numpy(float))
