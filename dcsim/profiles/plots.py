"""Fit figure: measured points against the fitted curves, evaluated the way the simulator evaluates them.

Run rows (whole requests) are drawn per sweep (the part of `source` before ':'), against whichever of n_in,
n_out or batch the sweep varies: time, device energy and average power. A source that varies several of them
(a calibration run: input, output and batch sweeps plus off-axis points in one folder) gets one row per sweep
line, and its off-axis shapes a row of measured-against-predicted panels. Decode rows (steady-state decode) are
drawn against batch: step time, power and energy per output token. The curves come from ProfileEvaluator,
so the figure shows what a simulation would use.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter, ScalarFormatter

from dcsim.profiles.profile import Profile


def run_prediction(profile: Profile, batch: float, n_in: float, n_out: float) -> tuple[float, float]:
    """(seconds, device joules) of one run of `batch` requests, as the simulator's evaluator computes them."""
    evaluator = profile.evaluator()
    t_pf, w_pf, _ = evaluator.prefill(batch * n_in, batch * n_in * n_in, int(batch))
    t_dc, e_dc, _ = evaluator.decode_run(int(batch), batch * (n_in + 1), int(max(n_out - 1, 0)))
    return t_pf + t_dc, t_pf * w_pf + e_dc


def decode_prediction(profile: Profile, batch: float, context: float) -> tuple[float, float]:
    """(step seconds, device watts) of one decode step."""
    return profile.evaluator().decode_step(int(round(batch)), context)


AXES = ("n_in", "n_out", "batch")


def sweep_lines(df: pd.DataFrame) -> tuple[list[tuple[str, dict[str, float], pd.DataFrame]], pd.DataFrame]:
    """Split the run rows of one source that varies several of n_in, n_out, batch (a calibration run: three
    sweeps and off-axis points in one file) into its sweep lines and the off-axis rest.

    A line along axis x is the rows whose other two quantities equal the combination most shapes share
    (at least 3 values of x); a shape may sit on two lines (the sweeps' common point). Returns
    [(x, the fixed values, rows)], and the rows on no line."""
    shapes = df.drop_duplicates(list(AXES))
    lines, on_line = [], np.zeros(len(df), bool)
    for x in AXES:
        others = [c for c in AXES if c != x]
        counts = shapes.groupby(others)[x].nunique()
        if counts.empty or counts.max() < 3:
            continue
        fixed_vals = counts.idxmax()
        fixed = {c: float(v) for c, v in zip(others, fixed_vals)}
        m = np.ones(len(df), bool)
        for c, v in fixed.items():
            m &= np.isclose(df[c].to_numpy(float), v)
        lines.append((x, fixed, df[m]))
        on_line |= m
    return lines, df[~on_line]


def _step_lines(ax: plt.Axes, rows: pd.DataFrame, by: str, x: str, label: str) -> None:
    """Measured step times as dots and the fitted ones as lines, one colour per value of `by`, against `x`."""
    for i, (v, d) in enumerate(rows.groupby(by)):
        c = f"C{i % 10}"
        d = d.sort_values(x)
        ax.plot(d[x], 1e3 * d["step_s"], "o", color=c, ms=4)
        m = d.groupby(x)["pred_step_s"].mean()
        ax.plot(m.index, 1e3 * m.to_numpy(), "-", color=c, lw=1, label=label.format(v))
    ax.legend(fontsize=7)


