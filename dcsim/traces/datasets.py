"""Build request traces (n_in, n_out) from prompt data sets (GSM8K, Alpaca) through the `datasets` library.

n_in = tokens of the templated prompt counted with BOS (what an engine prefills); n_out = tokens of the data set's
reference answer/output without BOS/EOS (a stand-in for what a model generates). Templates are listed in
GSM8K_TEMPLATES / ALPACA_TEMPLATES; traces/README.md says why the default is "raw".
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from dcsim.errors import UserError
from dcsim.traces.tokenizers import TokenCounter, get_tokenizer
from dcsim.traces.trace import Trace

# "raw": the text alone, as Wilkins, Keshav & Mortier (E-Energy 2024) counted GSM8K prompts in their released
# analysis (question -> input, answer -> output). "qa": the zero-shot prompt of EleutherAI's
# lm-evaluation-harness gsm8k task (doc_to_text "Question: {{question}}\nAnswer:").
GSM8K_TEMPLATES: dict[str, str] = {
    "raw": "{question}",
    "qa": "Question: {question}\nAnswer:",
}

# "raw": instruction, then the input after a blank line when there is one (Wilkins et al. counted instruction and
# input tokens and added them). "alpaca": the Stanford Alpaca training prompt (Taori et al. 2023), with and
# without an input.
_ALPACA_HEAD_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
_ALPACA_HEAD_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)
ALPACA_TEMPLATES: dict[str, tuple[str, str]] = {  # (with input, without input)
    "raw": ("{instruction}\n\n{input}", "{instruction}"),
    "alpaca": (
        _ALPACA_HEAD_INPUT + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:",
        _ALPACA_HEAD_NO_INPUT + "### Instruction:\n{instruction}\n\n### Response:",
    ),
}

# A few-shot exemplar as it goes into the shared preamble; the problem asked follows in the "qa" template. This is
# the few-shot form of lm-evaluation-harness's gsm8k task (its fewshot delimiter "\n\n", target " {{answer}}").
GSM8K_SHOT = "Question: {question}\nAnswer: {answer}\n\n"
GSM8K_SHOT_SOURCE = "first {k} problems of the GSM8K train split"

GSM8K_HUB = ("gsm8k", "main")
ALPACA_HUB = "tatsu-lab/alpaca"
GSM8K_CITATION = "Cobbe et al., 'Training Verifiers to Solve Math Word Problems', arXiv:2110.14168, 2021 (GSM8K)"
ALPACA_CITATION = (
    "Taori et al., 'Stanford Alpaca: An Instruction-following LLaMA model', GitHub tatsu-lab/stanford_alpaca, 2023"
)

N_IN_RULE = "tokens of the templated prompt, BOS included"
N_OUT_RULE = "tokens of the reference answer/output, no BOS or EOS"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _datasets():
    """The `datasets` library, which only trace building needs: an install without it is told which extra."""
    try:
        import datasets
    except ImportError:
        raise UserError("building traces needs the `datasets` library: pip install 'dcsim[traces]'") from None
    return datasets


def _load_json_file(path: Path, split: str = "train"):
    """Load a JSON / JSON-lines file with the `datasets` library's own json loader."""
    datasets = _datasets()

    if not path.is_file():
        raise UserError("file not found", path)
    try:
        return datasets.load_dataset("json", data_files={split: str(path)}, split=split)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad user file
        cause = e.__cause__ or e
        raise UserError(f"cannot read as JSON/JSON lines: {cause}", path) from None


def _load_hub(name: str, config: str | None, split: str):
    datasets = _datasets()

    try:
        return datasets.load_dataset(name, config, split=split)
    except ValueError as e:
        raise UserError(f"cannot load split '{split}' of {name}: {e}", field="split") from None
    except Exception as e:  # noqa: BLE001 - no network, unknown name
        raise UserError(
            f"cannot load '{name}' from the Hugging Face Hub ({type(e).__name__}: {e}); "
            "pass --from with a local copy instead",
        ) from None


