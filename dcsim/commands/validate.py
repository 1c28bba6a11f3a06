"""`dcsim validate`: replay a trace on a real device with the engine calibration measured, simulate the
same requests and arrival times with a profile, and compare energy and latency.

  dcsim validate --device cuda:0 --model-arch llama-2-7b --random-weights \\
      --profile profiles/h100-sxm-80gb--llama-2-7b--hf-static-bf16.yaml \\
      --trace traces/azure-code-2023.parquet --arrivals replay --utilisation 0.6 --limit 130 \\
      --batching fcfs --out validation/h100-azure-code
  dcsim validate --endpoint http://127.0.0.1:8000/v1 --model NAME --meter-device cuda:0 \\
      --profile PROFILE --trace ... --batching continuous --max-batch 256 --out ...
                                          against a running OpenAI-compatible server (open loop)
  dcsim validate --dry-run ...            the workload and its forecast, no device
  dcsim validate --compare-only DIR       rerun the simulator side of a recorded replay
  dcsim validate ... --recover            the same command again after it died past its window (e.g. in the
                                          probe): finish it from OUT.partial's raw files, no device

Writes into --out: workload.csv (what was replayed), requests.csv and batches.csv (measured per request
and per batch), power.csv (sampled device power), replay.json (window, energies, environment), and the
comparison: comparison.csv/.json, sim_requests.csv, sim_power.csv, power.png, latency_cdf.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from dcsim.calibrate.backends.endpoint import DIALECT_HELP, DIALECTS
from dcsim.calibrate.backends.registry import ENGINES, STATIC_CACHE, add_paged_arguments, paged_options
from dcsim.errors import UserError
from dcsim.outputs import check_folder, install, start_staging


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check forecasts against a real replay on a device", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    p.set_defaults(func=handler)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compare-only", metavar="DIR", help="rerun the simulator side of the replay recorded in DIR")
    p.add_argument("--profile", help="profile YAML to forecast with (the calibrated one for this device and engine)")
    p.add_argument("--trace", help="trace file (parquet or CSV)")
    p.add_argument("--arrivals", default="replay", choices=("replay", "poisson"))
    p.add_argument("--time-scale", type=float, help="replay: multiply the trace's gaps by this")
    p.add_argument("--rate", type=float, help="poisson: requests per second")
    p.add_argument("--utilisation", type=float, help="size the arrivals to this busy fraction of one replica (by "
                                                     "the profile's isolated service times; with --batching paged "
                                                     "or continuous, this fraction of the request rate the engine "
                                                     "sustains on these requests, simulated)")
    p.add_argument("--limit", type=int, help="requests to replay (from --skip on)")
    p.add_argument("--skip", type=int, default=0, help="leave out the trace's first N requests")
    p.add_argument("--clip-in", type=int, help="cut prompts to this many tokens")
    p.add_argument("--clip-out", type=int, help="cut outputs to this many tokens")
    p.add_argument("--seed", type=int, default=0, help="poisson arrivals' seed")
    p.add_argument("--batching", default="fcfs", choices=("fcfs", "static", "continuous", "paged"),
                   help="what the simulator models (and the in-process engine serves); continuous: a server's "
                        "iteration-level batching, with --endpoint; paged: vLLM's v1 scheduler on the paged engine "
                        "(--backend paged)")
    p.add_argument("--max-batch", type=int, default=4, help="static, continuous: largest batch")
    p.add_argument("--max-wait-s", type=float, default=1.0, help="static: wait at most this long to fill a batch")
    p.add_argument("--max-num-seqs", type=int, default=256, help="paged: sequences running at once at most")
    p.add_argument("--max-num-batched-tokens", type=int, default=8192, help="paged: tokens of one step at most")
    p.add_argument("--kv-blocks", type=int, help="paged: KV blocks in the pool (default: room for the longest "
                                                 "max-num-seqs requests, within 90%% of free device memory)")
    p.add_argument("--block-size", type=int, default=16, help="paged: KV tokens per block")
    p.add_argument("--no-chunked-prefill", action="store_true", help="paged: a prompt's prefill in one step")
    p.add_argument("--no-prefix-caching", action="store_true", help="paged: no reuse of cached prompt blocks "
                                                                    "(default: full blocks are cached, as vLLM does)")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL of a running server to replay against")
    p.add_argument("--meter-device", help="with --endpoint: the local device the server runs on (cuda:N)")
    p.add_argument("--endpoint-dialect", default="vllm", choices=DIALECTS, help=DIALECT_HELP)
    p.add_argument("--latency-only", action="store_true", help="no energy meter (energy rows stay empty)")
    p.add_argument("--model", help="Hugging Face model id or path (pretrained weights)")
    p.add_argument("--model-arch", help="a known architecture built from its config (e.g. llama-2-7b)")
    p.add_argument("--random-weights", action="store_true", help="random weights in the real architecture")
    p.add_argument("--backend", choices=ENGINES, help="engine (default: the profile's engine)")
    add_paged_arguments(p)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--plan", help="hf-static, hf-graph: the calibration plan, which sizes the static caches as "
                                  "calibration did (default: the plan of the run folder the profile was fitted to)")
    p.add_argument("--no-length-warmup", action="store_true",
                   help="skip the warm-up run per prompt length (see dcsim.validate.replay.warm_up)")
    p.add_argument("--probe", help="after the window, run these calibration shapes on the same engine: "
                                   "N_IN:N_OUT[:BATCH],... (written to probe.csv)")
    p.add_argument("--probe-repeats", type=int, default=3)
    p.add_argument("--step-probe", help="paged: before and after the window, time these serving steps on the same "
                                        "engine as the calibration's served loop does: DECODES:CONTEXT:CHUNK[:PREFIX"
                                        "[:CHUNKS]],... (written to step_probe.csv; 'default': "
                                        "16:1024:0,4:1024:64,32:1024:64,0:0:256)")
    p.add_argument("--step-probe-repeats", type=int, default=2, help="paged: repeats of each probe step")
    p.add_argument("--step-probe-steps", type=int, default=96, help="paged: steps in one probe repeat")
    p.add_argument("--batch-energy", default="timeline", choices=("timeline", "counter"),
                   help="active energy: the power timeline's integral over the batch runs (default; no meter read "
                        "between batches), or an energy-counter window per batch and its prefill (reads that cost "
                        "the loop a median 7.6 ms per batch on an H200, time a server would not lose)")
    p.add_argument("--settle-s", type=float, default=10.0, help="idle before the window opens")
    p.add_argument("--tail-s", type=float, default=10.0, help="idle kept in the window after the last request")
    p.add_argument("--out", help="folder to write (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true",
                   help="write into an existing --out (only dcsim's own files there are replaced)")
    p.add_argument("--dry-run", action="store_true", help="build the workload and forecast it; touch no device")
    p.add_argument("--recover", action="store_true",
                   help="the same command again, after one that measured its whole window but ended before it "
                        "wrote replay.json: rebuild that from OUT.partial's raw files (window energy from the "
                        "power timeline) and compare; touches no device")


def _log(message: str) -> None:
    """Progress on stderr, flushed at once (a device call's log is read as it runs)."""
    print(message, file=sys.stderr, flush=True)


def _need(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        if getattr(args, n.replace("-", "_")) is None:
            raise UserError(f"--{n} is required", None, f"--{n}")


def _plan_shapes(args: argparse.Namespace, profile) -> tuple[list[tuple[int, int, int]], str | None]:
    """(every calibrated shape incl. warm-up, plan path) for sizing static caches as calibration did."""
    from dcsim.calibrate.plan import expand, load_plan

    plan_path = args.plan
    if plan_path is None:
        for prov in profile.provenance.values():
            path = getattr(prov, "path", None)
            if path and (Path(path) / "plan.yaml").is_file():
                plan_path = str(Path(path) / "plan.yaml")
                break
    if plan_path is None:
        raise UserError("static-cache engines (hf-static, hf-graph) need the calibration plan to size their "
                        "caches; pass --plan", None, "--plan")
    if not Path(plan_path).is_file():
        raise UserError("plan file not found", plan_path, "--plan")
    plan = load_plan(Path(plan_path))
    shapes = [(p.n_in, p.n_out, p.batch) for p in expand(plan)]
    shapes.append((plan.warmup.n_in, plan.warmup.n_out, plan.warmup.batch))
    return shapes, plan_path


def handler(args: argparse.Namespace) -> int:
    if args.compare_only:
        from dcsim.validate.compare import compare, format_table, format_timeline

        res = compare(Path(args.compare_only), Path(args.profile) if args.profile else None)
        import pandas as pd

        print(format_table(pd.read_csv(Path(args.compare_only) / "comparison.csv")))
        print(format_timeline(res["timeline"]))
        return 0 if all(m["pass"] is not False for m in res["metrics"].values()) else 1
    _need(args, "profile", "trace", "out")
    from dcsim.profiles.profile import load_profile
    from dcsim.validate import replay as R
    from dcsim.validate import workload as W

    prof_path = Path(args.profile)
    if not prof_path.is_file():
        raise UserError("profile not found", args.profile, "--profile")
    profile = load_profile(prof_path)
    sizing_profile = profile
    if args.recover and args.out:  # the replay's own copy of the profile it was sized with, where it kept one
        kept = Path(args.out).with_name(Path(args.out).name + ".partial") / W.SIZING_PROFILE
        if kept.is_file():
            sizing_profile = load_profile(kept)
    sizing = _engine_sizing(args)
    spec = W.WorkloadSpec(trace=args.trace, arrivals=args.arrivals, time_scale=args.time_scale, rate_per_s=args.rate,
                          utilisation=args.utilisation, limit=args.limit, skip=args.skip, clip_in=args.clip_in,
                          clip_out=args.clip_out, seed=args.seed, batching=sizing)
    wl = W.build(spec, sizing_profile)
    info = W.describe(wl, sizing_profile, sizing)
    policy = _paged_policy(args) if args.batching == "paged" else \
        R.ServePolicy(args.batching, 1 if args.batching == "fcfs" else args.max_batch,
                      args.max_wait_s if args.batching == "static" else 0.0)
    lengths: dict[int, int] = {}
    plan_path = None
    backend_name = "endpoint"
    if not args.endpoint:
        if args.batching == "continuous":
            raise UserError("continuous batching is a serving engine's own: replay it against the server with "
                            "--endpoint", None, "--batching")
        backend_name = args.backend or profile.engine.name
        if backend_name not in ENGINES:
            raise UserError(f"the profile's engine {backend_name!r} is not one dcsim can replay ({ENGINES}); pass "
                            "--backend", args.profile, "engine.name")
        if args.batching == "paged" and backend_name != "paged":
            raise UserError("paged batching is served by the paged engine; pass --backend paged", None, "--backend")
        if backend_name in STATIC_CACHE:
            shapes, plan_path = _plan_shapes(args, profile)
            lengths = R.cache_lengths(shapes, policy.batch_sizes())
            R.check_fits(wl, lengths, policy, args.trace)
    probe_shapes = _parse_probe(args.probe)
    step_shapes = _parse_step_probe(args, wl)
    out = Path(args.out)
    if not args.dry_run:
        if out.is_dir() and any(out.iterdir()) and not args.force:
            raise UserError("output folder exists; choose another --out or pass --force (which replaces only "
                            "dcsim's own files)", out, "--out")
        check_folder(out, "validate", True)  # a file, an unwritable place, a path too long
    print(f"workload: {json.dumps(info)}", file=sys.stderr)
    if args.dry_run:
        return _dry_run(wl, profile, prof_path, policy, args)
    if args.recover:
        return _recover(args, out, wl, info, spec, policy, prof_path, profile, backend_name, plan_path, lengths)
    if args.endpoint:
        return _endpoint(args, out, wl, info, spec, policy, prof_path)

    from dcsim.calibrate.backends.registry import make
    from dcsim.calibrate.environment import capture
    from dcsim.calibrate.meters.registry import select_meter

    meter = select_meter(args.device, args.latency_only)  # before anything is written: no meter, no folder
    tmp = _start_folder(out, wl, prof_path)
    backend = make(backend_name, args.device, args.model, args.model_arch, args.random_weights, args.dtype,
                   **paged_options(args, backend_name))
    load_info = backend.load()
    if lengths:
        backend.prepare([(1, n - 1, b) for b, n in lengths.items()])
    if args.batching == "paged":
        from dcsim.validate import paged_replay as PR

        need = (wl["n_in"] + wl["n_out"]).astype(int).tolist()
        backend.kv_blocks = policy.kv_blocks or PR.default_blocks(backend, policy, need)
        backend.graph_sizes = policy.cudagraph_batch_sizes or PR.capture_sizes(policy.max_num_seqs)
        backend.engine(backend.kv_blocks, policy.max_num_seqs, max(need))
        PR.write_engine(tmp, backend)  # the pool a recovery of this folder must forecast with
        warm_s = PR.warm_up(backend, policy, max(need), _log)
        probe_steps, step_probe = _step_probe_fit(step_shapes, backend, args)
        _run_step_probe(probe_steps, backend, meter, args, tmp, "before")
        env = capture(args.device)
        res = PR.serve(wl, backend, meter, policy, tmp, tail_s=args.tail_s, settle_s=args.settle_s, log=_log)
        _run_step_probe(probe_steps, backend, meter, args, tmp, "after")
        if step_probe:
            res["step_probe"] = step_probe
        res["kv_blocks"] = backend.eng.alloc.capacity
        policy = dataclasses.replace(policy, kv_blocks=backend.eng.alloc.capacity)  # the pool the forecast gets
    else:
        warm_s = R.warm_up(backend, policy, lengths, _log,
                           None if args.no_length_warmup else wl["n_in"].tolist())
        _log(f"warm-up {warm_s:.1f} s; replaying {len(wl)} requests")
        env = capture(args.device)
        res = R.serve(wl, backend, meter, policy, tmp, tail_s=args.tail_s, settle_s=args.settle_s,
                      batch_energy=args.batch_energy, log=_log)
    if probe_shapes:
        R.probe(backend, meter, probe_shapes, args.probe_repeats, tmp)
    backend.close()
    meta = _meta(args, spec, info, policy, prof_path, backend_name, warm_s, res, env, meter.describe(), load_info,
                 plan=plan_path, cache_lengths=lengths, length_warmup=not args.no_length_warmup,
                 **_warmed(args, policy, lengths, wl))
    meter.close()
    return _finish(tmp, out, meta, prof_path)


def _engine_sizing(args: argparse.Namespace) -> dict | None:
    """The scheduler an iteration-level replay serves with, as the simulator's batching (policy and parameters):
    --utilisation is then a fraction of the rate that engine sustains; None for fcfs and static (isolated
    service sizes those)."""
    if args.batching == "paged":
        b = {"policy": "paged", "max_num_seqs": args.max_num_seqs,
             "max_num_batched_tokens": args.max_num_batched_tokens, "block_size": args.block_size,
             "kv_blocks": args.kv_blocks, "chunked_prefill": not args.no_chunked_prefill,
             "enable_prefix_caching": not args.no_prefix_caching}
        return {k: v for k, v in b.items() if v is not None}
    if args.batching == "continuous":
        return {"policy": "continuous", "max_batch": args.max_batch}
    return None


def _paged_policy(args: argparse.Namespace):
    """--batching paged's scheduler settings (prefix caching on unless --no-prefix-caching)."""
    from dcsim.validate.paged_replay import PagedPolicy

    try:
        return PagedPolicy(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                           block_size=args.block_size, kv_blocks=args.kv_blocks,
                           chunked_prefill=not args.no_chunked_prefill,
                           enable_prefix_caching=not args.no_prefix_caching)
    except ValueError as e:
        raise UserError(str(e), None, "--max-num-batched-tokens") from None


def _endpoint(args: argparse.Namespace, out: Path, wl, info: dict, spec, policy,
              prof_path: Path) -> int:
    """Open-loop replay against a running server (dcsim.validate.open_loop), then the comparison."""
    from dcsim.calibrate.backends.endpoint import EndpointBackend
    from dcsim.calibrate.environment import capture
    from dcsim.calibrate.meters.registry import select_meter
    from dcsim.validate import open_loop

    backend = EndpointBackend(args.endpoint, args.model, dialect=args.endpoint_dialect)
    meter = select_meter("endpoint", args.latency_only, args.meter_device)
    facts = backend.load()  # refuses an unreachable server or a model it does not serve, before writing
    tmp = _start_folder(out, wl, prof_path)
    t_warm = time.perf_counter()
    for n_in in (128, 512):  # wake the server up: the first requests after a start pay one-off costs
        backend.run(n_in, 16, 1, seed=n_in, on_start=lambda: None, on_first_token=lambda: None)
    warm_s = time.perf_counter() - t_warm
    res = open_loop.serve(wl, backend, meter, tmp, tail_s=args.tail_s, settle_s=args.settle_s, log=_log)
    env = capture(args.meter_device or "cpu")
    meta = _meta(args, spec, info, policy, prof_path, "endpoint", warm_s, res, env, meter.describe(), facts)
    meter.close()
    return _finish(tmp, out, meta, prof_path)


def _recover(args: argparse.Namespace, out: Path, wl, info: dict, spec, policy, prof_path: Path,
             profile, engine: str, plan_path: str | None, lengths: dict) -> int:
    """--recover: the window in OUT.partial was measured in full; rebuild replay.json from its raw files (the
    workload it holds must be the one this command builds) and finish as a replay would."""
    import numpy as np

    from dcsim.validate import workload as W
    from dcsim.validate.recover import window_facts

    tmp = out.with_name(out.name + ".partial")
    if not tmp.is_dir():
        raise UserError("no such folder to recover; --recover finishes a replay that died after its window", tmp,
                        "--out")
    done = W.read(tmp / "workload.csv")
    same = len(done) == len(wl) and all(np.allclose(done[c].to_numpy(float), wl[c].to_numpy(float), rtol=0,
                                                    atol=1e-6) for c in W.COLUMNS)
    if not same:
        raise UserError("the workload this command builds differs from the one replayed; give the replay's own "
                        "arguments", tmp / "workload.csv")
    res = window_facts(tmp, len(wl), args.tail_s, args.settle_s)
    if args.batching == "paged":
        from dcsim.validate.paged_replay import read_engine

        res["kv_blocks"] = policy.kv_blocks or read_engine(tmp)["kv_blocks"]
        policy = dataclasses.replace(policy, kv_blocks=res["kv_blocks"])
    env = {"recovered": "the replay's process ended before it recorded its environment; device name from the "
                        "profile", "gpu": {"name": profile.device.name}}
    meter = {"meter": "recovered", "energy_source": res["energy_source"]}
    meta = _meta(args, spec, info, policy, prof_path, engine, None, res, env, meter, {}, plan=plan_path,
                 cache_lengths=lengths, length_warmup=not args.no_length_warmup,
                 **_warmed(args, policy, lengths, wl))
    return _finish(tmp, out, meta, prof_path)


def _start_folder(out: Path, wl, prof_path: Path) -> Path:
    """The replay's working folder (out.partial, fresh), holding the workload and a copy of the profile it was
    sized with (a later refit of that profile must not stop the workload from being rebuilt, or the replay from
    being run again as it was); renamed to `out` when done, so a crash leaves what was measured there and no
    folder that looks complete."""
    import shutil

    from dcsim.validate.workload import SIZING_PROFILE

    tmp = start_staging(out.with_name(out.name + ".partial"), "validate")
    wl.to_csv(tmp / "workload.csv", index=False)
    shutil.copyfile(prof_path, tmp / SIZING_PROFILE)
    return tmp


def _warmed(args: argparse.Namespace, policy, lengths: dict | None, wl) -> dict:
    """{"warmed_shapes": ...}: the shapes a one-at-a-time or static replay's warm-up ran (replay.warmed_shapes), the
    ones its forecast starts cold with (compare.replay_shapes); empty for the paged engine."""
    from dcsim.validate.replay import warmed_shapes

    if getattr(policy, "policy", None) not in ("fcfs", "static"):
        return {}
    prompts, kv = warmed_shapes(policy.batch_sizes(), lengths or {},
                                  None if args.no_length_warmup else wl["n_in"].tolist())
    return {"warmed_shapes": {"prompts": [list(p) for p in prompts], "kv_lengths": [list(k) for k in kv]}}


def _meta(args: argparse.Namespace, spec, info: dict, policy, prof_path: Path, engine: str,
          warm_s: float | None, res: dict, env: dict, meter: dict, model: dict, **extra) -> dict:
    """replay.json: what was replayed, how, where, and the window's measured facts."""
    from dcsim.cli import command_line

    return {
        "format": "dcsim-validate/1", "profile": str(prof_path), "trace": args.trace,
        "command": command_line(args, "validate"), "workload_spec": spec.__dict__, "workload": info,
        "policy": policy.__dict__, "engine": engine, "warmup_s": warm_s, **extra, **res,
        "device_name": (env.get("gpu") or {}).get("name"), "environment": env, "meter": meter,
        "model": model, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _finish(tmp: Path, out: Path, meta: dict, prof_path: Path) -> int:
    """Write replay.json, put the folder in place, run the comparison and print it."""
    import pandas as pd

    from dcsim.validate.compare import compare, format_table, format_timeline
    from dcsim.validate.replay import write_json

    write_json(tmp / "replay.json", meta)
    install(tmp, out, "validate")
    res = compare(out, prof_path)
    print(format_table(pd.read_csv(out / "comparison.csv")))
    print(format_timeline(res["timeline"]))
    return 0


def _parse_probe(text: str | None) -> list[tuple[int, int, int]]:
    """'32:128,32:512:1' -> [(32, 128, 1), (32, 512, 1)]."""
    shapes = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        try:
            nums = [int(x) for x in part.split(":")]
        except ValueError:
            raise UserError(f"bad probe shape {part!r}; expected N_IN:N_OUT[:BATCH]", None, "--probe") from None
        if len(nums) not in (2, 3) or min(nums) < 1:
            raise UserError(f"bad probe shape {part!r}; expected N_IN:N_OUT[:BATCH]", None, "--probe")
        shapes.append((nums[0], nums[1], nums[2] if len(nums) == 3 else 1))
    return shapes


def _parse_step_probe(args: argparse.Namespace, wl) -> list:
    """--step-probe's shapes (paged replays only; 'default' for the standard four), refused before anything runs
    if one cannot run on the replay's engine (more decodes than --max-num-seqs, a sequence longer than the
    longest request sizes it for)."""
    from dcsim.validate import step_probe as SP

    if not args.step_probe:
        return []
    if args.batching != "paged" or args.endpoint:
        raise UserError("the step probe times the paged engine's steps; it needs --batching paged on a device",
                        None, "--step-probe")
    for name in ("step_probe_repeats", "step_probe_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"must be at least 1, got {getattr(args, name)}", None, "--" + name.replace("_", "-"))
    try:
        shapes = SP.parse_shapes(SP.DEFAULT_SHAPES if args.step_probe == "default" else args.step_probe)
    except ValueError as e:
        raise UserError(str(e), None, "--step-probe") from None
    longest = int((wl["n_in"] + wl["n_out"]).max())
    for s in shapes:
        if s.decode_batch > args.max_num_seqs:
            raise UserError(f"step {s.label()} has {s.decode_batch} decodes, more than --max-num-seqs "
                            f"{args.max_num_seqs}", None, "--step-probe")
        if max(s.context, s.prefix + s.prefill_tokens + s.chunks - 1) > longest:
            raise UserError(f"step {s.label()} needs sequences of more tokens than the longest request "
                            f"({longest}), which sizes the engine", None, "--step-probe")
    return shapes


def _step_probe_fit(shapes: list, backend, args: argparse.Namespace) -> tuple[list, dict | None]:
    """The shapes to probe and the probe's record in replay.json: shapes the engine's KV pool cannot hold (a pool
    made small on purpose) are skipped, so that the engine is never rebuilt around the window."""
    if not shapes:
        return [], None
    pool = backend.eng.alloc.capacity
    bs = backend.eng.block_size
    keep, skipped = [], []
    for s in shapes:
        need = s.decode_batch * -(-s.context // bs) + s.chunks * -(-(s.prefix + s.prefill_tokens + s.chunks) // bs)
        (keep if need <= pool else skipped).append(s)
        if need > pool:
            _log(f"step probe: {s.label()} needs {need} KV blocks, the pool holds {pool}: skipped")
    return keep, {"shapes": [s.label() for s in keep], "skipped": [s.label() for s in skipped], "loop": "served",
                  "repeats": args.step_probe_repeats, "steps": args.step_probe_steps}


def _run_step_probe(shapes: list, backend, meter, args: argparse.Namespace, tmp: Path, when: str) -> None:
    """Time the probe's steps (before or after the window) into tmp/step_probe.csv."""
    from dcsim.validate import step_probe as SP

    if shapes:
        _log(f"step probe ({when} the window): {', '.join(s.label() for s in shapes)}")
        SP.run(backend, meter, shapes, args.step_probe_repeats, args.step_probe_steps, tmp, when)


def _dry_run(wl, profile, prof_path: Path, policy, args: argparse.Namespace) -> int:
    """Forecast the workload alone (no device): what the replay should look like."""
    import tempfile

    from dcsim.validate.compare import forecast

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        wl.to_csv(folder / "workload.csv", index=False)
        # the forecast runs to its last request whatever the window; the last arrival is the least window
        meta = {"policy": policy.__dict__, "window_s": float(wl["arrival_s"].iloc[-1])}
        m, req, _, warnings = forecast(folder, meta, prof_path)
    busy_end = float(req["done_s"].max())
    print(json.dumps({"forecast_last_end_s": round(busy_end, 1),
                      "wait_mean_s": round(m["wait_mean_s"], 3), "e2e_p50_s": round(m["e2e_p50_s"], 3),
                      "e2e_p95_s": round(m["e2e_p95_s"], 3),
                      **{k: round(m[k], 3) for k in ("ttft_p50_s", "tpot_p50_s", "preemptions", "prefix_hit_rate")
                         if k in m},
                      "warnings": warnings}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    from dcsim.cli import standalone

    return standalone("dcsim validate", __doc__, configure, handler, argv)


if __name__ == "__main__":
    sys.exit(main())
