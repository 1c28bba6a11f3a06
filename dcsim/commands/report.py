"""`dcsim report RESULTS -o report.html`: one self-contained HTML page for a run, sweep or plan folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="HTML report of a run, sweep or plan folder", description=__doc__)
    p.add_argument("results", help="a folder written by `dcsim run --out`, `dcsim sweep --out` or `dcsim plan --out`")
    p.add_argument("-o", "--output", help="HTML file to write (default: RESULTS/report.html)")
    p.add_argument("--metric", dest="metrics", action="append", metavar="NAME",
                   help="sweeps: metric to plot and tabulate (glob patterns allowed, repeatable; default: the "
                        "sweep file's metrics, else energy, tokens/J, throughput, power, e2e p99, TTFT p50)")
    p.add_argument("--baseline", action="append", metavar="AXIS=VALUE",
                   help="sweeps: the configuration changes are taken against (repeatable, one per axis as needed; "
                        "default: the first configuration)")
    p.add_argument("--static-plots", action="store_true",
                   help="sweeps: PNG figures only, not interactive ones (a page some 5 MB smaller)")
    p.add_argument("--force", action="store_true", help="replace an -o file that dcsim did not write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dcsim.report import write_report

    out = Path(args.output) if args.output else Path(args.results) / "report.html"
    path = write_report(args.results, out, args.metrics, force=args.force, baseline=args.baseline,
                        interactive=not args.static_plots)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0
