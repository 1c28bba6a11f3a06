"""`dcsim calibrate`: measure token sweeps (latency, energy, power timeline) on a real device.

Examples:
  dcsim calibrate --device cuda:0 --model meta-llama/Llama-2-7b-hf --plan calibrate/plans/standard.yaml \\
      --out calibrate/runs/h100-llama2-7b-hf
  dcsim calibrate --device cuda:0 --model-arch llama-2-7b --random-weights --backend hf-static ...
  dcsim calibrate --device cuda:0 --model-arch llama-2-7b --random-weights --backend hf-graph ...
  dcsim calibrate --device cpu --model-arch tiny-llama --plan calibrate/plans/smoke.yaml --out ... --latency-only
  dcsim calibrate --endpoint http://127.0.0.1:8000/v1 --model NAME --meter-device cuda:0 --plan ... --out ...
  dcsim calibrate --device cuda --model-arch llama-2-13b --backend hf-graph --tensor-parallel 2 --plan ... --out ...
Interrupt with Ctrl-C at any time: finished runs are on disk and the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dcsim.calibrate.backends.endpoint import DIALECT_HELP, DIALECTS
from dcsim.calibrate.backends.registry import ENGINES, add_paged_arguments, paged_options
from dcsim.calibrate.backends.registry import HELP as ENGINE_HELP
from dcsim.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="measure a token sweep on a real device (resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", required=True, help="plan YAML (calibrate/plans/*.yaml)")
    p.add_argument("--out", required=True, help="run folder; an existing one is resumed")
    p.add_argument("--device", default="cuda:0", help="cuda[:N], cpu or mps (default cuda:0)")
    p.add_argument("--model", help="Hugging Face model id or local path; with --endpoint, the served model name")
    p.add_argument("--model-arch", help="build a known architecture from its config (e.g. llama-2-7b) with "
                   "random weights instead of loading weights")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights (implied by --model-arch; with --model, uses only its config)")
    p.add_argument("--backend", default="hf", choices=ENGINES, help=ENGINE_HELP)
    add_paged_arguments(p)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--endpoint", help="OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1), measured "
                   "from outside")
    p.add_argument("--meter-device", help="with --endpoint: the local device the server runs on (cuda:N)")
    p.add_argument("--endpoint-dialect", default="vllm", choices=DIALECTS, help=DIALECT_HELP)
    p.add_argument("--latency-only", action="store_true", help="no energy meter: time only")
    p.add_argument("--power-caps", help="watts, comma-separated (e.g. 150,200,250): repeat the plan under each "
                   "GPU power limit; needs --allow-power-limit-changes")
    p.add_argument("--allow-power-limit-changes", action="store_true",
                   help="allow changing the GPU power limit (restored afterwards); only on your own hardware")
    p.add_argument("--sm-clocks", help="MHz, comma-separated (e.g. 990,1410): repeat the plan with the SM clock "
                   "locked at each (needs --allow-clock-changes; within the device's supported clocks)")
    p.add_argument("--allow-clock-changes", action="store_true",
                   help="permit locking this GPU's SM clock for --sm-clocks; it is unlocked afterwards, also "
                   "after an error, Ctrl-C or SIGTERM. Only on hardware that is yours")
    p.add_argument("--max-minutes", type=float, help="stop cleanly before this many minutes (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from dcsim.commands.calibrate_tp import add_arguments as tensor_parallel_arguments

    tensor_parallel_arguments(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from dcsim.calibrate.clocks import parse_clocks
    from dcsim.calibrate.powercap import parse_caps
    from dcsim.calibrate.run import Settings, calibrate
    from dcsim.cli import command_line

    plan = Path(args.plan)
    if not plan.is_file():
        raise UserError("plan file not found", plan)
    if getattr(args, "tensor_parallel", 1) != 1:
        from dcsim.commands.calibrate_tp import handle

        return handle(args)
    check_run_folder(Path(args.out))
    if args.endpoint:
        from dcsim.calibrate.backends.endpoint import EndpointBackend

        backend = EndpointBackend(args.endpoint, args.model, dialect=args.endpoint_dialect)
        device = args.meter_device or "endpoint"
        identity = {"backend": "endpoint", "endpoint_model": args.model, "model": args.model, "arch": None,
                    "dtype": None, "weights": "as served", "dialect": args.endpoint_dialect}
        if args.latency_only:
            device = args.meter_device or "cpu"
    else:
        from dcsim.calibrate.backends.registry import make

        if args.model_arch and args.model:
            raise UserError("give either --model or --model-arch, not both", None, "--model-arch")
        backend = make(args.backend, args.device, args.model, args.model_arch, args.random_weights, args.dtype,
                       **paged_options(args, args.backend))
        device = args.device
        identity = {"backend": backend.name, "model": args.model, "arch": args.model_arch, "dtype": args.dtype,
                    "weights": "random" if backend.random_weights else "pretrained"}
    settings = Settings(
        out=Path(args.out), plan_path=plan, device=device, identity=identity, latency_only=args.latency_only,
        power_caps=parse_caps(args.power_caps), allow_power_limit_changes=args.allow_power_limit_changes,
        sm_clocks=parse_clocks(args.sm_clocks), allow_clock_changes=args.allow_clock_changes,
        max_minutes=args.max_minutes, command=command_line(args, "calibrate"),
        progress=not args.no_progress, meter_device=args.meter_device if args.endpoint else None)
    res = calibrate(settings, backend)
    print(f"{res['status']}: {res['runs']} runs this session, {res['left']} left -> {args.out}")
    return 0


def check_run_folder(out: Path) -> None:
    """--out must be new, empty, or a calibration run folder to resume (its manifest.json; the run checks it holds
    the same sweep): a folder of anything else is refused, so nothing is written among a user's files."""
    from dcsim.calibrate.store import MANIFEST
    from dcsim.outputs import check_folder

    check_folder(out, "calibrate", True)  # a file, an unwritable place, a path too long
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        man = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        man = None
    if not isinstance(man, dict) or not str(man.get("format", "")).startswith("dcsim-calibrate/"):
        raise UserError(f"this folder is not a calibration run (no {MANIFEST} of one); choose another --out", out,
                        "--out")


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (python -m dcsim.commands.calibrate ...): imports nothing of the simulator."""
    from dcsim.cli import standalone

    return standalone("dcsim calibrate", __doc__, configure, handler, argv)


if __name__ == "__main__":
    sys.exit(main())
