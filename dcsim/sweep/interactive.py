"""Interactive figures (plotly) for a sweep's report: hover a point for its values, click a legend entry to hide or
show its series. The same data as the static figures of dcsim.sweep.plots: each chosen metric's mean over seeds
against each axis group's first key, one series per combination of the other axes, 95% CI bars where the seeds
differ, and the energy / end-to-end p99 Pareto front.

plotly is an optional dependency (the `report` extra): import this module only inside the report, and fall back
to the static figures where `available()` is False. plotly.js is inlined once per page (`library_script`), so
the page stays one file that needs no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dcsim.sweep.plots import MAX_LINES, _is_numeric, categorical

LINE_WIDTH = 2  # px, lines joining a series' points (none where there are more than MAX_LINES series)
CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
HELP = ("Hover a point for its values; click a legend entry to hide or show its series, double-click to show it "
        "alone; drag to zoom, double-click the plot to zoom back out.")


def available() -> bool:
    """Whether plotly is installed (`pip install "dcsim[report]"`)."""
    try:
        import plotly.io  # noqa: F401
    except ImportError:
        return False
    return True


def library_script() -> str:
    """plotly.js as one inline <script>, to put once on the page before its figures."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


@dataclass
class Series:
    """One line of a panel: the configurations (numbered as in the report's summary table, from 1) that share the
    values of the other axes, in order along x."""

    name: str
    x: list
    y: list[float]
    err: list[float]
    configs: list[int]
    text: list[str] = field(default_factory=list)


@dataclass
class Panel:
    """What one figure draws: the x axis (its title, and its categories in order when drawn as categories) and
    the series on it."""

    xtitle: str
    categories: list[str] | None
    series: list[Series]
    lines: bool
    ticks: list[float] | None = None  # a numeric axis' ticks: the swept values, where there are at most 12


def _fmt(x: float) -> str:
    from dcsim.report import fmt

    return fmt(float(x))


def metric_panel(summary: pd.DataFrame, axes: list[list[str]], group: list[str], metric: str) -> Panel:
    """A metric's mean over seeds against the group's first key, one series per combination of the other axes;
    the half-width of the 95% interval where the seeds differ, else 0. Categories as the static figure draws
    them: text values, and numbers of which one stands far from the rest."""
    mean = summary[f"{metric}.mean"].to_numpy(float)
    half = ((summary[f"{metric}.ci95_hi"] - summary[f"{metric}.ci95_lo"]) / 2).to_numpy(float)
    half = np.where(np.isnan(half) | (half <= 1e-9 * np.maximum(np.abs(mean), 1e-12)), 0.0, half)
    configs = np.arange(1, len(summary) + 1)
    if not group:  # no axes: seeds only
        s = Series("mean over seeds", ["all"], [float(mean[0])], [float(half[0])], [1])
        return Panel("", ["all"], [s], lines=False)
    xkey = group[0]
    others = [k for g in axes if g != group for k in g]
    xs = summary[xkey]
    if _is_numeric(xs) and not categorical(xs.to_numpy(float)):
        cats, x = None, xs.astype(float).to_numpy()
        pos = x
        ticks = np.unique(x).tolist()
    else:
        ticks = []
        order = sorted(dict.fromkeys(xs)) if _is_numeric(xs) else list(dict.fromkeys(xs))
        cats = [f"{v:g}" if _is_numeric(xs) else str(v) for v in order]
        x = np.array([f"{v:g}" if _is_numeric(xs) else str(v) for v in xs], dtype=object)
        pos = np.array([cats.index(v) for v in x], float)
    keys = [json.dumps([str(r[k]) for k in others]) for _, r in summary.iterrows()]
    combos = list(dict.fromkeys(keys))
    series = []
    for c in combos:
        sel = np.array([k == c for k in keys])
        order = np.argsort(pos[sel], kind="stable")
        first = summary[sel].iloc[0]
        name = ", ".join(f"{k.split('.')[-1]}={first[k]}" for k in others) or "mean over seeds"
        s = Series(name, [v.item() if hasattr(v, "item") else v for v in x[sel][order]],
                   [float(v) for v in mean[sel][order]], [float(v) for v in half[sel][order]],
                   [int(v) for v in configs[sel][order]])
        shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in s.x]  # 2, not 2.0
        s.text = [f"#{n}" + (f" ({name})" if others else "") + f"<br>{xkey} = {xv}<br>{_fmt(y)}"
                  + (f" ± {_fmt(e)}" if e else "") for n, xv, y, e in zip(s.configs, shown, s.y, s.err)]
        series.append(s)
    return Panel(" / ".join(group) if len(group) > 1 else xkey, cats, series, lines=len(combos) <= MAX_LINES,
                 ticks=ticks if cats is None and len(ticks) <= 12 else None)


