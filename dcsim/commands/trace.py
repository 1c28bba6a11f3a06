"""`dcsim trace`: build traces from prompt data sets, import published traces, and summarise a trace file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from dcsim.errors import UserError
from dcsim.registry import Registry
from dcsim.traces.tokenizers import DEFAULT_TOKENIZER
from dcsim.traces.trace import Trace, load_trace

PATHS_NOTE = "input paths outside the working folder are written DATA/<folder>[/<file>]"


def _shown(path: str | Path, is_file: bool) -> str:
    """A path as it goes into a recorded command: relative paths inside the working folder as typed, any other
    path as DATA/<parent>/<name> (file) or DATA/<name> (folder), so no machine-specific path is recorded."""
    p = Path(path)
    if not p.is_absolute() and ".." not in p.parts:
        return p.as_posix()
    p = p.resolve()
    return f"DATA/{p.parent.name}/{p.name}" if is_file else f"DATA/{p.name}"


def _output_path(out: str, force: bool = False) -> Path:
    """The trace file to write, refused before any work if it cannot be written or is a file dcsim did not
    write (unless force)."""
    from dcsim.outputs import check_file, owned_trace

    p = Path(out)
    if p.suffix.lower() != ".parquet":
        raise UserError("the output must be a .parquet file", p, "-o")
    return check_file(p, force, owned_trace)


def _write(trace: Trace, out: Path, command: str) -> None:
    import dcsim

    trace.provenance["command"] = command
    trace.provenance["command_paths"] = PATHS_NOTE
    trace.provenance["dcsim_version"] = dcsim.__version__
    trace.to_parquet(out)
    s = summarize(trace)
    print(
        f"wrote {out}: {s['requests']} requests, mean n_in {s['n_in']['mean']:.1f}, "
        f"mean n_out {s['n_out']['mean']:.1f}"
    )


# ---- sources -----------------------------------------------------------------------------------
class TraceSource:
    """A source that `dcsim trace build|import NAME` offers: a small class registered here by name with
    `@SOURCES.register("name")`, so adding one touches one class. `action` is "build" (from a prompt data set,
    token counts from a tokenizer) or "import" (a published trace); `make` returns the trace and the command that
    rebuilds it (without its -o)."""

    action: ClassVar[str] = "import"
    help: ClassVar[str] = ""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        """The source's own arguments (-o and --force are every source's)."""

    def make(self, args: argparse.Namespace) -> tuple[Trace, str]:
        raise NotImplementedError


SOURCES: Registry[TraceSource] = Registry("trace source")


@SOURCES.register("gsm8k")
class Gsm8k(TraceSource):
    action = "build"
    help = "GSM8K: one request per problem"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--split", default="test", help="train or test (default test)")
        p.add_argument("--from", dest="from_path", metavar="DIR", help="folder with SPLIT.jsonl (else the Hub)")
        p.add_argument("--template", default=None, choices=["raw", "qa"],
                       help="prompt template (default raw; qa with --shots, which needs qa)")
        p.add_argument("--shots", type=int, default=0, metavar="K",
                       help="prepend the first K training problems with their answers as a shared few-shot "
                            "preamble (a prefix_id/prefix_len shared by every request)")
        p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help=f"default {DEFAULT_TOKENIZER} (offline)")

    def make(self, args: argparse.Namespace) -> tuple[Trace, str]:
        from dcsim.traces.datasets import build_gsm8k

        template = args.template or ("qa" if args.shots else "raw")
        trace = build_gsm8k(args.split, args.from_path, args.tokenizer, template, progress=True, shots=args.shots)
        src = f" --from {_shown(args.from_path, Path(args.from_path).is_file())}" if args.from_path else ""
        shots = f" --shots {args.shots}" if args.shots else ""
        return trace, (f"dcsim trace build gsm8k --split {args.split}{src} --tokenizer {args.tokenizer} "
                       f"--template {template}{shots}")


@SOURCES.register("alpaca")
class Alpaca(TraceSource):
    action = "build"
    help = "Alpaca-format instruction data: one request per record"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--from", dest="from_path", metavar="FILE", help="Alpaca-format JSON/JSONL (else the Hub)")
        p.add_argument("--hub", default="tatsu-lab/alpaca", help="Hub data set when --from is absent")
        p.add_argument("--template", default="raw", choices=["raw", "alpaca"], help="prompt template (default raw)")
        p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help=f"default {DEFAULT_TOKENIZER} (offline)")

    def make(self, args: argparse.Namespace) -> tuple[Trace, str]:
        from dcsim.traces.datasets import build_alpaca

        trace = build_alpaca(args.from_path, args.tokenizer, args.template, hub_name=args.hub, progress=True)
        src = f" --from {_shown(args.from_path, True)}" if args.from_path else f" --hub {args.hub}"
        return trace, f"dcsim trace build alpaca{src} --tokenizer {args.tokenizer} --template {args.template}"


@SOURCES.register("azure")
class Azure(TraceSource):
    help = "Azure LLM inference trace CSV, 2023 or 2024 release"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("file")

    def make(self, args: argparse.Namespace) -> tuple[Trace, str]:
        from dcsim.traces.formats import import_azure

        return import_azure(args.file), f"dcsim trace import azure {_shown(args.file, True)}"


@SOURCES.register("burstgpt")
class BurstGpt(TraceSource):
    help = "BurstGPT CSV"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("file")
        p.add_argument("--model", help="keep only this Model (ChatGPT, GPT-4)")
        p.add_argument("--log-type",
                       help="keep only this Log Type ('Conversation log' / 'API log', or conversation / api)")

    def make(self, args: argparse.Namespace) -> tuple[Trace, str]:
        from dcsim.traces.formats import import_burstgpt

        trace = import_burstgpt(args.file, model=args.model, log_type=args.log_type)
        flt = (f" --model '{args.model}'" if args.model else "") + (
            f" --log-type '{args.log_type}'" if args.log_type else "")
        return trace, f"dcsim trace import burstgpt {_shown(args.file, True)}{flt}"


def _from_source(args: argparse.Namespace) -> int:
    """Any source: the output checked before any work, the trace made, written with its recorded command."""
    out = _output_path(args.output, args.force)
    trace, cmd = args.source().make(args)
    _write(trace, out, f"{cmd} -o {_shown(out, True)}")
    return 0


def summarize(trace: Trace) -> dict:
    """Count, token statistics, duration and mean arrival rate of a trace."""

    def stats(x: np.ndarray) -> dict:
        x = np.asarray(x, np.float64)
        return {
            "mean": float(x.mean()),
            "p50": float(np.percentile(x, 50)),
            "p99": float(np.percentile(x, 99)),
            "min": int(x.min()),
            "max": int(x.max()),
        }

    n = len(trace)
    s: dict = {"requests": n}
    if n == 0:
        return s
    s["n_in"] = stats(trace.n_in)
    s["n_out"] = stats(trace.n_out)
    if trace.arrival_s is not None and n > 1:
        dur = float(trace.arrival_s[-1] - trace.arrival_s[0])
        s["duration_s"] = dur
        s["mean_rate_per_s"] = (n - 1) / dur if dur > 0 else None
    return s


def _show(args: argparse.Namespace) -> int:
    trace = load_trace(args.file)
    s = summarize(trace)
    if args.json:
        print(json.dumps({"summary": s, "provenance": trace.provenance}, indent=2, sort_keys=True))
        return 0
    print(f"file: {args.file}")
    print(f"requests: {s['requests']}")
    for k in ("n_in", "n_out"):
        if k in s:
            v = s[k]
            print(
                f"{k:6s} mean {v['mean']:9.1f}   p50 {v['p50']:8.1f}   p99 {v['p99']:8.1f}   "
                f"min {v['min']}   max {v['max']}"
            )
    if "duration_s" in s:
        rate = s["mean_rate_per_s"]
        rate_txt = f"{rate:.3f} req/s" if rate is not None else "n/a (all at one instant)"
        print(f"duration: {s['duration_s']:.1f} s   mean rate: {rate_txt}")
    else:
        print("arrivals: none recorded (use a synthetic arrival process: poisson, gamma, diurnal, all_at_once)")
    if trace.provenance:
        print("provenance:")
        for k in sorted(trace.provenance):
            print(f"  {k}: {trace.provenance[k]}")
    return 0


# ---- parser ------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    p = subparsers.add_parser("trace", help="build, import and inspect request traces")
    sub = p.add_subparsers(dest="trace_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="build a trace from a prompt data set (token counts from a tokenizer)")
    bsub = build.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    imp = sub.add_parser("import", help="import a published request trace (arrival times and token counts)")
    isub = imp.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name, cls in SOURCES.items():
        q = (bsub if cls.action == "build" else isub).add_parser(name, help=cls.help)
        cls().add_arguments(q)
        q.add_argument("-o", "--output", required=True, help="output .parquet")
        q.add_argument("--force", action="store_true", help="replace an -o file that dcsim did not write")
        q.set_defaults(func=_from_source, source=cls)

    sh = sub.add_parser("show", help="summarise a trace: counts, token statistics, rate, provenance")
    sh.add_argument("file")
    sh.add_argument("--json", action="store_true", help="print JSON")
    sh.set_defaults(func=_show)
