"""The endpoint backend against a real OpenAI-compatible server: `transformers serve` (pip install
"transformers[serving]") on the CPU, serving a tiny Llama with random weights saved to a folder by
dcsim.calibrate.random_model. It takes text
prompts only and knows no min_tokens / ignore_eos, so these runs use the `openai` dialect: word prompts whose
length the server's own token counts confirm. Latency only: no energy meter is readable on a CPU-only machine."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch", reason="torch is needed to run the served model")
SERVING = 'transformers serve needs its serving extras: pip install "transformers[serving]"'
pytest.importorskip("fastapi", reason=SERVING)
pytest.importorskip("uvicorn", reason=SERVING)
pytest.importorskip("transformers.cli.serving", reason="this transformers has no `transformers serve`")

from dcsim.calibrate.backends.endpoint import EndpointBackend  # noqa: E402
from dcsim.calibrate.random_model import main as random_model  # noqa: E402
from dcsim.calibrate.random_model import save  # noqa: E402
from dcsim.cli import main as fit  # noqa: E402
from dcsim.commands.calibrate import main as calibrate  # noqa: E402
from dcsim.profiles.importers import calibrate_runs  # noqa: E402
from dcsim.validate import open_loop  # noqa: E402

TINY = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=1024)


def _tiny_model(folder: Path, by_character: bool = False) -> None:
    """dcsim's random-weight model folder for a 2-layer Llama (random_model.save: word-level tokenizer, EOS never
    picked, so every request runs to max_tokens as a forced length would); with by_character, a tokenizer that
    takes every character as a token instead."""
    save(TINY, folder, dtype="fp32")
    if by_character:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\S"), "isolated")
        PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                eos_token="</s>").save_pretrained(folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    exe = shutil.which("transformers")
    if exe is None:
        pytest.skip("the `transformers` command is not on PATH")
    root = tmp_path_factory.mktemp("serve")
    model = root / "tiny-llama"
    _tiny_model(model)
    _tiny_model(root / "tiny-llama-chars", by_character=True)
    (root / "hub").mkdir()  # its /v1/models lists the hub cache, and fails where there is none
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root / "hub"), "OMP_NUM_THREADS": "1"}
    log = open(root / "serve.log", "w")
    # no model named on its command line: it loads each model a request names (a folder here) on demand
    proc = subprocess.Popen([exe, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.time()
    while True:
        try:
            with urllib.request.urlopen(url + "/models", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.time() - t0 > 180:
                proc.kill()
                pytest.fail("transformers serve did not come up:\n" + (root / "serve.log").read_text()[-3000:])
            time.sleep(0.5)
    yield url, str(model)
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_calibrate_against_the_server_counts_every_token(served, tmp_path, capsys):
    url, model = served
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: ep\nsweeps: [{name: out, n_in: [16], n_out: [4, 64], batch: [1]},"
                    " {name: b, n_in: [16], n_out: [8], batch: [3]}]\n"
                    "repeats: {min: 2, max: 2}\nwarmup: {runs: 1}\nidle: {deep_s: 0, serving_s: 0}\n")
    out = tmp_path / "run"
    assert calibrate(["--endpoint", url, "--model", model, "--endpoint-dialect", "openai", "--plan", str(plan),
                      "--out", str(out), "--latency-only", "--no-progress"]) == 0
    rows = [r for r in csv.DictReader(open(out / "runs.csv")) if r["phase"] == "run"]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    # the server's own usage counts: every sequence produced exactly the asked number of tokens
    assert all(int(r["gen_tokens"]) == int(r["n_out"]) for r in rows)
    for r in rows:
        assert 0 < float(r["ttft_s"]) < float(r["runtime_s"])
    # 60 more decode steps take time: the 64-token runs take over twice as long as the 4-token ones (medians;
    # 0.099 against 0.013 s on a 2-core CPU)
    rt = pd.DataFrame(rows).astype({"runtime_s": float}).groupby("point")["runtime_s"].median()
    assert rt["i16-o64-b1"] > 2.0 * rt["i16-o4-b1"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["identity"]["dialect"] == "openai"
    # the model was served from a local folder, so the run recorded its config.json; the fit goes on to the
    # measurements, and these 3 shapes are too few: it says so
    backend = man["sessions"][0]["backend"]
    assert backend["model_config"]["hidden_size"] == 64 and backend["model_config"]["num_hidden_layers"] == 2
    assert fit(["fit", str(out), "-o", str(tmp_path / "p.yaml")]) == 2
    assert "3 measured shapes cannot fix 5 latency coefficients" in capsys.readouterr().err
    # a server whose model is not readable from here shows no shapes: without a config the fit stops and says how
    del backend["model_config"]
    (out / "manifest.json").write_text(json.dumps(man))
    assert fit(["fit", str(out), "-o", str(tmp_path / "p.yaml")]) == 2
    assert "--model-config" in capsys.readouterr().err and not (tmp_path / "p.yaml").exists()
    _, meta = calibrate_runs.load(out, model_config=model)
    # 2 layers x 4 KV heads x 16 per head x (K and V) x 2 bytes; parameters: 2 x 4096 x 64 (embeddings and head)
    # + 2 layers x (4 x 64 x 64 attention + 3 x 64 x 128 MLP + 2 x 64 norms) + 64 (final norm)
    assert meta["model"]["kv_bytes_per_token"] == 2 * 4 * 16 * 2 * 2
    assert meta["model"]["params_b"] == pytest.approx((2 * 4096 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 128) + 64)
                                                      / 1e9, rel=1e-5)
    assert meta["command"].endswith(f"--model-config {model}/config.json")
    # ... or the served config.json shipped in the run folder: the same shapes
    shutil.copy(Path(model) / "config.json", out / "config.json")
    _, shipped = calibrate_runs.load(out)
    assert shipped["model"] == meta["model"]


def test_a_server_whose_tokenizer_splits_the_words_fails_the_run(served):
    url, model = served
    # the same server loads a second model on demand; its tokenizer takes every character as a token
    chars = str(Path(model).with_name("tiny-llama-chars"))
    with pytest.raises(RuntimeError, match=r"counted \d+ prompt tokens for 8 words"):
        EndpointBackend(url, chars, dialect="openai").run(8, 4, 1, seed=3, on_start=lambda: None,
                                                           on_first_token=lambda: None)
    # and with the one-word-one-token tokenizer the same run passes, with the server's counts
    tm = EndpointBackend(url, model, dialect="openai").run(8, 4, 2, seed=3, on_start=lambda: None,
                                                           on_first_token=lambda: None)
    assert tm.gen_tokens == 4 and 0 < tm.ttft_s < tm.runtime_s


def test_open_loop_replay_against_the_server(served, tmp_path):
    from test_validate import _meter

    url, model = served
    be = EndpointBackend(url, model, dialect="openai")
    wl = pd.DataFrame({"n_in": [8, 32, 16, 8], "n_out": [6, 4, 12, 3], "arrival_s": [0.0, 0.1, 0.15, 1.2]})
    res = open_loop.serve(wl, be, _meter(), tmp_path, tail_s=0.2, settle_s=0.0)
    req = pd.read_csv(tmp_path / "requests.csv").sort_values("id")
    assert list(req["id"]) == [0, 1, 2, 3] and (req["gen_tokens"] == req["n_out"]).all()
    assert req["error"].isna().all()
    # each request left at its arrival time, on its own connection
    assert np.allclose(req["start_s"], req["arrival_s"], atol=0.05)
    assert (req["first_token_s"] > req["start_s"]).all() and (req["end_s"] > req["first_token_s"]).all()
    assert res["window_s"] >= float(req["end_s"].max()) + 0.2 - 1e-6


def test_random_model_folder_is_refused_for_an_unknown_arch_or_a_full_folder(tmp_path, capsys):
    assert random_model(["llama-9", str(tmp_path / "m")]) == 2
    assert "unknown architecture 'llama-9'" in capsys.readouterr().err and not (tmp_path / "m").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert random_model(["tiny-llama", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_random_model_folder_never_ends_early_and_counts_words_as_tokens(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert random_model(["tiny-llama", str(tmp_path / "m"), "--dtype", "fp32"]) == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert len(tok("the of and w17 zebra")["input_ids"]) == 5  # one token per word, known or not
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == 512  # the tiny-llama shapes
    assert float(model.lm_head.weight[model.config.eos_token_id].detach().abs().sum()) == 0.0
    ids = torch.tensor([tok("w5 w6 w7")["input_ids"]])
    out = model.generate(ids, max_new_tokens=40, do_sample=False)
    assert out.shape[1] == 3 + 40 and model.config.eos_token_id not in out[0, 3:].tolist()
