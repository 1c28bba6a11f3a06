"""Reports in a real headless Chromium (DevTools protocol over a pipe): pages load with no console error,
uncaught exception or blocked load, every plot decodes, and clicking a header sorts the table.

Needs Debian's chromium (CI: apt-get update && apt-get install -y chromium); skipped when it is absent.
The checker itself is tested on deliberately broken pages, so a silent checker cannot pass.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_sweep import GRID, make_case, write_sweep

from dcsim.cli import main
from dcsim.report import write_report
from dcsim.sweep import load_sweep, run_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (CI: apt-get update && apt-get install -y chromium)")


class Browser:
    """Headless Chromium driven through --remote-debugging-pipe: commands on fd 3, replies on fd 4, NUL-ended."""

    def __init__(self, size=(1280, 900)) -> None:
        cmd_r, self._w = os.pipe()
        self._r, out_w = os.pipe()

        def to_fds_3_and_4():  # in the child, before exec; copies first so neither end overwrites the other
            a, b = os.dup(cmd_r), os.dup(out_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)  # dup2(3, 3) is a no-op that would leave close-on-exec set
            os.set_inheritable(4, True)

        self._profile = tempfile.mkdtemp(prefix="dcsim-chromium-")
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
                f"--window-size={size[0]},{size[1]}", "about:blank"]
        # close_fds=False: Python's own descriptors are close-on-exec anyway; pass_fds would fail when the
        # parent has no fd 3 or 4 of its own
        self.proc = subprocess.Popen(args, preexec_fn=to_fds_3_and_4, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=True)

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 30) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            m = self._recv(end - time.monotonic())
            if m is None:
                raise TimeoutError(method)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def _recv(self, timeout: float) -> dict | None:
        while b"\0" not in self._buf:
            if timeout <= 0 or not select.select([self._r], [], [], timeout)[0]:
                return None
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def load(self, path: Path, settle_s: float = 0.3) -> list[str]:
        """Open a file; return its console errors, uncaught exceptions and error log entries."""
        self.events.clear()
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
        end = time.monotonic() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            m = self._recv(end - time.monotonic())
            if m is None:
                raise TimeoutError(f"{path} did not load")
            self.events.append(m)
        end = time.monotonic() + settle_s
        while (m := self._recv(end - time.monotonic())) is not None:
            self.events.append(m)
        return self.errors()

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description', d.get('text'))}")
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log ({p['entry']['source']}): {p['entry']['text']}")
        return out

    def js(self, expr: str):
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True},
                      session=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        r = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True)
        path.write_bytes(base64.b64decode(r["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
            self.proc.wait(10)
        except Exception:  # noqa: BLE001 - make sure it is gone
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self._profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


CSP = ("""<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; """
       """script-src 'unsafe-inline'">""")
BROKEN = {
    "exception": ("<script>undefinedFunction();</script>", "undefinedFunction is not defined"),
    "console": ("<script>console.error('sorting failed');</script>", "sorting failed"),
    "network": ('<img src="http://127.0.0.1:9/x.png">', "Content Security Policy"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_checker_catches_broken_pages(tmp_path, browser, kind):
    body, words = BROKEN[kind]
    page = tmp_path / "p.html"
    page.write_text(f"<!DOCTYPE html><html><head>{CSP}</head><body><p>x</p>{body}</body></html>")
    errors = browser.load(page)
    assert any(words in e for e in errors), errors
    page.write_text(f"<!DOCTYPE html><html><head>{CSP}</head><body><p>x</p><script>1+1;</script></body></html>")
    assert browser.load(page) == []


SORT_JS = """(() => {
  const sec = [...document.querySelectorAll('section')].find(s => s.querySelector('h2').textContent.startsWith(%r));
  const t = sec.querySelector('table');
  const col = [...t.tHead.rows[0].cells].findIndex(th => th.textContent === %r);
  t.tHead.rows[0].cells[col].click();
  return [...t.tBodies[0].rows].map(r => [r.cells[0].textContent, Number(r.cells[col].getAttribute('data-v'))]);
})()"""

IMAGES_JS = "[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])"


def test_reports_load_cleanly_show_plots_and_sort(tmp_path, browser, capsys):
    base = make_case(tmp_path)
    assert main(["run", str(base), "--out", str(tmp_path / "run")]) == 0
    run_html = write_report(tmp_path / "run", tmp_path / "run.html")
    assert browser.load(run_html) == []
    imgs = browser.js(IMAGES_JS)
    assert len(imgs) == 3 and all(ok and w > 300 and h > 200 for ok, w, h in imgs), imgs

    sw = load_sweep(write_sweep(tmp_path, {**GRID, "metrics": ["e2e_s.p99", "energy_j"]}))
    run_sweep(sw, tmp_path / "sw", workers=0, progress=False)
    sweep_html = write_report(tmp_path / "sw", tmp_path / "sweep.html", interactive=False)
    assert browser.load(sweep_html) == []
    imgs = browser.js(IMAGES_JS)
    assert len(imgs) == 3 and all(ok and w > 300 for ok, w, _ in imgs), imgs  # two metrics and the Pareto front
    # clicking the energy header sorts the points ascending, then descending, moving whole rows
    before = browser.js(SORT_JS.replace("t.tHead.rows[0].cells[col].click();", "") % ("Points", "energy_j"))
    up = browser.js(SORT_JS % ("Points", "energy_j"))
    down = browser.js(SORT_JS % ("Points", "energy_j"))
    assert [v for _, v in up] == sorted(v for _, v in before) and len(up) == 12
    assert [v for _, v in down] == sorted((v for _, v in before), reverse=True)
    assert sorted(map(tuple, up)) == sorted(map(tuple, before))  # each point keeps its own energy
    # the numeric axis sorts as numbers in the summary table (text sorting would put 10 before 2 if present)
    counts = browser.js(SORT_JS % ("Summary", "fleet.gpu.count"))
    assert [v for _, v in counts] == [1, 1, 2, 2, 3, 3]
    assert browser.errors() == []  # the clicks raised nothing
    shot = browser.screenshot(tmp_path / "sweep.png")
    from matplotlib.image import imread

    px = imread(shot)
    assert px.shape[0] > 1500 and px.shape[1] >= 1200  # the whole page, plots included
    assert px[..., :3].std() > 0.05  # not a blank page


PLOTS_JS = """[...document.querySelectorAll('.plotly-graph-div')].map(g => ({id: g.id,
  traces: g.data.map(t => ({name: t.name, x: t.x, y: t.y, visible: t.visible === undefined ? true : t.visible})),
  drawn: g.querySelectorAll('.scatterlayer .trace').length,
  hidden: [...g.querySelectorAll('.scatterlayer .trace')].filter(e => getComputedStyle(e).opacity === '0').length,
  width: g.getBoundingClientRect().width}))"""

# the centre of an element, scrolled into view, in the viewport's coordinates
CENTRE_JS = """(() => { const e = document.querySelector(%r); e.scrollIntoView({block: 'center'});
  const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"""


def _mouse(browser, kind, x, y, **extra):
    browser.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **extra}, session=True)


