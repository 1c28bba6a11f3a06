"""Token counters for trace builders: the offline Mistral-7B SentencePiece model, or any Hugging Face tokenizer.

Counts are what an engine sees: a prompt is counted with the tokenizer's BOS token (as vLLM and Hugging Face
pipelines add it), a generated answer without BOS or EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dcsim.errors import UserError

DEFAULT_TOKENIZER = "mistral-7b-v1"
# Names that select the SentencePiece model shipped inside the mistral-common package (tokenizer.model.v1,
# the Mistral-7B v0.1 vocabulary of 32,000 pieces); no network needed.
_MISTRAL_V1_NAMES = {"mistral-7b-v1", "mistral-v1", "mistral"}


@dataclass(frozen=True)
class TokenCounter:
    """A named tokenizer reduced to what traces need: a text's token ids, and how many there are."""

    name: str
    describe: str
    _encode: Callable[[str, bool], list[int]]

    def ids(self, text: str, bos: bool) -> list[int]:
        """Token ids of `text`, led by the BOS token when `bos` is true (no EOS)."""
        return list(self._encode(text, bos))

    def count(self, text: str, bos: bool) -> int:
        """Number of tokens of `text`, with the BOS token counted when `bos` is true."""
        return len(self._encode(text, bos))


def _mistral_v1() -> TokenCounter:
    try:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    except ImportError:
        raise UserError("counting tokens with the offline tokenizer needs mistral-common: "
                        "pip install 'dcsim[traces]'", field="tokenizer") from None
    try:
        raw = MistralTokenizer.v1().instruct_tokenizer.tokenizer
    except Exception as e:  # noqa: BLE001 - e.g. sentencepiece missing
        raise UserError(
            f"cannot load mistral-common's tokenizer.model.v1 ({e}); install mistral-common[sentencepiece]",
            field="tokenizer",
        ) from None

    def enc(text: str, bos: bool) -> list[int]:
        return raw.encode(text, bos=bos, eos=False)

    return TokenCounter(
        DEFAULT_TOKENIZER,
        "Mistral-7B v0.1 SentencePiece model shipped in mistral-common (tokenizer.model.v1, 32000 pieces), "
        "loaded with MistralTokenizer.v1()",
        enc,
    )


def _huggingface(name: str) -> TokenCounter:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError(
            f"tokenizer '{name}' needs the transformers package (pip install transformers); "
            f"or use the offline default '{DEFAULT_TOKENIZER}'",
            field="tokenizer",
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - unknown name, no network, gated model
        raise UserError(f"cannot load Hugging Face tokenizer '{name}': {e}", field="tokenizer") from None

    def enc(text: str, bos: bool) -> list[int]:
        return tok.encode(text, add_special_tokens=bos)

    return TokenCounter(name, f"Hugging Face AutoTokenizer '{name}'", enc)


def get_tokenizer(name: str | None = None) -> TokenCounter:
    """The token counter for `name`: the offline Mistral-7B v1 model by default, else a Hugging Face tokenizer."""
    name = (name or DEFAULT_TOKENIZER).strip()
    if name.lower() in _MISTRAL_V1_NAMES:
        return _mistral_v1()
    return _huggingface(name)
