"""Matplotlib figures (PNG bytes) for sweeps: each chosen metric against each swept axis, mean and 95% CI."""

from __future__ import annotations

import io
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

MAX_LINES = 8  # more combinations of the other axes than this: points only, no legend


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys)


def metric_figure(summary: pd.DataFrame, axes: list[list[str]], metric: str, label: str | None = None) -> bytes:
    """One panel per axis group (x = its first key): the metric's mean over seeds with 95% CI error bars,
    one line per combination of the other axes; `label` (the metric's name with its unit) titles it."""
    groups = axes or [[]]
    fig, panels = plt.subplots(1, len(groups), figsize=(max(6.4, 6.4 * len(groups)), 4.0), squeeze=False)
    for ax, group in zip(panels[0], groups):
        _panel(ax, summary, axes, group, metric, label or metric)
    fig.suptitle(label or metric)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def categorical(values: np.ndarray) -> bool:
    """Numbers better drawn as categories: a few values where one stands far from the rest (an 'off' setting
    such as a threshold of 1,000,000 beside 16..256 squashes a linear axis)."""
    v = np.unique(values[np.isfinite(values)])
    if len(v) < 3:
        return False
    gaps = np.diff(v)
    far = int(gaps.argmax())
    rest = np.delete(gaps, far)
    return bool(far in (0, len(gaps) - 1) and gaps[far] > 20 * np.median(rest))


def _panel(ax, summary: pd.DataFrame, axes: list[list[str]], group: list[str], metric: str, ylabel: str) -> None:
    mean = summary[f"{metric}.mean"]
    half = (summary[f"{metric}.ci95_hi"] - summary[f"{metric}.ci95_lo"]) / 2
    if not group:  # no axes: seeds only
        ax.errorbar([0], mean.to_numpy()[:1], yerr=half.to_numpy()[:1], fmt="o", capsize=4)
        ax.set_xticks([])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        return
    xkey = group[0]
    others = [k for g in axes if g is not group for k in g]
    xs = summary[xkey]
    numeric = _is_numeric(xs) and not categorical(xs.to_numpy(float))
    if numeric:
        pos = xs.astype(float)
        ticks = np.unique(pos.to_numpy())
        if len(ticks) <= 12:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=8)
    else:
        order = sorted(dict.fromkeys(xs)) if _is_numeric(xs) else list(dict.fromkeys(xs))
        cats = [f"{v:g}" if _is_numeric(xs) else str(v) for v in order]
        xs = xs.map(lambda v: f"{v:g}") if _is_numeric(xs) else xs
        pos = xs.astype(str).map({c: i for i, c in enumerate(cats)}).astype(float)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=20 if max(len(c) for c in cats) > 8 else 0, fontsize=8)
    keys = pd.Series([json.dumps([str(r[k]) for k in others]) for _, r in summary.iterrows()], index=summary.index)
    combos = list(dict.fromkeys(keys))
    many = len(combos) > MAX_LINES
    for c in combos:
        sel = (keys == c).to_numpy()
        order = np.argsort(pos[sel].to_numpy(), kind="stable")
        x = pos[sel].to_numpy()[order]
        y = mean[sel].to_numpy()[order]
        e = half[sel].to_numpy()[order]
        e = np.where(np.isnan(e) | (e <= 1e-9 * np.maximum(np.abs(y), 1e-12)), 0.0, e)  # bars only where seeds differ
        label = None if (many or not others) else _label(summary[sel].iloc[0], others)
        ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=3, lw=0 if many else 1.3, label=label,
                    alpha=0.6 if many else 1.0)
    ax.set_xlabel(" / ".join(group) if len(group) > 1 else xkey)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if others and not many:  # beside the panel, not over the data
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def pareto_figure(summary: pd.DataFrame, keys: list[str], front: list[bool], xlabel: str, ylabel: str) -> bytes:
    """Every configuration's mean energy against its mean end-to-end p99, numbered as in the summary table; the
    front (none better on both) joined."""
    x, y = summary["energy_j.mean"].to_numpy(float), summary["e2e_s.p99.mean"].to_numpy(float)
    f = np.asarray(front, bool)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(x[~f], y[~f], "o", color="0.6", ms=5, label="dominated")
    order = np.argsort(x[f])
    ax.plot(x[f][order], y[f][order], "o-", color="C3", ms=6, label="Pareto front")
    for i in range(len(x)):  # the configuration's number in the report's summary table
        ax.annotate(f"#{i + 1}", (x[i], y[i]), fontsize=7, xytext=(4, 3), textcoords="offset points",
                    color="C3" if f[i] else "0.4")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
