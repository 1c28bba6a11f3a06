"""OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp server, ...), measured from outside while the
meter reads the device the server runs on.

One run sends `batch` concurrent streaming /v1/completions requests and forces n_out output tokens. Two dialects:
`vllm` (vLLM, SGLang): the prompt is a list of n_in random token ids, and max_tokens = min_tokens = n_out with
ignore_eos; `openai` (servers that take text only and know no min_tokens, e.g. `transformers serve`): the prompt is
n_in random common English words, each one token in the usual tokenizers, and max_tokens = n_out; the server's
own token counts (usage) must then say n_in (or n_in + 1, a BOS) prompt and n_out output tokens, else the run
fails. TTFT is when every request has streamed its first token; the run ends when every request has finished.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from dcsim.calibrate.backends.base import Backend, Timing, scalar_fields
from dcsim.errors import UserError

DIALECTS = ("vllm", "openai")
DIALECT_HELP = ("with --endpoint: vllm (token-id prompts, min_tokens, ignore_eos: vLLM, SGLang) or openai (word "
                "prompts, lengths checked against the server's usage counts: e.g. transformers serve)")
# one token each, with their leading space, in the Llama (SentencePiece) and GPT-2/Llama-3 (BPE) vocabularies
WORDS = ("the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from",
         "his", "it", "an", "are", "were", "be", "this", "which", "or", "had", "not", "but", "have", "one", "all")


class EndpointBackend(Backend):
    name = "endpoint"
    local_device = False

    def __init__(self, url: str, model: str, timeout_s: float = 600.0, token_range: tuple[int, int] = (1000, 20000),
                 api_key: str | None = None, dialect: str = "vllm") -> None:
        if not model:
            raise UserError("an endpoint run needs --model NAME (the name the server serves)", None, "--model")
        if dialect not in DIALECTS:
            raise UserError(f"unknown dialect {dialect!r}; use one of {DIALECTS}", None, "--endpoint-dialect")
        self.dialect = dialect
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
        if self.dialect == "vllm":
            request = {"prompt": "n_in random token ids", "max_tokens": "= n_out", "min_tokens": "= n_out",
                       "ignore_eos": True, "temperature": 0, "stream": True}
        else:
            request = {"prompt": "n_in random common words, checked against the server's prompt_tokens",
                       "max_tokens": "= n_out, checked against its completion_tokens", "temperature": 0,
                       "stream": True}
        info = {"backend": self.name, "endpoint": self.url, "model": self.model, "served_models": models,
                "dialect": self.dialect, "request": request}
        cfg = _local_config(self.model)
        if cfg:  # a model served from a local folder: its shapes are visible after all, so the run records them
            info["model_config"] = cfg
        return info

    def prompts(self, n_in: int, batch: int, seed: int) -> list:
        """`batch` prompts of n_in random token ids, or (dialect openai) of n_in random words; the same seed
        gives the same prompts."""
        rng = random.Random(seed)
        if self.dialect == "openai":
            return [" ".join(rng.choice(WORDS) for _ in range(n_in)) for _ in range(batch)]
        return [[rng.randrange(*self.token_range) for _ in range(n_in)] for _ in range(batch)]

    def stream(self, prompt: list[int] | str, n_out: int, t0: float, out: dict) -> None:
        """One streaming request forcing n_out tokens; fills out["first"] and out["end"] (seconds since t0),
        out["tokens"], out["error"] on failure, and sets out["first_event"] once the first token is in."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": n_out, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        if self.dialect == "vllm":
            body.update(min_tokens=n_out, ignore_eos=True)
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
        except Exception as e:  # noqa: BLE001 - reported by the caller
            out["error"] = f"{type(e).__name__}: {e}"
        out["end"] = time.perf_counter() - t0
        out["first_event"].set()  # never leave the caller waiting on a request that failed early
        out["tokens"] = int(usage["completion_tokens"]) if usage and "completion_tokens" in usage else chunks
        if usage and "prompt_tokens" in usage:
            out["prompt_tokens"] = int(usage["prompt_tokens"])
        n_in = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        if self.dialect == "openai" and "error" not in out and out.get("prompt_tokens") not in (n_in, n_in + 1):
            out["error"] = (f"the server counted {out.get('prompt_tokens')} prompt tokens for {n_in} words: its "
                            "tokenizer does not take each word as one token, so the run's length is not n_in")

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


def _local_config(model: str) -> dict | None:
    """The scalar fields of `model`/config.json where the model name is a local folder holding one (as
    `python -m dcsim.calibrate.random_model` writes), else None."""
    path = Path(model) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return scalar_fields(cfg)
