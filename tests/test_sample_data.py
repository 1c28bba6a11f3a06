"""The samples in tests/data: small, described with their source and licence, and (where the full data sets are
present) verbatim cuts of the published files: whole lines or records, byte for byte, none edited."""

from __future__ import annotations

import csv
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "data"
FOLDERS = ["gsm8k", "azure-llm-inference-2023", "mlenergy-leaderboard-v2", "mlenergy-leaderboard-v3",
           "wilkins2024-energy-inference", "powermetrics-samples"]
WITH_LICENCE_FILE = {"gsm8k", "azure-llm-inference-2023", "mlenergy-leaderboard-v2"}  # as the sources ship them
HEAD_CUTS = ("gsm8k/test.jsonl", "gsm8k/train.jsonl", "azure-llm-inference-2023/AzureLLMInferenceTrace_code.csv",
             "azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv")
RECORD_CUTS = ("wilkins2024-energy-inference/all-input-stats.csv", "wilkins2024-energy-inference/all-output-stats.csv")


def sample_files() -> list[str]:
    return sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*") if p.is_file()
                  and p.name != "README.md")


def raw_records(path: Path) -> list[str]:
    """Each CSV record as the exact text it spans in the file (a quoted field may hold line breaks)."""
    lines = path.read_bytes().decode("utf-8").splitlines(keepends=True)
    out, buf = [], []

    def feed():
        for line in lines:
            buf.append(line)
            yield line

    for _ in csv.reader(feed()):
        out.append("".join(buf))
        buf.clear()
    return out


def test_samples_are_small_and_described():
    assert sorted(p.name for p in SAMPLES.iterdir() if p.is_dir()) == sorted(FOLDERS)
    assert sum((SAMPLES / f).stat().st_size for f in sample_files()) < 400_000
    readme = (SAMPLES / "README.md").read_text()
    for folder in FOLDERS:
        assert f"`{folder}/`" in readme, folder
        assert (SAMPLES / folder / "LICENSE").is_file() == (folder in WITH_LICENCE_FILE), folder
    assert "../" not in readme  # sources are cited by their public names, not by paths outside the project


def test_samples_are_verbatim_cuts_of_the_published_files(shared_data):
    for folder in FOLDERS:  # every licence file of a sampled folder is kept
        if (shared_data / folder / "LICENSE").is_file():
            assert (SAMPLES / folder / "LICENSE").is_file(), folder
    for rel in sample_files():
        mine, theirs = (SAMPLES / rel).read_bytes(), (shared_data / rel).read_bytes()
        if rel in HEAD_CUTS:  # the header (CSV) and the first lines, each with its own line ending
            assert theirs.startswith(mine) and len(theirs) > len(mine) and mine.endswith(b"\n"), rel
        elif rel in RECORD_CUTS:  # the header and some of the records, in the file's order
            sample, full = raw_records(SAMPLES / rel), raw_records(shared_data / rel)
            assert sample[0] == full[0] and len(full) > len(sample) > 100, rel
            rest = iter(full[1:])
            assert all(any(r == f for f in rest) for r in sample[1:]), rel  # an ordered subsequence
        else:  # whole files
            assert mine == theirs, rel