def _html(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG)


def _layout(title: str, xtitle: str, ytitle: str, categories: list[str] | None,
            ticks: list[float] | None = None) -> dict:
    xaxis: dict = {"title": {"text": xtitle}, "showgrid": True}
    if ticks is not None:
        xaxis.update(tickmode="array", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    if categories is not None:
        xaxis.update(type="category", categoryorder="array", categoryarray=categories)
    return {"title": {"text": title}, "xaxis": xaxis, "yaxis": {"title": {"text": ytitle}},
            "template": "plotly_white", "height": 420, "margin": {"l": 70, "r": 20, "t": 50, "b": 50},
            "hovermode": "closest", "legend": {"title": {"text": "series"}}}


def metric_html(summary: pd.DataFrame, axes: list[list[str]], metric: str, label: str, div_id: str) -> list[str]:
    """One interactive figure per axis group (x = its first key) for a metric: HTML <div>s with their inline
    scripts, which need plotly.js on the page before them."""
    import plotly.graph_objects as go

    out = []
    for j, group in enumerate(axes or [[]]):
        panel = metric_panel(summary, axes, group, metric)
        title = f"{label} against {panel.xtitle}" if group else label
        fig = go.Figure(layout=_layout(title, panel.xtitle, label, panel.categories, panel.ticks))
        for s in panel.series:
            fig.add_trace(go.Scatter(
                x=s.x, y=s.y, name=s.name, mode="lines+markers" if panel.lines else "markers",
                line={"width": LINE_WIDTH}, marker={"size": 7},
                error_y={"type": "data", "array": s.err, "visible": any(s.err), "thickness": 1.2, "width": 4},
                customdata=s.configs, hovertext=s.text, hovertemplate="%{hovertext}<extra></extra>"))
        fig.update_layout(showlegend=len(panel.series) > 1)
        out.append(_html(fig, f"{div_id}-{j}" if len(axes) > 1 else div_id))
    return out


def pareto_html(summary: pd.DataFrame, keys: list[str], front: list[bool], xlabel: str, ylabel: str,
                div_id: str) -> str:
    """Every configuration's mean energy against its mean end-to-end p99, numbered as in the summary table, the
    front joined; hovering a point names its configuration."""
    import plotly.graph_objects as go

    x, y = summary["energy_j.mean"].to_numpy(float), summary["e2e_s.p99.mean"].to_numpy(float)
    f = np.asarray(front, bool)
    n = np.arange(1, len(x) + 1)
    text = [f"#{i}" + "".join(f"<br>{k} = {summary[k].iloc[i - 1]}" for k in keys)
            + f"<br>{xlabel}: {_fmt(a)}<br>{ylabel}: {_fmt(b)}" for i, a, b in zip(n, x, y)]
    fig = go.Figure(layout=_layout("energy against end-to-end p99", xlabel, ylabel, None))
    order = np.argsort(x[f], kind="stable")
    for name, sel, style in (("dominated", np.flatnonzero(~f), {"color": "#999999"}),
                             ("Pareto front", np.flatnonzero(f)[order], {"color": "#d62728"})):
        fig.add_trace(go.Scatter(
            x=x[sel].tolist(), y=y[sel].tolist(), name=name,
            mode="lines+markers+text" if name == "Pareto front" else "markers+text",
            line={"width": LINE_WIDTH, **style}, marker={"size": 8, **style},
            text=[f"#{i}" for i in n[sel]], textposition="top right", textfont={"size": 10, **style},
            customdata=n[sel].tolist(), hovertext=[text[i] for i in sel],
            hovertemplate="%{hovertext}<extra></extra>"))
    return _html(fig, div_id)
