"""`dcsim calibrate --tensor-parallel N`: one replica across N devices of this host. Run as typed, the command starts
itself again under torchrun in N processes (multicast off in their environment); in those, rank 0 runs the sweep
and writes the run folder, the others follow it (dcsim/calibrate/tp_replica.py)."""

from __future__ import annotations

import argparse
import sys

from dcsim.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The tensor-parallel options of `dcsim calibrate`."""
    from dcsim.calibrate.tp_launch import INITS

    p.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="shard the replica across N devices of this host (cuda: GPUs 0..N-1 of CUDA_VISIBLE_DEVICES; "
                        "cpu: N processes, a rehearsal), one process each, started with torchrun; random weights, "
                        "engines hf, hf-static, hf-graph")
    p.add_argument("--tp-init", default="auto", choices=INITS,
                   help="with --tensor-parallel: replicated (every rank builds the whole seeded model and keeps its "
                        "slices: the single-process weights), sharded (each rank fills only its shards: for models "
                        "larger than one device), auto (replicated where the model takes at most half a device)")


def _argv(args: argparse.Namespace) -> list[str]:
    argv = getattr(args, "argv", None)
    if argv is None:
        argv = sys.argv[sys.argv.index("calibrate") + 1:] if "calibrate" in sys.argv else []
    return list(argv)


def check(args: argparse.Namespace) -> str:
    """Refuse what a tensor-parallel run cannot do; returns the device kind (cuda or cpu)."""
    from dcsim.calibrate.meters.base import parse_device
    from dcsim.calibrate.tp_launch import ENGINES

    n = args.tensor_parallel
    if n < 1:
        raise UserError(f"--tensor-parallel must be at least 1 (got {n})", None, "--tensor-parallel")
    if args.endpoint:
        raise UserError("--tensor-parallel shards an in-process engine; a server's own parallelism is its own",
                        None, "--endpoint")
    if args.power_caps:
        raise UserError("--power-caps are not available with --tensor-parallel", None, "--power-caps")
    if getattr(args, "sm_clocks", None):
        raise UserError("--sm-clocks are not available with --tensor-parallel", None, "--sm-clocks")
    if args.backend not in ENGINES:
        raise UserError(f"--tensor-parallel runs the {', '.join(ENGINES)} engines, not {args.backend}", None,
                        "--backend")
    if not (args.model_arch or args.random_weights):
        raise UserError("--tensor-parallel measures random weights: give --model-arch, or --model with "
                        "--random-weights", None, "--tensor-parallel")
    kind, index = parse_device(args.device)
    if kind not in ("cuda", "cpu"):
        raise UserError("--tensor-parallel runs on cuda or cpu", None, "--device")
    if kind == "cuda" and index not in (0, None):
        raise UserError("with --tensor-parallel, --device cuda takes GPUs 0..N-1 (choose them with "
                        "CUDA_VISIBLE_DEVICES)", None, "--device")
    return kind


def handle(args: argparse.Namespace) -> int:
    """Start the N processes (as typed), or play this process's rank (under torchrun)."""
    from pathlib import Path

    from dcsim.calibrate.tp_launch import launch, launched
    from dcsim.commands.calibrate import check_run_folder

    kind = check(args)
    me = launched()
    if me is None:
        check_run_folder(Path(args.out))
        rc = launch(args.tensor_parallel, ["-m", "dcsim.commands.calibrate", *_argv(args)], cpu=kind == "cpu")
        return 0 if rc == 0 else 2 if rc in (1, 2) else rc
    if me.size != args.tensor_parallel:
        raise UserError(f"launched with {me.size} processes for --tensor-parallel {args.tensor_parallel}", None,
                        "--tensor-parallel")
    return rank_main(args, kind, me)


def rank_main(args: argparse.Namespace, kind: str, me, open_meter=None) -> int:
    """One rank: join the group, make this rank's engine and meter (`open_meter(device, rank)`, default the
    registry's choice for the device); rank 0 runs the sweep, the others follow."""
    from pathlib import Path

    import torch.distributed as dist

    from dcsim.calibrate import tensor_parallel as tp
    from dcsim.calibrate.meters.base import Meter
    from dcsim.calibrate.meters.registry import select_meter
    from dcsim.calibrate.run import Settings, calibrate
    from dcsim.calibrate.tp_replica import DriverBackend, DriverMeter, Replica, follow
    from dcsim.cli import command_line

    group = tp.init(kind, me)
    try:
        backend = tp.make(args.backend, group, args.model_arch, args.model, args.dtype, args.tp_init)
        meter: Meter | None = None
        error = None
        try:
            meter = (open_meter(group.device, me.rank) if open_meter and not args.latency_only
                     else select_meter(group.device, args.latency_only))
        except UserError as e:
            error = e.message if hasattr(e, "message") else str(e)
        if me.rank != 0:
            return follow(group, backend, meter, error)
        with Replica(group, backend, meter or Meter()) as rep:
            rep.start(error)
            identity = {"backend": backend.name, "model": args.model, "arch": args.model_arch, "dtype": args.dtype,
                        "weights": "random", "gpus_per_replica": me.size}
            settings = Settings(out=Path(args.out), plan_path=Path(args.plan), device=group.device, identity=identity,
                                latency_only=args.latency_only, max_minutes=args.max_minutes,
                                command=command_line(args, "calibrate"), progress=not args.no_progress)
            res = calibrate(settings, DriverBackend(rep), DriverMeter(rep))
        print(f"{res['status']}: {res['runs']} runs this session, {res['left']} left -> {args.out} "
              f"(tensor parallel {me.size})")
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
