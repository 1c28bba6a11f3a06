"""The device side of a validation against a running OpenAI-compatible server (vLLM, SGLang, TGI, ...): each
request is sent at its arrival time on its own connection (open loop: the server queues and batches them as it
does in production) and streamed; the client records when it sent it, its first token and its end, while the
meter reads the device the server runs on.

From outside, a request's queue wait and prefill cannot be told apart: both are in its time to first token. The
busy time is the union of the intervals in which at least one request was in flight; the active energy is the
sampled device power integrated over that union, and the idle energy the rest of the metered window.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from dcsim.calibrate.backends.endpoint import EndpointBackend
from dcsim.calibrate.meters import Meter
from dcsim.calibrate.store import RowWriter
from dcsim.validate.intervals import merge
from dcsim.validate.window import Window

FIELDS = ("id", "arrival_s", "n_in", "n_out", "start_s", "first_token_s", "end_s", "gen_tokens", "error")


def serve(wl: pd.DataFrame, backend: EndpointBackend, meter: Meter, out: Path, tail_s: float = 10.0,
          settle_s: float = 10.0, timeline_hz: float = 20.0,
          log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Replay the workload against the server; writes requests.csv and power.csv into `out` and returns the
    window's facts (as replay.serve does). Raises RuntimeError, after writing every row, if a request failed."""
    arrival = wl["arrival_s"].to_numpy(float)
    n_in = wl["n_in"].to_numpy(int)
    n_out = wl["n_out"].to_numpy(int)
    n = len(wl)
    prompts = [backend.prompts(int(n_in[i]), 1, 10_000 + i)[0] for i in range(n)]
    rows = RowWriter(out / "requests.csv", FIELDS, durable=False)
    lock = threading.Lock()
    done: list[dict] = []
    threads = []
    try:
        with Window(meter, out, tail_s, settle_s, timeline_hz) as w:

            def one(i: int) -> None:
                o: dict = {"first_event": threading.Event()}
                sent = w.now()
                backend.stream(prompts[i], int(n_out[i]), w.t0, o)
                row = {"id": i, "arrival_s": arrival[i], "n_in": int(n_in[i]), "n_out": int(n_out[i]),
                       "start_s": round(sent, 6), "first_token_s": round(o.get("first", math.nan), 6),
                       "end_s": round(o["end"], 6), "gen_tokens": o.get("tokens"), "error": o.get("error")}
                with lock:
                    rows.write(row)
                    done.append(row)

            last_report = 0.0
            for i in range(n):
                time.sleep(max(0.0, arrival[i] - w.now()))
                th = threading.Thread(target=one, args=(i,), daemon=True, name=f"request-{i}")
                th.start()
                threads.append(th)
                now = w.now()
                if now - last_report > 15 or i == n - 1:
                    last_report = now
                    log(f"replay: {i + 1}/{n} requests sent at {now:.1f} s, {len(done)} finished")
            for th in threads:
                th.join(backend.timeout_s)
            w.close(max(r["end_s"] for r in done) if done else w.now())
            busy = merge([(r["start_s"], r["end_s"]) for r in done])
            sampled = w.timeline.active
    finally:
        rows.close()
    failed = [r for r in done if r["error"] or r["gen_tokens"] != r["n_out"]]
    if len(done) < n or failed:
        bad = failed[0] if failed else {"id": "?", "error": f"{n - len(done)} requests never returned"}
        raise RuntimeError(f"request {bad['id']} failed: {bad['error'] or 'wrong number of tokens'}")
    active = w.timeline_share_j(busy) if sampled else math.nan
    return w.facts(active, open_loop=True, busy_s=sum(b - a for a, b in busy))
