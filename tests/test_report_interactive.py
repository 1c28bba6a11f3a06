"""A sweep report's interactive figures (plotly): plotly.js inlined once and nothing loaded from the network, each
trace's points equal to the sweep's summary table, the same categorical axes and line rules as the static
figures, and the static PNGs with a one-line note where plotly is not installed."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd
import pytest
from test_report import Page
from test_sweep import GRID, make_case, write_sweep

from dcsim.report import pareto_front, write_report
from dcsim.sweep import interactive as iplots
from dcsim.sweep import load_sweep, run_sweep

needs_plotly = pytest.mark.skipif(not iplots.available(), reason="plotly not installed (pip install -e '.[report]')")


def plotted(text: str) -> dict[str, tuple[list[dict], dict]]:
    """Each figure's data and layout, read back from its Plotly.newPlot call in the page."""
    out = {}
    dec = json.JSONDecoder()
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', text):
        data, end = dec.raw_decode(text, m.end())
        layout, _ = dec.raw_decode(text, text.index("{", end))
        out[m.group(1)] = (data, layout)
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("isweep")
    make_case(d)
    sw = load_sweep(write_sweep(d, {**GRID, "metrics": ["e2e_s.p99", "energy_j"]}))
    res = run_sweep(sw, d / "sw", workers=0, progress=False)
    return d, res.summary


@needs_plotly
def test_page_inlines_plotly_once_and_loads_nothing(sweep_dir):
    d, _ = sweep_dir
    text = write_report(d / "sw", d / "i.html", force=True).read_text()
    page = Page(text)
    # two metrics against two axis groups, and the Pareto front; no PNG figure beside them
    assert page.plots == ["plot-1-0", "plot-1-1", "plot-2-0", "plot-2-1", "plot-pareto"] and page.imgs == []
    assert text.count("* plotly.js v") == 1  # the library's banner: one copy for five figures
    assert not re.search(r"<script[^>]*\ssrc=", text)  # every script inline
    assert all(u.startswith("data:") for u in page.urls)
    assert "default-src 'none'" in text and "install plotly" not in text
    assert iplots.HELP in text


@needs_plotly
def test_traces_are_the_summary_tables_values(sweep_dir):
    d, sm = sweep_dir
    figs = plotted(write_report(d / "sw", d / "i.html", force=True).read_text())
    # e2e p99 against fleet.gpu.count: one series per max_batch, points in count order, bars = CI half-widths
    data, layout = figs["plot-1-0"]
    assert [t["name"] for t in data] == ["max_batch=2", "max_batch=8"]
    assert layout["xaxis"]["title"]["text"] == "fleet.gpu.count" and "type" not in layout["xaxis"]
    assert layout["xaxis"]["tickvals"] == [1, 2, 3]
    for t, b in zip(data, (2, 8)):
        rows = sm[sm["fleet.gpu.batching.max_batch"] == b].sort_values("fleet.gpu.count")
        assert t["x"] == list(rows["fleet.gpu.count"].astype(float))
        assert t["y"] == list(rows["e2e_s.p99.mean"])
        half = (rows["e2e_s.p99.ci95_hi"] - rows["e2e_s.p99.ci95_lo"]) / 2
        assert t["error_y"]["array"] == pytest.approx(list(half), rel=1e-12) and t["error_y"]["visible"]
        assert t["customdata"] == [i + 1 for i in rows.index]  # numbered as in the summary table
        assert t["mode"] == "lines+markers" and t["line"]["width"] == iplots.LINE_WIDTH == 2
        assert f"{rows['e2e_s.p99.mean'].iloc[0]:.4g}" in t["hovertext"][0]
        assert "fleet.gpu.count = 1<br>" in t["hovertext"][0]
    # energy against max_batch: one series per count
    data, _ = figs["plot-2-1"]
    assert [t["name"] for t in data] == ["count=1", "count=2", "count=3"]
    assert sorted(y for t in data for y in t["y"]) == sorted(sm["energy_j.mean"])
    # the Pareto figure: the front's configurations joined in energy order, the rest as points
    data, _ = figs["plot-pareto"]
    front = pareto_front(sm["energy_j.mean"], sm["e2e_s.p99.mean"])
    dom, fr = data
    assert dom["name"] == "dominated" and fr["name"] == "Pareto front"
    assert sorted(fr["customdata"]) == [i + 1 for i, f in enumerate(front) if f]
    assert dom["customdata"] == [i + 1 for i, f in enumerate(front) if not f]
    assert fr["x"] == sorted(fr["x"]) and fr["x"] == [sm["energy_j.mean"].iloc[i - 1] for i in fr["customdata"]]
    assert fr["text"] == [f"#{i}" for i in fr["customdata"]] and fr["mode"].startswith("lines")


def _summary(xs: list, combos: int, seeds_differ: bool = False) -> pd.DataFrame:
    rows = []
    for c in range(combos):
        for x in xs:
            m = 100.0 + 10.0 * c + len(rows)
            h = 1.0 if seeds_differ else 1e-12
            rows.append({"a": x, "b": c, "m.mean": m, "m.ci95_lo": m - h, "m.ci95_hi": m + h, "n_seeds": 2})
    return pd.DataFrame(rows)


@needs_plotly
def test_axes_and_lines_follow_the_static_rules():
    # an 'off' value far from the rest: categories, in numeric order, as the static figure draws them
    sm = _summary([16, 32, 64, 1_000_000], combos=2)
    p = iplots.metric_panel(sm, [["a"], ["b"]], ["a"], "m")
    assert p.categories == ["16", "32", "64", "1e+06"] and p.ticks is None
    assert p.series[0].x == ["16", "32", "64", "1e+06"] and p.lines
    assert p.series[0].err == [0.0] * 4  # deterministic seeds: no bars
    layout = plotted(iplots.metric_html(sm, [["a"], ["b"]], "m", "m (J)", "x")[0])["x-0"][1]
    assert layout["xaxis"]["type"] == "category" and layout["xaxis"]["categoryarray"] == p.categories
    # text values stay in their sweep order
    p = iplots.metric_panel(_summary(["fifo", "edf", "srpt"], combos=1), [["a"]], ["a"], "m")
    assert p.categories == ["fifo", "edf", "srpt"] and p.series[0].name == "mean over seeds"
    # more series than the static figure draws lines for: markers only, every series still in the legend
    sm = _summary([1, 2, 3], combos=iplots.MAX_LINES + 1, seeds_differ=True)
    data = plotted(iplots.metric_html(sm, [["a"], ["b"]], "m", "m", "x")[0])["x-0"][0]
    assert len(data) == iplots.MAX_LINES + 1 and {t["mode"] for t in data} == {"markers"}
    assert data[0]["error_y"]["array"] == [1.0, 1.0, 1.0]
    assert np.allclose([y for t in data for y in t["y"]], sm["m.mean"])


def test_without_plotly_the_page_has_the_static_figures_and_a_note(sweep_dir, monkeypatch):
    d, _ = sweep_dir
    for name in [m for m in sys.modules if m == "plotly" or m.startswith("plotly.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly now raises ImportError
    assert not iplots.available()
    text = write_report(d / "sw", d / "s.html", force=True).read_text()
    page = Page(text)
    assert len(page.imgs) == 3 and page.plots == []  # two metrics (two panels each in one PNG), the front
    assert text.count('pip install "dcsim[report]"') == 1 and "plotly.js v" not in text
    # asked for static figures: the same PNGs, and no note
    monkeypatch.undo()
    static = write_report(d / "sw", d / "t.html", force=True, interactive=False).read_text()
    assert len(Page(static).imgs) == 3 and "dcsim[report]" not in static
