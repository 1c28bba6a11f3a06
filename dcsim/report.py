"""One self-contained HTML page for a run folder (dcsim run --out) or a sweep folder (dcsim sweep --out).

Plots are embedded as base64 PNG, or, for a sweep where plotly is installed, drawn by plotly.js inlined once in
the page; tables sort by clicking a header (a few lines of inline JavaScript), and a Content-Security-Policy
forbids every network load, so the page works offline as a single file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from dcsim.errors import UserError

MAX_TABLE_ROWS = 1000

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1280px;
color:#1b1f24;padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #d0d7de}
.meta{color:#57606a;font-size:0.9em}code{background:#f3f4f6;padding:1px 4px;border-radius:3px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}
td.t,th.t{text-align:left}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafbfc}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #eaecef}
figcaption{font-size:0.85em;color:#57606a}
figure.iplot{border:1px solid #eaecef;padding:4px}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:4px}
"""

# Click a header to sort its table: numbers as numbers, text as text, blanks last; click again to reverse.
JS = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent.trim(); }
    if (v === "") { return [2, 0]; }
    var n = Number(v);
    return isNaN(n) ? [1, v.toLowerCase()] : [0, n];
  }
  function cmp(a, b) {
    if (a[0] !== b[0]) { return a[0] - b[0]; }
    return a[1] < b[1] ? -1 : (a[1] > b[1] ? 1 : 0);
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, i) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r, s) {
          var a = key(r.cells[i]), b = key(s.cells[i]), c = cmp(a, b);
          return (a[0] === 2 || b[0] === 2 || asc) ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


# ---- HTML pieces -----------------------------------------------------------------------------
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any) -> str:
    """Numbers for people: integers with thousands separators, floats to 4 significant digits."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return ""
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x != 0 and (abs(x) >= 1e15 or abs(x) < 1e-3):
            return f"{x:.3e}"
        if abs(x) >= 1e4:
            return f"{x:,.0f}"
        return f"{x:.4g}"
    return str(x)


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x)
    try:
        import numpy as np

        if isinstance(x, (np.integer, np.floating)):
            return float(x)
    except ImportError:  # pragma: no cover
        pass
    return None


def cell(x: Any, text: str | None = None) -> str:
    """A table cell: numbers right-aligned with their exact value in data-v (what sorting uses)."""
    n = _number(x)
    if n is not None:
        shown = fmt(int(x) if float(n).is_integer() and not isinstance(x, float) else float(n))
        v = "" if math.isnan(n) else repr(n)
        return f'<td data-v="{v}">{esc(text if text is not None else shown)}</td>'
    return f'<td class="t">{esc(text if text is not None else ("" if x is None else x))}</td>'


def table(headers: list[str], rows: Iterable[list[str]], sortable: bool = True, text_cols: int = 0,
          caption: str | None = None) -> str:
    """rows hold cells made by cell(); headers align with their column (text left, numbers right)."""
    rows = list(rows)
    texts = {i for i, c in enumerate(rows[0]) if c.startswith('<td class="t"')} if rows else set()
    texts |= set(range(text_cols))
    hcells = "".join(f'<th{" class=t" if i in texts else ""} title="{esc(h)}">{esc(h)}</th>'
                     for i, h in enumerate(headers))
    body = "\n".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    cap = f"<caption class=meta>{esc(caption)}</caption>" if caption else ""
    cls = ' class="sortable"' if sortable else ""
    return (f'<div class="scroll"><table{cls}>{cap}<thead><tr>{hcells}</tr></thead>\n<tbody>\n{body}\n'
            '</tbody></table></div>')


def frame_table(df: pd.DataFrame, text_cols: int = 0, max_rows: int = MAX_TABLE_ROWS) -> str:
    note = ""
    if len(df) > max_rows:
        note = f"<p class=meta>first {max_rows} of {len(df)} rows shown</p>"
        df = df.head(max_rows)
    rows = [[cell(_py(v)) for v in r] for r in df.itertuples(index=False, name=None)]
    return table([str(c) for c in df.columns], rows, text_cols=text_cols) + note


def _py(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return v
    return v


def figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def page(title: str, meta: str, sections: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<section><h2>{esc(h)}</h2>\n{content}</section>" for h, content in sections)
    made = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    import dcsim

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="dcsim {esc(dcsim.__version__)}">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class="meta">{meta} &middot; dcsim {esc(dcsim.__version__)} &middot; made {made}</p>
{body}
<script>{JS}</script>
</body></html>
"""


