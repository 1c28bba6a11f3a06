"""Model shapes for --model-arch: the real architecture with random weights, for machines that cannot
download weights. Sizes are those of each model's published config.json on the Hugging Face Hub.
Rotary scaling details are left out: they change no tensor shape and no FLOP count."""

from __future__ import annotations

from dcsim.errors import UserError

ARCHS: dict[str, dict] = {
    # meta-llama/Llama-2-7b-hf config.json
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    # meta-llama/Llama-2-13b-hf config.json
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
    # meta-llama/Llama-2-70b-hf config.json (grouped-query attention: 8 key/value heads); the 70B-class shape of
    # the tensor-parallel runs (140 GB of bf16 weights: two H200s at least)
    "llama-2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
    # meta-llama/Llama-3.2-1B config.json (tied embeddings, grouped-query attention)
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                         tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001),
    # meta-llama/Meta-Llama-3-8B config.json
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                       bos_token_id=128000, eos_token_id=128001),
    # a few-hundred-kilobyte Llama for tests and CPU smoke runs
    "tiny-llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096),
}


def arch_config(name: str):
    """A transformers LlamaConfig for a named architecture."""
    if name not in ARCHS:
        raise UserError(f"unknown --model-arch {name!r}; known: {sorted(ARCHS)}", None, "--model-arch")
    from transformers import LlamaConfig

    return LlamaConfig(**ARCHS[name])


def params_b(cfg) -> float:
    """Parameter count in billions from a Llama-style config (embeddings, attention, MLP, norms, head)."""
    h, i, n, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    attn = h * h * 2 + h * kv * 2  # q, o, k, v projections
    mlp = 3 * h * i
    per_layer = attn + mlp + 2 * h
    head = 0 if getattr(cfg, "tie_word_embeddings", False) else v * h
    return (v * h + n * per_layer + h + head) / 1e9
