"""`dcsim fit`: fit a device profile to measurements (published sweeps, leaderboard files or our own runs).

  dcsim fit --from wilkins2024 DATA_DIR --system M1-Pro --model "Llama-2 (7B)" -o profiles/X.yaml
  dcsim fit --from mlenergy DATA_DIR --gpu H100 --model Llama-3.1-8B-Instruct [--task T] [--gpus N] -o ...
  dcsim fit RUN_DIR -o ...            (a calibration run folder of `dcsim calibrate`)
  dcsim fit --derive --from PROFILE.yaml --to DEVICE [--check RUN_DIR] -o ...
                                      (no measurement: datasheet transfer of a measured profile to DEVICE)
Writes the profile YAML and, beside it, a PNG of the measured points against the fitted curves.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

from dcsim.commands import fit_derive
from dcsim.errors import UserError

SOURCES = ("wilkins2024", "mlenergy", "run")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit a device profile to measurements", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", help="data folder of the published source, or a calibration run folder")
    p.add_argument("--from", dest="source", default=None, metavar="{" + ",".join(SOURCES) + "}",
                   help="what PATH holds (default: a calibration run folder); with --derive, the source profile")
    p.add_argument("--system", help="wilkins2024: system, e.g. M1-Pro, 'Swing AMD+A100'")
    p.add_argument("--model", help="model, e.g. 'Llama-2 (7B)' (wilkins2024) or Llama-3.1-8B-Instruct (mlenergy)")
    p.add_argument("--gpu", help="mlenergy: GPU, e.g. A100, H100, B200")
    p.add_argument("--task", help="mlenergy: task (default chat for v2, lm-arena-chat for v3)")
    p.add_argument("--gpus", type=int, help="mlenergy: GPUs per replica where the data has several")
    p.add_argument("--exclude", action="append", metavar="KEY=VALUE",
                   help="mlenergy: leave configurations out of the fit, e.g. max_num_seqs=256 (repeatable)")
    p.add_argument("--model-config", help="a run folder whose manifest records no model (an endpoint run): the "
                   "served model's config.json, or the folder holding it")
    p.add_argument("--idle-from", metavar="RUN_DIR", help="a calibration run without idle windows: take the "
                   "serving and deep idle power from RUN_DIR, a run on the same device model that measured them")
    p.add_argument("--name", help="profile name (default <device>--<model>--<engine>-<precision>)")
    p.add_argument("-o", "--out", required=True, help="profile YAML to write (a PNG is written beside it)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--force", action="store_true", help="replace an -o file (or its PNG) that dcsim did not write")
    p.add_argument("--kv-cache", choices=("auto", "live"), default="auto",
                   help="calibration runs: auto (default) fits a static-cache engine's decode step to the cache it "
                        "held (recorded per run), read whole at every step; live fits every step to its live context "
                        "instead (how profiles were fitted before cache lengths were modelled)")
    fit_derive.add_arguments(p)
    p.set_defaults(func=run)


def load_source(args: argparse.Namespace):
    """(measurement table, metadata dict) from the chosen importer."""
    if args.source == "wilkins2024":
        from dcsim.profiles.importers import wilkins2024
        _need(args, "system", "model")
        return wilkins2024.load(args.path, args.system, args.model)
    if args.source == "mlenergy":
        from dcsim.profiles.importers import mlenergy
        _need(args, "gpu", "model")
        return mlenergy.load(args.path, args.gpu, args.model, task=args.task, gpus=args.gpus,
                             exclude=mlenergy.parse_exclude(args.exclude))
    try:
        mod = importlib.import_module("dcsim.profiles.importers.calibrate_runs")
    except ModuleNotFoundError as e:
        if e.name != "dcsim.profiles.importers.calibrate_runs":
            raise
        raise UserError("reading calibration run folders needs dcsim/profiles/importers/calibrate_runs.py "
                        "(load(run_dir) -> (table, metadata)), which this installation lacks; use --from for "
                        "published data", args.path) from None
    if not Path(args.path).is_dir():
        raise UserError("calibration run folder not found", args.path)
    table, meta = mod.load(args.path, model_config=args.model_config)
    if args.idle_from:
        if not Path(args.idle_from).is_dir():
            raise UserError("calibration run folder not found", args.idle_from, "--idle-from")
        meta = mod.borrow_idle(table, meta, args.path, args.idle_from)
    return table, meta


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n}" for n in names if not getattr(args, n)]
    if missing:
        raise UserError(f"--from {args.source} needs {' and '.join(missing)}")


def check_out(path: str, force: bool = False, figure: bool = True) -> Path:
    """The profile path to write, refused before any work if it cannot be written, or if it (or the PNG beside
    it, where one will be drawn) is a file that dcsim did not write (unless force)."""
    from dcsim.outputs import check_file, owned_figure, owned_profile

    out = Path(path)
    if out.suffix not in (".yaml", ".yml"):
        raise UserError("the profile file must end in .yaml", out, "-o")
    if not out.parent.is_dir():
        raise UserError("output folder does not exist", out.parent, "-o")
    out = check_file(out, force, owned_profile)
    if figure:
        check_file(out.with_suffix(".png"), force, lambda png: owned_figure(png, out))
    return out


def run(args: argparse.Namespace) -> int:
    if args.idle_from and (args.derive or (args.source or "run") != "run"):
        raise UserError("--idle-from is for fitting a calibration run folder", field="--idle-from")
    if args.derive:
        return fit_derive.run(args)
    from dcsim.profiles.fit import fit_profile, meta_from_dict

    args.source = args.source or "run"
    if args.source not in SOURCES:
        raise UserError(f"unknown source {args.source!r}; choose from {', '.join(SOURCES)} (or give --derive to "
                        "derive from a profile)", field="--from")
    if args.path is None:
        raise UserError("PATH is required (a data folder or a calibration run folder)", field="path")
    if args.exclude and args.source != "mlenergy":
        raise UserError("--exclude leaves ML.ENERGY configurations out; it is for --from mlenergy", field="--exclude")
    for opt in ("to", "check", "source_device"):
        if getattr(args, opt):
            raise UserError(f"--{opt.replace('_', '-')} is for --derive only", field=f"--{opt.replace('_', '-')}")
    out = check_out(args.out, args.force, not args.no_plot)
    table, meta = load_source(args)
    if args.name:
        meta["name"] = args.name
    elif "name" not in meta:
        meta["name"] = out.stem
    if args.kv_cache == "live" and "cache_len" in table and table["cache_len"].notna().any():
        table = table.assign(cache_len=float("nan"))
        meta.setdefault("notes", []).append(
            "Fitted with --kv-cache live: each decode step's context is its live tokens, although the engine held a "
            "static cache (a step's cost then follows the live context, not the cache it read)")
        if meta.get("command"):
            meta["command"] += " --kv-cache live"
    if meta.get("command"):
        meta["command"] += f" -o {args.out if not os.path.isabs(args.out) else out.name}"
    result = fit_profile(table, meta_from_dict(meta, args.path))
    prof = result.profile
    write_profile(prof, out)
    msg = f"wrote {out}"
    if not args.no_plot:
        msg += f" and {write_figure(prof, result.rows, out)}"
    print(msg)
    for k, v in prof.fit_error.items():
        print(f"  {k:<24} median {v.median_ape_pct:6.2f}%  max {v.max_ape_pct:6.2f}%  ({v.n_points} points)")
    if prof.not_covered:
        print("  not covered by the source: " + "; ".join(prof.not_covered))
    return 0


def write_figure(prof, rows, out: Path) -> Path:  # noqa: ANN001
    """The profile's curves against its measured points, as a PNG beside the YAML `out` (via a temporary file:
    a failed plot leaves no half-written PNG)."""
    from dcsim.outputs import write_file
    from dcsim.profiles.plots import fit_figure

    png = out.with_suffix(".png")
    write_file(png, lambda tmp: fit_figure(prof, rows, tmp))
    return png


def write_profile(prof, path: Path) -> None:
    """Profile YAML via a temporary file and a rename, so a failed write leaves nothing half-written."""
    import yaml

    from dcsim.outputs import write_file

    text = yaml.safe_dump(prof.model_dump(mode="json", exclude_none=True), sort_keys=False, width=110)
    write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
