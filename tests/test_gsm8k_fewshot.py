"""Few-shot GSM8K traces: a preamble of the first K train problems shared by every request (prefix_id/prefix_len),
built with the real Mistral-7B tokenizer from the first lines of the published GSM8K files (tests/data/gsm8k) and,
where present, from the whole files; bad inputs refused naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datasets", reason="trace building needs the traces extra (pip install 'dcsim[traces]')")
pytest.importorskip("mistral_common", reason="trace building needs the traces extra (pip install 'dcsim[traces]')")

from dcsim.cli import main
from dcsim.errors import UserError
from dcsim.traces.datasets import GSM8K_SHOT, build_gsm8k
from dcsim.traces.tokenizers import get_tokenizer
from dcsim.traces.trace import load_trace

TOK = get_tokenizer("mistral-7b-v1")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def preamble(train: list[dict], k: int) -> str:
    return "".join(GSM8K_SHOT.format(question=r["question"], answer=r["answer"]) for r in train[:k])


SHIPPED_8SHOT = Path(__file__).resolve().parents[1] / "traces" / "gsm8k-test-8shot.parquet"


@pytest.fixture(scope="module")
def published() -> dict:
    """The GSM8K sample folder (the first lines of both published splits), the zero-shot qa trace, and the 2- and
    8-shot traces of its test split."""
    from conftest import SAMPLE_DATA

    d = SAMPLE_DATA / "gsm8k"
    return {
        "dir": d,
        "n": len(read_jsonl(d / "test.jsonl")),
        "train": read_jsonl(d / "train.jsonl"),
        "qa": build_gsm8k("test", d, template="qa"),
        2: build_gsm8k("test", d, shots=2),
        8: build_gsm8k("test", d, shots=8),
    }


@pytest.mark.parametrize("k", [2, 8])
def test_prefix_is_the_preamble_and_the_rest_is_the_zero_shot_question(published: dict, k: int) -> None:
    t, qa = published[k], published["qa"]
    pre_ids = TOK.ids(preamble(published["train"], k), True)
    assert TOK.count(preamble(published["train"], k), True) == len(pre_ids)
    assert len(t) == len(qa) == published["n"] >= 100
    # the preamble ends with "\n\n", a clean token boundary: the whole preamble (BOS included) is shared
    assert np.all(t.prefix_len == len(pre_ids))
    assert np.all(t.prefix_id == 0)
    # the question part tokenises as it does at the start of a zero-shot qa prompt, less that prompt's BOS
    assert np.array_equal(t.n_in - t.prefix_len, qa.n_in - 1)
    assert np.array_equal(t.n_out, qa.n_out)
    assert list(t.source) == list(qa.source)
    p = t.provenance
    assert p["prefix_tokens"] == len(pre_ids) and len(set(t.prefix_len.tolist())) == 1
    assert p["shots"] == k and p["shot_source"] == f"first {k} problems of the GSM8K train split"
    assert p["template"] == "qa" and p["template_text"] == "{preamble}Question: {question}\nAnswer:"
    assert p["shot_input"] == "train.jsonl"


def test_sample_8shot_is_the_start_of_the_shipped_8shot_trace(published: dict) -> None:
    """The shipped trace was built from the whole files; its preamble is the first 8 train problems, which the
    sample holds, so its first requests are the sample's, token for token."""
    t, shipped, n = published[8], load_trace(SHIPPED_8SHOT), published["n"]
    assert shipped.provenance["shots"] == 8 and shipped.provenance["template"] == "qa"
    for col in ("n_in", "n_out", "prefix_id", "prefix_len"):
        assert np.array_equal(getattr(shipped, col)[:n], getattr(t, col)), col
    for key in ("prefix_tokens", "preamble_sha256", "template_text", "shot_text"):
        assert t.provenance[key] == shipped.provenance[key], key


def test_published_8shot_split_is_the_shipped_trace(shared_data: Path) -> None:
    """All 1,319 test problems of the published split (needs the full data)."""
    d = shared_data / "gsm8k"
    t, shipped = build_gsm8k("test", d, shots=8), load_trace(SHIPPED_8SHOT)
    assert len(t) == len(shipped) == 1319
    for col in ("n_in", "n_out", "prefix_id", "prefix_len"):
        assert np.array_equal(getattr(shipped, col), getattr(t, col)), col
    for key in ("input_sha256", "shot_input_sha256", "preamble_sha256", "prefix_tokens"):
        assert t.provenance[key] == shipped.provenance[key], key


