"""Greedy decoding over a static KV cache with fixed buffers, so that one decode step is the same kernels on
the same memory every time (what a CUDA graph needs) and never waits on the host.

One `DecodeState` per batch size holds a transformers StaticCache and three device buffers: `tok` (the token
each sequence feeds the next step), `pos` (its position) and `seq` (prompt and generated ids at their
positions). A step runs the model on `tok` at `pos`, takes the argmax of the logits, writes it into `seq` and
`tok`, and advances `pos`, all on the device.

Masking: the model builds its own causal mask from the cache. A StaticCache keeps the count of written
positions in a device tensor that every write advances in place, and transformers' mask for such a cache
covers the cache's full length with query positions offset by that count, so positions not yet written are
masked, on the device (the same path `generate` takes with a static cache). Position ids are passed
explicitly, as `generate` passes them (0..n_in-1 for the prompt, then one per step).
"""

from __future__ import annotations

import inspect
from typing import Any


def cache_keyword(model: Any) -> str:
    """The name the model's forward takes its KV cache under: `cache` in newer transformers (which deprecate
    `past_key_values` for removal in 5.40), `past_key_values` before the rename."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class DecodeState:
    """The static cache and fixed buffers of one batch size; `step` is one greedy decode step."""

    def __init__(self, torch: Any, model: Any, batch: int, cache_len: int, device: str) -> None:
        from transformers import StaticCache

        self.torch, self.model, self.batch, self.device = torch, model, batch, device
        self.cache_len = max(int(cache_len), 2)
        self.cache = StaticCache(config=model.config, max_cache_len=self.cache_len)
        self._kv = {cache_keyword(model): self.cache}
        self.tok = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.seq = torch.zeros((batch, self.cache_len), dtype=torch.long, device=device)
        self.graph: Any = None  # torch.cuda.CUDAGraph of one `step`, once captured
        self.graph_error: str | None = None
        self.runs = 0
        self._prefill_pos: Any = None
        with torch.no_grad():  # one step allocates the cache's tensors (they are made on the first write)
            self.step()
            self.reset()

    def reset(self) -> None:
        """Empty the cache in place (its tensors keep their addresses, which a captured graph holds)."""
        self.cache.reset()
        self.tok.zero_()
        self.pos.zero_()

    def step(self) -> None:
        """One decode step on the device: model(tok at pos) -> argmax -> seq[pos + 1] and tok; pos += 1."""
        logits = self.model(input_ids=self.tok, position_ids=self.pos, use_cache=True, **self._kv).logits
        nxt = logits[:, -1, :].argmax(-1, keepdim=True)
        self.seq.scatter_(1, self.pos + 1, nxt)
        self.tok.copy_(nxt)
        self.pos.add_(1)

    def load(self, ids: Any) -> None:
        """Untimed set-up of a run: empty cache, the prompt into `seq`, the first decode position."""
        n_in = int(ids.shape[1])
        self.reset()
        self.seq[:, :n_in].copy_(ids)
        self.pos.fill_(n_in)
        self._prefill_pos = self.torch.arange(n_in, device=self.device).unsqueeze(0).expand(self.batch, -1)

    def prefill(self, ids: Any) -> None:
        """One forward over the prompts into the cache; the argmax of the last logits is the first token."""
        n_in = int(ids.shape[1])
        logits = self.model(input_ids=ids, position_ids=self._prefill_pos, use_cache=True,
                            logits_to_keep=1, **self._kv).logits
        first = logits[:, -1, :].argmax(-1, keepdim=True)
        self.tok.copy_(first)
        self.seq[:, n_in:n_in + 1].copy_(first)

    def advance(self) -> None:
        """The next decode step: a replay of the captured graph, else the eager step."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step()

    def release(self) -> None:
        """Drop the graph and the cache so their device memory can be freed."""
        self.graph = None
        self.cache = None
        self.tok = self.pos = self.seq = self._prefill_pos = None