def step_figure(profile: Profile, rows: pd.DataFrame, path: str | Path) -> Path:
    """The PNG of a profile fitted to a mixed-step sweep: decode steps against context, prefill steps against
    their chunk, and every step's time and energy measured against fitted."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.4), squeeze=False)
    ax = axes[0]
    rows = rows[rows["kind"] == "step"]
    dec = rows[(rows["batch"] > 0) & (rows["n_in"] == 0)]
    pf = rows[(rows["batch"] == 0) & (rows["n_in"] > 0)]
    mixed = rows[(rows["batch"] > 0) & (rows["n_in"] > 0)]
    _step_lines(ax[0], dec.assign(L=dec["context"] / dec["batch"]), "batch", "L", "batch {:g}")
    ax[0].set(xscale="log", xlabel="KV tokens read per decode", ylabel="ms per step")
    _title(ax[0], "decode-only steps: measured (dots), fitted (lines)")
    _step_lines(ax[1], pf, "prefill_prefix", "n_in", "{:g} tokens cached before")
    ax[1].set(xscale="log", xlabel="prefill chunk tokens", ylabel="ms per step")
    _title(ax[1], "prefill-only steps: measured (dots), fitted (lines)")
    for j, (col, pred, unit, k) in enumerate((("step_s", "pred_step_s", "ms", 1e3),
                                              ("step_j", "pred_step_j", "J", 1.0))):
        a = ax[2 + j]
        for name, d, c in (("decode only", dec, "C0"), ("prefill only", pf, "C1"), ("mixed", mixed, "C2")):
            d = d[np.isfinite(d[col])]
            a.plot(k * d[pred], k * d[col], "o", color=c, ms=3, label=name)
        lim = [k * np.nanmin(rows[[col, pred]].to_numpy()), k * np.nanmax(rows[[col, pred]].to_numpy())]
        a.plot(lim, lim, "k-", lw=0.8)
        a.set(xscale="log", yscale="log", xlabel=f"fitted {unit} per step", ylabel=f"measured {unit} per step")
        _title(a, f"every step's {'time' if j == 0 else 'energy'}: measured against fitted")
        a.legend(fontsize=7)
    errs = "; ".join(f"{k}: median {v.median_ape_pct:.1f}%, max {v.max_ape_pct:.1f}%"
                     for k, v in profile.fit_error.items())
    fig.suptitle(f"{profile.name} ({profile.device.name}, {profile.model.name})\n{textwrap.fill(errs, 170)}",
                 fontsize=9)
    for a in axes.flat:
        for axis in (a.xaxis, a.yaxis):
            if axis.get_scale() == "log":
                axis.set_major_formatter(ScalarFormatter())
                axis.set_minor_formatter(NullFormatter())
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def fit_figure(profile: Profile, rows: pd.DataFrame, path: str | Path) -> Path:
    """Write the PNG; returns its path."""
    if (rows["kind"] == "step").any():
        return step_figure(profile, rows, path)
    runs = rows[rows["kind"] == "run"]
    dec = rows[rows["kind"] == "decode"]
    sweeps = sorted({str(s).split(":")[0] for s in runs["source"]}) if len(runs) else []
    # one row of panels per sweep; a source varying several quantities gets one row per sweep line, and its
    # off-axis points one row of measured-against-predicted panels
    panels: list[tuple] = []
    for sw in sweeps:
        df = runs[runs["source"].astype(str).str.split(":").str[0] == sw]
        if sum(df[c].nunique() > 1 for c in AXES) <= 1:
            panels.append(("sweep", df, sw, None, None))
            continue
        lines, off = sweep_lines(df)
        panels += [("sweep", d, sw, x, fixed) for x, fixed, d in lines]
        if len(off):
            panels.append(("off", off, sw, None, None))
    nrows = len(panels) + (1 if len(dec) else 0)
    fig, axes = plt.subplots(nrows, 3, figsize=(13.5, 3.6 * nrows + 0.6), squeeze=False)
    for i, (what, df, sw, x, fixed) in enumerate(panels):
        if what == "sweep":
            _run_panels(profile, df, sw, axes[i], x, fixed)
        else:
            _off_axis_panels(profile, df, sw, axes[i])
    if len(dec):
        _decode_panels(profile, dec, axes[-1])
    errs = [f"{k}: median {v.median_ape_pct:.1f}%, max {v.max_ape_pct:.1f}% (n={v.n_points})"
            for k, v in profile.fit_error.items()]
    lines: list[str] = []  # three terms a line, fewer where a line would run past the figure's width
    for e in errs:
        if lines and lines[-1].count("; ") < 2 and len(lines[-1]) + 2 + len(e) <= 150:
            lines[-1] += "; " + e
        else:
            lines.append(e)
    fig.suptitle(f"{profile.name}  ({profile.gpus_per_replica} GPU{'s' if profile.gpus_per_replica > 1 else ''} "
                 f"per replica; {profile.device.name}, {profile.model.name})\nfit error (absolute % error of shape "
                 "means): " + "\n".join(lines), fontsize=9)
    for ax in axes.flat:
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout(rect=(0, 0, 1, 1.0 - (0.10 if nrows == 1 else 0.06)))
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def _kind(profile: Profile) -> str:
    """'fitted' for a profile fitted to measurements, 'derived' for a datasheet transfer (nothing fitted)."""
    src = profile.provenance.get("source")
    return "derived" if src is not None and src.source == "derived" else "fitted"


def _axis_of(df: pd.DataFrame) -> str:
    return max(("n_in", "n_out", "batch"), key=lambda c: df[c].nunique())


def _title(ax: plt.Axes, text: str) -> None:
    """A panel title wrapped to the panel's width, so a long run folder name does not run into its neighbour's."""
    ax.set_title(textwrap.fill(text, 60), fontsize=8)


def _run_panels(profile: Profile, df: pd.DataFrame, sweep: str, axes: np.ndarray, x: str | None = None,
                fixed: dict[str, float] | None = None) -> None:
    x = x or _axis_of(df)
    label = {"n_in": "prompt tokens (n_in)", "n_out": "output tokens (n_out)", "batch": "batch (requests)"}[x]
    means = df.groupby("source").agg(**{c: (c, "mean") for c in ("n_in", "n_out", "batch", "runtime_s",
                                                                 "energy_device_j")}).sort_values(x)
    if fixed is None:
        fixed = {c: float(df[c].median()) for c in ("n_in", "n_out", "batch") if c != x}
    else:
        sweep = f"{sweep}: {x} sweep"
    grid = np.unique(np.geomspace(max(df[x].min(), 1), df[x].max(), 60))
    pred = []
    for g in grid:
        v = dict(fixed, **{x: g})
        pred.append(run_prediction(profile, v["batch"], v["n_in"], v["n_out"]))
    pt = np.array([p[0] for p in pred])
    pe = np.array([p[1] for p in pred])
    other = ", ".join(f"{k}={v:g}" for k, v in fixed.items())
    for ax, col, yl, curve in ((axes[0], "runtime_s", "run time (s)", pt),
                               (axes[1], "energy_device_j", "device energy (J)", pe),
                               (axes[2], None, "average device power (W)", pe / pt)):
        if col is None:
            y_all = df["energy_device_j"] / df["runtime_s"]
            y_mean = means["energy_device_j"] / means["runtime_s"]
        else:
            y_all, y_mean = df[col], means[col]
        ax.scatter(df[x], y_all, s=6, alpha=0.25, color="tab:blue", label="measured (each repeat)")
        ax.scatter(means[x], y_mean, s=28, color="tab:blue", edgecolor="k", zorder=3, label="measured (mean)")
        ax.plot(grid, curve, color="tab:red", lw=1.6, label=f"{_kind(profile)} profile")
        ax.set_xscale("log")
        if col is not None:
            ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3, which="both")
        _title(ax, f"{sweep} ({other})")
    axes[0].legend(fontsize=7, loc="best")


def _off_axis_panels(profile: Profile, df: pd.DataFrame, sweep: str, axes: np.ndarray) -> None:
    """Shapes on no sweep line: measured (mean of the repeats) against the profile's prediction."""
    means = df.groupby("source").agg(**{c: (c, "mean") for c in ("n_in", "n_out", "batch", "runtime_s",
                                                                 "energy_device_j")})
    pred = np.array([run_prediction(profile, r["batch"], r["n_in"], r["n_out"]) for _, r in means.iterrows()])
    p_meas = means["energy_device_j"] / means["runtime_s"]
    for ax, meas, pr, what in ((axes[0], means["runtime_s"], pred[:, 0], "run time (s)"),
                               (axes[1], means["energy_device_j"], pred[:, 1], "device energy (J)"),
                               (axes[2], p_meas, pred[:, 1] / pred[:, 0], "average device power (W)")):
        ok = np.isfinite(meas.to_numpy(float))
        ax.scatter(meas[ok], pr[ok], s=28, color="tab:blue", edgecolor="k", zorder=3, label="off-axis shape (mean)")
        for (_, r), m, q in zip(means[ok].iterrows(), meas[ok], pr[ok]):
            ax.annotate(f"{r['n_in']:g}/{r['n_out']:g}/b{r['batch']:g}", (m, q), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        if ok.any():
            lo, hi = float(min(meas[ok].min(), pr[ok].min())), float(max(meas[ok].max(), pr[ok].max()))
            ax.plot([lo / 1.2, hi * 1.2], [lo / 1.2, hi * 1.2], color="tab:red", lw=1.0, label="predicted = measured")
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"measured {what}")
        ax.set_ylabel(f"{_kind(profile)} profile's {what}")
        ax.grid(alpha=0.3, which="both")
        _title(ax, f"{sweep}: off-axis shapes (n_in/n_out/batch)")
    axes[0].legend(fontsize=7, loc="best")


