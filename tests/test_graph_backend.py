"""The `hf-graph` backend on the CPU with a tiny random-weight Llama: the tokens of its own greedy loop equal
`generate`'s, output lengths are forced, the timing callbacks come in order, its decode step never reads a
device value on the host (what a CUDA graph capture forbids), and a calibration sweep runs through it. The
CUDA-graph path itself needs a GPU and is skipped without one.

Needs torch and transformers (pip install torch==2.13.0 transformers); skipped without them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
pytest.importorskip("transformers", reason="transformers not installed (pip install transformers)")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from dcsim.calibrate.backends.graph import GraphBackend  # noqa: E402
from dcsim.calibrate.run import Settings, calibrate  # noqa: E402
from dcsim.commands.calibrate import main  # noqa: E402

SEED = 11
# (n_in, n_out, batch); the last two outgrow what prepare() sized for their batch size
PREPARED = [(8, 5, 1), (16, 4, 3), (6, 1, 1)]
SHAPES = PREPARED + [(1, 6, 1), (12, 1, 3), (30, 12, 1), (24, 9, 3)]


def _generate(be: GraphBackend, n_in: int, n_out: int, batch: int, seed: int):
    ids = be.prompt(n_in, batch, seed)
    with torch.no_grad():
        return be.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, min_new_tokens=n_out,
                                 max_new_tokens=n_out, pad_token_id=0)


@pytest.fixture(scope="module")
def backend():
    be = GraphBackend("cpu", arch="tiny-llama", dtype="fp32")
    info = be.load()
    assert info["backend"] == "hf-graph" and info["graph_capture_failures"] == {}
    assert info["decode"]["cuda_graph"].startswith("none")
    be.prepare(PREPARED)
    yield be
    be.close()


def test_tokens_equal_greedy_generate_and_lengths_are_forced(backend):
    calls: list[str] = []
    for n_in, n_out, batch in SHAPES:
        grows = batch in backend._states and backend._states[batch].cache_len < n_in + n_out
        assert not grows or backend.needs_warmup(n_in, n_out, batch)  # a longer cache is a one-off cost
        tm = backend.run(n_in, n_out, batch, SEED, lambda: calls.append("start"), lambda: calls.append("first"))
        assert calls[-2:] == ["start", "first"]
        assert tm.gen_tokens == n_out
        assert 0 < tm.ttft_s <= tm.runtime_s and (n_out == 1 or tm.ttft_s < tm.runtime_s)
        assert tm.extra["graph"] is False and tm.extra["cache_len"] >= n_in + n_out
        assert tuple(backend.last_ids.shape) == (batch, n_in + n_out)
        assert torch.equal(backend.last_ids, _generate(backend, n_in, n_out, batch, SEED)), (n_in, n_out, batch)
        assert not backend.needs_warmup(n_in, n_out, batch)
    assert calls == ["start", "first"] * len(SHAPES)
    # prepare() sized batch 1 to 13 positions; the 30 + 12 shape grew it, and it stays grown
    assert backend._states[1].cache_len == 42 and backend._states[3].cache_len == 33


def test_prompts_are_hf_backends_prompts(backend):
    backend.run(5, 2, 3, 123, lambda: None, lambda: None)
    g = torch.Generator().manual_seed(123)
    assert torch.equal(backend.last_ids[:, :5], torch.randint(3, backend.vocab, (3, 5), generator=g))


class _HostReads(TorchDispatchMode):
    """Notes every op that hands a device value to the host or sizes its output by data: each would
    synchronise a CUDA stream, which a graph capture refuses."""

    SYNCING = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select",
               "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim"}

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def test_the_decode_step_never_reads_the_device_on_the_host(backend):
    backend.run(10, 3, 1, 5, lambda: None, lambda: None)  # leaves the state mid-sequence
    st = backend._states[1]
    with torch.no_grad(), _HostReads() as mode:
        st.step()
    assert len(mode.ops) > 20  # the mode saw the model's ops
    assert [op for op in mode.ops if op in _HostReads.SYNCING] == []


def _rows(d: Path) -> list[dict]:
    with open(d / "runs.csv") as f:
        return list(csv.DictReader(f))


PLAN = """name: graph
seed: 3
sweeps:
  - {name: input, n_in: [8, 24], n_out: [1, 4]}
  - {name: batch, n_in: [8], n_out: [5], batch: [1, 3]}