def _text_column(ds, col: str, file, required: bool = True) -> list[str]:
    """A column as a list of strings; a missing column or a non-text cell is a UserError naming it."""
    if col not in ds.column_names:
        if not required:
            return [""] * len(ds)
        raise UserError(f"missing field (have {sorted(ds.column_names)})", file, col)
    values = ds[col]
    for i, v in enumerate(values):
        if v is None and not required:
            continue
        if not isinstance(v, str):
            raise UserError(f"record {i}: expected text, got {type(v).__name__} {v!r:.60}", file, col)
    return [v if v is not None else "" for v in values]


def _count(
    prompts: list[str], outputs: list[str], tok: TokenCounter, progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    from tqdm import tqdm

    n = len(prompts)
    n_in = np.empty(n, np.int64)
    n_out = np.empty(n, np.int64)
    for i in tqdm(range(n), desc=desc, unit="req", disable=not progress, mininterval=0.5):
        n_in[i] = tok.count(prompts[i], True)
        n_out[i] = tok.count(outputs[i], False)
    return n_in, n_out


def _finish(
    ids: list[str], n_in: np.ndarray, n_out: np.ndarray, prov: dict, prefix_len: np.ndarray | None = None
) -> Trace:
    """Drop rows whose reference output is empty (0 tokens: nothing to generate) and record the counts. With
    `prefix_len`, every kept row gets prefix_id 0 (one prefix shared by all)."""
    keep = n_out >= 1
    prov["rows_read"] = prov.get("rows_read", int(n_in.size))
    prov["rows_dropped_empty_output"] = int((~keep).sum())
    prov["rows_kept"] = int(keep.sum())
    if not keep.any():
        raise UserError("no record has a non-empty output", prov.get("input"))
    src = np.array(ids, dtype=object)[keep]
    pid = plen = None
    if prefix_len is not None:
        plen = np.asarray(prefix_len, np.int64)[keep]
        pid = np.zeros(plen.size, np.int64)
    return Trace(n_in[keep], n_out[keep], None, src, prov, pid, plen).validate()


def _resolve_local(from_path: str | Path, split: str) -> Path:
    p = Path(from_path)
    if p.is_dir():
        for ext in (".jsonl", ".json"):
            if (p / f"{split}{ext}").is_file():
                return p / f"{split}{ext}"
        raise UserError(f"no {split}.jsonl in this folder", p, "split")
    if not p.exists():
        raise UserError("file or folder not found", p)
    return p


def _common_run(a: list[int], b: list[int]) -> int:
    """Length of the common leading run of two token-id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _gsm8k_train(from_path: str | Path | None, split: str, ds, file: Path | None):
    """The train split that few-shot exemplars come from: the main split itself when it is train, else train.jsonl
    beside it (a folder --from) or the Hub's train split; a single-file --from has no train split to take."""
    if split == "train":
        return ds, file
    if from_path is None:
        return _load_hub(*GSM8K_HUB, split="train"), None
    p = Path(from_path)
    if not p.is_dir():
        raise UserError("few-shot exemplars come from the train split: give --from a folder holding train.jsonl, "
                        "not a single file", p, "shots")
    for ext in (".jsonl", ".json"):
        if (p / f"train{ext}").is_file():
            tfile = p / f"train{ext}"
            return _load_json_file(tfile, "train"), tfile
    raise UserError("few-shot exemplars come from the train split, and there is no train.jsonl in this folder",
                    p, "shots")


def build_gsm8k(
    split: str = "test",
    from_path: str | Path | None = None,
    tokenizer: str | None = None,
    template: str | None = None,
    progress: bool = False,
    shots: int = 0,
) -> Trace:
    """GSM8K as a trace: one request per problem. `from_path` is a folder with SPLIT.jsonl or a JSONL file;
    without it the data set is loaded from the Hugging Face Hub (gsm8k/main).

    With `shots` K > 0 every prompt is a fixed preamble of the first K train problems with their published answers
    (GSM8K_SHOT each), then the problem asked in the "qa" template; every request carries prefix_id 0 and
    prefix_len = the leading tokens (BOS included) its prompt shares with the preamble alone. Built on the train
    split, the K exemplar rows are left out. The template defaults to "qa" with shots, else "raw"."""
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)):
        raise UserError(f"shots must be a whole number, got {shots!r}", field="shots")
    shots = int(shots)
    if shots < 0:
        raise UserError(f"shots must be 0 or more, got {shots}", field="shots")
    if template is None:
        template = "qa" if shots else "raw"
    if template not in GSM8K_TEMPLATES:
        raise UserError(f"unknown template '{template}' (choose from {sorted(GSM8K_TEMPLATES)})", field="template")
    if shots and template != "qa":
        raise UserError(f"few-shot prompts use the qa template (Question: ...\\nAnswer:), not '{template}'",
                        field="template")
    tok = get_tokenizer(tokenizer)
    if from_path is not None:
        file = _resolve_local(from_path, split)
        ds = _load_json_file(file, split)
        origin = {"input": file.name, "input_sha256": file_sha256(file)}
    else:
        file = None
        ds = _load_hub(*GSM8K_HUB, split=split)
        origin = {"input": f"hub:{GSM8K_HUB[0]}/{GSM8K_HUB[1]}"}
    questions = _text_column(ds, "question", file)
    answers = _text_column(ds, "answer", file)
    fmt = GSM8K_TEMPLATES[template]
    ids = [f"gsm8k/{split}/{i}" for i in range(len(questions))]
    few: dict = {}
    prefix_len = None
    if shots:
        tds, tfile = _gsm8k_train(from_path, split, ds, file)
        tq, ta = _text_column(tds, "question", tfile), _text_column(tds, "answer", tfile)
        if shots > len(tq):
            raise UserError(f"shots {shots} is more than the {len(tq)} problems of the train split", tfile, "shots")
        preamble = "".join(GSM8K_SHOT.format(question=q, answer=a) for q, a in zip(tq[:shots], ta[:shots]))
        rows_read = len(questions)
        if split == "train":  # an exemplar would be asked with its own answer in the prompt
            questions, answers, ids = questions[shots:], answers[shots:], ids[shots:]
            if not questions:
                raise UserError(f"shots {shots} leaves no train problem to ask", file, "shots")
        pre_ids = tok.ids(preamble, True)
        prompts = [preamble + fmt.format(question=q) for q in questions]
        n_in, n_out, prefix_len = _count_prefixed(prompts, answers, pre_ids, tok, progress, f"tokenising gsm8k/{split}")
        few = {
            "rows_read": rows_read,
            "shots": shots,
            "shot_source": GSM8K_SHOT_SOURCE.format(k=shots),
            "shot_text": GSM8K_SHOT,
            "few_shot_form": (
                "few-shot form of EleutherAI lm-evaluation-harness's gsm8k task: fixed exemplars, as in its "
                "chain-of-thought variant (which uses the 8 fixed exemplars of Wei et al. 2022); here the exemplars "
                f"are the {GSM8K_SHOT_SOURCE.format(k=shots)} with their published answers instead"
            ),
            "prefix_tokens": len(pre_ids),
            "prefix_len": "leading tokens (BOS included) that the preamble's token ids share with the prompt's",
            "preamble_sha256": hashlib.sha256(preamble.encode()).hexdigest(),
        }
        if tfile is not None and tfile != file:
            few["shot_input"] = tfile.name
            few["shot_input_sha256"] = file_sha256(tfile)
        if split == "train":
            few["rows_dropped_exemplars"] = shots
            few["exemplars_dropped"] = f"train problems 0..{shots - 1} are the exemplars and are not asked"
    else:
        prompts = [fmt.format(question=q) for q in questions]
        n_in, n_out = _count(prompts, answers, tok, progress, f"tokenising gsm8k/{split}")
    prov = {
        "kind": "dataset",
        "source": f"GSM8K grade-school math (github.com/openai/grade-school-math), split '{split}'",
        **origin,
        "licence": "MIT",
        "citation": GSM8K_CITATION,
        "tokenizer": tok.name,
        "tokenizer_detail": tok.describe,
        "template": template,
        "template_text": fmt if not shots else "{preamble}" + fmt,
        "n_in": N_IN_RULE,
        "n_out": N_OUT_RULE + " (the GSM8K answer text, calculator annotations <<...>> and '#### N' line included)",
        **few,
    }
    return _finish(ids, n_in, n_out, prov, prefix_len)