# ---- run folders -----------------------------------------------------------------------------
HEADLINE = (
    ("requests_completed", "requests completed", ""), ("requests_rejected", "requests rejected", ""),
    ("requests_unfinished", "requests unfinished", ""), ("tokens_in", "tokens in", ""),
    ("tokens_out", "tokens out", ""), ("makespan_s", "makespan", "s"),
    ("energy_j", "energy (device + host)", "J"), ("active_j", "device active", "J"),
    ("idle_j", "device idle", "J"), ("host_j", "host", "J"), ("facility_j", "facility (x PUE)", "J"),
    ("carbon_g", "carbon", "g CO2e"), ("cost", "cost", ""), ("tokens_per_joule", "output tokens per joule", "tok/J"),
    ("energy_per_request_j", "energy per request", "J"), ("energy_per_output_token_j", "energy per output token", "J"),
    ("mean_power_w", "mean power", "W"), ("throughput_tokens_per_s", "throughput", "tok/s"),
    ("throughput_requests_per_s", "throughput", "req/s"),
)
LATENCIES = (("wait_s", "queue wait"), ("ttft_s", "time to first token"), ("tpot_s", "time per output token"),
             ("e2e_s", "end-to-end"))
RUN_PNGS = ("power.png", "latency_cdf.png", "energy_breakdown.png")

EXTRA_LABELS = {"utilisation": ("utilisation", ""), "slo.attainment": ("SLO attainment", ""),
                "slo.goodput_rps": ("goodput", "req/s"), "replicas": ("replicas", ""),
                "power_cap_w": ("power cap", "W"), "makespan_s": ("makespan", "s")}


def metric_label(metric: str, currency: str = "") -> str:
    """A summary metric's human name with its unit: e2e_s.p99 -> 'end-to-end p99 (s)', pools.a100.energy_j ->
    'a100: energy (device + host) (J)', cost -> 'cost (USD)'; an unknown name is returned as it is."""
    if metric.startswith("pools.") and metric.count(".") >= 2:
        _, pool, rest = metric.split(".", 2)
        return f"{pool}: {metric_label(rest, currency)}"
    units = {k: (label, currency if k == "cost" else unit) for k, label, unit in HEADLINE}
    units.update(EXTRA_LABELS)
    if metric in units:
        label, unit = units[metric]
        return f"{label} ({unit})" if unit else label
    base, _, stat = metric.rpartition(".")
    lat = dict(LATENCIES)
    if base in lat:
        return f"{lat[base]} {stat} (s)"
    return metric


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read: {e}", path) from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", path)
    return data


def _carbon_section(s: dict) -> str:
    """Batch requests' deadlines and deferrals, and what deferral saved against sending at arrival (empty
    without request classes)."""
    rc, dp = s.get("request_classes"), s.get("dispatch")
    if not rc:
        return ""
    cur = s.get("currency", "")
    b, i = rc["batch"], rc["interactive"]
    rows = [["batch requests", b["requests"], ""], ["batch deadline", b["deadline_s"], "s"],
            ["batch deadline misses", b["deadline_misses"], ""], ["batch done late", b["late"], ""],
            ["batch deferred", b["deferred"], ""], ["mean deferral", b["deferral_s"].get("mean"), "s"],
            ["interactive requests", i["requests"], ""],
            ["interactive TTFT p99", i["ttft_s"].get("p99"), "s"]]
    if "slo" in i:
        rows.append(["interactive SLO attainment", i["slo"]["attainment"], ""])
    if dp:
        rows += [["dispatch", dp["name"], ""], ["carbon", dp["carbon_g"], "g CO2e"],
                 ["carbon, batch sent at arrival", dp["carbon_g_without_deferral"], "g CO2e"],
                 ["carbon saved", dp["carbon_saved_g"], "g CO2e"], ["cost saved", dp["cost_saved"], cur],
                 ["deadline misses, batch sent at arrival", dp["deadline_misses_without_deferral"], ""],
                 ["window (from, to)", f"{dp['window_s'][0]:g}-{dp['window_s'][1]:g}", "s"]]
    return table(["figure", "value", "unit"], [[cell(a), cell(v), cell(u)] for a, v, u in rows], sortable=False,
                 text_cols=1)