repeats: {min: 2, max: 2}
warmup: {runs: 1, n_in: 8, n_out: 2, batch: 1}
idle: {deep_s: 0, serving_s: 0}
"""


def test_calibration_sweep_latency_only(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    out = tmp_path / "run"
    s = Settings(out=out, plan_path=plan, device="cpu", identity={"backend": "hf-graph", "arch": "tiny-llama"},
                 latency_only=True, progress=False)
    res = calibrate(s, GraphBackend("cpu", arch="tiny-llama", dtype="fp32"))
    assert res == {"status": "complete", "runs": 12, "left": 0}  # 6 points x 2 repeats
    rows = _rows(out)
    # the plan's warm-up, and one for batch 3's first run (its cache is made then)
    assert [r["phase"] for r in rows].count("warmup") == 2
    assert {r["backend"] for r in rows} == {"hf-graph"} and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        assert int(r["gen_tokens"]) == int(r["n_out"])
        assert 0 < float(r["ttft_s"]) <= float(r["runtime_s"])
        extra = json.loads(r["extra"])
        assert extra["graph"] is False and extra["cache_len"] >= int(r["n_in"]) + int(r["n_out"])
    man = json.loads((out / "manifest.json").read_text())
    facts = man["sessions"][0]["backend"]
    assert facts["backend"] == "hf-graph" and facts["graph_capture_failures"] == {}


def test_the_command_offers_hf_graph(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.replace("max: 2", "max: 1").replace("min: 2", "min: 1"))
    out = tmp_path / "run"
    assert main(["--device", "cpu", "--model-arch", "tiny-llama", "--dtype", "fp32", "--backend", "hf-graph",
                 "--plan", str(plan), "--out", str(out), "--latency-only", "--no-progress"]) == 0
    assert {r["backend"] for r in _rows(out)} == {"hf-graph"}


def test_a_validation_replay_serves_through_it(tmp_path):
    import pandas as pd
    from test_calibrate_run import StandInMeter

    from dcsim.validate import replay as R

    wl = pd.DataFrame({"n_in": [8, 16, 8, 20], "n_out": [4, 8, 1, 6], "arrival_s": [0.0, 0.0, 0.0, 0.4]})
    pol = R.ServePolicy("static", 3, 0.2)
    lengths = R.cache_lengths([(32, 32, 1), (32, 32, 3)], pol.batch_sizes())
    R.check_fits(wl, lengths, pol, None)
    be = GraphBackend("cpu", arch="tiny-llama", dtype="fp32")
    be.load()
    be.prepare([(1, n - 1, b) for b, n in lengths.items()])  # as `dcsim validate` sizes the caches
    R.warm_up(be, pol, lengths, lambda m: None, wl["n_in"].tolist())
    assert not any(be.needs_warmup(8, 8, b) for b in pol.batch_sizes())
    R.serve(wl, be, StandInMeter(), pol, tmp_path, tail_s=0.05, settle_s=0.0)
    req = pd.read_csv(tmp_path / "requests.csv")
    assert sorted(req["id"]) == [0, 1, 2, 3] and (req["gen_tokens"] == req["batch_n_out"]).all()
    assert {st.cache_len for st in be._states.values()} == {64}  # sized by the plan, never grown
    be.close()


def test_validate_sizes_hf_graph_caches_from_the_plan(tmp_path, capsys):
    from dcsim.cli import main as cli

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "v"
    # the H100 profile's plan sized batch-4 caches to 320 positions; GSM8K prompts plus outputs need more
    assert cli(["validate", "--profile", str(repo / "profiles" / "h100-sxm-80gb--llama-2-7b--hf-static-bf16.yaml"),
                "--trace", str(repo / "traces" / "gsm8k-test.parquet"), "--out", str(out), "--dry-run",
                "--backend", "hf-graph", "--arrivals", "poisson", "--rate", "1", "--batching", "static",
                "--max-batch", "4"]) == 2
    err = capsys.readouterr().err
    assert "--clip-in" in err and "320" in err and not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-graph path needs a CUDA device")
def test_cuda_graph_decode_matches_generate_and_never_syncs():
    be = GraphBackend("cuda:0", arch="tiny-llama", dtype="fp32")
    be.load()
    be.prepare(PREPARED)
    for n_in, n_out, batch in SHAPES:
        tm = be.run(n_in, n_out, batch, SEED, lambda: None, lambda: None)
        assert tm.extra["graph"] is True and tm.gen_tokens == n_out, tm.extra
        assert torch.equal(be.last_ids, _generate(be, n_in, n_out, batch, SEED)), (n_in, n_out, batch)
    assert be.graph_failures == {}
    # replays alone: no host synchronisation at all between steps
    st = be._states[3]
    ids = be.prompt(4, 3, SEED)
    with torch.no_grad():
        st.load(ids)
        st.prefill(ids)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                st.advance()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert int(st.pos[0, 0]) == 4 + 5
    be.close()


def test_room_for_a_batch_size_covers_its_cache_and_its_prefill():
    """Llama-2-7B shapes (32 layers, 32 KV heads of 128, hidden 4096, MLP 11008), bf16, by hand: batch 256 with
    384 positions needs a 2 x 32 x 256 x 32 x 384 x 128 x 2 B = 51.54 GB cache plus 256 x 384 x (8 x 4096 +
    3 x 11008) x 2 B = 12.94 GB of prefill activations; batch 1 with 4096 positions needs 2.15 GB plus the 2 GiB
    floor, its activations (0.54 GB) being smaller."""
    from types import SimpleNamespace

    from dcsim.calibrate.backends.graph import room_needed

    cfg = SimpleNamespace(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                          hidden_size=4096, intermediate_size=11008)
    assert room_needed(cfg, 256, 384, 2) == 51_539_607_552 + 12_935_233_536
    assert room_needed(cfg, 1, 4096, 2) == 2_147_483_648 + (2 << 30)
