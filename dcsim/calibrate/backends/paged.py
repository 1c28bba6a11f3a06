"""`paged`: an iteration-level engine for Llama-architecture models over a paged KV cache, in process, the way
vLLM's v1 engine serves (block tables, chunked prefill, decode steps replayed as CUDA graphs of a list of batch
sizes). The weights are those of the transformers model HFBackend builds; the forward is our own.

- Weights: the transformers model's modules (embedding, per-layer RMSNorms, q/k/v/o projections, MLP, final norm,
  lm_head) and its rotary module for cos/sin (so rope scaling is the model's). Greedy (argmax) tokens.
- KV cache: per layer K and V of shape [num_blocks, block_size, kv_heads, head_dim] (block_size 16 by default).
  Each sequence holds a block table (block ids, in order) and a length; a free-list allocator hands out blocks.
  Block 0 is a scratch block that padding rows of a decode batch write to and read from.
- Decode: one token per sequence, attention over each sequence's live blocks only (`paged_attention`: a Triton
  kernel on CUDA, a torch gather elsewhere). On CUDA each decode batch is padded up to the next of
  `graph_sizes` (default: vLLM 0.11's capture sizes 1, 2, 4, 8, 16, 24, ..., 248, 256, 272, ..., up to the
  largest batch asked for) and runs as the replay of the CUDA graph captured for that size; the inputs (tokens,
  positions, block tables) are persistent device buffers written in place before each replay; padding rows
  point at the scratch block with length 1 and their outputs are discarded. Elsewhere the same step runs
  eagerly.
- Prefill: one forward over one or more chunks (sequence, start position, tokens), each attending causally
  over its sequence's cached prefix plus itself, writing its K/V into its blocks. Eager (no graph).
- A step with prefill chunks (`step`) is one forward over the step's decode tokens and chunk tokens together, as
  vLLM's v1 model runner runs a mixed batch: the weights are read once. On CUDA it runs as piecewise CUDA graphs,
  as vLLM's piecewise mode does: the step's tokens padded up to the next of `piece_sizes` (vLLM 0.11's capture
  sizes up to 512, then every 128 up to PIECE_MAX; padding tokens write to the scratch block), one graph per
  span between attentions (embedding and layer 0's projections; each layer's output projection, MLP and the
  next layer's projections; the last layer's MLP), and attention run eagerly between them: the decodes by the
  paged kernel, each group of equal chunks by scaled-dot-product attention. Approximations against vLLM: it
  runs steps above 512 tokens compiled without graphs, where here they are graphs padded to the next 128
  tokens (we have no compiler; the host's cost stays near a graph's, the device computes up to 127 padding
  tokens); and its attention is one varlen kernel for the whole batch, here one call per group of chunks.
  Above PIECE_MAX tokens the same forward runs eagerly. `mixed="split"` keeps the earlier form (the padded
  decode graph, then an eager prefill forward of the chunks: the weights read twice, the eager forward paced
  by the host at about 22 ms), which the calibrations and replays recorded before 2026-12-04 ran.
- Prefix caching (`prefix_caching`, as vLLM's v1 KV cache manager does it): a full block is keyed by the chain of
  the sequence's full blocks' token ids (the previous block's hash and this block's ids), registered in the
  cache when the caller commits it (`commit`, at scheduling, as vLLM caches at allocation), and shared by
  reference count: a new sequence whose tokens start with cached full blocks (`match`, at most up to the token
  before its last, which is always computed) points its block table at them (`add(sid, blocks)`) and prefills
  only the rest. Only full blocks are shared, and a sequence writes only at or after its shared blocks, so no
  two sequences write one block. A cached block that no sequence references waits in an LRU list (a freed
  sequence's tail block first) and is evicted, its key dropped, only when the free list is empty.
- Not done: sampling other than greedy, tensor parallelism.
"""

from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dcsim.calibrate.backends import paged_attention as PA
from dcsim.calibrate.backends.base import Timing
from dcsim.calibrate.backends.cudagraph import capture
from dcsim.calibrate.backends.hf import HFBackend
from dcsim.errors import UserError

BLOCK_SIZE = 16
FILL_TOKENS = 2048  # the forward whose K/V fill the cache (kv_data "model")
# what the KV cache holds where no step of the sequence wrote it: the engines' contents, by name
KV_DATA = {"model": f"every block holds K/V of a real forward ({FILL_TOKENS:,} tokens' blocks tiled over the cache), "
                    "as a server's sequences hold",
           "zeros": "zeros where no step wrote (the cache as allocated; the calibrations before 2026-12-05)"}
PIECE_MAX = 2048  # the largest fused step run as piecewise graphs (tokens, padded); vLLM's default budget is 2,048


def default_graph_sizes(max_batch: int) -> list[int]:
    """vLLM 0.11's default CUDA-graph capture sizes (1, 2, 4, then every 8 to 256, then every 16 to 512), cut to
    those below `max_batch` plus the first that holds it (max_batch itself above 512)."""
    full = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, 513, 16))
    out = [s for s in full if s < max_batch]
    out.append(next((s for s in full if s >= max_batch), max_batch))
    return out


def default_piece_sizes(largest: int = PIECE_MAX) -> list[int]:
    """Token counts a fused step is padded to for its piecewise graphs: vLLM 0.11's capture sizes up to 512 (1, 2,
    4, every 8 to 256, every 16 to 512), then every 128 up to `largest`."""
    full = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, 513, 16)) + list(range(640, largest + 1, 128))
    return [s for s in full if s <= largest]


@dataclass
class FusedBuffers:
    """Persistent device buffers of a fused step's `rows` token rows (a piecewise graph reads and writes the same
    memory at every replay): token ids, positions, KV slots, the residual stream, rotary cos/sin, this layer's
    queries, keys and values, and the attention output."""

    ids: Any
    pos: Any
    slot: Any
    x: Any
    cos: Any
    sin: Any
    q: Any
    k: Any
    v: Any
    o: Any

    @classmethod
    def make(cls, torch: Any, rows: int, hidden: int, heads: int, kv_heads: int, head_dim: int, dtype: Any,
             device: str) -> "FusedBuffers":
        z = torch.zeros
        return cls(ids=z(rows, dtype=torch.long, device=device), pos=z(rows, dtype=torch.long, device=device),
                   slot=z(rows, dtype=torch.long, device=device), x=z(rows, hidden, dtype=dtype, device=device),
                   cos=z(rows, head_dim, dtype=dtype, device=device), sin=z(rows, head_dim, dtype=dtype, device=device),
                   q=z(rows, heads, head_dim, dtype=dtype, device=device),
                   k=z(rows, kv_heads, head_dim, dtype=dtype, device=device),
                   v=z(rows, kv_heads, head_dim, dtype=dtype, device=device),
                   o=z(rows, heads, head_dim, dtype=dtype, device=device))