def run_report(d: Path) -> str:
    s = _read_json(d / "summary.json")
    missing = [k for k in ("scenario", "pools", "energy_j") if k not in s]
    if missing:
        raise UserError(f"not a dcsim run summary (missing {missing})", d / "summary.json")
    sections = []
    head = [[cell(label), cell(s[k]), cell(s.get("currency", "") if k == "cost" else unit)]
            for k, label, unit in HEADLINE if k in s]
    sections.append(("Headline", table(["figure", "value", "unit"], head, sortable=False, text_cols=1)))
    lat = [[cell(label)] + [cell(s[k].get(q)) for q in ("mean", "p50", "p90", "p99")]
           for k, label in LATENCIES if isinstance(s.get(k), dict)]
    sections.append(("Latency (s)", table(["latency", "mean", "p50", "p90", "p99"], lat, text_cols=1)))
    prow = []
    for name, p in s["pools"].items():
        prow.append([cell(name), cell(p.get("profile")), cell(p.get("replicas")), cell(p.get("power_cap_w")),
                     cell(p.get("requests_completed")), cell(p.get("tokens_out")), cell(p.get("energy_j")),
                     cell(p.get("tokens_per_joule")), cell(p.get("mean_power_w")), cell(p.get("utilisation")),
                     cell(p.get("e2e_s", {}).get("p50")), cell(p.get("e2e_s", {}).get("p99"))])
    sections.append(("Pools", table(["pool", "profile", "replicas", "power cap W", "completed", "tokens out",
                                     "energy J", "tok/J", "mean W", "utilisation", "e2e p50 s", "e2e p99 s"],
                                    prow, text_cols=2)))
    carbon = _carbon_section(s)
    if carbon:
        sections.append(("Request classes and carbon-aware dispatch", carbon))
    notes = ""
    if s.get("rejections"):
        notes += table(["rejection reason", "requests"], [[cell(r), cell(n)] for r, n in s["rejections"].items()],
                       text_cols=1)
    for w in s.get("warnings", []):
        notes += f'<p class="warn">{esc(w)}</p>'
    if notes:
        sections.append(("Rejections and notes", notes))
    pngs = [d / n for n in RUN_PNGS if (d / n).is_file()]
    pngs += sorted(p for p in d.glob("*.png") if p.name not in RUN_PNGS)
    if pngs:
        sections.append(("Plots", "\n".join(figure(p.read_bytes(), p.stem.replace("_", " ")) for p in pngs)))
    if (d / "requests.parquet").is_file():
        req = pd.read_parquet(d / "requests.parquet", columns=["pool", "status"])
        counts = req.groupby(["pool", "status"]).size().unstack(fill_value=0).reset_index()
        counts.columns = [str(c) for c in counts.columns]
        sections.append(("Requests by pool and status", frame_table(counts, text_cols=1)))
    if (d / "replicas.csv").is_file():
        sections.append(("Replicas", frame_table(pd.read_csv(d / "replicas.csv"), text_cols=0)))
    if (d / "power.csv").is_file():
        pw = pd.read_csv(d / "power.csv")
        cols = [c for c in pw.columns if c.endswith("_w")]
        stats = [[cell(c[:-2]), cell(float(pw[c].mean())), cell(float(pw[c].max())), cell(float(pw[c].min()))]
                 for c in cols]
        sections.append(("Power over time (W, per time bin of power.csv)",
                         table(["series", "mean of bins", "max bin", "min bin"], stats, text_cols=1)))
    meta = (f"run folder <code>{esc(d.name)}</code> &middot; scenario {esc(s['scenario'])} &middot; "
            f"seed {esc(s.get('seed'))}")
    return page(f"dcsim run: {s['scenario']}", meta, sections)


# ---- sweep folders ---------------------------------------------------------------------------
def _choose_metrics(info: dict, columns: list[str], asked: list[str] | None, where: Path) -> list[str]:
    import fnmatch

    from dcsim.sweep import DEFAULT_METRICS

    metrics = [c[: -len(".mean")] for c in columns if c.endswith(".mean")]
    pats = asked or info.get("metrics") or list(DEFAULT_METRICS)
    chosen: list[str] = []
    for pat in pats:
        hits = [m for m in metrics if fnmatch.fnmatchcase(m, pat)]
        if not hits and asked:
            raise UserError(f"no metric matches '{pat}' in this sweep", where, "--metric")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _tables(d: Path, command: str, *stems: str) -> list[pd.DataFrame]:
    """The parquet tables a finished `dcsim COMMAND` folder holds; one missing means it has not finished."""
    for stem in stems:
        if not (d / f"{stem}.parquet").is_file():
            raise UserError(f"{stem}.parquet not found: the {command} has not finished (run dcsim {command} again "
                            "to resume)", d)
    return [pd.read_parquet(d / f"{stem}.parquet") for stem in stems]


