"""Attention over a paged KV cache, for the `paged` engine (`paged.py`).

The cache of one layer is K and V of shape [num_blocks, block_size, kv_heads, head_dim]; a sequence's tokens
sit in the blocks its block table lists, in order, and its length says how many are live. Three decode
implementations, one contract (q [batch, heads, head_dim] -> out of the same shape, each row attending to the
first lens[i] tokens of its blocks):

- `decode_attention_triton`: a Triton kernel, one program per (sequence, query head, 512-token piece of the
  sequence), looping over that piece's live blocks only, several blocks per iteration (the count read from `lens`
  on the device, so a CUDA graph that captured it replays with whatever lengths the buffers hold), online softmax
  in fp32, the pieces combined after (as vLLM's paged attention v2 partitions long sequences); grouped-query
  aware (query head h reads KV head h // group). Its cost grows with each sequence's live context, as vLLM's
  paged attention does.
- `decode_attention_torch`: the same on any device with torch ops: gathers the first `max_blocks` blocks of
  every row and masks the positions past each length (the engine's CPU path; on CUDA without Triton it
  gathers the whole table width, so its cost does not follow the live context).
- `decode_attention_naive`: a per-sequence loop over plain softmax attention, the reference the tests hold
  the other two to.

`prefill_attention` is causal attention of a chunk of queries over its sequence's cached prefix plus itself.
"""

from __future__ import annotations

import math
from typing import Any

try:  # Triton is only there on CUDA machines (and where installed for its CPU interpreter)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None


# tokens the Triton kernel reads per loop iteration (whole blocks): more bytes in flight per program than one
# 16-token block at a time
TOKENS_PER_ITER = 64


def triton_available() -> bool:
    """Whether the Triton decode kernel can be used (Triton importable)."""
    return triton is not None


def gather_blocks(cache: Any, block_tables: Any, n_blocks: int) -> Any:
    """[rows, n_blocks * block_size, kv_heads, head_dim]: the first n_blocks blocks of every row's table."""
    g = cache[block_tables[:, :n_blocks].long()]  # [rows, n_blocks, block_size, kv_heads, head_dim]
    return g.reshape(g.shape[0], -1, g.shape[-2], g.shape[-1])


