"""`dcsim fit --derive --from PROFILE --to DEVICE -o OUT.yaml`: a profile for an unmeasured device by datasheet
transfer (dcsim/profiles/derive.py), optionally checked against a calibration run of the target (--check RUN),
which prints the error table, records it in the profile's notes and draws the derived curves against the run's
points in a PNG beside the YAML."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from dcsim.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("datasheet transfer (--derive; --from is then a profile YAML)")
    g.add_argument("--derive", action="store_true", help="derive a profile for --to from the profile --from")
    g.add_argument("--to", help="target device, a key of the device catalogue (e.g. h200)")
    g.add_argument("--source-device", help="catalogue key of the source's device, where its name does not say")
    g.add_argument("--idle", choices=("catalogue", "tdp-ratio"), default="catalogue",
                   help="target idle power: its catalogue figure (default) or the source's times the TDP ratio")
    g.add_argument("--step-overhead-ms", default="0",
                   help="fixed time per decode step kept unscaled: milliseconds (default 0), or 'roofline': the "
                        "source's step above its weights' read time at the datasheet bandwidth (for an engine "
                        "paced by the GPU's kernel sequence, e.g. hf-graph, between devices of one compute die)")
    g.add_argument("--check", metavar="RUN_DIR", help="calibration run folder of the target to measure the error on")
    g.add_argument("--compare", metavar="PROFILE", action="append", default=[],
                   help="with --check: also report this profile's error on the run (repeatable)")


def _shown(path: str | Path) -> str:
    """A path as recorded in a profile: relative to the working folder where it lies inside it, else its name."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.name


def _step_overhead_s(text: str, src, sdev) -> float:
    """--step-overhead-ms: a number of milliseconds, or 'roofline' (derive.roofline_overhead_s)."""
    from dcsim.profiles.derive import roofline_overhead_s

    if text == "roofline":
        return roofline_overhead_s(src, sdev)
    try:
        return float(text) / 1000.0
    except ValueError:
        raise UserError(f"{text!r} is neither a number of milliseconds nor 'roofline'",
                        field="--step-overhead-ms") from None


def run(args: argparse.Namespace) -> int:
    from dcsim.commands.profile_out import check_out, write_profile
    from dcsim.profiles import devices as catalogue
    from dcsim.profiles.check import error_table, load_run_rows, run_errors
    from dcsim.profiles.derive import derive_profile, source_device, transfer_between
    from dcsim.profiles.profile import load_profile

    out = check_out(args.out, args.force, bool(args.check) and not args.no_plot)
    if args.path:
        raise UserError(f"--derive takes the source profile with --from, not a positional path ({args.path[0]!r})",
                        field="path")
    if not args.source or not Path(args.source).is_file():
        raise UserError("source profile not found (--derive needs --from PROFILE.yaml)", args.source, "--from")
    if not args.to:
        raise UserError("--derive needs --to DEVICE", field="--to")
    target = catalogue.device(args.to, "--to")
    if args.compare and not args.check:
        raise UserError("--compare needs --check RUN_DIR", field="--compare")
    src = load_profile(args.source)
    sdev = catalogue.device(args.source_device, "--source-device") if args.source_device else \
        source_device(src, args.source)
    t = transfer_between(sdev, target, _step_overhead_s(args.step_overhead_ms, src, sdev), args.idle)
    cmd = ["dcsim", "fit", "--derive", "--from", _shown(args.source), "--to", target.key]
    if args.source_device:
        cmd += ["--source-device", args.source_device]
    if args.idle != "catalogue":
        cmd += ["--idle", args.idle]
    if args.step_overhead_ms == "roofline" or t.step_overhead_s:
        cmd += ["--step-overhead-ms", args.step_overhead_ms]
    if args.check:
        cmd += ["--check", _shown(args.check)]
    for c in args.compare:
        cmd += ["--compare", _shown(c)]
    cmd += ["-o", _shown(args.out)]
    prof = derive_profile(src, t, _shown(args.source), name=args.name or out.stem, command=shlex.join(cmd))

    table = rows = None
    if args.check:
        rows = load_run_rows(args.check)
        errs = {f"derived ({prof.name})": run_errors(prof, rows),
                f"source unchanged ({src.name})": run_errors(src, rows)}
        for c in args.compare:
            other = load_profile(c)
            errs[f"compared: {other.name}"] = run_errors(other, rows)
        table = error_table(errs)
        prof = prof.model_copy(update={"notes": prof.notes + f"\nChecked against {_shown(args.check)} (absolute % "
                                       "error of shape means, as fit_error would give):\n" + table})
    write_profile(prof, out)
    msg = f"wrote {out}"
    if rows is not None and not args.no_plot:
        msg += f" and {_figure(prof, rows, errs[f'derived ({prof.name})'], out)}"
    print(msg)
    print("  " + t.describe())
    if table:
        print(f"  checked against {args.check}:")
        print("\n".join("  " + line for line in table.splitlines()))
    return 0


def _figure(prof, rows, errs, out: Path) -> Path:
    """The derived curves against the target's measured points (the check's errors in the title)."""
    from dcsim.commands.profile_out import write_figure

    return write_figure(prof.model_copy(update={"fit_error": {f"check {k}": v for k, v in errs.items()}}), rows, out)
