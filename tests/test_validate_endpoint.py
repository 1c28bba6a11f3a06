"""`dcsim validate --endpoint`: an open-loop replay against a running OpenAI-compatible server. No vLLM here,
so the calibration tests' stand-in server on 127.0.0.1 (same /v1/models and streaming /v1/completions
protocol; each request: first token after 0.15 s, then one token every 0.01 s) takes the requests."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_calibrate_endpoint import FIRST_DELAY_S, SEEN, STEP_S, server  # noqa: F401 - the fixture
from test_validate import GSM8K, H100, _meter

from dcsim.calibrate.backends.endpoint import EndpointBackend
from dcsim.cli import main as cli
from dcsim.validate import open_loop
from dcsim.validate.intervals import covered_s, merge


def test_merge_gives_the_union_of_intervals():
    assert merge([(3, 4), (0, 1), (0.5, 2), (2, 2.5), (5, 6)]) == [(0, 2.5), (3, 4), (5, 6)]
    assert covered_s([(3, 4), (0, 1), (0.5, 2), (2, 2.5), (5, 6)]) == 4.5


def test_requests_are_sent_at_their_arrivals_and_overlap(server, tmp_path):  # noqa: F811
    wl = pd.DataFrame({"n_in": [8, 16, 8, 24, 8, 12], "n_out": [10, 5, 20, 8, 3, 10],
                       "arrival_s": [0.0, 0.05, 0.1, 0.8, 0.85, 1.6]})
    be = EndpointBackend(server, "stand-in")
    be.load()
    res = open_loop.serve(wl, be, _meter(), tmp_path, tail_s=0.3, settle_s=0.0)
    req = pd.read_csv(tmp_path / "requests.csv").set_index("id").sort_index()
    assert len(SEEN) == 6 and sorted(len(r["prompt"]) for r in SEEN) == sorted(wl["n_in"])
    assert (req["gen_tokens"] == req["n_out"]).all() and req["error"].isna().all()
    # open loop: each request leaves at its arrival, whatever is in flight
    assert ((req["start_s"] - req["arrival_s"]).abs() < 0.03).all()
    # the stand-in answers each at once: first token after 0.15 s, then n_out tokens 0.01 s apart
    ttft = req["first_token_s"] - req["start_s"]
    assert ((ttft > FIRST_DELAY_S - 0.01) & (ttft < FIRST_DELAY_S + 0.08)).all()
    assert ((req["end_s"] - req["first_token_s"]) >= (req["n_out"] - 1) * STEP_S).all()
    # busy = union of the in-flight intervals (requests 0-2 overlap, 3-4 overlap, 5 alone)
    spans = [(a, b) for a, b in zip(req["start_s"], req["end_s"])]
    assert res["busy_s"] == pytest.approx(sum(b - a for a, b in merge(spans)), rel=1e-6)
    assert res["busy_s"] < (req["end_s"] - req["start_s"]).sum() - 0.1
    # a constant 50 W meter: total = 50 W x window; active = 50 W x busy (from the sampled timeline)
    assert res["energy_j"] == pytest.approx(50.0 * res["window_s"], rel=1e-3)
    assert res["active_j"] == pytest.approx(50.0 * res["busy_s"], rel=0.02)


def test_validate_against_a_server_end_to_end(server, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "v"
    args = ["validate", "--endpoint", server, "--model", "stand-in", "--latency-only", "--profile", str(H100),
            "--trace", str(GSM8K), "--arrivals", "poisson", "--rate", "4", "--limit", "12", "--clip-out", "24",
            "--batching", "continuous", "--max-batch", "8", "--settle-s", "0", "--tail-s", "0.2", "--out", str(out)]
    assert cli(args) == 0
    table = capsys.readouterr().out
    assert "not observable" in table  # queue wait and prefill are inside the server
    meta = json.loads((out / "replay.json").read_text())
    assert meta["open_loop"] and meta["engine"] == "endpoint" and meta["policy"]["policy"] == "continuous"
    cmp = json.loads((out / "comparison.json").read_text())["metrics"]
    assert cmp["wait_mean_s"]["pass"] is None and cmp["wait_mean_s"]["measured"] is None  # strict JSON: null
    # the stand-in streams every request in 0.15 s + (n_out - 1) x 0.01 s or a little more
    req = pd.read_csv(out / "requests.csv")
    floor = FIRST_DELAY_S + (req["n_out"] - 1) * STEP_S
    assert cmp["e2e_p50_s"]["measured"] >= float(np.median(floor))
    assert not (tmp_path / "v.partial").exists()
    # the folder keeps the profile its workload was sized with, byte for byte
    assert (out / "profile.yaml").read_bytes() == H100.read_bytes()
    # the same folder is refused without --force; a server that does not serve the model is refused early
    assert cli(args) == 2
    assert cli(args[:4] + ["other"] + args[5:-1] + [str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w.partial").exists() and not (tmp_path / "w").exists()


def test_continuous_batching_needs_a_server(tmp_path, capsys):
    assert cli(["validate", "--profile", str(H100), "--trace", str(GSM8K), "--arrivals", "poisson", "--rate", "1",
                "--limit", "5", "--batching", "continuous", "--out", str(tmp_path / "v")]) == 2
    assert "--endpoint" in capsys.readouterr().err
