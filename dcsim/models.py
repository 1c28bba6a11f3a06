"""The one model catalogue: every model dcsim knows by name, with its shape from the model's public Hugging Face
config.json.

- MODELS: the models a profile names by key (params_b, layers, KV heads, context), each with its citation; fitting
  reads their KV-cache size and parameter count from here.
- ARCHS: the full Llama-style configs that `dcsim calibrate --model-arch` builds with random weights, for machines
  that cannot download weights. Rotary scaling details are left out: they change no tensor shape and no FLOP count.
- ARCH_MODELS: the architectures a profile names by a MODELS key; any other architecture's profile records its
  shape, and `params_b` counts its parameters from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcsim.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """A model's shape, from its public Hugging Face config.json."""

    key: str
    hf_id: str
    name: str
    params_b: float
    layers: int
    hidden_size: int
    kv_heads: int
    head_dim: int
    max_context: int
    cite: str

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V over all layers for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value


_HF = "Hugging Face config.json of {}"
MODELS: dict[str, ModelSpec] = {
    m.key: m
    for m in (
        ModelSpec("llama-2-7b", "meta-llama/Llama-2-7b-chat-hf", "Llama-2-7b-chat", 6.74, 32, 4096, 32, 128, 4096,
                  _HF.format("meta-llama/Llama-2-7b-chat-hf") + " (32 layers, 32 KV heads of 128)"),
        ModelSpec("mistral-7b", "mistralai/Mistral-7B-v0.1", "Mistral-7B-v0.1", 7.24, 32, 4096, 8, 128, 32768,
                  _HF.format("mistralai/Mistral-7B-v0.1") + " (32 layers, 8 KV heads of 128)"),
        ModelSpec("falcon-7b", "tiiuae/falcon-7b", "Falcon-7B", 7.22, 32, 4544, 1, 64, 2048,
                  _HF.format("tiiuae/falcon-7b") + " (32 layers, multi-query: 1 KV head of 64)"),
        ModelSpec("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1-8B-Instruct", 8.03, 32, 4096, 8, 128,
                  131072, _HF.format("meta-llama/Llama-3.1-8B-Instruct") + " (32 layers, 8 KV heads of 128)"),
        ModelSpec("llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", "Llama-3.1-70B-Instruct", 70.6, 80, 8192, 8,
                  128, 131072, _HF.format("meta-llama/Llama-3.1-70B-Instruct") + " (80 layers, 8 KV heads of 128)"),
    )
}


def model(key: str) -> ModelSpec:
    """The catalogue entry of `key`; an unknown key is a UserError naming the known keys."""
    try:
        return MODELS[key]
    except KeyError:
        raise UserError(f"unknown model {key!r}; known: {sorted(MODELS)}", field="model") from None


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


# --model-arch names -> MODELS keys: a calibration run of one of these names its model by key
ARCH_MODELS = {"llama-2-7b": "llama-2-7b"}


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