def decode_attention_torch(q: Any, k_cache: Any, v_cache: Any, block_tables: Any, lens: Any, scale: float,
                           max_blocks: int | None = None) -> Any:
    """Decode attention with torch ops: every row's first `max_blocks` blocks (default: the table's width)
    gathered, positions at or past lens[i] masked, softmax in fp32."""
    import torch

    rows, heads, dim = q.shape
    kv_heads, bs = k_cache.shape[2], k_cache.shape[1]
    nb = block_tables.shape[1] if max_blocks is None else max(1, min(int(max_blocks), block_tables.shape[1]))
    k = gather_blocks(k_cache, block_tables, nb).float()  # [rows, S, kvh, D]
    v = gather_blocks(v_cache, block_tables, nb).float()
    qg = q.float().view(rows, kv_heads, heads // kv_heads, dim)
    s = torch.einsum("bkgd,bskd->bkgs", qg, k) * scale
    live = torch.arange(nb * bs, device=q.device)[None, :] < lens.long()[:, None]  # [rows, S]
    s = s.masked_fill(~live[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    out = torch.einsum("bkgs,bskd->bkgd", p, v)
    return out.reshape(rows, heads, dim).to(q.dtype)


def decode_attention_naive(q: Any, k_cache: Any, v_cache: Any, block_tables: Any, lens: Any,
                           scale: float) -> Any:
    """Reference: for each row, its live tokens gathered block by block, then plain softmax attention."""
    import torch

    rows, heads, dim = q.shape
    kv_heads, bs = k_cache.shape[2], k_cache.shape[1]
    out = torch.empty_like(q)
    for i in range(rows):
        n = int(lens[i])
        blocks = [int(b) for b in block_tables[i, :math.ceil(n / bs)]]
        k = torch.cat([k_cache[b] for b in blocks])[:n].float()  # [n, kvh, D]
        v = torch.cat([v_cache[b] for b in blocks])[:n].float()
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        s = torch.einsum("hd,nhd->hn", q[i].float(), k) * scale
        out[i] = torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v).to(q.dtype)
    return out


# tokens of one sequence that one program reads at most: a longer sequence is split over several programs whose
# partial softmax sums are combined after (split-K, "flash decoding", as vLLM's paged attention v2 partitions a
# sequence in 512-token pieces), so a small batch of long sequences still keeps the GPU's multiprocessors busy
TOKENS_PER_SPLIT = 512

if triton is not None:

    @triton.jit
    def _paged_decode_kernel(Q, K, V, BT, LENS, M, L, ACC, scale, stride_qb, stride_qh, stride_kb, stride_kt,
                             stride_kh, stride_bt, SPLITS, SPLIT_BLOCKS, GROUP: tl.constexpr, BLOCK: tl.constexpr,
                             PER_ITER: tl.constexpr, D: tl.constexpr):
        # one program per (sequence, query head, split); split s reads the sequence's blocks
        # s * SPLIT_BLOCKS .. (s + 1) * SPLIT_BLOCKS - 1 that are live, PER_ITER blocks an iteration, and writes its
        # running max, sum and weighted values for the combine
        seq = tl.program_id(0)
        head = tl.program_id(1)
        split = tl.program_id(2)
        kvh = head // GROUP
        offs_d = tl.arange(0, D)
        offs_t = tl.arange(0, PER_ITER * BLOCK)
        q = tl.load(Q + seq * stride_qb + head * stride_qh + offs_d).to(tl.float32)
        n = tl.load(LENS + seq)
        n_blocks = tl.cdiv(n, BLOCK)
        first = split * SPLIT_BLOCKS
        last = tl.minimum(first + SPLIT_BLOCKS, n_blocks)
        m_i = tl.max(tl.full([PER_ITER * BLOCK], float("-inf"), tl.float32), 0)
        l_i = tl.sum(tl.zeros([PER_ITER * BLOCK], tl.float32), 0)
        acc = tl.zeros([D], tl.float32)
        for it in range(0, tl.cdiv(tl.maximum(last - first, 0), PER_ITER)):
            j = first + it * PER_ITER + offs_t // BLOCK  # the table entry of each token of this iteration
            blk = tl.load(BT + seq * stride_bt + j, mask=j < last, other=0).to(tl.int64)
            live = (j < last) & ((first + it * PER_ITER) * BLOCK + offs_t < n)
            off = blk[:, None] * stride_kb + (offs_t % BLOCK)[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :]
            k = tl.load(K + off, mask=live[:, None], other=0.0).to(tl.float32)
            s = tl.sum(k * q[None, :], 1) * scale
            s = tl.where(live, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 0))
            alpha = tl.where(m_new == float("-inf"), 1.0, tl.exp(m_i - m_new))
            p = tl.where(live, tl.exp(s - m_new), 0.0)
            v = tl.load(V + off, mask=live[:, None], other=0.0).to(tl.float32)
            l_i = l_i * alpha + tl.sum(p, 0)
            acc = acc * alpha + tl.sum(p[:, None] * v, 0)
            m_i = m_new
        row = (seq * tl.num_programs(1) + head) * SPLITS + split
        tl.store(M + row, m_i)
        tl.store(L + row, l_i)
        tl.store(ACC + row * D + offs_d, acc)


def decode_attention_triton(q: Any, k_cache: Any, v_cache: Any, block_tables: Any, lens: Any, scale: float,
                            out: Any = None) -> Any:
    """Decode attention by the Triton kernel over live blocks only, each sequence split in TOKENS_PER_SPLIT
    pieces read in parallel and combined with torch ops; no host read of any device value, so it can be captured
    in a CUDA graph. head_dim must be a power of two (64 and 128 for the Llama shapes)."""
    import torch

    if triton is None:
        raise RuntimeError("Triton is not installed")
    rows, heads, dim = q.shape
    kv_heads, bs = k_cache.shape[2], k_cache.shape[1]
    if dim & (dim - 1) or bs & (bs - 1):
        raise ValueError(f"head_dim ({dim}) and block_size ({bs}) must be powers of two for the Triton kernel")
    q = q.contiguous()
    split_blocks = max(1, TOKENS_PER_SPLIT // bs)
    splits = max(1, math.ceil(block_tables.shape[1] / split_blocks))
    m = torch.empty((rows, heads, splits), dtype=torch.float32, device=q.device)
    l_ = torch.empty_like(m)
    acc = torch.empty((rows, heads, splits, dim), dtype=torch.float32, device=q.device)
    assert k_cache.stride(3) == 1 and q.stride(2) == 1 and block_tables.stride(1) == 1
    _paged_decode_kernel[(rows, heads, splits)](
        q, k_cache, v_cache, block_tables, lens, m, l_, acc, scale, q.stride(0), q.stride(1), k_cache.stride(0),
        k_cache.stride(1), k_cache.stride(2), block_tables.stride(0), splits, split_blocks,
        GROUP=heads // kv_heads, BLOCK=bs, PER_ITER=max(1, min(TOKENS_PER_ITER // bs, split_blocks)), D=dim)
    # combine the splits: weights exp(m_s - max_s m), an empty split (m = -inf) weighing nothing
    top = m.amax(dim=2, keepdim=True)
    w = torch.exp(m - top)
    res = (acc * w[..., None]).sum(dim=2) / (l_ * w).sum(dim=2)[..., None]
    if out is None:
        return res.to(q.dtype)
    out.copy_(res)
    return out


def prefill_attention(q: Any, k: Any, v: Any, start: int, scale: float) -> Any:
    """Causal attention of `m` chunks of n queries each at positions start..start+n-1 over their sequences'
    keys 0..start+n-1. q [m, n, heads, D]; k, v [m, start + n, kv_heads, D]; returns [m, n, heads, D]."""
    import torch
    import torch.nn.functional as F

    heads, kv_heads = q.shape[2], k.shape[2]
    if heads != kv_heads:
        k = k.repeat_interleave(heads // kv_heads, dim=2)
        v = v.repeat_interleave(heads // kv_heads, dim=2)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    n, total = q.shape[1], k.shape[1]
    if start == 0:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
    else:  # query i (position start + i) sees keys 0..start + i
        mask = torch.arange(total, device=q.device)[None, :] <= (start + torch.arange(n, device=q.device))[:, None]
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    return o.transpose(1, 2)
