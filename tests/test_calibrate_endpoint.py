"""The endpoint backend against a local OpenAI-compatible streaming server. No vLLM here, so a small
stand-in server on 127.0.0.1 speaks the same /v1/models and streaming /v1/completions protocol."""

from __future__ import annotations

import csv
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dcsim.commands.calibrate import main

FIRST_DELAY_S = 0.15
STEP_S = 0.01
SEEN: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": "stand-in"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        SEEN.append(req)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(FIRST_DELAY_S)
        for _ in range(req["max_tokens"]):
            self.wfile.write(b'data: {"choices": [{"text": "x"}]}\n\n')
            self.wfile.flush()
            time.sleep(STEP_S)
        usage = {"choices": [], "usage": {"completion_tokens": req["max_tokens"]}}
        self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    SEEN.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_endpoint_sweep_measured_from_outside(server, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: ep\nsweeps: [{name: x, n_in: [16], n_out: [10], batch: [1, 3]}]\n"
                    "repeats: {min: 1, max: 1}\nwarmup: {runs: 0}\nidle: {deep_s: 0, serving_s: 0}\n")
    out = tmp_path / "run"
    assert main(["--endpoint", server, "--model", "stand-in", "--plan", str(plan), "--out", str(out),
                 "--latency-only", "--no-progress"]) == 0
    # every request: n_in prompt token ids, forced length, EOS ignored, streamed
    assert len(SEEN) == 1 + 3
    for req in SEEN:
        assert len(req["prompt"]) == 16 and all(isinstance(t, int) for t in req["prompt"])
        assert req["max_tokens"] == req["min_tokens"] == 10 and req["ignore_eos"] and req["stream"]
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert {r["point"] for r in rows} == {"i16-o10-b1", "i16-o10-b3"}
    for r in rows:
        assert int(r["gen_tokens"]) == 10 and r["status"] == "ok"
        ttft, rt = float(r["ttft_s"]), float(r["runtime_s"])
        assert FIRST_DELAY_S <= ttft < FIRST_DELAY_S + 0.1
        assert rt >= FIRST_DELAY_S + 9 * STEP_S


def test_unknown_model_is_refused(server, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: ep\nsweeps: [{name: x, n_in: [4], n_out: [2]}]\n")
    assert main(["--endpoint", server, "--model", "other", "--plan", str(plan), "--out", str(tmp_path / "o"),
                 "--latency-only"]) == 2
    assert not (tmp_path / "o").exists()  # nothing half-written
