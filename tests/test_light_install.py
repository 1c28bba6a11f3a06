"""An install without the traces extra: every command but trace building works, and trace building says which
extra it needs (exit 2, no traceback). Run in a subprocess where `datasets` and `mistral_common` cannot import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("datasets", "mistral_common"):
            raise ImportError("not installed: " + name)
        return None

sys.meta_path.insert(0, Refuse())
for m in [m for m in sys.modules if m.split(".")[0] in ("datasets", "mistral_common")]:
    del sys.modules[m]
from dcsim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _dcsim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_trace_building_names_the_extra_and_the_rest_runs(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2 #### 2"}) + "\n")
    r = _dcsim("trace", "build", "gsm8k", "--split", "test", "--from", str(tmp_path / "gsm8k"),
               "-o", str(tmp_path / "t.parquet"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "dcsim[traces]" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "t.parquet").exists()
    r = _dcsim("run", str(REPO / "scenarios" / "quickstart.yaml"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["requests_completed"] == 1319
