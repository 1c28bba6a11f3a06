"""`hf-graph`: the transformers model driven by our own greedy loop instead of `generate`, so that decode is
paced by the device, not by Python.

`generate` does host work every step (logits processors, stopping criteria, the streamer, host syncs); at
small batch on a fast GPU that work, not the weight reads, sets the step time, and it moves with the host.
Here a run is: one model forward over the prompts into a static KV cache, the argmax of the last logits as
the first token (then a device sync: time to first token), then n_out - 1 decode steps with no host sync
and no EOS check (output length forced). On CUDA each decode step is the replay of a CUDA graph captured
once per batch size during warm-up, as serving engines (vLLM, TensorRT-LLM) replay captured graphs for
decode; elsewhere, or if a capture fails (recorded, never silent), the same step runs eagerly.

Loading, options and prompts are HFBackend's; the cache and buffers are `decode.DecodeState`'s.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from dcsim.calibrate.backends.base import Timing
from dcsim.calibrate.backends.cudagraph import capture
from dcsim.calibrate.backends.decode import DecodeState
from dcsim.calibrate.backends.hf import HFBackend

# free device memory kept beyond a new cache's own size before older batch sizes' caches are dropped: at least
# this, and at least what a prefill of the whole cache's positions holds at its peak (room_needed)
_HEADROOM_BYTES = 2 << 30


def room_needed(cfg: Any, batch: int, length: int, elem: int) -> int:
    """Free device bytes a batch size's state needs: its KV cache (K and V, every layer) plus the larger of
    2 GiB and a prefill's peak activations over batch x length tokens (hidden states of the residual stream,
    q/k/v/o, and the MLP's gate, up and product: 8 x hidden + 3 x intermediate values per token). Without the
    second term a batch of 256 prompts of 256 tokens (Llama-2-7B) would run out of memory in its prefill
    after its 51.5 GB cache was made to fit with 2 GiB to spare."""
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    cache = 2 * cfg.num_hidden_layers * batch * kv_heads * length * hd * elem
    act = batch * length * (8 * cfg.hidden_size + 3 * cfg.intermediate_size) * elem
    return cache + max(_HEADROOM_BYTES, act)


class GraphBackend(HFBackend):
    """Prefill + device-paced greedy decode over a static cache; CUDA-graph decode steps on CUDA."""

    def __init__(self, device: str, model: str | None = None, arch: str | None = None,
                 random_weights: bool = False, dtype: str = "bf16", attn: str = "sdpa", seed: int = 0) -> None:
        super().__init__(device, model=model, arch=arch, random_weights=random_weights, dtype=dtype,
                         static=False, attn=attn, seed=seed)
        self.name = "hf-graph"
        self.use_graphs = device.startswith("cuda")
        self._states: dict[int, DecodeState] = {}  # by batch size, least recently used first
        # capture failures by batch size; the same dict sits in load()'s facts, so the manifest shows them
        self.graph_failures: dict[str, str] = {}
        self.dropped = 0  # caches dropped to make room for another batch size's
        self.last_ids = None  # (batch, n_in + n_out) device ids of the last run: prompt then output

    def _engine_facts(self) -> dict:
        return {
            "decode": {"loop": "one prefill forward, then n_out - 1 greedy (argmax) steps on the device; output "
                               "length forced (no EOS stop); no host sync between steps",
                       "cache": "transformers StaticCache per batch size, the longest n_in + n_out of that "
                                "batch size in the plan (grown if a shape needs more)",
                       "cuda_graph": "one captured decode step per batch size, replayed every step"
                       if self.use_graphs else "none: eager steps (not a CUDA device)"},
            "graph_capture_failures": self.graph_failures,
        }

    # ---- per batch size state ---------------------------------------------------------------------
    def needs_warmup(self, n_in: int, n_out: int, batch: int) -> bool:
        st = self._states.get(batch)
        return st is None or st.cache_len < n_in + n_out or st.runs == 0

    def _state(self, batch: int, need: int) -> DecodeState:
        """This batch size's state with room for `need` positions: made (and captured) on first use or
        when a shape needs a longer cache; otherwise reused as it is."""
        st = self._states.pop(batch, None)
        if st is not None and st.cache_len >= need:
            self._states[batch] = st  # most recently used last
            return st
        if st is not None:
            st.release()
        length = max(self._cache_len.get(batch, 0), need)
        self._cache_len[batch] = length
        self._make_room(batch, length)
        st = DecodeState(self.torch, self.model, batch, length, self.device)
        if self.use_graphs:
            self._capture(st)
        self._states[batch] = st
        return st

    def _capture(self, st: DecodeState) -> None:
        try:
            st.graph = capture(st.step, st.reset, self.device)
        except Exception as e:  # noqa: BLE001 - any failure falls back to eager steps, recorded
            st.graph = None
            st.graph_error = f"{type(e).__name__}: {e}"[:500]
            self.graph_failures[f"batch {st.batch}"] = st.graph_error
            print(f"hf-graph: CUDA graph capture failed at batch {st.batch}; decoding eagerly ({st.graph_error})",
                  file=sys.stderr, flush=True)
            self.torch.cuda.synchronize()
        st.reset()

    def _make_room(self, batch: int, length: int) -> None:
        """On CUDA, drop other batch sizes' caches (least recently used first) while free memory is short of
        the new cache; they are rebuilt, and recaptured, when next used (needs_warmup says so)."""
        if not self.device.startswith("cuda") or not self._states:
            return
        torch = self.torch
        need = room_needed(self.cfg, batch, length, torch.finfo(self.model.dtype).bits // 8)
        while self._states and torch.cuda.mem_get_info(self.device)[0] < need:
            old = next(iter(self._states))
            self._states.pop(old).release()
            self.dropped += 1
            torch.cuda.empty_cache()

    # ---- running ----------------------------------------------------------------------------------
    def run(self, n_in: int, n_out: int, batch: int, seed: int,
            on_start: Callable[[], None], on_first_token: Callable[[], None]) -> Timing:
        if n_in < 1 or n_out < 1:
            raise ValueError(f"hf-graph needs n_in >= 1 and n_out >= 1 (got {n_in}, {n_out})")
        torch = self.torch
        ids = self.prompt(n_in, batch, seed)
        with torch.no_grad():  # also around a capture: no autograd state may be recorded into a graph
            st = self._state(batch, n_in + n_out)
            st.load(ids)
            self.sync()
            on_start()
            t0 = time.perf_counter()
            st.prefill(ids)
            self.sync()
            t_first = time.perf_counter()
            on_first_token()
            for _ in range(n_out - 1):
                st.advance()
            self.sync()
            t1 = time.perf_counter()
        st.runs += 1
        self.last_ids = st.seq[:, :n_in + n_out]
        produced = int(st.pos[0, 0]) - n_in + 1  # the steps that really ran (read after the timed region)
        extra: dict = {"cache_len": st.cache_len, "graph": st.graph is not None}
        if st.graph_error:
            extra["graph_error"] = st.graph_error
        if self.dropped:
            extra["caches_dropped"] = self.dropped
        if self.device.startswith("cuda"):
            extra["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
        return Timing(runtime_s=t1 - t0, ttft_s=t_first - t0, gen_tokens=produced, extra=extra)

    def close(self) -> None:
        for st in self._states.values():
            st.release()
        self._states.clear()
        self.last_ids = None
        super().close()