def _has_spread(mean: float, lo: float, hi: float, n_seeds: int) -> bool:
    """An interval worth printing: several seeds, and a half-width above rounding (deterministic runs give 1e-9)."""
    return n_seeds > 1 and math.isfinite(hi) and (hi - lo) / 2 > 1e-9 * max(abs(mean), 1e-12)


def pareto_front(x: Iterable[float], y: Iterable[float]) -> list[bool]:
    """Which points no other point beats on both (lower x and lower y, at least one strictly)."""
    pts = list(zip(x, y))
    return [not any(a <= px and b <= py and (a < px or b < py) for a, b in pts) for px, py in pts]


def _baseline_row(summary: pd.DataFrame, keys: list[str], baseline: list[str] | None, where: Path) -> int:
    """The configuration the change is taken against: the one --baseline KEY=VALUE names, else the first."""
    if not baseline:
        return 0
    sel = pd.Series(True, index=summary.index)
    for item in baseline:
        k, eq, v = item.partition("=")
        if not eq or k not in keys:
            raise UserError(f"expected AXIS=VALUE with one of the sweep's axes ({', '.join(keys)}), got {item!r}",
                            where, "--baseline")
        sel &= summary[k].astype(str) == v
    hits = list(summary.index[sel])
    if len(hits) != 1:
        raise UserError(f"{' '.join(baseline)} names {len(hits)} configurations, not one; give more axes",
                        where, "--baseline")
    return summary.index.get_loc(hits[0])


def folder_currency(d: Path) -> str:
    """The currency (ISO 4217) of a sweep or plan folder's costs, from its first point's summary; '' if none."""
    for f in sorted((d / "points").glob("*.json"))[:1]:
        try:
            return str(json.loads(f.read_text()).get("summary", {}).get("currency") or "")
        except (OSError, ValueError):
            return ""
    return ""


def _plots(summary: pd.DataFrame, axes: list[list[str]], keys: list[str], chosen: list[str],
           label: dict[str, str], front: list[bool] | None, cur: str, interactive: bool) -> str:
    """The sweep's figures: interactive (plotly.js inlined once, before the first) where plotly is installed and
    asked for, else the static PNGs, with a note saying how to get the interactive ones."""
    from dcsim.sweep import interactive as iplots

    pareto_caption = ("each configuration's energy against its end-to-end p99, numbered as in the summary table; "
                      "the front (none better on both) joined")
    xlabel, ylabel = metric_label("energy_j", cur), metric_label("e2e_s.p99")
    if interactive and iplots.available():
        figs = []
        for i, m in enumerate(chosen):
            for div in iplots.metric_html(summary, axes, m, label[m], f"plot-{i + 1}"):
                figs.append(f'<figure class="iplot">{div}<figcaption>{esc(label[m])}: mean over seeds, bars = 95% '
                            "t-interval where the seeds differ</figcaption></figure>")
        if front is not None:
            div = iplots.pareto_html(summary, keys, front, xlabel, ylabel, "plot-pareto")
            figs.append(f'<figure class="iplot">{div}<figcaption>{esc(pareto_caption)}</figcaption></figure>')
        if not figs:
            return ""
        return f"<p class=meta>{esc(iplots.HELP)}</p>\n{iplots.library_script()}\n" + "\n".join(figs)
    from dcsim.sweep.plots import metric_figure, pareto_figure

    figs = [figure(metric_figure(summary, axes, m, label[m]), f"{label[m]}: mean over seeds, bars = 95% t-interval "
                   "where the seeds differ") for m in chosen]
    if front is not None:
        figs.append(figure(pareto_figure(summary, keys, front, xlabel, ylabel), pareto_caption))
    if not figs:
        return ""
    note = "" if not interactive else ('<p class=meta>static figures: for interactive ones (hover, toggle series) '
                                       'install plotly: pip install "dcsim[report]"</p>\n')
    return note + "\n".join(figs)