def test_prefix_grows_with_shots(published: dict) -> None:
    assert published[8].prefix_len[0] > published[2].prefix_len[0] > 1
    assert published[8].provenance["prefix_tokens"] > published[2].provenance["prefix_tokens"]


def test_parquet_round_trip_keeps_prefix_columns(published: dict, tmp_path: Path) -> None:
    t = published[8]
    out = tmp_path / "g8.parquet"
    t.to_parquet(out)
    back = load_trace(out)
    assert back.prefix_id is not None and back.prefix_len is not None
    assert np.array_equal(back.prefix_id, t.prefix_id) and np.array_equal(back.prefix_len, t.prefix_len)
    assert np.array_equal(back.n_in, t.n_in)
    assert back.provenance["prefix_tokens"] == t.provenance["prefix_tokens"]


def test_cli_shots_defaults_to_qa_and_records_the_command(published: dict, tmp_path: Path) -> None:
    out = tmp_path / "g2.parquet"
    assert main(["trace", "build", "gsm8k", "--from", str(published["dir"]), "--shots", "2", "-o", str(out)]) == 0
    t = load_trace(out)
    cmd = t.provenance["command"]
    assert cmd.startswith("dcsim trace build gsm8k --split test --from DATA/gsm8k ")
    assert " --template qa --shots 2 -o " in cmd and str(tmp_path) not in cmd
    assert np.array_equal(t.prefix_len, published[2].prefix_len)


# ---- small local folder: the train split, and refusals ------------------------------------------------
TRAIN = [{"question": f"Q{i}: {i} + 1 apples?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(5)]
TEST = [{"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"}]


@pytest.fixture
def gsm_dir(tmp_path: Path) -> Path:
    d = tmp_path / "gsm8k"
    d.mkdir()
    for name, rows in (("train", TRAIN), ("test", TEST)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_train_split_with_shots_drops_the_exemplars(gsm_dir: Path) -> None:
    t = build_gsm8k("train", gsm_dir, shots=2)
    assert list(t.source) == ["gsm8k/train/2", "gsm8k/train/3", "gsm8k/train/4"]
    pre = preamble(TRAIN, 2)
    assert list(t.n_in) == [TOK.count(pre + f"Question: {r['question']}\nAnswer:", True) for r in TRAIN[2:]]
    p = t.provenance
    assert p["rows_read"] == 5 and p["rows_dropped_exemplars"] == 2 and p["rows_kept"] == 3
    assert p["prefix_tokens"] == len(TOK.ids(pre, True)) and "shot_input" not in p


def test_zero_shots_has_no_prefix_columns(gsm_dir: Path) -> None:
    t = build_gsm8k("test", gsm_dir)
    assert t.prefix_id is None and t.prefix_len is None and "shots" not in t.provenance


@pytest.mark.parametrize(
    "kwargs, field, words",
    [
        ({"shots": -1}, "shots", "0 or more"),
        ({"shots": 6}, "shots", "more than the 5 problems"),
        ({"shots": 2, "template": "raw"}, "template", "qa template"),
    ],
)
def test_bad_shots_refused_naming_the_field(gsm_dir: Path, kwargs: dict, field: str, words: str) -> None:
    with pytest.raises(UserError) as e:
        build_gsm8k("test", gsm_dir, **kwargs)
    assert e.value.field == field and words in str(e.value)


def test_single_file_from_has_no_train_split(gsm_dir: Path) -> None:
    with pytest.raises(UserError) as e:
        build_gsm8k("test", gsm_dir / "test.jsonl", shots=1)
    assert e.value.field == "shots" and "folder" in str(e.value)
    (gsm_dir / "train.jsonl").unlink()
    with pytest.raises(UserError) as e:
        build_gsm8k("test", gsm_dir, shots=1)
    assert e.value.field == "shots" and "train.jsonl" in str(e.value)


def test_cli_refuses_raw_with_shots_exit_2_no_traceback(gsm_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad.parquet"
    args = ["trace", "build", "gsm8k", "--from", str(gsm_dir), "--template", "raw", "--shots", "2", "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dcsim: error: ") and "template" in err and "Traceback" not in err, err
    assert not out.exists()
    p = subprocess.run([sys.executable, "-m", "dcsim.cli", *args[:-1], str(out)], capture_output=True, text=True)
    assert p.returncode == 2 and "template" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()
