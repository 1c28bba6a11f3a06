"""`dcsim fit`: fit a device profile to measurements (published sweeps, leaderboard files or our own runs).

  dcsim fit --from wilkins2024 DATA_DIR --system M1-Pro --model "Llama-2 (7B)" -o profiles/X.yaml
  dcsim fit --from mlenergy DATA_DIR --gpu H100 --model Llama-3.1-8B-Instruct [--task T] [--gpus N] -o ...
  dcsim fit RUN_DIR [RUN_DIR...] -o   (calibration run folders of `dcsim calibrate`, fitted together)
  dcsim fit --derive --from PROFILE.yaml --to DEVICE [--check RUN_DIR] -o ...
                                      (no measurement: datasheet transfer of a measured profile to DEVICE)
Writes the profile YAML and, beside it, a PNG of the measured points against the fitted curves.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dcsim.commands import fit_derive
from dcsim.commands.profile_out import check_out, write_figure, write_profile
from dcsim.errors import UserError

# what --from names (dcsim/profiles/importers registers them; tests/test_fit_sources.py holds this list to it)
SOURCES = ("run", "wilkins2024", "mlenergy")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit a device profile to measurements", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="*", help="data folder of the published source, or calibration run folders "
                   "(several of one device, model and engine are fitted together, e.g. two step sweeps)")
    p.add_argument("--from", dest="source", default=None, metavar="{" + ",".join(SOURCES) + "}",
                   help="what PATH holds (default: calibration run folders); with --derive, the source profile")
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
    p.add_argument("--dynamics-from", metavar="RUN_DIR",
                   help="a calibration run on the same device model whose runs are separated by idle gaps (a plan "
                        "with cooldown_s): fit power.dynamics from its power timeline, the rise to a step's power "
                        "after idle and the fall to idle after it")
    p.add_argument("--name", help="profile name (default <device>--<model>--<engine>-<precision>)")
    p.add_argument("-o", "--out", required=True, help="profile YAML to write (a PNG is written beside it)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--force", action="store_true", help="replace an -o file (or its PNG) that dcsim did not write")
    p.add_argument("--kv-cache", choices=("auto", "live"), default="auto",
                   help="calibration runs: auto (default) fits a static-cache engine's decode step to the cache it "
                        "held (recorded per run), read whole at every step; live fits every step to its live context "
                        "instead (how profiles were fitted before cache lengths were modelled)")
    p.add_argument("--decode-per-sequence", action="store_true",
                   help="step sweeps: fit the decode step with a term per KV token of each sequence (context / "
                        "sequences) beside the one per KV token of the step, so a token costs more in a small batch")
    fit_derive.add_arguments(p)
    p.set_defaults(func=run)


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def load_source(args: argparse.Namespace):
    """(measurement table, metadata dict) from the importer --from names, after checking that the options given
    are ones it reads and that those it needs are there."""
    from dcsim.profiles.importers import IMPORTERS

    imp = IMPORTERS.get(args.source, field="--from")()
    mine = set(imp.needs + imp.takes)
    for option in dict.fromkeys(o for _, c in IMPORTERS.items() for o in c.needs + c.takes):
        if getattr(args, option, None) and option not in mine:
            users = [n for n, c in IMPORTERS.items() if option in c.needs + c.takes]
            raise UserError(f"{_flag(option)} is for --from {' or '.join(users)}, not {args.source}",
                            field=_flag(option))
    missing = [_flag(o) for o in imp.needs if not getattr(args, o, None)]
    if missing:
        raise UserError(f"--from {args.source} needs {' and '.join(missing)}")
    if len(args.path) > 1 and not imp.many:
        raise UserError(f"--from {args.source} reads one data folder, not {len(args.path)}", field="path")
    return imp.load([Path(p) for p in args.path], {o: getattr(args, o, None) for o in mine})


def _dynamics(args: argparse.Namespace, meta: dict) -> tuple:
    """(PowerDynamics, Provenance) fitted from --dynamics-from, a run on the device model `meta` names."""
    from dcsim.profiles.importers.calibrate_runs import _device_name, load
    from dcsim.profiles.power_dynamics import described, fit_dynamics
    from dcsim.profiles.profile import PowerDynamics, Provenance

    if args.source != "run":
        raise UserError("--dynamics-from is for fitting calibration run folders", field="--dynamics-from")
    other = Path(args.dynamics_from)
    theirs, mine = _device_name(load(other)[1]), _device_name(meta)
    if theirs != mine:
        raise UserError(f"measured on {theirs!r}, not on this run's {mine!r}", other, "--dynamics-from")
    fit = fit_dynamics(other)
    if meta.get("command"):
        meta["command"] += f" --dynamics-from {other.as_posix()}"
    return (PowerDynamics(rise_s=round(fit.rise_s, 4), fall_s=round(fit.fall_s, 4)),
            Provenance(source="measured", path=other.as_posix(), note=described(fit)))


def _host_step(prof, run_dirs: list[Path]) -> None:
    """latency.host_step_s from the host-loop workloads the run folders hold (dcsim.calibrate.host_loop), if any."""
    import pandas as pd

    from dcsim.calibrate.host_loop import FOLDER, fit_gaps, read_gaps
    from dcsim.profiles.profile import Curve, FitError, Provenance

    gaps = [g for d in run_dirs if len(g := read_gaps(d))]
    if not gaps:
        return
    table = pd.concat(gaps, ignore_index=True)
    a, coef, ape, kept = fit_gaps(table)
    prof.latency.host_step_s = Curve(intercept=a, coef=coef)
    prof.fit_error["latency.host_step_s"] = FitError(median_ape_pct=round(ape, 2), max_ape_pct=round(ape, 2),
                                                     n_points=kept)
    prof.provenance["latency.host_step_s"] = Provenance(
        source="measured", path=", ".join(f"{Path(d).as_posix()}/{FOLDER}" for d in run_dirs),
        note=f"least squares over {kept} of {len(table)} gaps between steps of the paged replay's loop "
             f"({table['workload'].nunique()} workloads; gaps more than 5 scaled median deviations off left out): "
             f"{a * 1e6:.1f} us a step + {coef['running'] * 1e6:.2f} us a running sequence + "
             f"{coef['prefill_tokens'] * 1e6:.3f} us a prefill token; drawn at the step's power")


def _cold_shapes(prof, run_dirs: list[Path]) -> None:
    """cold_shapes from the warm-ups and first runs the run folders kept (dcsim.profiles.cold_shapes), if any."""
    from dcsim.profiles.cold_shapes import described, fit_cold_shapes
    from dcsim.profiles.profile import ColdShapes, FitError, Provenance

    fit = fit_cold_shapes(run_dirs)
    if fit is None:
        return
    prof.cold_shapes = ColdShapes(prompt_s=round(fit.prompt_s, 5), prompt_j=round(fit.prompt_j, 3),
                                  kv_length_s=round(fit.kv_length_s, 6), kv_length_j=round(fit.kv_length_j, 4))
    prof.fit_error["cold_shapes.run_s"] = FitError(median_ape_pct=round(fit.ape_with, 2),
                                                   max_ape_pct=round(fit.ape_with_max, 2), n_points=fit.n_cold)
    prof.provenance["cold_shapes"] = Provenance(
        source="measured", path=", ".join(Path(d).as_posix() for d in run_dirs), note=described(fit))


def run(args: argparse.Namespace) -> int:
    if args.derive:
        if args.idle_from:
            raise UserError("--idle-from is for fitting a calibration run folder", field="--idle-from")
        return fit_derive.run(args)
    from dcsim.profiles.fit import fit_profile, meta_from_dict

    args.source = args.source or "run"
    if not args.path:
        raise UserError("PATH is required (a data folder, or calibration run folders)", field="path")
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
    dynamics = _dynamics(args, meta) if args.dynamics_from else None
    if args.decode_per_sequence:
        meta["decode_per_seq"] = True
        if meta.get("command"):
            meta["command"] += " --decode-per-sequence"
    if meta.get("command"):
        meta["command"] += f" -o {args.out if not os.path.isabs(args.out) else out.name}"
    result = fit_profile(table, meta_from_dict(meta, ", ".join(args.path)))
    prof = result.profile
    if args.source == "run":
        _host_step(prof, [Path(x) for x in args.path])
        _cold_shapes(prof, [Path(x) for x in args.path])
    if dynamics is not None:
        prof.power.dynamics, prof.provenance["power.dynamics"] = dynamics
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


__all__ = ["check_out", "load_source", "run", "write_figure", "write_profile"]