def sweep_report(d: Path, metrics: list[str] | None = None, baseline: list[str] | None = None,
                 interactive: bool = True) -> str:
    """A sweep folder's page: its axes and baseline, figures (interactive where plotly is installed), the summary
    with changes against the baseline and the Pareto front, the per-pool table and every point."""
    info = _read_json(d / "sweep.json")
    results, summary = _tables(d, "sweep", "results", "summary")
    axes: list[list[str]] = info.get("axes", [])
    keys = [k for g in axes for k in g]
    chosen = _choose_metrics(info, list(summary.columns), metrics, d)
    base = _baseline_row(summary, keys, baseline, d)
    cur = folder_currency(d)
    label = {m: metric_label(m, cur) for m in chosen}
    sections = []
    desc = [[cell("base scenario"), cell(Path(info.get("base", "")).name)],
            [cell("points"), cell(len(results))],
            [cell("configurations"), cell(len(summary))],
            [cell("seeds"), cell(", ".join(str(x) for x in info.get("seeds", [])))]]
    desc += [[cell("set"), cell(s)] for s in info.get("set", [])]
    for g in axes:
        vals = [", ".join(dict.fromkeys(str(v) for v in summary[k])) for k in g]
        lab = " + ".join(g) + (" (zip)" if len(g) > 1 else "")
        desc.append([cell(lab), cell("; ".join(vals))])
    brow = summary.iloc[base]
    desc.append([cell("baseline"), cell(", ".join(f"{k}={_py(brow[k])}" for k in keys) or "the only configuration")])
    text = f"<p>{esc(info['description'])}</p>" if info.get("description") else ""
    sections.append(("Sweep", text + table(["setting", "value"], desc, sortable=False, text_cols=2)))
    front = None
    if {"energy_j.mean", "e2e_s.p99.mean"} <= set(summary.columns):
        front = pareto_front(summary["energy_j.mean"], summary["e2e_s.p99.mean"])
    plots = _plots(summary, axes, keys, chosen, label, front, cur, interactive)
    if plots:
        sections.append(("Plots", plots))
    rows = []
    for i, (_, r) in enumerate(summary.iterrows()):
        row = [cell(i + 1)] + [cell(_py(r[k])) for k in keys] + [cell(int(r["n_seeds"]))]
        for m in chosen:
            mean, lo, hi = float(r[f"{m}.mean"]), float(r[f"{m}.ci95_lo"]), float(r[f"{m}.ci95_hi"])
            txt = fmt(mean) + (f" ± {fmt((hi - lo) / 2)}" if _has_spread(mean, lo, hi, int(r["n_seeds"])) else "")
            b = float(brow[f"{m}.mean"])
            if i != base and b and math.isfinite(b) and math.isfinite(mean):
                txt += f" ({(mean - b) / abs(b):+.1%})"
            row.append(cell(mean, txt))
        if front is not None:
            row.append(cell("front" if front[i] else ""))
        row.append(cell("baseline" if i == base else ""))
        rows.append(row)
    head = ["#"] + keys + ["seeds"] + [label[m] for m in chosen]
    head += ["Pareto (energy, e2e p99)"] if front is not None else []
    sections.append(("Summary: mean ± 95% CI half-width over seeds (change against the baseline)",
                     table(head + [""], rows, text_cols=0)
                     + "<p class=meta>every metric with its interval: summary.csv / summary.parquet</p>"))
    pools = sorted({c.split(".")[1] for c in summary.columns if c.startswith("pools.") and c.endswith(".mean")})
    per_pool = [m for m in ("energy_j", "utilisation", "e2e_s.p99", "requests_completed", "tokens_per_joule")
                if any(f"pools.{p}.{m}.mean" in summary.columns for p in pools)]
    if len(pools) and per_pool:
        prow = []
        for _, r in summary.iterrows():
            for p in pools:
                prow.append([cell(_py(r[k])) for k in keys] + [cell(p)]
                            + [cell(float(r.get(f"pools.{p}.{m}.mean", float("nan")))) for m in per_pool])
        sections.append(("Per pool: mean over seeds",
                         table(keys + ["pool"] + [metric_label(m, cur) for m in per_pool], prow, text_cols=0)))
    cols = ["point", "seed"] + keys + chosen
    money = {m: f"{m} ({cur})" for m in chosen if cur and m.rpartition(".")[2] == "cost"}  # marked with its currency
    sections.append(("Points", frame_table(results[cols].rename(columns=money), text_cols=1)
                     + "<p class=meta>every flattened summary metric: results.csv / results.parquet</p>"))
    name = info.get("name") or d.name
    meta = f"sweep folder <code>{esc(d.name)}</code> &middot; {len(results)} points"
    return page(f"dcsim sweep: {name}", meta, sections)


