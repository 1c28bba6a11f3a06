"""Tensor-parallel calibration rehearsed on the CPU: 2 processes under torchrun (gloo), a tiny Llama sharded with
transformers' own plan, the sweep driven by rank 0. Greedy tokens equal a single process's, every rank meters its
own share (summed into the run's device energy), the folder fits to a profile of 2 GPUs per replica, and the
children run with NVLink multicast off. Needs torch and transformers; skipped without them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
pytest.importorskip("transformers", reason="transformers not installed (pip install transformers)")

from dcsim.calibrate.tensor_parallel import token_digest
from dcsim.calibrate.tp_launch import MULTICAST_OFF, child_env, launch

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--device", "cpu", "--model-arch", "tiny-llama", "--backend", "hf-graph", "--dtype", "fp32", "--no-progress",
        "--tensor-parallel", "2"]
# runs of at least 0.5 s (the fit keeps no energy of shorter ones) on a machine twice as fast as one that decodes
# the tiny model at 11 ms a token (24 tokens took 0.26-0.28 s there, so the fit had no energy), two idle windows,
# two batch sizes
PLAN = """name: tp-rehearsal
seed: 3
sweeps:
  - {name: input, n_in: [8, 64], n_out: [96, 144]}
  - {name: batch, n_in: [8], n_out: [96], batch: [4]}
repeats: {min: 1, max: 1}
warmup: {runs: 1, n_in: 8, n_out: 2, batch: 1}
idle: {deep_s: 0.3, serving_s: 0.3}
"""
SHORT = """name: tp-cli
seed: 5
sweeps:
  - {name: input, n_in: [8, 24], n_out: [6]}
repeats: {min: 1, max: 1}
warmup: {runs: 1, n_in: 8, n_out: 2, batch: 1}
idle: {deep_s: 0, serving_s: 0}
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _rows(out: Path) -> list[dict]:
    with open(out / "runs.csv") as f:
        return list(csv.DictReader(f))


def _single_process_tokens(rows: list[dict]) -> list[str]:
    """Each run's tokens again, in one process without tensor parallelism (the same seeds, greedy)."""
    from dcsim.calibrate.backends.graph import GraphBackend

    be = GraphBackend("cpu", arch="tiny-llama", dtype="fp32")
    be.load()
    out = []
    for r in rows:
        seed = json.loads(r["extra"])["seed"]
        be.run(int(r["n_in"]), int(r["n_out"]), int(r["batch"]), seed, lambda: None, lambda: None)
        out.append(token_digest(be.last_ids))
    be.close()
    return out


@pytest.fixture(scope="module")
def metered(tmp_path_factory) -> Path:
    """A metered 2-rank sweep: each rank's meter is the CPU's RAPL where readable, else tests/tp_rank.py's stand-in
    of (20 + 10 x rank) W; launched from an environment that asks for NVLS."""
    d = tmp_path_factory.mktemp("tp")
    (d / "plan.yaml").write_text(PLAN)
    rc = launch(2, [str(REPO / "tests" / "tp_rank.py"), *ARGS, "--plan", str(d / "plan.yaml"), "--out",
                    str(d / "run")], cpu=True, env={**_env(), "NCCL_NVLS_ENABLE": "1"})
    assert rc == 0
    return d / "run"


def test_both_ranks_produce_every_run(metered):
    rows = [r for r in _rows(metered) if r["phase"] in ("run", "warmup")]
    assert len(rows) == 2 + 5  # warm-ups (the session's, batch size 4), 5 points
    assert all(r["status"] == "ok" and int(r["gen_tokens"]) == int(r["n_out"]) for r in rows)
    extra = [json.loads(r["extra"]) for r in rows]
    assert all(e["tp_tokens_agree"] for e in extra)  # rank 1 produced rank 0's tokens
    assert len({e["tokens_sha256"] for e in extra}) == len(rows)  # different prompts, different tokens
    assert all(len(e["tp_runtime_s"]) == 2 and min(e["tp_runtime_s"]) > 0 for e in extra)


