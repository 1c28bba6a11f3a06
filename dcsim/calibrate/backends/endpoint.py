"""OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp server, ...), measured from outside while the
meter reads the device the server runs on.

One run sends `batch` concurrent streaming /v1/completions requests whose prompt is a list of n_in random
token ids and forces n_out output tokens (max_tokens = min_tokens = n_out, ignore_eos). TTFT is when every
request has streamed its first token; the run ends when every request has finished.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

from dcsim.calibrate.backends.base import Backend, Timing
from dcsim.errors import UserError


class EndpointBackend(Backend):
    name = "endpoint"
    local_device = False

    def __init__(self, url: str, model: str, timeout_s: float = 600.0, token_range: tuple[int, int] = (1000, 20000),
                 api_key: str | None = None) -> None:
        if not model:
            raise UserError("an endpoint run needs --model NAME (the name the server serves)", None, "--model")
        self.url = url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.token_range = token_range
        self.api_key = api_key

    def _post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        return urllib.request.urlopen(req, timeout=self.timeout_s)

    def load(self) -> dict:
        try:
            with urllib.request.urlopen(self.url + "/models", timeout=30) as r:
                models = [m.get("id") for m in json.load(r).get("data", [])]
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise UserError(f"cannot reach {self.url}/models: {e}", None, "--endpoint") from None
        if models and self.model not in models:
            raise UserError(f"the server serves {models}, not {self.model!r}", None, "--model")
        return {"backend": self.name, "endpoint": self.url, "model": self.model, "served_models": models,
                "request": {"prompt": "n_in random token ids", "max_tokens": "= n_out", "min_tokens": "= n_out",
                            "ignore_eos": True, "temperature": 0, "stream": True}}

    def prompts(self, n_in: int, batch: int, seed: int) -> list[list[int]]:
        """`batch` prompts of n_in random token ids (the same seed gives the same prompts)."""
        rng = random.Random(seed)
        return [[rng.randrange(*self.token_range) for _ in range(n_in)] for _ in range(batch)]

    def stream(self, prompt: list[int], n_out: int, t0: float, out: dict) -> None:
        """One streaming request forcing n_out tokens; fills out["first"] and out["end"] (seconds since t0),
        out["tokens"], out["error"] on failure, and sets out["first_event"] once the first token is in."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": n_out, "min_tokens": n_out,
                "ignore_eos": True, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        chunks = 0
        usage = None
        try:
            with self._post("/completions", body) as r:
                for raw in r:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    msg = json.loads(data)
                    if msg.get("usage"):
                        usage = msg["usage"]
                    if any(c.get("text") for c in msg.get("choices", [])):
                        chunks += 1
                        if "first" not in out:
                            out["first"] = time.perf_counter() - t0
                            out["first_event"].set()
        except Exception as e:  # reported by the caller
            out["error"] = f"{type(e).__name__}: {e}"
        out["end"] = time.perf_counter() - t0
        out["first_event"].set()  # never leave the caller waiting on a request that failed early
        out["tokens"] = int(usage["completion_tokens"]) if usage and "completion_tokens" in usage else chunks

    def run(self, n_in: int, n_out: int, batch: int, seed: int,
            on_start: Callable[[], None], on_first_token: Callable[[], None]) -> Timing:
        prompts = self.prompts(n_in, batch, seed)
        outs = [{"first_event": threading.Event()} for _ in range(batch)]
        on_start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=self.stream, args=(p, n_out, t0, o), daemon=True)
                   for p, o in zip(prompts, outs)]
        for t in threads:
            t.start()
        for o in outs:
            o["first_event"].wait(self.timeout_s)
        if all("first" in o for o in outs):
            on_first_token()
        for t in threads:
            t.join(self.timeout_s)
        errors = [o["error"] for o in outs if "error" in o]
        if errors:
            raise RuntimeError(errors[0])
        return Timing(runtime_s=max(o["end"] for o in outs),
                      ttft_s=max(o.get("first", float("nan")) for o in outs),
                      gen_tokens=min(o["tokens"] for o in outs),
                      extra={"ttft_mean_s": sum(o.get("first", 0.0) for o in outs) / batch})