def plan_report(d: Path) -> str:
    """A capacity plan's page: the question, the chosen fleet, the figure, the frontier and every fleet simulated."""
    from dcsim.capacity import OBJECTIVES
    from dcsim.capacity_plots import plan_figure

    info = _read_json(d / "plan.json")
    evaluated, frontier = _tables(d, "plan", "evaluated", "frontier")
    metric = OBJECTIVES[info["minimise"]]
    cur = folder_currency(d)
    money = {"cost": f"cost ({cur})"} if cur else {}  # unit-less money, marked with its currency
    q = [[cell("scenario"), cell(Path(info["scenario"]).name)], [cell("seed"), cell(info["seed"])]]
    q += [[cell("set"), cell(s)] for s in info.get("set", [])]
    q += [[cell("vary"), cell(f"{v['path']} = {v['lo']}..{v['hi']}")] for v in info["vary"]]
    q += [[cell("objective"), cell(s)] for s in info["slo"]]
    q += [[cell("minimise"), cell(f"{info['minimise']} ({money.get(metric, metric)})")],
          [cell("fleets simulated"), cell(f"{info['fleets_evaluated']} of {info['grid_fleets']}, "
                                          f"{info['rounds']} rounds")]]
    ans = info.get("answer")
    if ans is None:
        answer = "<p>No fleet in the ranges meets every objective.</p>"
    else:
        rows = [[cell(money.get(k, k)), cell(_py(v))] for k, v in ans.items()]
        answer = table(["", "the cheapest fleet that meets every objective"], rows, sortable=False, text_cols=1)
    sections = [("Question", table(["setting", "value"], q, sortable=False, text_cols=2)), ("Answer", answer),
                ("Plot", figure(plan_figure(evaluated, info, metric, cur),
                                f"{metric} and each objective's metric against {info['vary'][0]['path']}")),
                ("Frontier: the least count meeting every objective, per value of the others",
                 frame_table(frontier.rename(columns=money))),
                ("Every fleet simulated", frame_table(evaluated.rename(columns=money))
                 + "<p class=meta>evaluated.csv / evaluated.parquet; one point file each in points/</p>")]
    meta = f"plan folder <code>{esc(d.name)}</code> &middot; {info['fleets_evaluated']} fleets"
    return page(f"dcsim plan: {Path(info['scenario']).stem}", meta, sections)


# ---- entry -----------------------------------------------------------------------------------
def build_report(results: str | Path, metrics: list[str] | None = None, baseline: list[str] | None = None,
                 interactive: bool = True) -> str:
    """HTML for a run folder (summary.json), a sweep folder (sweep.json + results) or a plan folder (plan.json);
    a sweep's figures are interactive unless `interactive` is False or plotly is not installed."""
    d = Path(results)
    if not d.is_dir():
        raise UserError("not a folder (give a dcsim run --out or dcsim sweep --out folder)", d)
    if (d / "sweep.json").is_file():
        return sweep_report(d, metrics, baseline, interactive)
    if baseline:
        raise UserError("--baseline applies to sweep folders only", d, "--baseline")
    if (d / "plan.json").is_file():
        if metrics:
            raise UserError("--metric applies to sweep folders only", d, "--metric")
        return plan_report(d)
    if (d / "summary.json").is_file():
        if metrics:
            raise UserError("--metric applies to sweep folders only", d, "--metric")
        return run_report(d)
    raise UserError("neither summary.json (a run), sweep.json (a sweep) nor plan.json (a plan) found here", d)


def write_report(results: str | Path, out: str | Path, metrics: list[str] | None = None,
                 force: bool = False, baseline: list[str] | None = None, interactive: bool = True) -> Path:
    """Build the report and write it through a temporary file; an existing file is replaced only if it is a dcsim
    report (or with force)."""
    from dcsim.outputs import check_file, owned_report, write_file

    path = check_file(out, force, owned_report)
    text = build_report(results, metrics, baseline, interactive)
    write_file(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path
