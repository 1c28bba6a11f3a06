"""Trace importers: Azure LLM inference 2023/2024 and BurstGPT, on small hand-checkable files and the real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcsim.cli import main
from dcsim.errors import UserError
from dcsim.traces.formats import import_azure, import_burstgpt
from dcsim.traces.trace import load_trace


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


AZURE_2023 = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
    "2023-11-16 18:15:46.6805900,374,44\r\n"
    "2023-11-16 18:15:46.6805901,10,0\r\n"  # a failed request (0 generated tokens): dropped
    "2023-11-16 18:15:50.9951690,396,109\r\n"
    "2023-11-16 18:15:50.9951691,25,3"  # 100 ns after the previous one; no final newline, as the release
)


def test_azure_2023_arrivals_are_seconds_after_first_request(tmp_path: Path) -> None:
    t = import_azure(write(tmp_path / "AzureLLMInferenceTrace_conv.csv", AZURE_2023))
    assert list(t.n_in) == [374, 396, 25]
    assert list(t.n_out) == [44, 109, 3]
    # 18:15:50.9951690 - 18:15:46.6805900 = 4.3145790 s; the 7th fractional digit is 100 ns
    assert t.arrival_s[0] == 0.0
    assert t.arrival_s[1] == pytest.approx(4.314579, abs=1e-9)
    assert t.arrival_s[2] - t.arrival_s[1] == pytest.approx(1e-7, abs=1e-9)
    p = t.provenance
    assert (p["rows_read"], p["rows_dropped_zero_output"], p["rows_kept"]) == (4, 1, 3)
    assert p["licence"] == "CC-BY-4.0" and "Splitwise" in p["citation"]


def test_azure_2024_week_format_with_utc_offset_and_midnight(tmp_path: Path) -> None:
    csv = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 23:59:59.500000+00:00,1000,200\n"
        "2024-05-11 00:00:00.750000+00:00,2000,20\n"
        "2024-05-12 00:00:00.500000+00:00,30,3\n"
    )
    t = import_azure(write(tmp_path / "AzureLLMInferenceTrace_code_1week.csv", csv))
    assert np.allclose(t.arrival_s, [0.0, 1.25, 86401.0])
    assert "DynamoLLM" in t.provenance["citation"]
    assert t.provenance["trace_start_utc"].startswith("2024-05-10T23:59:59.5")


def test_azure_unsorted_rows_are_sorted_by_time(tmp_path: Path) -> None:
    csv = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:00:10.0000000,3,30\n"
        "2023-11-16 18:00:00.0000000,1,10\n"
        "2023-11-16 18:00:05.0000000,2,20\n"
    )
    t = import_azure(write(tmp_path / "a.csv", csv))
    assert list(t.arrival_s) == [0.0, 5.0, 10.0]
    assert list(t.n_in) == [1, 2, 3] and list(t.n_out) == [10, 20, 30]
    assert t.provenance["input_sorted_by_time"] is False


@pytest.mark.parametrize(
    "row, field, words",
    [
        ("2023-11-16 18:00:01.0,-5,10", "ContextTokens", ">= 0"),
        ("2023-11-16 18:00:01.0,5,12.5", "GeneratedTokens", "whole numbers"),
        ("2023-11-16 18:00:01.0,five,12", "ContextTokens", "not a number"),
        ("2023-11-16 18:00:01.0,,12", "ContextTokens", "empty"),
        ("yesterday,5,12", "TIMESTAMP", "timestamp"),
    ],
)
def test_azure_bad_cells_name_line_and_field(tmp_path: Path, row: str, field: str, words: str) -> None:
    csv = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,1,1\n" + row + "\n"
    with pytest.raises(UserError) as e:
        import_azure(write(tmp_path / "bad.csv", csv))
    assert e.value.field == field
    assert "line 3" in e.value.message and words in e.value.message


def test_azure_missing_column_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        import_azure(write(tmp_path / "m.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:00:00.0,1\n"))
    assert e.value.field == "GeneratedTokens"
    with pytest.raises(UserError) as e:
        import_azure(tmp_path / "absent.csv")
    assert "not found" in e.value.message


BURST_V1 = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,0,472,Conversation log\n"  # failure: 0 response tokens
    "7,ChatGPT,1087,18,1105,Conversation log\n"
    "9,GPT-4,417,38,455,API log\n"
    "12,ChatGPT,300,100,400,API log\n"
    "20,GPT-4,50,5,55,Conversation log\n"
)


def test_burstgpt_drops_failures_and_starts_at_first_kept_request(tmp_path: Path) -> None:
    t = import_burstgpt(write(tmp_path / "BurstGPT_1.csv", BURST_V1))
    assert list(t.arrival_s) == [0.0, 2.0, 5.0, 13.0]
    assert list(t.n_in) == [1087, 417, 300, 50]
    assert list(t.n_out) == [18, 38, 100, 5]
    assert t.provenance["rows_dropped_zero_output"] == 1 and t.provenance["rows_kept"] == 4


def test_burstgpt_filters_by_model_and_log_type(tmp_path: Path) -> None:
    f = write(tmp_path / "BurstGPT_1.csv", BURST_V1)
    chat = import_burstgpt(f, model="ChatGPT")
    assert list(chat.n_in) == [1087, 300] and list(chat.arrival_s) == [0.0, 5.0]
    assert chat.provenance["rows_filtered_out"] == 2
    gpt4_conv = import_burstgpt(f, model="gpt-4", log_type="conversation")
    assert list(gpt4_conv.n_in) == [50]
    api = import_burstgpt(f, log_type="API log")
    assert list(api.n_in) == [417, 300] and list(api.arrival_s) == [0.0, 3.0]
    with pytest.raises(UserError) as e:
        import_burstgpt(f, model="Claude")
    assert e.value.field == "Model" and "ChatGPT" in e.value.message


def test_burstgpt_newer_columns(tmp_path: Path) -> None:
    csv = (
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "100.5,17,2.3,GPT-4,100,50,150,Conversation log\n"
        "101.0,17,1.1,ChatGPT,200,0,200,API log\n"
        "103.25,18,0.9,ChatGPT,20,2,22,API log\n"
    )
    t = import_burstgpt(write(tmp_path / "BurstGPT_v2.csv", csv))
    assert list(t.arrival_s) == [0.0, 2.75]
    assert list(t.n_out) == [50, 2]
    assert t.provenance["has_session_id"] is True


def test_burstgpt_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        import_burstgpt(write(tmp_path / "a.csv", "Timestamp,Model,Request tokens,Log Type\n1,GPT-4,3,API log\n"))
    assert e.value.field == "Response tokens"
    bad = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n1,GPT-4,-3,4,1,API log\n"
    with pytest.raises(UserError) as e:
        import_burstgpt(write(tmp_path / "b.csv", bad))
    assert e.value.field == "Request tokens"
    bad = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\nnoon,GPT-4,3,4,7,API log\n"
    with pytest.raises(UserError) as e:
        import_burstgpt(write(tmp_path / "c.csv", bad))
    assert e.value.field == "Timestamp"


def test_cli_import_and_show(tmp_path: Path, capsys) -> None:
    src = write(tmp_path / "BurstGPT_1.csv", BURST_V1)
    out = tmp_path / "b.parquet"
    assert main(["trace", "import", "burstgpt", str(src), "--model", "ChatGPT", "-o", str(out)]) == 0
    t = load_trace(out)
    assert list(t.arrival_s) == [0.0, 5.0]
    assert t.provenance["command"].startswith("dcsim trace import burstgpt DATA/")
    capsys.readouterr()
    assert main(["trace", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "requests: 2" in shown and "duration: 5.0 s" in shown and "mean rate: 0.200 req/s" in shown
    assert main(["trace", "import", "azure", str(tmp_path / "none.csv"), "-o", str(out)]) == 2


@pytest.mark.parametrize("name", ["code", "conv"])
def test_azure_2023_sample(sample_data: Path, name) -> None:
    """The first rows of each published file (tests/data): tokens as the file has them, arrivals in seconds after
    the first timestamp worked out from the text (7 fractional digits, 100 ns), and the same requests as the
    first rows of the shipped trace built from the whole file."""
    f = sample_data / "azure-llm-inference-2023" / f"AzureLLMInferenceTrace_{name}.csv"
    lines = f.read_text().splitlines()
    assert lines[0] == "TIMESTAMP,ContextTokens,GeneratedTokens"
    rows = [line.split(",") for line in lines[1:]]
    t = import_azure(f)
    assert len(t) == len(rows) >= 200 and t.provenance["rows_read"] == len(rows)
    assert list(t.n_in) == [int(r[1]) for r in rows] and list(t.n_out) == [int(r[2]) for r in rows]

    def seconds(stamp: str) -> float:  # "2023-11-16 18:15:46.6805900", all within one day
        hh, mm, ss = stamp.split(" ")[1].split(":")
        return int(hh) * 3600 + int(mm) * 60 + int(ss.split(".")[0]) + int(ss.split(".")[1]) * 1e-7

    start = seconds(rows[0][0])
    assert {r[0].split(" ")[0] for r in rows} == {"2023-11-16"}
    assert t.arrival_s == pytest.approx([seconds(r[0]) - start for r in rows], abs=1e-6)
    assert t.provenance["trace_start_utc"].startswith(rows[0][0].replace(" ", "T")[:19])
    shipped = load_trace(Path(__file__).resolve().parents[1] / "traces" / f"azure-{name}-2023.parquet")
    n = len(t)
    assert np.array_equal(shipped.n_in[:n], t.n_in) and np.array_equal(shipped.n_out[:n], t.n_out)
    assert np.allclose(shipped.arrival_s[:n], t.arrival_s)


# Figures measured with this importer on the published Azure 2023 files (see traces/README.md). The shared data
# README says 8,818 code requests; the file holds 8,819 data rows (its last line has no newline). No rows are
# dropped: both files have no 0-token rows.
@pytest.mark.parametrize(
    "name, rows, mean_in, mean_out, duration",
    [("code", 8819, 2047.85, 27.88, 3435.95), ("conv", 19366, 1154.70, 211.13, 3501.72)],
)
def test_azure_2023_published(shared_data: Path, name, rows, mean_in, mean_out, duration) -> None:
    t = import_azure(shared_data / "azure-llm-inference-2023" / f"AzureLLMInferenceTrace_{name}.csv")
    assert len(t) == rows and t.provenance["rows_dropped_zero_output"] == 0
    assert t.n_in.mean() == pytest.approx(mean_in, abs=0.01)
    assert t.n_out.mean() == pytest.approx(mean_out, abs=0.01)
    assert t.arrival_s[-1] == pytest.approx(duration, abs=0.01)
    shipped = load_trace(Path(__file__).resolve().parents[1] / "traces" / f"azure-{name}-2023.parquet")
    assert np.array_equal(shipped.n_in, t.n_in) and np.allclose(shipped.arrival_s, t.arrival_s)
