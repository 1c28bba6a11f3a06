"""`dcsim run` starts without the heavy libraries: pandas, matplotlib, scipy and datasets are imported only by
the commands and outputs that need them (tables written to disk, plots, fitting, trace building), and the CLI
imports only the chosen command's module. Checked in a fresh interpreter's sys.modules, not by timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "matplotlib", "scipy", "datasets")
PROBE = """
import json, sys
from dcsim.cli import main
rc = main(sys.argv[1:])
tops = {m.split(".")[0] for m in sys.modules}
print(json.dumps({"heavy": sorted(tops & set(%r)),
                  "commands": sorted(m for m in sys.modules if m.startswith("dcsim.commands."))}), file=sys.stderr)
sys.exit(rc)
""" % (HEAVY,)


def _probe(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r, json.loads(r.stderr.strip().splitlines()[-1])


def test_run_imports_no_heavy_library_and_no_other_command(tmp_path):
    sc = str(REPO / "scenarios" / "quickstart.yaml")
    for extra in ([], ["--json"]):
        r, seen = _probe("run", sc, "--set", "trace.sample=10", *extra, cwd=tmp_path)
        assert seen["heavy"] == [], seen
        assert seen["commands"] == ["dcsim.commands.run"], seen
    assert json.loads(r.stdout)["requests_completed"] == 10


def test_run_out_without_plots_imports_no_plotting(tmp_path):
    sc = str(REPO / "scenarios" / "quickstart.yaml")
    _, seen = _probe("run", sc, "--set", "trace.sample=10", "--out", str(tmp_path / "res"), "--no-plots",
                     cwd=tmp_path)
    assert "matplotlib" not in seen["heavy"] and "scipy" not in seen["heavy"], seen
    assert (tmp_path / "res" / "requests.parquet").is_file()
