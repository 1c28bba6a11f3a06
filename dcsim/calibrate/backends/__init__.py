"""Backends that run one (n_in, n_out, batch) request batch and time it: Hugging Face transformers
in-process (eager generate, generate with a static KV cache and compiled decode, or our own greedy loop with
CUDA-graph decode steps) and an OpenAI-compatible endpoint."""