class BlockAllocator:
    """KV block ids with reference counts and a prefix cache; `reserved` ids at the start (the scratch block) are
    never handed out.

    A block is on the free list (no reference, no key), referenced by sequences (`ref`), or cached: a full block
    registered under its key (its parent's hash and its token ids). A cached block that nothing references sits
    in `lru` (least recently freed first) and still counts as free; `alloc` takes it, dropping its key, only when
    the free list is empty."""

    def __init__(self, num_blocks: int, reserved: int = 1) -> None:
        if num_blocks <= reserved:
            raise ValueError(f"need more than {reserved} blocks, got {num_blocks}")
        self.num_blocks, self.reserved = num_blocks, reserved
        self.reset()

    @property
    def free(self) -> int:
        """Blocks that can be allocated now: the free list and the cached blocks nothing references."""
        return len(self.free_ids) + len(self.lru)

    @property
    def capacity(self) -> int:
        return self.num_blocks - self.reserved

    @property
    def cached(self) -> int:
        """Blocks registered in the prefix cache (referenced or not)."""
        return len(self.table)

    def alloc(self) -> int | None:
        """One block id (referenced once), or None when every block is in use; evicts the least recently freed
        cached block when the free list is empty."""
        if self.free_ids:
            b = self.free_ids.pop()
        elif self.lru:
            b, _ = self.lru.popitem(last=False)
            del self.table[self.key[b]]
            self.key[b] = self.hash[b] = None
            self.evicted += 1
        else:
            return None
        self.ref[b] = 1
        return b

    def share(self, b: int) -> None:
        """One more reference to cached block `b` (out of the LRU list if nothing referenced it)."""
        if self.key[b] is None:
            raise ValueError(f"block {b} is not cached; only cached full blocks are shared")
        if self.ref[b] == 0:
            del self.lru[b]
        self.ref[b] += 1

    def release(self, ids: list[int]) -> None:
        """Drop one reference to each block; one nothing references goes to the LRU list if cached (the last of
        `ids` first, so a sequence's tail is evicted before its head), else to the free list."""
        for b in reversed(ids):
            if self.ref[b] <= 0:
                raise RuntimeError(f"block {b} released more often than referenced")
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if self.key[b] is not None:
                    self.lru[b] = None
                else:
                    self.free_ids.append(b)

    def register(self, b: int, key: tuple, h: int) -> None:
        """Cache full block `b` under `key` (hash `h`); a key already cached keeps its block (`b` stays private)."""
        if self.key[b] is None and key not in self.table:
            self.table[key] = b
            self.key[b], self.hash[b] = key, h

    def evictable(self, ids: list[int]) -> int:
        """How many of `ids` are cached blocks nothing references (sharing them takes them off the free count)."""
        return sum(1 for b in ids if self.ref[b] == 0)

    def reset(self) -> None:
        """Every block free, nothing cached."""
        n = self.num_blocks
        self.free_ids = list(range(n - 1, self.reserved - 1, -1))  # pop() hands out the lowest first
        self.ref = [0] * n
        self.key: list[tuple | None] = [None] * n
        self.hash: list[int | None] = [None] * n
        self.table: dict[tuple, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.evicted = 0


@dataclass
class Sequence:
    """A sequence in the cache: its block table, how many of its tokens have K/V written (`length`), how many of
    its leading blocks it took from the prefix cache (`shared`), and the hashes of its full blocks so far."""

    sid: int
    blocks: list[int] = field(default_factory=list)
    length: int = 0
    shared: int = 0
    hashes: list[int] = field(default_factory=list)


def _rope(x: Any, cos: Any, sin: Any) -> Any:
    """Rotary embedding as transformers' Llama applies it: x * cos + rotate_half(x) * sin; x [T, heads, D]."""
    import torch

    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


class PagedEngine:
    """The paged KV cache, its allocator, the persistent decode buffers and one captured graph per batch size."""

    def __init__(self, torch: Any, model: Any, device: str, num_blocks: int, block_size: int = BLOCK_SIZE,
                 max_batch: int = 256, max_model_len: int = 4096, graph_sizes: list[int] | None = None,
                 use_graphs: bool | None = None, attention: str | None = None, prefix_caching: bool = False,
                 mixed: str = "fused", piece_sizes: list[int] | None = None) -> None:
        if mixed not in ("fused", "split"):
            raise ValueError(f"mixed step must be 'fused' or 'split', got {mixed!r}")
        self.torch, self.model, self.device = torch, model, device
        self.mixed = mixed
        self.prefix_caching = bool(prefix_caching)
        cfg = model.config
        inner = model.model
        self.embed, self.norm, self.rotary = inner.embed_tokens, inner.norm, inner.rotary_emb
        self.lm_head = model.lm_head
        self.layers = list(inner.layers)
        a0 = self.layers[0].self_attn
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(a0.head_dim)
        self.scale = float(a0.scaling)
        self.block_size = int(block_size)
        self.sizes = sorted(set(graph_sizes or default_graph_sizes(max_batch)))
        self.max_batch = max(max_batch, self.sizes[-1])
        self.max_model_len = int(max_model_len)
        self.max_blocks = math.ceil(self.max_model_len / self.block_size)
        cuda = device.startswith("cuda")
        if cuda and hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            # cuDNN's attention builds an execution plan for every new sequence length, which a server's prefills
            # (a new prompt length almost every step) would pay again and again; the flash and memory-efficient
            # kernels have no such per-shape cost. Set for this process, which the engine owns.
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.use_graphs = cuda if use_graphs is None else use_graphs
        self.attention = attention or ("triton" if cuda and PA.triton_available() else "torch")
        dt = model.dtype
        shape = (int(num_blocks), self.block_size, self.kv_heads, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dt, device=device) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=dt, device=device) for _ in self.layers]
        self.alloc = BlockAllocator(int(num_blocks), reserved=1)
        mb = self.max_batch
        self.tok = torch.zeros(mb, dtype=torch.long, device=device)
        self.pos = torch.zeros(mb, dtype=torch.long, device=device)
        self.live = torch.zeros(mb, dtype=torch.long, device=device)  # 1 for real rows: their position advances
        self.bt = torch.zeros((mb, self.max_blocks), dtype=torch.int32, device=device)
        self.hist = torch.zeros((mb, self.max_model_len + 1), dtype=torch.long, device=device)
        self._bt_host = np.zeros((mb, self.max_blocks), dtype=np.int32)
        self._host_blocks = self.max_blocks  # eager torch attention: blocks to gather this step
        self.graphs: dict[int, Any] = {}
        self.graph_errors: dict[str, str] = {}
        self._pool: Any = None
        self.seqs: dict[int, Sequence] = {}
        self.hidden = int(cfg.hidden_size)
        self.piece_sizes = sorted(set(piece_sizes or default_piece_sizes()))
        self.pieces: dict[int, list[Any]] = {}  # padded token count -> its graphs, one per span between attentions
        self.fused_bufs: FusedBuffers | None = None  # sized for the largest piece size (allocated at first use)
        self.lens = torch.zeros(mb, dtype=torch.int32, device=device)  # a fused step's decode lengths

    # ---- blocks -----------------------------------------------------------------------------------
    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def add(self, sid: int, cached: list[int] | None = None) -> Sequence:
        """A new sequence; `cached`: the cached full blocks its tokens start with (`match`), which it shares: its
        length starts after them."""
        s = self.seqs[sid] = Sequence(sid)
        for b in cached or ():
            self.alloc.share(b)
            s.blocks.append(b)
            s.hashes.append(self.alloc.hash[b])
        s.shared = len(s.blocks)
        s.length = s.shared * self.block_size
        return s

    def _key(self, parent: int | None, tokens: list[int], i: int) -> tuple:
        bs = self.block_size
        return (parent, tuple(int(t) for t in tokens[i * bs:(i + 1) * bs]))

    def match(self, tokens: list[int]) -> list[int]:
        """The cached full blocks that `tokens` start with, in order, leaving at least the last token to compute
        (at most floor((len - 1) / block_size) blocks); [] without prefix caching. References nothing."""
        if not self.prefix_caching:
            return []
        out: list[int] = []
        parent = None
        table = self.alloc.table
        for i in range((len(tokens) - 1) // self.block_size):
            key = self._key(parent, tokens, i)
            b = table.get(key)
            if b is None:
                break
            out.append(b)
            parent = self.alloc.hash[b]
        return out

    def commit(self, seq: Sequence, tokens: list[int], upto: int) -> None:
        """Register in the prefix cache the full blocks among `seq`'s first `upto` tokens (`tokens` its token
        ids) not registered yet; called when the step that writes their K/V is scheduled, as vLLM caches blocks
        at allocation. No-op without prefix caching."""
        if not self.prefix_caching:
            return
        full = min(upto, len(tokens)) // self.block_size
        if full > len(seq.blocks):
            raise ValueError(f"sequence {seq.sid} holds {len(seq.blocks)} blocks, commits {full}")
        while len(seq.hashes) < full:
            i = len(seq.hashes)
            key = self._key(seq.hashes[-1] if seq.hashes else None, tokens, i)
            h = hash(key)
            seq.hashes.append(h)
            self.alloc.register(seq.blocks[i], key, h)

    def reserve(self, seq: Sequence, tokens: int) -> bool:
        """Give `seq` blocks for `tokens` tokens in all; False (nothing allocated) when too few are free."""
        need = self.blocks_for(tokens) - len(seq.blocks)
        if need <= 0:
            return True
        if need > self.alloc.free or self.blocks_for(tokens) > self.max_blocks:
            return False
        seq.blocks.extend(self.alloc.alloc() for _ in range(need))
        return True

    def free(self, seq: Sequence) -> None:
        """Drop a sequence's references to its blocks (its cached full blocks stay cached) and forget it."""
        self.alloc.release(seq.blocks)
        seq.blocks, seq.length, seq.shared, seq.hashes = [], 0, 0, []
        self.seqs.pop(seq.sid, None)

    def reset(self) -> None:
        """Forget every sequence and the prefix cache; every block free."""
        self.seqs.clear()
        self.alloc.reset()

    def fill_kv(self, ids: Any) -> int:
        """Write real K/V into every block of the cache: one prefill forward over `ids` (token ids on the device),
        its blocks then tiled over the whole cache, scratch block included. A step that reads KV its sequence never
        wrote (a calibration's decodes at a set context, a chunk after a set prefix) then reads a model's values,
        as a server's steps do, and not the zeros the cache is made of: reading and multiplying zeros draws less
        power (on an H200, 2.5% less at the median of the steps calibrate/probes/h200h-kv-data measured, up to 9%
        in a chunk after a long cached prefix). Leaves every block free;
        returns the blocks the forward wrote."""
        torch = self.torch
        n = min(int(ids.shape[0]), (self.alloc.free - 1) * self.block_size, self.max_model_len)
        if n < 1:
            return 0
        self.reset()
        s = self.add(-1)
        if not self.reserve(s, n):
            raise RuntimeError(f"no KV blocks for the {n}-token forward that fills the cache")
        with torch.no_grad():
            self.prefill([(s, ids[:n], 0)])
        full = n // self.block_size or 1  # whole blocks only (a forward shorter than a block: its one block)
        src = torch.tensor(s.blocks[:full], dtype=torch.long, device=self.k_cache[0].device)
        idx = src[torch.arange(self.alloc.num_blocks, device=src.device) % full]
        for cache in (*self.k_cache, *self.v_cache):
            cache.copy_(cache[idx])
        self.reset()
        return full

    # ---- decode -----------------------------------------------------------------------------------
    def graph_size(self, batch: int) -> int:
        """The captured batch size a decode batch of `batch` sequences is padded to (itself, run eagerly, above
        the largest captured size)."""
        for s in self.sizes:
            if s >= batch:
                return s
        if batch <= self.max_batch:  # above the captured sizes: eager and unpadded, as vLLM runs such batches
            return batch
        raise ValueError(f"decode batch {batch} exceeds the engine's {self.max_batch} rows")

    def _attend(self, q: Any, i: int, bt: Any, lens: Any) -> Any:
        if self.attention == "triton":
            return PA.decode_attention_triton(q, self.k_cache[i], self.v_cache[i], bt, lens, self.scale)
        mb = None if self.use_graphs else self._host_blocks
        return PA.decode_attention_torch(q, self.k_cache[i], self.v_cache[i], bt, lens, self.scale, mb)

    def _decode_step(self, g: int) -> None:
        """One greedy decode step of the first `g` rows of the buffers, all on the device: each row's token at its
        position, K/V written to its block, argmax into `tok` and `hist`, live rows' positions advanced."""
        torch = self.torch
        tok, pos, bt = self.tok[:g], self.pos[:g], self.bt[:g]
        bs, kvh, hd = self.block_size, self.kv_heads, self.head_dim
        x = self.embed(tok)
        cos, sin = self.rotary(x, pos[None, :])
        cos, sin = cos[0], sin[0]
        lens = (pos + 1).to(torch.int32)
        slot = bt.gather(1, (pos // bs)[:, None]).squeeze(1).long() * bs + pos % bs
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(g, self.heads, hd)
            k = a.k_proj(h).view(g, kvh, hd)
            v = a.v_proj(h).view(g, kvh, hd)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            self.k_cache[i].view(-1, kvh, hd).index_copy_(0, slot, k)
            self.v_cache[i].view(-1, kvh, hd).index_copy_(0, slot, v)
            o = self._attend(q, i, bt, lens)
            x = x + a.o_proj(o.reshape(g, self.heads * hd))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        nxt = self.lm_head(self.norm(x)).argmax(-1)
        self.hist[:g].scatter_(1, (pos + 1)[:, None], nxt[:, None])
        tok.copy_(nxt)
        pos.add_(self.live[:g])

    def _pad_rows(self, g: int) -> None:
        """Every row of the first `g` a padding row: token 0 at position 0 of the scratch block, not advancing."""
        self.tok[:g].zero_()
        self.pos[:g].zero_()
        self.live[:g].zero_()
        self.bt[:g].zero_()

    def ensure_graph(self, g: int) -> bool:
        """Capture the decode graph of size `g` if not done yet (CUDA only); False if capture failed (eager)."""
        if not self.use_graphs or g in self.graphs or g not in self.sizes:
            return g in self.graphs
        if str(g) in self.graph_errors:
            return False
        torch = self.torch
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            with torch.no_grad():
                self.graphs[g] = capture(lambda: self._decode_step(g), lambda: self._pad_rows(g), self.device,
                                         pool=self._pool)
        except Exception as e:  # noqa: BLE001 - fall back to eager steps, recorded
            self.graph_errors[str(g)] = f"{type(e).__name__}: {e}"[:500]
            print(f"paged: CUDA graph capture failed at batch {g}; decoding eagerly ({self.graph_errors[str(g)]})",
                  file=sys.stderr, flush=True)
            torch.cuda.synchronize()
        self._pad_rows(g)
        return g in self.graphs

    def _decode_tables(self, seqs: list[Sequence], rows: int) -> int:
        """Check that each decoding sequence has a block for its next token and writes none it shares, and write
        their whole block tables into the first `rows` rows of the device table (rows past them zero: the scratch
        block); returns the table width written."""
        if any(self.blocks_for(s.length + 1) > len(s.blocks) for s in seqs):
            raise ValueError("a sequence has no block reserved for its next token")
        if any(s.length < s.shared * self.block_size for s in seqs):
            raise ValueError("a sequence would write its next token into a shared cached block")
        width = max(max(len(s.blocks) for s in seqs), 1)  # every reserved block: on-device steps may advance
        host = self._bt_host
        host[:rows, :width] = 0
        for i, s in enumerate(seqs):
            host[i, :len(s.blocks)] = s.blocks
        self.bt[:rows, :width].copy_(self.torch.from_numpy(host[:rows, :width]), non_blocking=False)
        return width

    def load_rows(self, seqs: list[Sequence], tokens: Any) -> int:
        """Write the decode buffers for `seqs` (each feeding its token at position seq.length, blocks already
        reserved for it: its whole table is written, so steps advancing on the device may use every reserved
        block) and pad up to the graph size; returns that size. `tokens`: a device tensor or a list."""
        torch = self.torch
        b = len(seqs)
        g = self.graph_size(b)
        width = self._decode_tables(seqs, g)
        self.pos[:g].copy_(torch.tensor([s.length for s in seqs] + [0] * (g - b), dtype=torch.long))
        self.live[:g].copy_(torch.tensor([1] * b + [0] * (g - b), dtype=torch.long))
        if isinstance(tokens, torch.Tensor):
            self.tok[:b].copy_(tokens.reshape(-1))
        else:
            self.tok[:b].copy_(torch.tensor(list(tokens), dtype=torch.long))
        if g > b:
            self.tok[b:g].zero_()
        self._host_blocks = width
        return g

    def replay(self, g: int) -> None:
        """One decode step of the loaded rows: the graph's replay, else the eager step."""
        graph = self.graphs.get(g)
        if graph is not None:
            graph.replay()
        else:
            with self.torch.no_grad():
                self._decode_step(g)

    def decode(self, seqs: list[Sequence], tokens: Any) -> Any:
        """One decode step of `seqs` (blocks for their next token reserved): their next tokens, on the device.
        Each sequence's length grows by one."""
        if self.use_graphs:
            self.ensure_graph(self.graph_size(len(seqs)))  # a first capture pads the rows: load them after
        g = self.load_rows(seqs, tokens)
        self.replay(g)
        for s in seqs:
            s.length += 1
        return self.tok[:len(seqs)].clone()

    # ---- prefill ----------------------------------------------------------------------------------
    def _lay_out(self, chunks: list[tuple[Sequence, Any, int]], lens: list[int],
                 off: int) -> tuple[list[int], list[Any], list[Any], list[dict], list[int], int]:
        """The rows of a forward's prefill chunks from row `off` on, checked against their sequences' blocks: the
        chunk order (by start, then length), each chunk's positions and KV slots, the groups of equal (start,
        length) chunks that share one attention call, each chunk's last row, and the row after the last."""
        bs = self.block_size
        order = sorted(range(len(chunks)), key=lambda j: (chunks[j][2], lens[j]))
        positions, slots, groups, last = [], [], [], []
        for j in order:
            seq, _, start = chunks[j]
            n = lens[j]
            if len(seq.blocks) < self.blocks_for(start + n):
                raise ValueError(f"sequence {seq.sid} holds {len(seq.blocks)} blocks, needs "
                                 f"{self.blocks_for(start + n)}")
            if start > seq.length:
                raise ValueError(f"sequence {seq.sid} has {seq.length} tokens cached, chunk starts at {start}")
            if start < seq.shared * bs:  # a shared block is never written
                raise ValueError(f"sequence {seq.sid} shares {seq.shared} cached blocks; a chunk at {start} would "
                                 "write into one")
            p = np.arange(start, start + n)
            positions.append(p)
            slots.append(np.asarray(seq.blocks, dtype=np.int64)[p // bs] * bs + p % bs)
            if groups and groups[-1]["key"] == (start, n):
                groups[-1]["seqs"].append(seq)
                groups[-1]["m"] += 1
            else:
                groups.append({"key": (start, n), "off": off, "m": 1, "seqs": [seq]})
            off += n
            last.append(off - 1)
        return order, positions, slots, groups, last, off

    def _group_tables(self, groups: list[dict]) -> None:
        """Each group of chunks after cached tokens gets the device block table its attention gathers through."""
        for gr in groups:
            start, n = gr["key"]
            if start:
                nb = self.blocks_for(start + n)
                gr["bt"] = self.torch.tensor([s.blocks[:nb] for s in gr["seqs"]], dtype=self.torch.long,
                                             device=self.device)

    def _chunk_attention(self, i: int, q: Any, k: Any, v: Any, groups: list[dict]) -> list[tuple[int, int, Any]]:
        """Layer i's causal attention of each group of equal chunks (q, k, v: the forward's rows), over the cached
        prefix gathered from the blocks where the chunks start after one: (first row, rows, output [rows, heads,
        head_dim]) per group."""
        kvh, hd = self.kv_heads, self.head_dim
        kc, vc = self.k_cache[i], self.v_cache[i]
        out = []
        for gr in groups:
            (start, n), o, m = gr["key"], gr["off"], gr["m"]
            qg = q[o:o + m * n].view(m, n, self.heads, hd)
            if start == 0:
                kg, vg = k[o:o + m * n].view(m, n, kvh, hd), v[o:o + m * n].view(m, n, kvh, hd)
            else:
                kg = PA.gather_blocks(kc, gr["bt"], gr["bt"].shape[1])[:, :start + n]
                vg = PA.gather_blocks(vc, gr["bt"], gr["bt"].shape[1])[:, :start + n]
            out.append((o, m * n, PA.prefill_attention(qg, kg, vg, start, self.scale).reshape(m * n, self.heads, hd)))
        return out

    def prefill(self, chunks: list[tuple[Sequence, Any, int]]) -> Any:
        """One forward over prefill chunks (sequence, token ids [n] on the device, start position): each attends
        causally over its sequence's tokens 0..start+n-1 (the first `start` already cached), and writes its K/V
        into the sequence's blocks (reserved by the caller). Returns each chunk's greedy next token (device
        tensor, chunk order); each sequence's length becomes start + n."""
        torch = self.torch
        kvh, hd = self.kv_heads, self.head_dim
        order, positions, slots, groups, last, _ = self._lay_out(chunks, [int(c[1].shape[0]) for c in chunks], 0)
        ids = [chunks[j][1].reshape(-1) for j in order]
        dev = self.device
        x = self.embed(torch.cat(ids).to(dev))
        pos_t = torch.from_numpy(np.concatenate(positions)).to(dev)
        slot_t = torch.from_numpy(np.concatenate(slots)).to(dev)
        cos, sin = self.rotary(x, pos_t[None, :])
        cos, sin = cos[0], sin[0]
        self._group_tables(groups)
        t = x.shape[0]
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = _rope(a.q_proj(h).view(t, self.heads, hd), cos, sin)
            k = _rope(a.k_proj(h).view(t, kvh, hd), cos, sin)
            v = a.v_proj(h).view(t, kvh, hd)
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc.view(-1, kvh, hd).index_copy_(0, slot_t, k)
            vc.view(-1, kvh, hd).index_copy_(0, slot_t, v)
            outs = [out.reshape(rows, self.heads * hd) for _, rows, out in self._chunk_attention(i, q, k, v, groups)]
            o = outs[0] if len(outs) == 1 else torch.cat(outs)
            x = x + a.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        nxt = self.lm_head(self.norm(x[torch.tensor(last, device=dev)])).argmax(-1)
        for j in order:
            seq, tk, start = chunks[j]
            seq.length = start + int(tk.shape[0])
        back = torch.empty_like(nxt)
        back[torch.tensor(order, device=dev)] = nxt
        return back

    # ---- one step: decodes and prefill chunks in one forward --------------------------------------
    def step(self, decodes: list[Sequence], tokens: Any, chunks: list[tuple[Sequence, Any, int]]) -> tuple[Any, Any]:
        """One serving step: a decode token for each of `decodes` (their next tokens `tokens`, a device tensor or
        a list) and the prefill `chunks` (sequence, token ids as a device tensor or a list, start position), as
        `decode` and `prefill` define them. Returns (decode tokens, chunk tokens), device tensors in the given
        order, None for an empty part. Decodes alone run their padded graph; with chunks, one fused forward
        (`mixed="fused"`) or the decode graph then the prefill forward (`mixed="split"`)."""
        if not chunks:
            return (self.decode(decodes, tokens) if decodes else None), None
        if self.mixed == "split":
            d = self.decode(decodes, tokens) if decodes else None
            dev = self.device
            return d, self.prefill([(s, x if isinstance(x, self.torch.Tensor) else
                                     self.torch.tensor(list(x), dtype=self.torch.long, device=dev), st)
                                    for s, x, st in chunks])
        return self._fused(decodes, tokens, chunks)

    def piece_size(self, tokens: int) -> int | None:
        """The padded token count a fused step of `tokens` tokens runs its piecewise graphs at, None (eager,
        unpadded) above the largest piece size or without graphs."""
        if not self.use_graphs:
            return None
        for s in self.piece_sizes:
            if s >= tokens:
                return s
        return None

    def _bufs(self, rows: int) -> FusedBuffers:
        """The persistent fused buffers (rows up to the largest piece size), or fresh ones for a larger eager step."""
        top = self.piece_sizes[-1]
        if rows > top:
            return FusedBuffers.make(self.torch, rows, self.hidden, self.heads, self.kv_heads, self.head_dim,
                                     self.model.dtype, self.device)
        if self.fused_bufs is None:
            self.fused_bufs = FusedBuffers.make(self.torch, top, self.hidden, self.heads, self.kv_heads,
                                                self.head_dim, self.model.dtype, self.device)
        return self.fused_bufs

    def _piece(self, f: FusedBuffers, j: int, t: int) -> None:
        """Span j of a fused forward over the first t rows of `f`: j = 0 the embedding and rotary cos/sin, else
        layer j-1's output projection and MLP; then, below the last layer, layer j's norm, q/k/v projections and
        rotary embedding, its K/V written to the cache slots, q/k/v into the buffers."""
        if j == 0:
            x = self.embed(f.ids[:t])
            cos, sin = self.rotary(x, f.pos[:t][None, :])
            f.cos[:t].copy_(cos[0])
            f.sin[:t].copy_(sin[0])
            f.x[:t].copy_(x)
        else:
            layer = self.layers[j - 1]
            x = f.x[:t] + layer.self_attn.o_proj(f.o[:t].reshape(t, self.heads * self.head_dim))
            f.x[:t].copy_(x + layer.mlp(layer.post_attention_layernorm(x)))
        if j == len(self.layers):
            return
        layer = self.layers[j]
        a, kvh, hd = layer.self_attn, self.kv_heads, self.head_dim
        h = layer.input_layernorm(f.x[:t])
        cos, sin = f.cos[:t], f.sin[:t]
        f.q[:t].copy_(_rope(a.q_proj(h).view(t, self.heads, hd), cos, sin))
        f.k[:t].copy_(_rope(a.k_proj(h).view(t, kvh, hd), cos, sin))
        f.v[:t].copy_(a.v_proj(h).view(t, kvh, hd))
        self.k_cache[j].view(-1, kvh, hd).index_copy_(0, f.slot[:t], f.k[:t])
        self.v_cache[j].view(-1, kvh, hd).index_copy_(0, f.slot[:t], f.v[:t])

    def ensure_pieces(self, t: int) -> bool:
        """Capture the piecewise graphs of padded size `t` if not done yet (CUDA only); False if capture failed
        (that size then runs eagerly, recorded in graph_errors)."""
        if t in self.pieces:
            return True
        key = f"fused-{t}"
        if not self.use_graphs or key in self.graph_errors or t not in self.piece_sizes:
            return False
        torch = self.torch
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        f = self._bufs(t)

        def scratch() -> None:  # every row token 0 at position 0, writing to the scratch block
            f.ids[:t].zero_()
            f.pos[:t].zero_()
            f.slot[:t].zero_()

        try:
            with torch.no_grad():
                self.pieces[t] = [capture(lambda j=j: self._piece(f, j, t), scratch, self.device, warmup=1,
                                          pool=self._pool) for j in range(len(self.layers) + 1)]
        except Exception as e:  # noqa: BLE001 - fall back to eager fused steps, recorded
            self.graph_errors[key] = f"{type(e).__name__}: {e}"[:500]
            print(f"paged: piecewise graph capture failed at {t} tokens; that size runs eagerly "
                  f"({self.graph_errors[key]})", file=sys.stderr, flush=True)
            torch.cuda.synchronize()
        scratch()
        return t in self.pieces

    def _fused(self, decodes: list[Sequence], tokens: Any, chunks: list[tuple[Sequence, Any, int]]) -> tuple[Any, Any]:
        """One forward over `decodes`' next tokens (rows 0..B-1) and the chunks' tokens (after, grouped by start
        and length as `prefill` groups them), padded to a piece size where graphs are captured."""
        torch, bs, dev = self.torch, self.block_size, self.device
        b = len(decodes)
        width = self._decode_tables(decodes, b) if b else 0
        lens_of = [int(x.shape[0]) if isinstance(x, torch.Tensor) else len(x) for _, x, _ in chunks]
        order, chunk_pos, chunk_slots, groups, last, off = self._lay_out(chunks, lens_of, b)
        pos = [np.asarray([s.length for s in decodes], dtype=np.int64)] + chunk_pos
        slots = [np.asarray([s.blocks[s.length // bs] * bs + s.length % bs for s in decodes], dtype=np.int64)]
        slots += chunk_slots
        ids: list[Any] = ([tokens] if b else []) + [chunks[j][1] for j in order]
        t = off
        tp = self.piece_size(t)
        graphs = tp is not None and self.ensure_pieces(tp)
        rows = tp if graphs else t
        f = self._bufs(rows)
        pad = rows - t
        zeros = [np.zeros(pad, np.int64)]
        pos_h, slot_h = np.concatenate(pos + zeros), np.concatenate(slots + zeros)
        if all(not isinstance(x, torch.Tensor) for x in ids):  # host lists: one copy to the device
            f.ids[:rows].copy_(torch.from_numpy(np.concatenate([np.asarray(list(x), dtype=np.int64) for x in ids]
                                                               + zeros)))
        else:
            f.ids[:t].copy_(torch.cat([x.reshape(-1).to(dev) if isinstance(x, torch.Tensor) else
                                       torch.tensor(list(x), dtype=torch.long, device=dev) for x in ids]))
            f.ids[t:rows].zero_()
        f.pos[:rows].copy_(torch.from_numpy(pos_h))
        f.slot[:rows].copy_(torch.from_numpy(slot_h))
        if b:
            self.lens[:b].copy_(torch.from_numpy(pos[0] + 1))
            self._host_blocks = width
            bt, lens = self.bt[:b, :width], self.lens[:b]
        self._group_tables(groups)
        pieces = self.pieces.get(rows) if graphs else None
        for j in range(len(self.layers) + 1):
            if pieces is not None:
                pieces[j].replay()
            else:
                self._piece(f, j, rows)
            if j == len(self.layers):
                break
            if b:
                f.o[:b].copy_(self._attend(f.q[:b], j, bt, lens))
            for o, n_rows, out in self._chunk_attention(j, f.q, f.k, f.v, groups):
                f.o[o:o + n_rows].copy_(out)
        idx = torch.from_numpy(np.asarray(list(range(b)) + last, dtype=np.int64)).to(dev)
        nxt = self.lm_head(self.norm(f.x[idx])).argmax(-1)
        for s in decodes:
            s.length += 1
        for j in order:
            seq, _, start = chunks[j]
            seq.length = start + lens_of[j]
        back = torch.empty_like(nxt[b:])
        back[torch.from_numpy(np.asarray(order, dtype=np.int64)).to(dev)] = nxt[b:]
        return (nxt[:b] if b else None), back

    def release(self) -> None:
        """Drop graphs and caches so their device memory can be freed."""
        self.graphs.clear()
        self.pieces.clear()
        self.fused_bufs = None
        self._pool = None
        self.k_cache = self.v_cache = []
        self.tok = self.pos = self.live = self.bt = self.hist = None


def spread_contexts(mean: int, batch: int, spread: float) -> list[int]:
    """`batch` decode contexts spread evenly over mean x (1 - spread) .. mean x (1 + spread), each at least 1,
    summing to batch x mean (the last takes the rounding)."""
    if batch <= 1 or spread <= 0:
        return [mean] * batch
    c = [max(1, round(mean * (1 + spread * (2 * i / (batch - 1) - 1)))) for i in range(batch)]
    c[-1] += batch * mean - sum(c)
    return c


class PagedBackend(HFBackend):
    """The `paged` engine as a calibration backend: request batches (prefill, then greedy decode steps over the
    live blocks) and mixed steps (`run_step`); `engine()` hands the replay server the same engine."""

    def __init__(self, device: str, model: str | None = None, arch: str | None = None, random_weights: bool = False,
                 dtype: str = "bf16", seed: int = 0, block_size: int = BLOCK_SIZE, kv_blocks: int | None = None,
                 graph_sizes: list[int] | None = None, mixed: str = "fused", kv_data: str = "model") -> None:
        super().__init__(device, model=model, arch=arch, random_weights=random_weights, dtype=dtype, static=False,
                         seed=seed)
        if mixed not in ("fused", "split"):
            raise UserError(f"the mixed step must be 'fused' or 'split', got {mixed!r}", None, "--mixed-step")
        if kv_data not in KV_DATA:
            raise UserError(f"the KV cache's contents must be one of {', '.join(KV_DATA)}, got {kv_data!r}", None,
                            "--kv-data")
        self.mixed = mixed
        self.kv_data = kv_data
        if block_size < 1:
            raise UserError(f"block size must be at least 1, got {block_size}", None, "--block-size")
        self.name = "paged"
        self.block_size = block_size
        self.kv_blocks = kv_blocks
        self.graph_sizes = graph_sizes
        self.use_graphs = device.startswith("cuda")
        self.eng: PagedEngine | None = None
        self._need = {"blocks": 1, "batch": 1, "len": 1}
        self.graph_failures: dict[str, str] = {}
        self.rebuilt = 0
        self.last_ids = None  # (batch, n_in + n_out) ids of the last run: prompt then output

    def _engine_facts(self) -> dict:
        attn = "triton" if self.use_graphs and PA.triton_available() else "torch"
        return {
            "decode": {"loop": "paged KV cache (block tables); one prefill forward over the prompts, then n_out - 1 "
                               "greedy (argmax) steps on the device, attention over each sequence's live blocks; "
                               "output length forced (no EOS stop); no host sync between steps",
                       "block_size": self.block_size,
                       "attention": {"triton": "Triton paged decode kernel (live blocks only)",
                                     "torch": "torch gather of the live blocks (eager)"}[attn],
                       "cuda_graph": "one captured decode step per padded batch size (vLLM 0.11's capture sizes)"
                       if self.use_graphs else "none: eager steps (not a CUDA device)",
                       "mixed_step": self.mixed,
                       "kv_data": self.kv_data,
                       "kv_data_form": KV_DATA[self.kv_data],
                       "mixed_step_form": (
                           "one forward over the decodes' and the chunks' tokens (the weights read once), as "
                           f"piecewise CUDA graphs padded to the next piece size up to {PIECE_MAX:,} tokens "
                           "(attention eager between them), eager above" if self.use_graphs else
                           "one eager forward over the decodes' and the chunks' tokens") if self.mixed == "fused" else
                       "the padded decode graph, then an eager prefill forward of the step's chunks (two forwards; "
                       "vLLM fuses them into one)"},
            "graph_capture_failures": self.graph_failures,
        }

    # ---- sizing -----------------------------------------------------------------------------------
    def _blocks(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def _grow(self, blocks: int, batch: int, length: int) -> None:
        n = self._need
        n["blocks"], n["batch"], n["len"] = max(n["blocks"], blocks), max(n["batch"], batch), max(n["len"], length)

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        for n_in, n_out, b in shapes:
            self._grow(b * self._blocks(n_in + n_out), b, n_in + n_out)

    def prepare_steps(self, steps: list[tuple[int, int, int, int]]) -> None:
        """Told every mixed step (decode batch, per-sequence context, chunk tokens, chunk prefix) of the plan."""
        for b, ctx, p, h in steps:
            self._grow(b * self._blocks(ctx) + self._blocks(h + p), max(b, 1), max(ctx, h + p))

    def engine(self, blocks: int = 1, batch: int = 1, length: int = 1) -> PagedEngine:
        """The engine, made (or remade, larger, dropping its graphs) so that it holds `blocks` KV blocks in use
        at once, decode batches of `batch` and sequences of `length` tokens; an explicit kv_blocks is kept."""
        self._grow(blocks, batch, length)
        n = self._need
        e = self.eng
        want_blocks = (self.kv_blocks or n["blocks"]) + 1  # + the scratch block
        if e is not None and e.alloc.num_blocks >= want_blocks and e.max_batch >= n["batch"] \
                and e.max_model_len >= n["len"]:
            return e
        if e is not None:
            e.release()
            self.eng = None
            self.rebuilt += 1
            if self.device.startswith("cuda"):
                self.torch.cuda.empty_cache()
        sizes = self.graph_sizes or default_graph_sizes(n["batch"])
        self.eng = PagedEngine(self.torch, self.model, self.device, want_blocks, self.block_size,
                               max_batch=max(n["batch"], max(sizes)), max_model_len=n["len"],
                               graph_sizes=[s for s in sizes if s <= max(n["batch"], max(sizes))],
                               use_graphs=self.use_graphs, mixed=self.mixed)
        self.eng.graph_errors = self.graph_failures
        if self.kv_data == "model":
            self.eng.fill_kv(self.prompt(min(FILL_TOKENS, self.eng.max_model_len), 1, self.seed + 7)[0])
        return self.eng

    def needs_warmup(self, n_in: int, n_out: int, batch: int) -> bool:
        e = self.eng
        if e is None or e.alloc.num_blocks - 1 < batch * self._blocks(n_in + n_out) or e.max_batch < batch \
                or e.max_model_len < n_in + n_out:
            return True
        return self.use_graphs and e.graph_size(batch) not in e.graphs and str(e.graph_size(batch)) not in \
            e.graph_errors

    # ---- running ----------------------------------------------------------------------------------
    def run(self, n_in: int, n_out: int, batch: int, seed: int,
            on_start: Callable[[], None], on_first_token: Callable[[], None]) -> Timing:
        if n_in < 1 or n_out < 1:
            raise ValueError(f"paged needs n_in >= 1 and n_out >= 1 (got {n_in}, {n_out})")
        torch = self.torch
        e = self.engine(batch * self._blocks(n_in + n_out), batch, n_in + n_out)
        ids = self.prompt(n_in, batch, seed)
        e.reset()
        seqs = [e.add(i) for i in range(batch)]
        for s in seqs:
            if not e.reserve(s, n_in + n_out):
                raise RuntimeError(f"no KV blocks for {batch} x {n_in + n_out} tokens ({e.alloc.capacity} blocks)")
        g = e.graph_size(batch)
        graph = e.ensure_graph(g)
        with torch.no_grad():
            self.sync()
            on_start()
            t0 = time.perf_counter()
            first = e.step([], None, [(s, ids[i], 0) for i, s in enumerate(seqs)])[1]
            self.sync()
            t_first = time.perf_counter()
            on_first_token()
            if n_out > 1:
                e.load_rows(seqs, first)
                for _ in range(n_out - 1):
                    e.replay(g)
            self.sync()
            t1 = time.perf_counter()
        produced = int(e.pos[0]) - n_in + 1 if n_out > 1 else 1  # the steps that really ran (after timing)
        for s in seqs:
            s.length += n_out - 1
        e.hist[:batch, :n_in].copy_(ids)
        e.hist[:batch, n_in].copy_(first)
        self.last_ids = e.hist[:batch, :n_in + n_out].clone()
        extra: dict = {"graph": graph, "graph_batch": g, "kv_blocks": e.alloc.capacity, "attention": e.attention}
        if self.rebuilt:
            extra["engine_rebuilt"] = self.rebuilt
        if self.device.startswith("cuda"):
            extra["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
        return Timing(runtime_s=t1 - t0, ttft_s=t_first - t0, gen_tokens=produced, extra=extra)

    def run_step(self, decode_batch: int, context: int, prefill_tokens: int, prefix: int, repeats: int, seed: int,
                 on_start: Callable[[], None], chunks: int = 1, spread: float = 0.0, served: bool = False) -> Timing:
        """`repeats` times the same step: one decode token for each of `decode_batch` sequences holding `context`
        KV tokens (the token's own included), and a prefill chunk of `prefill_tokens` tokens after `prefix`
        cached ones (`chunks` > 1: that many chunks of prefill_tokens, +1, ..., +chunks-1 tokens, each in its
        own sequence after its own `prefix` cached tokens: distinct lengths, as admissions' chunks are;
        `spread` > 0: the decodes' contexts spread evenly over context x (1 -/+ spread), the same total). The
        state is set up once (untimed, with one untimed step for first-time costs); each repeat resets the
        positions, so nothing grows. Timed from a device sync to a device sync around the repeats;
        `on_start` is called right before. extra["graph_batch"]: the padded decode batch (0 without decodes).
        `served`: each repeat is a server's step, as the paged replay runs one (validate/paged_replay.py): the
        decode rows loaded from the host (block tables, positions, tokens), the chunks' token ids sent from host
        lists, the step's tokens read back to the host, so every step ends in a device sync and the host's work
        between steps is not hidden behind the device's; otherwise the repeats are queued back to back."""
        b, ctx, p, h = decode_batch, context, prefill_tokens, prefix
        if (b < 0 or p < 0 or h < 0 or repeats < 1 or (b == 0 and p == 0) or (b and ctx < 1) or chunks < 1
                or not 0 <= spread < 1):
            raise ValueError(f"bad step: decode batch {b}, context {ctx}, prefill {p}, prefix {h}, repeats {repeats}, "
                             f"chunks {chunks}, context spread {spread} (in [0, 1))")
        torch = self.torch
        lens = [p + j for j in range(chunks)] if p else []
        ctxs = spread_contexts(ctx, b, spread)
        e = self.engine(sum(self._blocks(max(c, 1)) for c in ctxs) + sum(self._blocks(h + n) for n in lens),
                        max(b, 1), max(max(ctxs, default=1), h + max(lens, default=0), 1))
        e.reset()
        dec = [e.add(i) for i in range(b)]
        for s, c in zip(dec, ctxs):
            if not e.reserve(s, c):
                raise RuntimeError(f"no KV blocks for {b} x {ctx} decode tokens ({e.alloc.capacity} blocks)")
            s.length = c - 1  # the step feeds the token at position c - 1 and reads c tokens
        pre = [e.add(b + j) for j in range(len(lens))]
        for s, n in zip(pre, lens):
            if not e.reserve(s, h + n):
                raise RuntimeError(f"no KV blocks for a {h} + {n} token chunk ({e.alloc.free} free)")
        ids = [self.prompt(n, 1, seed + (j + 1 if j else 0))[0] for j, n in enumerate(lens)]  # seed + 1: decodes
        g = e.graph_size(b) if b else 0
        graph = e.ensure_graph(g) if b else False
        with torch.no_grad():
            if b:
                e.load_rows(dec, self.prompt(1, b, seed + 1)[:, 0])
                pos0, tok0 = e.pos[:g].clone(), e.tok[:g].clone()

            def queued() -> None:
                if e.mixed == "fused" and lens:  # one forward: decodes and chunks together
                    for s, cx in zip(dec, ctxs):
                        s.length = cx - 1
                    for s in pre:
                        s.length = h
                    e.step(dec, tok0[:b] if b else None, [(s, x, h) for s, x in zip(pre, ids)])
                    return
                if b:
                    e.pos[:g].copy_(pos0)
                    e.tok[:g].copy_(tok0)
                    e.replay(g)
                if lens:
                    for s in pre:
                        s.length = h
                    e.prefill([(s, x, h) for s, x in zip(pre, ids)])

            dec_tok = self.prompt(1, b, seed + 1)[:, 0].tolist() if b and served else []
            ids_host = [x.tolist() for x in ids] if served else []

            def as_served() -> None:
                for s, cx in zip(dec, ctxs):
                    s.length = cx - 1
                for s in pre:
                    s.length = h
                d, c = e.step(dec, dec_tok, [(s, x, h) for s, x in zip(pre, ids_host)])
                if d is not None:
                    d.tolist()
                if c is not None:
                    c.tolist()

            one = as_served if served else queued
            one()
            self.sync()
            on_start()
            t0 = time.perf_counter()
            for _ in range(repeats):
                one()
            self.sync()
            t1 = time.perf_counter()
        for s, cx in zip(dec, ctxs):  # each decode left as a queued step leaves it: about to read cx tokens
            s.length = cx - 1
        extra: dict = {"graph": graph, "graph_batch": g, "kv_blocks": e.alloc.capacity, "attention": e.attention,
                       "context_per_seq": ctx if b else 0, **({"contexts": ctxs} if spread and b > 1 else {}),
                       **({"loop": "served"} if served else {})}
        if self.device.startswith("cuda"):
            extra["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
        return Timing(runtime_s=t1 - t0, ttft_s=math.nan, gen_tokens=repeats, extra=extra)

    def close(self) -> None:
        if self.eng is not None:
            self.eng.release()
            self.eng = None
        self.last_ids = None
        super().close()
