"""Trace sources in the one registry: `dcsim trace build|import NAME` offers exactly the registered classes, and a
class registered in one file becomes a working subcommand (its own arguments, -o checked first, its recorded
command); the shipped importers record the commands that remake their traces."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from dcsim.cli import main
from dcsim.commands.trace import SOURCES, TraceSource
from dcsim.errors import UserError
from dcsim.traces.trace import Trace, load_trace

AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,100,10\n2023-11-16 18:15:48.5,50,5\n"
BURSTGPT = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "0,ChatGPT,10,5,15,Conversation log\n1.5,GPT-4,20,7,27,API log\n3,ChatGPT,30,6,36,API log\n")


def test_the_registry_holds_the_shipped_sources_and_the_parser_offers_them(capsys) -> None:
    assert {n: c.action for n, c in SOURCES.items()} == {"gsm8k": "build", "alpaca": "build", "azure": "import",
                                                           "burstgpt": "import"}
    with pytest.raises(SystemExit) as e:
        main(["trace", "build", "sharegpt", "-o", "t.parquet"])
    assert e.value.code == 2
    assert "invalid choice: 'sharegpt' (choose from 'gsm8k', 'alpaca')" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["trace", "import", "gsm8k", "x.csv", "-o", "t.parquet"])  # a builder is not an import format
    assert e.value.code == 2
    assert "(choose from 'azure', 'burstgpt')" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"unknown trace source 'sharegpt' \(known: alpaca, azure, burstgpt, gsm8k\)"):
        SOURCES.get("sharegpt", field="DATASET")


@pytest.mark.parametrize("name, text, extra, n_in, command", [
    ("azure", AZURE, [], [100, 50], "dcsim trace import azure DATA/{d}/t.csv -o t.parquet"),
    ("burstgpt", BURSTGPT, ["--model", "chatgpt", "--log-type", "api"], [30],
     "dcsim trace import burstgpt DATA/{d}/t.csv --model 'chatgpt' --log-type 'api' -o t.parquet"),
])
def test_importers_record_the_command_that_remakes_the_trace(tmp_path, monkeypatch, capsys, name, text, extra,
                                                             n_in, command) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "t.csv").write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["trace", "import", name, str(src / "t.csv"), *extra, "-o", "t.parquet"]) == 0
    t = load_trace(work / "t.parquet")
    assert list(t.n_in) == n_in
    assert t.provenance["command"] == command.format(d="in")
    assert f"wrote t.parquet: {len(n_in)} requests" in capsys.readouterr().out


class _Constant(TraceSource):
    """A source of one's own: N requests of fixed sizes, one second apart."""

    action = "build"
    help = "N requests of N_IN input and 3 output tokens"
    made = 0

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("n", type=int)
        p.add_argument("--n-in", type=int, default=7)

    def make(self, args: argparse.Namespace) -> tuple[Trace, str]:
        type(self).made += 1
        n_in = np.full(args.n, args.n_in, np.int64)
        trace = Trace(n_in, np.full(args.n, 3, np.int64), np.arange(args.n, dtype=np.float64), None,
                      {"kind": "trace", "source": "constant"}).validate()
        return trace, f"dcsim trace build constant {args.n} --n-in {args.n_in}"


def test_a_source_registered_in_one_file_is_a_working_subcommand(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(SOURCES, "_classes", dict(SOURCES._classes))  # the registration ends with the test
    monkeypatch.setattr(_Constant, "made", 0)
    cls = SOURCES.register("constant")(_Constant)
    monkeypatch.chdir(tmp_path)
    assert main(["trace", "build", "constant", "4", "--n-in", "11", "-o", "c.parquet"]) == 0
    t = load_trace(tmp_path / "c.parquet")
    assert list(t.n_in) == [11] * 4 and list(t.arrival_s) == [0, 1, 2, 3]
    assert t.provenance["command"] == "dcsim trace build constant 4 --n-in 11 -o c.parquet"
    assert cls.made == 1
    # the output is refused before the source does any work
    assert main(["trace", "build", "constant", "4", "-o", "c.csv"]) == 2
    assert "field '-o': the output must be a .parquet file" in capsys.readouterr().err
    assert cls.made == 1 and not (tmp_path / "c.csv").exists()
    # and it is a builder only
    with pytest.raises(SystemExit):
        main(["trace", "import", "constant", "4", "-o", "c.parquet"])