def test_every_rank_meters_and_the_replica_sums_them(metered):
    man = json.loads((metered / "manifest.json").read_text())
    assert man["identity"]["gpus_per_replica"] == 2
    tp = man["sessions"][0]["backend"]["tensor_parallel"]
    assert tp["size"] == 2 and tp["backend"] == "gloo" and tp["weights_init"] == "replicated"
    assert [r["rank"] for r in tp["ranks"]] == [0, 1]
    assert [r["env"] for r in tp["ranks"]] == [MULTICAST_OFF, MULTICAST_OFF]  # over the launching environment's
    meters = man["sessions"][0]["meter"]["tensor_parallel"]
    standin = all(m["meter"] == "standin" for m in meters)
    assert len(meters) == 2
    rows = [r for r in _rows(metered) if r["status"] == "ok"]
    assert {r["phase"] for r in rows} == {"idle_deep", "load", "idle_serving", "warmup", "run"}
    for r in rows:
        by = json.loads(r["energy_by_device"])
        assert set(by) == {"rank0/cpu0", "rank1/cpu0"}  # one share per rank (they share the CPU package here)
        assert float(r["energy_device_j"]) == pytest.approx(sum(by.values()), rel=1e-5)
        if standin:  # each rank's window spans its own timed region: (20 + 10 x rank) W times its own run time
            idle = r["phase"].startswith("idle") or r["phase"] == "load"  # windows over the row's own span
            for rank in (0, 1):
                w = 20.0 + 10.0 * rank
                t = float(r["runtime_s"]) if idle else json.loads(r["extra"])["tp_runtime_s"][rank]
                lo, hi = (t - 0.1, t + 0.1) if idle else (t, t + 0.05)  # an idle window opens on order
                assert w * lo <= by[f"rank{rank}/cpu0"] <= w * hi
        else:
            assert all(v > 0 for v in by.values())
    with open(metered / "power.csv") as f:
        power = list(csv.DictReader(f))
    assert {p["device"] for p in power} == {"rank0/cpu0", "rank1/cpu0"}
    if standin:
        assert {p["device"]: float(p["power_w"]) for p in power} == {"rank0/cpu0": 20.0, "rank1/cpu0": 30.0}


def test_the_folder_fits_to_a_two_gpu_replica(metered, tmp_path):
    import yaml

    from dcsim.cli import main

    out = tmp_path / "tp.yaml"
    assert main(["fit", str(metered), "-o", str(out)]) == 0
    prof = yaml.safe_load(out.read_text())
    assert prof["gpus_per_replica"] == 2
    notes = prof["notes"] if isinstance(prof["notes"], str) else " ".join(prof["notes"])
    assert "Tensor parallel across 2 devices" in notes and "rank1/cpu0" in notes


def test_the_command_as_typed_gives_the_single_process_tokens(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(SHORT)
    env = {**_env(), "NCCL_NVLS_ENABLE": "1"}  # an environment that would switch it on
    done = subprocess.run([sys.executable, "-m", "dcsim.commands.calibrate", *ARGS, "--latency-only", "--plan",
                           str(plan), "--out", str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    ranks = man["sessions"][0]["backend"]["tensor_parallel"]["ranks"]
    assert [r["env"] for r in ranks] == [MULTICAST_OFF, MULTICAST_OFF]
    assert man["sessions"][0]["command"].startswith("dcsim calibrate --device cpu")
    rows = _rows(tmp_path / "run")
    runs = [r for r in rows if r["phase"] in ("run", "warmup")]
    assert len(runs) == 3 and all(r["status"] == "ok" for r in runs)
    assert [json.loads(r["extra"])["tokens_sha256"] for r in runs] == _single_process_tokens(runs)


def test_child_environment_overrides_multicast_settings():
    env = child_env({"NCCL_NVLS_ENABLE": "1", "NVSHMEM_DISABLE_NVLS": "0", "OMP_NUM_THREADS": "4"}, cpu=True)
    assert {k: env[k] for k in MULTICAST_OFF} == MULTICAST_OFF
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize("extra, says", [
    (["--backend", "paged"], "engines"),
    (["--device", "cuda:1"], "CUDA_VISIBLE_DEVICES"),
    (["--power-caps", "200", "--allow-power-limit-changes"], "--power-caps"),
])
def test_what_a_tensor_parallel_run_cannot_do_is_refused_before_any_launch(tmp_path, capsys, extra, says):
    from dcsim.commands.calibrate import main

    plan = tmp_path / "plan.yaml"
    plan.write_text(SHORT)
    args = [*ARGS, "--plan", str(plan), "--out", str(tmp_path / "run"), *extra]
    assert main(args) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "run").exists()
