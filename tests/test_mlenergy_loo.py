"""The paged engine against real vLLM runs (ML.ENERGY leaderboard v3), each configuration left out of the fit
that simulates it: the committed table reproduces, and the errors stay within validation/mlenergy-v3-loo (these
need the full leaderboard); `dcsim fit --exclude` on the v3 sample in tests/data (runs everywhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dcsim.cli import main
from dcsim.profiles.profile import load_profile
from dcsim.validate import mlenergy_loo as M

CASE = Path(__file__).resolve().parents[1] / "validation" / "mlenergy-v3-loo"


@pytest.fixture(scope="module")
def loo(tmp_path_factory) -> pd.DataFrame:
    from conftest import require_shared

    return M.run(require_shared("mlenergy-leaderboard-v3"), tmp_path_factory.mktemp("loo"))


def test_the_committed_table_reproduces(loo):
    committed = pd.read_csv(CASE / "loo.csv")
    assert len(loo) == len(committed) == 42  # 8B and 70B on H100 and B200, every max_num_seqs
    for col in committed.columns:
        if committed[col].dtype.kind == "f":
            assert loo[col].to_numpy() == pytest.approx(committed[col].to_numpy(), rel=1e-4, abs=1e-9), col
        else:
            assert loo[col].tolist() == committed[col].tolist(), col


def test_errors_within_their_limits(loo):
    limits = yaml.safe_load((CASE / "limits.yaml").read_text())
    for m, lim in limits["overall"]["median"].items():
        assert loo[f"{m}_err"].abs().median() <= lim, m
    for key, spec in limits["groups"].items():
        model, gpu = key.rsplit(" ", 1)
        g = loo[(loo["model"] == model) & (loo["gpu"] == gpu)]
        assert len(g) >= 9, key
        for stat, lims in spec.items():
            if stat == "misses_because":
                continue
            for m, lim in lims.items():
                err = g[f"{m}_err"].abs()
                got = err.median() if stat == "median" else err.max()
                assert got <= lim, (key, stat, m, got)


def test_the_batch_the_scheduler_reaches(loo):
    """Below the KV limit the running batch is max_num_seqs, as vLLM's was; where vLLM's KV filled up
    (70B on 2 B200 at 1536 and 2048) the simulated engine preempts."""
    free = loo[loo["preemptions_sim"] == 0]
    assert ((free["avg_batch_sim"] - free["max_num_seqs"]).abs() <= 0.5 + 0.01 * free["max_num_seqs"]).all()
    pre = loo[loo["preemptions_sim"] > 0]
    assert set(pre["max_num_seqs"]) == {1536, 2048} and set(pre["gpu"]) == {"B200"}


def test_fit_leaves_a_configuration_out(sample_data, tmp_path, capsys):
    data = sample_data / "mlenergy-leaderboard-v3"
    configs = json.loads((data / "models/google__gemma-3-27b-it__lm-arena-chat.json").read_text())["configurations"]
    b200 = sorted(c["max_num_seqs"] for c in configs if c["gpu_model"] == "B200")
    assert len(b200) >= 3 and 64 in b200
    fit = ["fit", "--from", "mlenergy", str(data), "--model", "gemma-3-27b-it", "--no-plot"]
    out = tmp_path / "p.yaml"
    assert main(fit + ["--gpu", "B200", "--exclude", "max_num_seqs=64", "-o", str(out)]) == 0
    p = load_profile(out)
    assert "--exclude max_num_seqs=64" in p.provenance["source"].command
    assert p.engine.step_includes_prefill
    assert p.provenance["source"].path.endswith(f"num_gpus 1: {len(b200) - 1})")  # one configuration left out
    assert p.fit_error["latency.decode_step_s"].n_points == len(b200) - 1
    h100_1 = [c["max_num_seqs"] for c in configs if (c["gpu_model"], c["num_gpus"]) == ("H100", 1)]
    too_few = ["--gpu", "H100", "--gpus", "1", "--exclude", "max_num_seqs=" + ",".join(map(str, h100_1[:-1]))]
    for bad, words in ((["--gpu", "B200", "--exclude", "max_num_seqs=300"], "no such configuration"),
                       (["--gpu", "B200", "--exclude", "batch=8"], "KEY one of"),
                       (["--gpu", "B200", "--exclude", "max_num_seqs=fast"], "must be numbers"),
                       (too_few, "fewer than two configurations")):
        capsys.readouterr()
        assert main(fit + bad + ["-o", str(tmp_path / "q.yaml")]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "q.yaml").exists()