def test_interactive_sweep_plots_hover_and_toggle_offline(tmp_path, browser):
    """The sweep page's plotly figures draw with no console error and no network request, hold the summary's
    numbers, show a point's value on hover, and hide a series when its legend entry is clicked."""
    pytest.importorskip("plotly", reason="plotly not installed (pip install -e '.[report]')")
    import pandas as pd

    make_case(tmp_path)
    sw = load_sweep(write_sweep(tmp_path, {**GRID, "metrics": ["e2e_s.p99", "energy_j"]}))
    run_sweep(sw, tmp_path / "sw", workers=0, progress=False)
    page = write_report(tmp_path / "sw", tmp_path / "interactive.html")
    browser.send("Network.enable", session=True)
    assert browser.load(page, settle_s=1.0) == []
    urls = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert urls == [page.resolve().as_uri()], urls  # the page itself, nothing else
    browser.send("Network.disable", session=True)
    plots = {p["id"]: p for p in browser.js(PLOTS_JS)}
    assert list(plots) == ["plot-1-0", "plot-1-1", "plot-2-0", "plot-2-1", "plot-pareto"]
    assert all(p["drawn"] == len(p["traces"]) and p["width"] > 900 for p in plots.values()), plots
    sm = pd.read_parquet(tmp_path / "sw" / "summary.parquet")
    e2e = plots["plot-1-0"]["traces"]  # e2e p99 against the GPU count, one series per max_batch
    assert [t["name"] for t in e2e] == ["max_batch=2", "max_batch=8"]
    for t, b in zip(e2e, (2, 8)):
        rows = sm[sm["fleet.gpu.batching.max_batch"] == b].sort_values("fleet.gpu.count")
        assert t["x"] == list(rows["fleet.gpu.count"].astype(float)) and t["y"] == list(rows["e2e_s.p99.mean"])
    # hover the first series' first point: its label shows the configuration and the value
    first = sm[sm["fleet.gpu.batching.max_batch"] == 2].sort_values("fleet.gpu.count").iloc[0]
    x, y = browser.js(CENTRE_JS % "#plot-1-0 .scatterlayer .trace:nth-child(1) .points path")
    _mouse(browser, "mouseMoved", x, y)
    time.sleep(0.5)
    hover = browser.js("[...document.querySelectorAll('#plot-1-0 .hovertext')].map(e => e.textContent)")
    assert len(hover) == 1 and f"{first['e2e_s.p99.mean']:.4g}" in hover[0] and "#1" in hover[0], hover
    # click the second legend entry: that series is hidden, the other still drawn
    x, y = browser.js(CENTRE_JS % "#plot-1-0 .legend .traces:nth-child(2) .legendtoggle")
    _mouse(browser, "mouseMoved", x, y)
    _mouse(browser, "mousePressed", x, y, button="left", clickCount=1)
    _mouse(browser, "mouseReleased", x, y, button="left", clickCount=1)
    time.sleep(1.0)  # plotly waits out the double-click delay before toggling
    after = {p["id"]: p for p in browser.js(PLOTS_JS)}["plot-1-0"]
    assert [t["visible"] for t in after["traces"]] == [True, "legendonly"], after
    assert after["drawn"] - after["hidden"] == 1
    assert all(p["traces"] == plots[k]["traces"] for k, p in
               {p["id"]: p for p in browser.js(PLOTS_JS)}.items() if k != "plot-1-0")  # the others untouched
    assert browser.errors() == []
    shot = browser.screenshot(tmp_path / "interactive.png")
    from matplotlib.image import imread

    px = imread(shot)
    assert px.shape[0] > 2500 and px[..., :3].std() > 0.05
