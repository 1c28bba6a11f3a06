"""`dcsim sweep FILE --out DIR`: run a grid of scenarios on local processes or a Dask cluster; resumable."""

from __future__ import annotations

import argparse
import math


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a scenario sweep (grid/zip axes x seeds)", description=__doc__)
    p.add_argument("file", help="sweep YAML (base, set, grid, zip, seeds or replications, metrics)")
    p.add_argument("--out", help="folder for points/, results.{parquet,csv}, summary.{parquet,csv}")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: every core; 0 runs the points in this process)")
    p.add_argument("--scheduler", metavar="tcp://HOST:8786",
                   help="send the points to this Dask scheduler instead (workers must see the same files)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="check the sweep and list its points; run nothing")
    p.add_argument("--force", action="store_true",
                   help="write into an --out folder that dcsim did not write (only the sweep's own files are written)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dcsim.errors import UserError
    from dcsim.outputs import check_folder
    from dcsim.sweep import is_sweep_folder, load_sweep, run_sweep, validate_points

    if args.workers is not None and args.workers < 0:
        raise UserError("must be 0 or more", None, "--workers")
    if args.workers is not None and args.scheduler:
        raise UserError("give --workers or --scheduler, not both", None, "--scheduler")
    if not args.out and not args.dry_run:
        raise UserError("required (the folder for the sweep's results)", None, "--out")
    if args.out and not args.dry_run:  # refused before any work
        check_folder(args.out, "sweep", args.force, signature=is_sweep_folder)
    sweep = load_sweep(args.file)
    if args.dry_run:
        validate_points(sweep)
        print(f"{len(sweep.points)} points ({len(sweep.points) // len(sweep.seeds)} configurations x "
              f"{len(sweep.seeds)} seeds), all scenarios valid")
        for p in sweep.points:
            print(f"  {p.id}  seed {p.seed:<6} {' '.join(f'{k}={v}' for k, v in p.values.items())}")
        return 0
    res = run_sweep(sweep, args.out, workers=args.workers, scheduler=args.scheduler, progress=not args.no_progress,
                    force=args.force)
    print(f"{len(sweep.points)} points: {res.ran} run now, {res.reused} from earlier runs; {res.seconds:.1f} s")
    from pathlib import Path

    from dcsim.report import folder_currency

    print(format_summary(res.summary, sweep.axis_keys, res.metrics, folder_currency(Path(args.out))))
    print(f"\nwrote {args.out}/ (points/, results.parquet/.csv, summary.parquet/.csv)")
    return 0


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    a = abs(x)
    return f"{x:.4g}" if a < 1e5 else f"{x:.3e}"


def format_summary(summary, axes: list[str], metrics: list[str], currency: str = "", max_rows: int = 30) -> str:
    """Console table: one row per configuration, each metric as mean ± 95% CI half-width; cost (unit-less money)
    marked with its currency."""
    head = axes + [f"{m}{' ' + currency if m == 'cost' and currency else ''} (±95%)" for m in metrics[:5]]
    rows = []
    for _, r in summary.head(max_rows).iterrows():
        cells = [str(r[a]) for a in axes]
        for m in metrics[:5]:
            mean, lo, hi = r[f"{m}.mean"], r[f"{m}.ci95_lo"], r[f"{m}.ci95_hi"]
            cells.append(_fmt(mean) + ("" if math.isnan(hi) else f" ±{_fmt((hi - lo) / 2)}"))
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if len(summary) > max_rows:
        lines.append(f"... {len(summary) - max_rows} more configurations in summary.csv")
    return "\n".join(lines)
