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


def metric_figure(summary: pd.DataFrame, axes: list[list[str]], metric: str) -> bytes:
    """One panel per axis group (x = its first key): the metric's mean over seeds with 95% CI error bars,
    one line per combination of the other axes."""
    groups = axes or [[]]
    fig, panels = plt.subplots(1, len(groups), figsize=(max(5.0, 4.6 * len(groups)), 3.8), squeeze=False)
    for ax, group in zip(panels[0], groups):
        _panel(ax, summary, axes, group, metric)
    fig.suptitle(metric)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _panel(ax, summary: pd.DataFrame, axes: list[list[str]], group: list[str], metric: str) -> None:
    mean = summary[f"{metric}.mean"]
    half = (summary[f"{metric}.ci95_hi"] - summary[f"{metric}.ci95_lo"]) / 2
    if not group:  # no axes: seeds only
        ax.errorbar([0], mean.to_numpy()[:1], yerr=half.to_numpy()[:1], fmt="o", capsize=4)
        ax.set_xticks([])
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        return
    xkey = group[0]
    others = [k for g in axes if g is not group for k in g]
    xs = summary[xkey]
    numeric = _is_numeric(xs)
    if numeric:
        pos = xs.astype(float)
        ticks = np.unique(pos.to_numpy())
        if len(ticks) <= 12:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=8)
    else:
        cats = list(dict.fromkeys(str(v) for v in xs))
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
        e = np.where(np.isnan(e), 0.0, e)
        label = None if (many or not others) else _label(summary[sel].iloc[0], others)
        ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=3, lw=0 if many else 1.3, label=label,
                    alpha=0.6 if many else 1.0)
    ax.set_xlabel(" / ".join(group) if len(group) > 1 else xkey)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if others and not many:
        ax.legend(fontsize=7, loc="best")
