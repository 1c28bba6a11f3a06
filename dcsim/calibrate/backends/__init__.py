"""Backends that run one (n_in, n_out, batch) request batch and time it: Hugging Face transformers
in-process (eager, or static KV cache + compiled decode) and an OpenAI-compatible endpoint."""
