"""A model folder (config, random weights, tokenizer) in a real architecture, for serving engines that load a model
from disk (`transformers serve`, vLLM) on a machine that cannot download weights. Time and energy depend on the
shapes, not on the weight values. The tokenizer is word-level over the vocabulary's size (every whitespace word one
token; words it does not know map to <unk>), so the `openai` endpoint dialect's word prompts have exactly n_in
tokens. The output layer's row of the EOS token is zeroed: greedy decoding then never ends a request early, so a
server that cannot be told to ignore EOS still produces the asked number of tokens.

    python -m dcsim.calibrate.random_model llama-2-7b FOLDER [--device cuda:0] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dcsim.errors import UserError, guarded
from dcsim.models import ARCHS

if TYPE_CHECKING:  # transformers is imported where a model is built, not with this module
    from transformers import LlamaConfig

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def llama_config(config: dict) -> LlamaConfig:
    """The transformers config of the served model: the architecture's sizes, BOS 1 and EOS 2 (Llama's ids)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(**{"bos_token_id": 1, "eos_token_id": 2, **config})
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def save(config: dict, folder: Path, device: str = "cpu", dtype: str = "bf16", seed: int = 0) -> Path:
    """Write config.json, the weights (safetensors) and the word-level tokenizer into `folder`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = llama_config(config)
    specials = {"<unk>": 0, "<s>": cfg.bos_token_id, "</s>": cfg.eos_token_id}
    vocab = {f"w{i}": i for i in range(cfg.vocab_size) if i not in specials.values()} | specials
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(getattr(torch, DTYPES[dtype]))
    with torch.no_grad():
        model.lm_head.weight[cfg.eos_token_id].zero_()
    model.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcsim.calibrate.random_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch", help=f"one of {sorted(ARCHS)}")
    ap.add_argument("folder")
    ap.add_argument("--device", default="cpu", help="where to build the weights (cuda:0 is faster for 7B+)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    a = ap.parse_args(argv)

    def go() -> int:
        if a.arch not in ARCHS:
            raise UserError(f"unknown architecture {a.arch!r}; known: {sorted(ARCHS)}", None, "arch")
        if Path(a.folder).exists() and any(Path(a.folder).iterdir()):
            raise UserError("folder exists and is not empty", a.folder)
        save(ARCHS[a.arch], Path(a.folder), a.device, a.dtype)
        print(f"wrote {a.folder}: {a.arch} with random weights ({a.dtype}) and a word-level tokenizer",
              file=sys.stderr)
        return 0

    return guarded(go)


if __name__ == "__main__":
    sys.exit(main())
