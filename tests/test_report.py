"""`dcsim report`: the page embeds exactly the run's PNGs, loads nothing from the network, shows the summary's
numbers, escapes names, tabulates a sweep's means and intervals, and refuses folders it cannot report on."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pandas as pd
import pytest
from test_sweep import GRID, make_case, write_sweep

from dcsim.cli import main
from dcsim.sweep import load_sweep, run_sweep


class Page(HTMLParser):
    """Collects images, scripts, links, tables (rows of (text, data-v)) and section headings."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.plots: list[str] = []  # interactive figures' <div> ids
        self.scripts: list[dict] = []
        self.urls: list[str] = []
        self.tables: list[dict] = []
        self.h2: list[str] = []
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href", "action", "poster"):
            if k in a:
                self.urls.append(a[k])
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "div" and "plotly-graph-div" in (a.get("class") or ""):
            self.plots.append(a["id"])
        elif tag == "script":
            self.scripts.append(a)
        elif tag == "table":
            self.tables.append({"class": a.get("class", ""), "head": [], "rows": [],
                                "h2": self.h2[-1] if self.h2 else ""})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._in = tag
            self._v = a.get("data-v")
            self._text = ""
        elif tag == "h2":
            self._in = "h2"
            self._text = ""

    def handle_data(self, data):
        if self._in:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "h2" and self._in == "h2":
            self.h2.append(self._text)
            self._in = None
        elif tag in ("td", "th") and self._in == tag:
            t = self.tables[-1]
            if tag == "th":
                t["head"].append(self._text)
            else:
                t["rows"][-1].append((self._text, self._v))
            self._in = None

    def table(self, h2_start: str) -> dict:
        t = next(t for t in self.tables if t["h2"].startswith(h2_start))
        t["rows"] = [r for r in t["rows"] if r]
        return t


