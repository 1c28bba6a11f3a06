"""`dcsim run` starts without the heavy libraries: pandas, matplotlib, plotly, scipy and datasets are imported only by
the commands and outputs that need them (tables written to disk, plots, fitting, trace building), and the CLI
imports only the chosen command's module. Checked in a fresh interpreter's sys.modules, not by timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "matplotlib", "scipy", "datasets", "plotly")
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


def test_the_program_ends_as_main_returns_with_its_output_and_atexit_hooks(tmp_path):
    """`python -m dcsim.cli run` (the program's entry) skips only the interpreter's teardown: its stdout is the
    text main() prints in-process, every file is written, its exit status is main()'s, and atexit hooks run (here
    one that a user's router file registers)."""
    import yaml

    from dcsim.cli import main

    (tmp_path / "hooked.py").write_text(
        "import atexit\nfrom pathlib import Path\nfrom dcsim.sim.routers import RoundRobin\n"
        "atexit.register(lambda: (Path(__file__).parent / 'hook-ran').write_text('yes'))\n"
        "class Hooked(RoundRobin):\n    pass\n")
    sc = yaml.safe_load((REPO / "scenarios" / "quickstart.yaml").read_text())
    sc["trace"] = {"path": str(REPO / sc["trace"]["path"]), "sample": 10}
    sc["router"] = {"name": "./hooked.py:Hooked"}
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(sc))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(path), "--out", str(tmp_path / "res"),
                        "--no-plots"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hook-ran").read_text() == "yes"
    assert {p.name for p in (tmp_path / "res").iterdir()} >= {"summary.json", "requests.parquet", "replicas.csv",
                                                               "power.csv"}
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", str(path), "--out", str(tmp_path / "res2"), "--no-plots"]) == 0
    assert r.stdout == buf.getvalue().replace(str(tmp_path / "res2"), str(tmp_path / "res"))
    bad = subprocess.run([sys.executable, "-m", "dcsim.cli", "run", str(path), "--set", "seed=-1"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "seed" in bad.stderr and "Traceback" not in bad.stderr
