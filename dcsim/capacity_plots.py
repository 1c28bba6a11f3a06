"""The capacity planner's figure (PNG bytes): every simulated fleet's objective and each objective's metric
against the bisected replica count, fleets that meet every objective apart from those that miss, bounds drawn."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd


def plan_figure(evaluated: pd.DataFrame, info: dict, objective_metric: str, currency: str = "") -> bytes:
    """One panel for the minimised metric, one per objective; x: the first varied count, a line per value of the
    others; filled markers meet every objective, open ones miss; the chosen fleet circled."""
    paths = [v["path"] for v in info["vary"]]
    x, rest = paths[0], paths[1:]
    from dcsim.capacity import parse_objective

    slos = [parse_objective(s) for s in info["slo"]]
    metrics = [objective_metric] + [o.metric for o in slos]
    fig, axs = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.6), squeeze=False)
    groups = evaluated.groupby(rest) if rest else [((), evaluated)]
    answer = info.get("answer")
    for ax, m in zip(axs[0], metrics):
        for key, g in groups:
            g = g.sort_values(x)
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{p.split('.')[-2]}={v}" for p, v in zip(rest, key)) or None
            line, = ax.plot(g[x], g[m], "-", lw=0.8, alpha=0.6, label=label)
            ok = g["meets"].astype(bool)
            ax.plot(g[x][ok], g[m][ok], "o", color=line.get_color(), ms=5)
            ax.plot(g[x][~ok], g[m][~ok], "o", mfc="none", color=line.get_color(), ms=5)
        bounds = [o.bound for o in slos if o.metric == m]
        for b in bounds:
            ax.axhline(b, color="0.3", ls="--", lw=0.8)
        if answer is not None:
            ax.plot([answer[x]], [answer[m]], "o", ms=13, mfc="none", mec="k", mew=1.2)
        top = evaluated[m].max()
        if bounds and bounds[0] > 0 and top > 10 * bounds[0]:
            # a miss by far beside the bound: linear up to the bound, logarithmic above, the bound readable
            ax.set_yscale("symlog", linthresh=bounds[0])
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel(x)
        name = f"{m} ({currency})" if m == "cost" and currency else m  # money marked with its currency
        ax.set_ylabel(name)
        ax.set_title(name if m != objective_metric else f"{name} (minimised)", fontsize=9)
        if rest and ax is axs[0][0]:
            ax.legend(fontsize=7)
    fig.suptitle("filled: meets every objective; open: misses; circled: the chosen fleet; dashed: bound",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

