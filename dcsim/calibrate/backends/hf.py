"""Hugging Face transformers backend: `model.generate` on random prompt tokens with the output length
forced (min_new_tokens = max_new_tokens, so EOS cannot end a sequence early).

Two variants:
- eager (`hf`): the default dynamic KV cache, one Python-driven forward per token; at small batch the
  host, not the GPU, sets the pace.
- static (`hf-static`): generate's static KV cache (cache_implementation="static"), with which
  transformers compiles the decode step with torch.compile (mode reduce-overhead: CUDA graphs). The cache
  is sized once per batch size (the longest shape of that batch in the plan), so each batch size compiles
  once; the sweep runs one batch size at a time and warms each up before measuring it.
TTFT comes from a streamer: generate hands it the prompt, then the first output token of every sequence
once the prefill step has produced it (a host copy, so the device has finished that step).
"""

from __future__ import annotations

import time
from typing import Callable

from dcsim.calibrate.backends.base import Backend, Timing, scalar_fields
from dcsim.errors import UserError

DTYPES = ("bf16", "fp16", "fp32")


class _FirstToken:
    """Minimal streamer: notes the host time when the first generated tokens arrive."""

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.calls = 0
        self.t_first: float | None = None
        self.on_first = on_first

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:  # call 1 is the prompt
            self.t_first = time.perf_counter()
            self.on_first()

    def end(self) -> None:
        pass


class HFBackend(Backend):
    def __init__(self, device: str, model: str | None = None, arch: str | None = None,
                 random_weights: bool = False, dtype: str = "bf16", static: bool = False,
                 attn: str = "sdpa", seed: int = 0) -> None:
        if not model and not arch:
            raise UserError("give --model NAME or --model-arch ARCH", None, "--model")
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; expected one of {DTYPES}", None, "--dtype")
        self.device = device
        self.model_name = model
        self.arch = arch
        self.random_weights = random_weights or arch is not None
        self.dtype = dtype
        self.static = static
        self.attn = attn
        self.seed = seed
        self.name = "hf-static" if static else "hf"
        self._cache_len: dict[int, int] = {}
        self._warm: set[int] = set()

    # ---- loading ------------------------------------------------------------------------------
    def load(self) -> dict:
        try:
            import torch
            import transformers
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError as e:
            raise UserError(f"the hf backend needs torch and transformers ({e}); "
                            "pip install 'dcsim[calibrate]'", None, "--backend") from None
        self.torch = torch
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype]
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("torch sees no CUDA device", None, "--device")
        if self.device == "mps" and not torch.backends.mps.is_available():
            raise UserError("torch sees no MPS device", None, "--device")
        t0 = time.perf_counter()
        torch.manual_seed(self.seed)
        if self.random_weights:
            if self.arch:
                from dcsim.models import arch_config

                cfg = arch_config(self.arch)
            else:
                cfg = AutoConfig.from_pretrained(self.model_name)
            model = self.build(cfg, dt)
        else:
            model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=dt,
                                                         attn_implementation=self.attn).to(self.device)
        model.eval()
        self.model = model
        self.cfg = model.config
        self.vocab = int(self.cfg.vocab_size)
        eos = self.cfg.eos_token_id
        self.eos = eos if isinstance(eos, int) else (eos[0] if eos else None)
        if self.static:
            dyn = torch._dynamo.config
            for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit"):
                if hasattr(dyn, knob):
                    setattr(dyn, knob, max(getattr(dyn, knob), 256))
        self.sync()
        load_s = time.perf_counter() - t0
        from dcsim.models import params_b

        info = {
            "backend": self.name, "model": self.model_name, "arch": self.arch,
            "weights": "random (real architecture, weights not loaded)" if self.random_weights else "pretrained",
            "dtype": self.dtype, "attn_implementation": self.attn, "load_s": round(load_s, 2),
            "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 4),
            "params_b_formula": round(params_b(self.cfg), 4) if hasattr(self.cfg, "intermediate_size") else None,
            "model_config": scalar_fields(self.cfg.to_dict()),
            "torch": torch.__version__, "transformers": transformers.__version__,
            **self._engine_facts(),
        }
        if self.device.startswith("cuda"):
            info["cuda_runtime"] = torch.version.cuda
            info["memory_allocated_gb"] = round(torch.cuda.memory_allocated() / 1e9, 3)
        return info

    def build(self, cfg, dtype):
        """The random-weight model of `cfg` on this backend's device, from the seeded generator (a tensor-parallel
        backend builds and shards it instead)."""
        from transformers import AutoModelForCausalLM

        with self.torch.device(self.device):
            return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=self.attn)

    def _engine_facts(self) -> dict:
        """The manifest's description of how tokens are generated (subclasses describe their own loop)."""
        return {"generate": {"do_sample": False, "min_new_tokens": "= n_out", "max_new_tokens": "= n_out",
                             "cache_implementation": "static" if self.static else "dynamic (default)",
                             "compile": "transformers auto-compile of the decode step (reduce-overhead)"
                             if self.static else "none (eager)"}}

    def max_context(self) -> int | None:
        return int(getattr(self.cfg, "max_position_embeddings", 0)) or None

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        for n_in, n_out, b in shapes:
            self._cache_len[b] = max(self._cache_len.get(b, 0), n_in + n_out)

    # ---- running ------------------------------------------------------------------------------
    def sync(self) -> None:
        t = self.torch
        if self.device.startswith("cuda"):
            t.cuda.synchronize()
        elif self.device == "mps":
            t.mps.synchronize()

    def needs_warmup(self, n_in: int, n_out: int, batch: int) -> bool:
        return self.static and batch not in self._warm

    def prompt(self, n_in: int, batch: int, seed: int):
        """`batch` random prompts of n_in ids on the device; the same seed gives the same prompts."""
        g = self.torch.Generator().manual_seed(seed)
        # Random prompt ids, clear of the low special ids (unk/bos/eos of Llama tokenizers).
        return self.torch.randint(3, self.vocab, (batch, n_in), generator=g).to(self.device)

    def run(self, n_in: int, n_out: int, batch: int, seed: int,
            on_start: Callable[[], None], on_first_token: Callable[[], None]) -> Timing:
        torch = self.torch
        ids = self.prompt(n_in, batch, seed)
        mask = torch.ones_like(ids)
        streamer = _FirstToken(on_first_token)
        kw = dict(max_new_tokens=n_out, min_new_tokens=n_out, do_sample=False, streamer=streamer,
                  pad_token_id=self.eos if self.eos is not None else 0, eos_token_id=self.eos)
        if self.static:
            cache_len = max(self._cache_len.get(batch, 0), n_in + n_out)
            self._cache_len[batch] = cache_len
            # transformers only ever grows the static cache it allocates (to avoid recompiles); size it to
            # this batch size's longest shape instead, so large batches fit in memory.
            self.model._previous_max_cache_length = cache_len
            kw.update(cache_implementation="static", max_cache_len=cache_len)
        self.sync()
        on_start()
        t0 = time.perf_counter()
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kw)
        self.sync()
        t1 = time.perf_counter()
        gen = int(out.shape[1] - n_in)
        extra = {}
        if self.static:
            self._warm.add(batch)
            extra["cache_len"] = self._cache_len[batch]
        if self.device.startswith("cuda"):
            extra["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
        ttft = (streamer.t_first - t0) if streamer.t_first is not None else float("nan")
        return Timing(runtime_s=t1 - t0, ttft_s=ttft, gen_tokens=gen, extra=extra)

    def close(self) -> None:
        self.model = None