def _decode_panels(profile: Profile, dec: pd.DataFrame, axes: np.ndarray) -> None:
    dec = dec.sort_values("batch")
    n_in, n_out = float(dec["n_in"].median()), float(dec["n_out"].median())
    grid = np.unique(np.round(np.geomspace(max(dec["batch"].min(), 1), dec["batch"].max(), 60)))
    pr = np.array([decode_prediction(profile, b, b * (n_in + n_out / 2.0)) for b in grid])
    p_meas = dec["avg_power_w"].where(dec["avg_power_w"].notna(), dec["energy_device_j"] / dec["runtime_s"])
    ax = axes[0]
    ax.scatter(dec["batch"], dec["runtime_s"], color="tab:blue", edgecolor="k", zorder=3,
               label="measured: batch / throughput")
    if dec["tpot_s"].notna().any():
        ax.scatter(dec["batch"], dec["tpot_s"], facecolor="none", edgecolor="tab:green", zorder=3,
                   label="published TPOT / median ITL (not fitted)")
    ax.plot(grid, pr[:, 0], color="tab:red", label="fitted decode_step_s")
    ax.set_ylabel("decode step time (s)")
    ax = axes[1]
    ax.scatter(dec["batch"], p_meas, color="tab:blue", edgecolor="k", zorder=3, label="measured")
    ax.plot(grid, pr[:, 1], color="tab:red", label="fitted decode_w")
    ax.set_ylabel(f"device power, {profile.gpus_per_replica} GPU(s) (W)")
    ax.set_ylim(bottom=0)
    ax = axes[2]
    ax.scatter(dec["batch"], p_meas * dec["runtime_s"] / dec["batch"], color="tab:blue", edgecolor="k", zorder=3,
               label="measured")
    ax.plot(grid, pr[:, 0] * pr[:, 1] / grid, color="tab:red", label="fitted")
    ax.set_ylabel("device energy per output token (J)")
    ax.set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("running batch (sequences)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
        ax.set_title(f"steady-state decode (context = batch x {n_in + n_out / 2:g} tokens)", fontsize=8)
