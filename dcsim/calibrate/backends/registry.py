"""The in-process engines by name, for the commands that choose one (`calibrate --backend`, `validate
--backend`). Importing this module imports neither torch nor transformers."""

from __future__ import annotations

import argparse

from dcsim.calibrate.backends.base import Backend

ENGINES = ("hf", "hf-static", "hf-graph", "paged")
HELP = ("hf: transformers eager generate; hf-static: generate with a static KV cache and compiled decode step; "
        "hf-graph: our own greedy loop over a static cache, one CUDA graph replay per decode step; "
        "paged: our own iteration-level engine over a paged KV cache (Triton decode attention over live blocks, "
        "CUDA graphs per padded batch size, chunked prefill)")
# engines whose static caches are sized from the calibration plan (validate replays size them the same way)
STATIC_CACHE = ("hf-static", "hf-graph")


def add_paged_arguments(p: argparse.ArgumentParser) -> None:
    """The `paged` engine's options, as calibrate and validate both take them."""
    p.add_argument("--mixed-step", choices=("fused", "split"), default="fused",
                   help="paged: a step with prefill chunks as one forward over all its tokens (fused, piecewise CUDA "
                        "graphs, as vLLM v1 runs it) or the decode graph then an eager prefill forward (split, the "
                        "form of the runs recorded before 2026-12-04)")
    p.add_argument("--kv-data", choices=("model", "zeros"), default="model",
                   help="paged: what the KV cache holds where no step wrote it: K/V of a real forward tiled over "
                        "every block (model), or the zeros it is allocated with (zeros, the calibrations recorded "
                        "before 2026-12-05). A step reading zeros draws less power than one reading a model's values")


def paged_options(args: argparse.Namespace, name: str) -> dict:
    """The options `make` passes to the named engine from the command line (none but for paged)."""
    return {"mixed": args.mixed_step, "kv_data": args.kv_data} if name == "paged" else {}


def make(name: str, device: str, model: str | None, arch: str | None, random_weights: bool,
         dtype: str, **options: object) -> Backend:
    """A not yet loaded backend of the named engine; `options` go to engines that take them (paged: block_size,
    kv_blocks, graph_sizes, mixed, kv_data)."""
    if name == "paged":
        from dcsim.calibrate.backends.paged import PagedBackend

        return PagedBackend(device, model=model, arch=arch, random_weights=random_weights, dtype=dtype,
                            **options)  # type: ignore[arg-type]
    if name == "hf-graph":
        from dcsim.calibrate.backends.graph import GraphBackend

        return GraphBackend(device, model=model, arch=arch, random_weights=random_weights, dtype=dtype)
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {ENGINES}")
    from dcsim.calibrate.backends.hf import HFBackend

    return HFBackend(device, model=model, arch=arch, random_weights=random_weights, dtype=dtype,
                     static=name == "hf-static")
