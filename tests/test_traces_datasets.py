"""Trace builders: GSM8K and Alpaca through the real `datasets` json loader and the real Mistral-7B tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datasets", reason="trace building needs the traces extra (pip install 'dcsim[traces]')")
MistralTokenizer = pytest.importorskip(
    "mistral_common.tokens.tokenizers.mistral", reason="trace building needs the traces extra").MistralTokenizer

from dcsim.cli import main  # noqa: E402
from dcsim.errors import UserError  # noqa: E402
from dcsim.traces.datasets import ALPACA_TEMPLATES, build_alpaca, build_gsm8k  # noqa: E402
from dcsim.traces.trace import load_trace  # noqa: E402

SPM = MistralTokenizer.v1().instruct_tokenizer.tokenizer  # the tokenizer's own count, for comparison


def spm_count(text: str, bos: bool) -> int:
    return len(SPM.encode(text, bos=bos, eos=False))


GSM_ROWS = [
    {"question": "Hello world", "answer": "Hello world"},
    {
        "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7",
    },
    {"question": "Janet\u2019s ducks lay 16 eggs per day.", "answer": "16 - 3 = 13\n#### 13"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def gsm_dir(tmp_path: Path) -> Path:
    d = tmp_path / "gsm8k"
    d.mkdir()
    write_jsonl(d / "test.jsonl", GSM_ROWS)
    return d


def test_gsm8k_counts_bos_in_prompt_not_in_answer(gsm_dir: Path) -> None:
    t = build_gsm8k("test", gsm_dir)
    # "Hello world" is [BOS, 'Hello', '▁world'] in the Mistral-7B v1 vocabulary: 3 tokens with BOS, 2 without.
    assert t.n_in[0] == 3
    assert t.n_out[0] == 2
    assert list(t.n_in) == [spm_count(r["question"], True) for r in GSM_ROWS]
    assert list(t.n_out) == [spm_count(r["answer"], False) for r in GSM_ROWS]
    assert list(t.source) == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert t.arrival_s is None
    assert t.provenance["rows_read"] == 3 and t.provenance["rows_kept"] == 3
    assert t.provenance["tokenizer"] == "mistral-7b-v1" and t.provenance["licence"] == "MIT"


def test_gsm8k_qa_template_counts_the_templated_text(gsm_dir: Path) -> None:
    raw = build_gsm8k("test", gsm_dir, template="raw")
    qa = build_gsm8k("test", gsm_dir, template="qa")
    expected = [spm_count(f"Question: {r['question']}\nAnswer:", True) for r in GSM_ROWS]
    assert list(qa.n_in) == expected
    assert np.all(qa.n_in > raw.n_in)  # the template adds tokens to every prompt
    assert list(qa.n_out) == list(raw.n_out)  # outputs do not depend on the prompt template


def test_gsm8k_accepts_a_file_path_and_drops_empty_answers(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "mine.jsonl", GSM_ROWS + [{"question": "No answer?", "answer": ""}])
    t = build_gsm8k("test", f)
    assert len(t) == 3
    assert t.provenance["rows_read"] == 4
    assert t.provenance["rows_dropped_empty_output"] == 1
    assert t.provenance["input"] == "mine.jsonl"


def test_gsm8k_bad_inputs_name_the_problem(tmp_path: Path, gsm_dir: Path) -> None:
    with pytest.raises(UserError) as e:
        build_gsm8k("test", tmp_path / "nowhere")
    assert "not found" in e.value.message
    with pytest.raises(UserError) as e:
        build_gsm8k("train", gsm_dir)  # the folder has no train.jsonl
    assert e.value.field == "split"
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "x", "answer": "y"}])
    with pytest.raises(UserError) as e:
        build_gsm8k("test", wrong)
    assert e.value.field == "question"
    numeric = write_jsonl(tmp_path / "numeric.jsonl", [{"question": "q", "answer": 7}])
    with pytest.raises(UserError) as e:
        build_gsm8k("test", numeric)
    assert e.value.field == "answer"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": \n')
    with pytest.raises(UserError) as e:
        build_gsm8k("test", broken)
    assert e.value.file == str(broken)
    with pytest.raises(UserError) as e:
        build_gsm8k("test", gsm_dir, template="fewshot")
    assert e.value.field == "template"
    with pytest.raises(UserError) as e:
        # a Hugging Face tokenizer that is not there (a missing local folder: fails at once, no network tried)
        build_gsm8k("test", gsm_dir, tokenizer=str(tmp_path / "no-such-tokenizer"))
    assert e.value.field == "tokenizer"


ALPACA_ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well. Sleep. Move."},
    {"instruction": "Translate to French.", "input": "The weather is nice today.", "output": "Il fait beau."},
    {"instruction": "Say nothing.", "input": "", "output": ""},
]


def test_alpaca_raw_and_stanford_templates(tmp_path: Path) -> None:
    f = tmp_path / "alpaca_data.json"
    f.write_text(json.dumps(ALPACA_ROWS))  # a JSON array, as the Stanford release ships it
    raw = build_alpaca(f)
    assert len(raw) == 2 and raw.provenance["rows_dropped_empty_output"] == 1
    assert raw.n_in[0] == spm_count("Give three tips for staying healthy.", True)
    assert raw.n_in[1] == spm_count("Translate to French.\n\nThe weather is nice today.", True)
    assert list(raw.n_out) == [spm_count("Eat well. Sleep. Move.", False), spm_count("Il fait beau.", False)]

    st = build_alpaca(f, template="alpaca")
    with_input, without_input = ALPACA_TEMPLATES["alpaca"]
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert st.n_in[0] == spm_count(without_input.format(instruction=ALPACA_ROWS[0]["instruction"]), True)
    assert st.n_in[1] == spm_count(
        with_input.format(instruction=ALPACA_ROWS[1]["instruction"], input=ALPACA_ROWS[1]["input"]), True
    )
    assert list(st.source) == ["alpaca/0", "alpaca/1"]


def test_alpaca_missing_input_field_is_empty_but_missing_output_is_an_error(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Name a colour.", "output": "Blue."}])
    t = build_alpaca(f)
    assert t.n_in[0] == spm_count("Name a colour.", True)
    bad = write_jsonl(tmp_path / "b.jsonl", [{"instruction": "Name a colour.", "response": "Blue."}])
    with pytest.raises(UserError) as e:
        build_alpaca(bad)
    assert e.value.field == "output"
    with pytest.raises(UserError):
        build_alpaca(tmp_path / "missing.json")


def test_cli_build_writes_parquet_with_provenance(gsm_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "g.parquet"
    assert main(["trace", "build", "gsm8k", "--split", "test", "--from", str(gsm_dir), "-o", str(out)]) == 0
    t = load_trace(out)
    assert list(t.n_in) == [spm_count(r["question"], True) for r in GSM_ROWS]
    cmd = t.provenance["command"]
    # absolute paths are not recorded: the data folder is written DATA/<name>
    assert cmd.startswith("dcsim trace build gsm8k --split test --from DATA/gsm8k ")
    assert str(tmp_path) not in json.dumps(t.provenance)
    assert t.provenance["rows_kept"] == 3
    capsys.readouterr()
    assert main(["trace", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "requests: 3" in shown and "template: raw" in shown
    # bad input: exit status 2, nothing written
    bad_out = tmp_path / "bad.parquet"
    assert main(["trace", "build", "gsm8k", "--from", str(tmp_path / "none"), "-o", str(bad_out)]) == 2
    assert not bad_out.exists()
    assert main(["trace", "build", "gsm8k", "--from", str(gsm_dir), "-o", str(tmp_path / "x.csv")]) == 2


@pytest.mark.parametrize("split", ["test", "train"])
def test_gsm8k_sample_builds_the_first_requests_of_the_shipped_trace(sample_data: Path, split: str) -> None:
    """The first lines of each published split (tests/data/gsm8k): every request counted by the tokenizer itself,
    and the same requests, in order, as the start of the shipped trace built from the whole split."""
    f = sample_data / "gsm8k" / f"{split}.jsonl"
    rows = [json.loads(line) for line in f.read_text().splitlines()]
    t = build_gsm8k(split, sample_data / "gsm8k")
    n = len(rows)
    assert len(t) == n >= 100 and t.provenance["rows_read"] == t.provenance["rows_kept"] == n
    assert list(t.n_in) == [spm_count(r["question"], True) for r in rows]
    assert list(t.n_out) == [spm_count(r["answer"], False) for r in rows]
    assert t.provenance["input_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    shipped = load_trace(Path(__file__).resolve().parents[1] / "traces" / f"gsm8k-{split}.parquet")
    assert np.array_equal(shipped.n_in[:n], t.n_in) and np.array_equal(shipped.n_out[:n], t.n_out)
    assert list(shipped.source[:n]) == list(t.source) == [f"gsm8k/{split}/{i}" for i in range(n)]


# Measured with this builder (mistral-7b-v1, raw template) on the published GSM8K files; see traces/README.md.
def test_gsm8k_published_test_split(shared_data: Path) -> None:
    t = build_gsm8k("test", shared_data / "gsm8k")
    assert len(t) == 1319
    assert t.n_in.mean() == pytest.approx(65.90, abs=0.05)
    assert t.n_out.mean() == pytest.approx(129.97, abs=0.05)


def test_shipped_gsm8k_traces_match_a_fresh_build(shared_data: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    shipped = load_trace(repo / "traces" / "gsm8k-test.parquet")
    fresh = build_gsm8k("test", shared_data / "gsm8k")
    assert np.array_equal(shipped.n_in, fresh.n_in) and np.array_equal(shipped.n_out, fresh.n_out)
    assert shipped.provenance["input_sha256"] == fresh.provenance["input_sha256"]
    assert len(load_trace(repo / "traces" / "gsm8k-train.parquet")) == 7473