def _count_prefixed(
    prompts: list[str], outputs: list[str], pre_ids: list[int], tok: TokenCounter, progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As _count, and each prompt's shared leading run with the preamble's token ids."""
    from tqdm import tqdm

    n = len(prompts)
    n_in = np.empty(n, np.int64)
    n_out = np.empty(n, np.int64)
    plen = np.empty(n, np.int64)
    for i in tqdm(range(n), desc=desc, unit="req", disable=not progress, mininterval=0.5):
        full = tok.ids(prompts[i], True)
        n_in[i] = len(full)
        plen[i] = _common_run(pre_ids, full)
        n_out[i] = tok.count(outputs[i], False)
    return n_in, n_out, plen


def _alpaca_prompt(template: str) -> Callable[[str, str], str]:
    with_input, without_input = ALPACA_TEMPLATES[template]

    def fmt(instruction: str, inp: str) -> str:
        if inp.strip():
            return with_input.format(instruction=instruction, input=inp)
        return without_input.format(instruction=instruction)

    return fmt


def build_alpaca(
    from_path: str | Path | None = None,
    tokenizer: str | None = None,
    template: str = "raw",
    hub_name: str = ALPACA_HUB,
    split: str = "train",
    progress: bool = False,
) -> Trace:
    """Alpaca-format data (instruction / input / output) as a trace. `from_path` is a JSON or JSON-lines file;
    without it `hub_name` is loaded from the Hugging Face Hub. A missing `input` field counts as empty."""
    if template not in ALPACA_TEMPLATES:
        raise UserError(f"unknown template '{template}' (choose from {sorted(ALPACA_TEMPLATES)})", field="template")
    tok = get_tokenizer(tokenizer)
    if from_path is not None:
        file = Path(from_path)
        if file.is_dir():
            raise UserError("expected an Alpaca-format JSON file, got a folder", file)
        ds = _load_json_file(file)
        origin = {
            "input": file.name,
            "input_sha256": file_sha256(file),
            "licence": "as stated by the file's source (the Stanford Alpaca data itself is CC BY-NC 4.0)",
        }
    else:
        file = None
        ds = _load_hub(hub_name, None, split=split)
        origin = {
            "input": f"hub:{hub_name}",
            "licence": "CC BY-NC 4.0" if hub_name == ALPACA_HUB else f"see the dataset card of {hub_name}",
        }
    instructions = _text_column(ds, "instruction", file)
    inputs = _text_column(ds, "input", file, required=False)
    outputs = _text_column(ds, "output", file)
    fmt = _alpaca_prompt(template)
    prompts = [fmt(i, x) for i, x in zip(instructions, inputs)]
    n_in, n_out = _count(prompts, outputs, tok, progress, "tokenising alpaca")
    prov = {
        "kind": "dataset",
        "source": "Alpaca-format instruction data (instruction / input / output)",
        **origin,
        "citation": ALPACA_CITATION,
        "tokenizer": tok.name,
        "tokenizer_detail": tok.describe,
        "template": template,
        "template_text": " | ".join(ALPACA_TEMPLATES[template]),
        "n_in": N_IN_RULE,
        "n_out": N_OUT_RULE + " (the data set's output text)",
    }
    ids = [f"alpaca/{i}" for i in range(len(prompts))]
    return _finish(ids, n_in, n_out, prov)