def run_folder(tmp_path, capsys, *overrides):
    base = make_case(tmp_path)
    args = ["run", str(base), "--out", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    capsys.readouterr()
    return tmp_path / "run"


def test_run_report_embeds_the_runs_plots_and_numbers(tmp_path, capsys):
    run = run_folder(tmp_path, capsys)
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    page = Page(text)
    # exactly the three PNGs of the run, byte for byte, in a fixed order
    assert len(page.imgs) == 3
    for src, name in zip(page.imgs, ("power.png", "latency_cdf.png", "energy_breakdown.png")):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (run / name).read_bytes()
    # nothing from the network: every URL is inline data, scripts are inline, and the CSP forbids loads
    assert all(u.startswith("data:") for u in page.urls)
    assert page.scripts == [{}]
    assert "default-src 'none'" in text
    s = json.loads((run / "summary.json").read_text())
    head = {r[0][0]: r[1] for r in page.table("Headline")["rows"]}
    assert float(head["energy (device + host)"][1]) == s["energy_j"]
    assert float(head["output tokens per joule"][1]) == s["tokens_per_joule"]
    lat = {r[0][0]: r for r in page.table("Latency")["rows"]}
    assert float(lat["end-to-end"][4][1]) == s["e2e_s"]["p99"]
    rep = page.table("Replicas")
    assert len(rep["rows"]) == len(pd.read_csv(run / "replicas.csv")) == 2
    assert "sortable" in rep["class"]
    status = page.table("Requests by pool")
    assert status["head"] == ["pool", "done"] and status["rows"][0][1][1] == repr(float(s["requests_completed"]))


def test_names_are_escaped(tmp_path, capsys):
    run = run_folder(tmp_path, capsys, "fleet.0.name=<script>alert(1)</script>")
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.count("<script") == 1  # only the page's own sorting script


def test_sweep_report_tables_and_plots(tmp_path, capsys):
    """Human names with units, the change against a baseline, the energy / e2e p99 Pareto front, intervals only
    where seeds differ, a per-pool table; every figure checked against the sweep's own summary."""
    make_case(tmp_path)
    sw = load_sweep(write_sweep(tmp_path, {**GRID, "metrics": ["e2e_s.p99", "pools.*.energy_j", "energy_j"]}))
    res = run_sweep(sw, tmp_path / "sw", workers=0, progress=False)
    assert main(["report", str(tmp_path / "sw"), "--static-plots"]) == 0  # default output: inside the folder
    page = Page((tmp_path / "sw" / "report.html").read_text())
    assert len(page.imgs) == 4 and page.plots == []  # one figure per chosen metric, and the Pareto front
    summ = page.table("Summary")
    assert summ["head"] == ["#", "fleet.gpu.count", "fleet.gpu.batching.max_batch", "seeds", "end-to-end p99 (s)",
                            "gpu: energy (device + host) (J)", "energy (device + host) (J)",
                            "Pareto (energy, e2e p99)", ""]
    assert len(summ["rows"]) == 6
    sm = res.summary
    e, p99 = sm["energy_j.mean"].to_numpy(), sm["e2e_s.p99.mean"].to_numpy()
    for i, (row, (_, r)) in enumerate(zip(summ["rows"], sm.iterrows())):
        assert float(row[1][1]) == r["fleet.gpu.count"] and float(row[3][1]) == 2
        assert float(row[4][1]) == r["e2e_s.p99.mean"]
        half = (r["e2e_s.p99.ci95_hi"] - r["e2e_s.p99.ci95_lo"]) / 2
        text = row[4][0]
        assert text.split(" ± ")[1].split(" (")[0] == f"{half:.4g}"  # two seeds that differ: an interval
        if i == 0:
            assert row[-1][0] == "baseline" and "(" not in text
        else:  # the change against the first configuration, the default baseline
            assert text.endswith(f"({(r['e2e_s.p99.mean'] - p99[0]) / abs(p99[0]):+.1%})")
        dominated = any(e[j] <= e[i] and p99[j] <= p99[i] and (e[j] < e[i] or p99[j] < p99[i]) for j in range(6))
        assert (row[-2][0] == "front") == (not dominated)
    assert any(r[-2][0] == "front" for r in summ["rows"])
    pools = page.table("Per pool")
    assert len(pools["rows"]) == 6 and pools["head"][:4] == ["fleet.gpu.count", "fleet.gpu.batching.max_batch",
                                                              "pool", "energy (device + host) (J)"]
    assert [float(r[3][1]) for r in pools["rows"]] == list(sm["pools.gpu.energy_j.mean"])
    pts = page.table("Points")
    assert len(pts["rows"]) == 12 and pts["head"][:2] == ["point", "seed"]
    assert [r[0][0] for r in pts["rows"]] == list(res.results["point"])
    # another baseline: named by its axis values; changes are taken against it
    out = tmp_path / "b.html"
    assert main(["report", str(tmp_path / "sw"), "-o", str(out), "--baseline", "fleet.gpu.count=3",
                 "--baseline", "fleet.gpu.batching.max_batch=8"]) == 0
    rows = Page(out.read_text()).table("Summary")["rows"]
    k = [i for i, r in enumerate(rows) if r[-1][0] == "baseline"]
    assert k == [int(sm.index[(sm["fleet.gpu.count"] == 3) & (sm["fleet.gpu.batching.max_batch"] == 8)][0])]
    capsys.readouterr()
    y = str(tmp_path / "y.html")
    assert main(["report", str(tmp_path / "sw"), "-o", y, "--baseline", "fleet.gpu.count=3"]) == 2
    assert "names 2 configurations" in capsys.readouterr().err and not (tmp_path / "y.html").exists()
    assert main(["report", str(tmp_path / "sw"), "-o", str(tmp_path / "y.html"), "--baseline", "seed=3"]) == 2
    assert "field '--baseline'" in capsys.readouterr().err
    # --metric replaces the sweep file's choice; a pattern matching nothing is a user error
    assert main(["report", str(tmp_path / "sw"), "-o", str(tmp_path / "m.html"), "--metric", "tokens_per_joule",
                 "--static-plots"]) == 0
    assert len(Page((tmp_path / "m.html").read_text()).imgs) == 2  # the metric, and the Pareto front
    capsys.readouterr()
    assert main(["report", str(tmp_path / "sw"), "-o", str(tmp_path / "x.html"), "--metric", "joules"]) == 2
    assert "no metric matches 'joules'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_deterministic_points_print_no_interval_and_far_off_values_are_categories(tmp_path, capsys):
    """Seeds that give the same numbers print no '± 1e-09'; an axis whose 'off' value stands far from the rest
    is drawn as categories."""
    import numpy as np

    from dcsim.report import _has_spread, metric_label, pareto_front
    from dcsim.sweep.plots import categorical

    assert not _has_spread(30060.0, 30060.0 - 1.5e-9, 30060.0 + 1.5e-9, 3)
    assert _has_spread(30060.0, 30000.0, 30120.0, 3) and not _has_spread(30060.0, 30000.0, 30120.0, 1)
    assert categorical(np.array([16.0, 32, 64, 128, 1_000_000])) and not categorical(np.array([1.0, 2, 3, 4]))
    assert not categorical(np.array([0.0, 1e6]))  # two values: nothing to squash
    assert pareto_front([1, 2, 3, 2], [3, 2, 1, 3]) == [True, True, True, False]
    assert metric_label("pools.a100.e2e_s.p99") == "a100: end-to-end p99 (s)"
    assert metric_label("cost", "EUR") == "cost (EUR)" and metric_label("no.such") == "no.such"


@pytest.mark.parametrize("setup, words", [
    ("missing", "not a folder"),
    ("empty", "neither summary.json"),
    ("unfinished", "has not finished"),
    ("bad_json", "cannot read"),
])
def test_bad_folders(tmp_path, capsys, setup, words):
    d = tmp_path / "d"
    if setup != "missing":
        d.mkdir()
    if setup == "unfinished":
        (d / "sweep.json").write_text(json.dumps({"axes": [], "seeds": [1]}))
    if setup == "bad_json":
        (d / "summary.json").write_text("{not json")
    rc = main(["report", str(d), "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()
