"""The paged engine against real vLLM runs (ML.ENERGY leaderboard v3), each configuration left out of the fit
that simulates it: the committed table reproduces, and the errors stay within validation/mlenergy-v3-loo."""

from __future__ import annotations

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
    from conftest import SHARED_DATA

    data = SHARED_DATA / "mlenergy-leaderboard-v3"
    if not data.is_dir():
        pytest.skip(f"ML.ENERGY leaderboard v3 not found at {data} (set DCSIM_SHARED_DATA)")
    return M.run(data, tmp_path_factory.mktemp("loo"))


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


def test_fit_leaves_a_configuration_out(shared_data, tmp_path, capsys):
    data = str(shared_data / "mlenergy-leaderboard-v3")
    out = tmp_path / "p.yaml"
    assert main(["fit", "--from", "mlenergy", data, "--gpu", "H100", "--model", "Llama-3.1-8B-Instruct",
                 "--exclude", "max_num_seqs=256", "-o", str(out), "--no-plot"]) == 0
    p = load_profile(out)
    assert "--exclude max_num_seqs=256" in p.provenance["source"].command
    assert p.engine.step_includes_prefill
    assert p.provenance["source"].path.endswith("num_gpus 1: 10)")  # 11 H100 configurations, one left out
    for bad, words in ((["--exclude", "max_num_seqs=300"], "no such configuration"),
                       (["--exclude", "batch=8"], "KEY one of"),
                       (["--exclude", "max_num_seqs=fast"], "must be numbers")):
        capsys.readouterr()
        assert main(["fit", "--from", "mlenergy", data, "--gpu", "H100", "--model", "Llama-3.1-8B-Instruct",
                     *bad, "-o", str(tmp_path / "q.yaml"), "--no-plot"]) == 2
        assert words in capsys.readouterr().err
