"""ML.ENERGY leaderboard (v2 and v3) -> the measurement table, as steady-state decode rows.

Both versions served each model with vLLM and continuous batching at several maximum batch sizes
(max_num_seqs), with every request of the data set queued at once, and report averages per configuration.
- v2 (github.com/ml-energy/leaderboard-v2, Apache-2.0): {task}/{GPU}/{org}/{model}/bs{B}+tp{T}+pp{P}.json with
  'Energy/req (J)', 'Avg TPOT (s)', 'Token tput (tok/s)', 'Avg Output Tokens', 'Avg BS (reqs)', 'Max BS (reqs)',
  TP, PP; GPUs A100-SXM4-40GB and H100 80GB HBM3.
- v3 (github.com/ml-energy/leaderboard, public/data; no licence stated, cite ML.ENERGY): models/{org}__{model}__
  {task}.json with configurations (gpu_model, num_gpus, max_num_seqs, avg_batch_size, energy_per_token_joules,
  avg_power_watts, median/p90/p95/p99 ITL, output_throughput_tokens_per_sec, avg_output_len); H100 and B200.
One row per configuration, kind "decode", batch = average running batch:
- runtime_s: the wall time of one decode step, avg batch / output throughput. It includes the prefills that the
  engine interleaved with decoding, and (v2, at the largest batches) preemptions, so it is an effective step time;
- tpot_s: v2 'Avg TPOT', v3 median inter-token latency (reference only; not fitted);
- avg_power_w: energy per output token x output throughput (v2), avg_power_watts (v3); all GPUs of the replica;
- energy_device_j: energy of one step = energy per output token x avg batch;
- n_out: average output length; n_in: 0, because neither version gives prompt lengths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dcsim.errors import UserError
from dcsim.profiles.importers.base import IMPORTERS, Importer
from dcsim.profiles.measurements import normalise

CITE_V2 = ("ML.ENERGY Leaderboard v2 (Chung et al., The ML.ENERGY Initiative, 2024), data at "
           "github.com/ml-energy/leaderboard-v2")
CITE_V3 = "ML.ENERGY Leaderboard v3 (The ML.ENERGY Initiative, 2026), data at github.com/ml-energy/leaderboard"
LICENCE_V2 = "Apache-2.0 (leaderboard-v2 repository)"
LICENCE_V3 = "no licence stated; cite ML.ENERGY"
GPU_KEYS = {"A100-SXM4-40GB": "a100-sxm4-40gb", "H100_80GB_HBM3": "h100-sxm-80gb", "H100": "h100-sxm-80gb",
            "B200": "b200"}
MODEL_KEYS = {"llama-3.1-8b-instruct": "llama-3.1-8b", "llama-3.1-70b-instruct": "llama-3.1-70b"}
DEFAULT_TASK = {"v2": "chat", "v3": "lm-arena-chat"}


def version_of(data_dir: Path) -> str:
    if (data_dir / "index.json").is_file() and (data_dir / "models").is_dir():
        return "v3"
    if any((data_dir / t).is_dir() for t in ("chat", "code")):
        return "v2"
    raise UserError("not an ML.ENERGY leaderboard folder (no index.json + models/ for v3, no chat/ or code/ for v2)",
                    data_dir)


def _norm(name: str) -> str:
    n = name.split("/")[-1].lower()
    return n[5:] if n.startswith("meta-") else n


def _pick_gpu(gpu: str, have: list[str], where: Path) -> str:
    hits = [g for g in have if gpu.lower().replace(" ", "").replace("_", "") in g.lower().replace("_", "")]
    if len(hits) != 1:
        raise UserError(f"GPU {gpu!r} matches {hits or 'nothing'}; the data has {sorted(set(have))}", where, "gpu")
    return hits[0]


def parse_exclude(items: list[str] | None) -> dict[str, set[float]]:
    """`--exclude max_num_seqs=256` (repeatable, or comma-separated values) as {key: values}."""
    out: dict[str, set[float]] = {}
    for item in items or []:
        key, sep, vals = item.partition("=")
        key = key.strip()
        if not sep or key not in EXCLUDE_KEYS:
            raise UserError(f"--exclude expects KEY=VALUE with KEY one of {sorted(EXCLUDE_KEYS)}, got {item!r}",
                            field="--exclude")
        try:
            out.setdefault(key, set()).update(float(v) for v in vals.split(","))
        except ValueError:
            raise UserError(f"--exclude {key}: values must be numbers, got {vals!r}", field="--exclude") from None
    return out


EXCLUDE_KEYS = {"max_num_seqs": "max_bs"}  # what a configuration may be left out by: key -> table column


def load(data_dir: str | Path, gpu: str, model: str, task: str | None = None,
         gpus: int | None = None, exclude: dict[str, set[float]] | None = None) -> tuple[pd.DataFrame, dict]:
    """Table and metadata for one GPU, model, task and replica size (number of GPUs); `exclude` leaves
    configurations out (by max_num_seqs), for checks on the configurations a profile was not fitted to."""
    d = Path(data_dir)
    if not d.is_dir():
        raise UserError("folder not found", d)
    ver = version_of(d)
    task = task or DEFAULT_TASK[ver]
    rows = _rows_v2(d, task) if ver == "v2" else _rows_v3(d, task)
    if not rows:
        raise UserError(f"no configurations for task {task!r}", d, "task")
    df = pd.DataFrame(rows)
    g = _pick_gpu(gpu, df["gpu"].unique().tolist(), d)
    df = df[df["gpu"] == g]
    want = _norm(model)
    ms = sorted(df["model"].unique())
    hit = [m for m in ms if _norm(m) == want]
    if not hit:
        raise UserError(f"model {model!r} not found for {g} / {task}; available: {[_norm(m) for m in ms]}", d, "model")
    df = df[df["model"] == hit[0]]
    sizes = sorted(df["gpus"].unique())
    if gpus is None:
        if len(sizes) > 1:
            raise UserError(f"{hit[0]} on {g} was run on {sizes} GPUs per replica; choose one with --gpus", d, "gpus")
        gpus = int(sizes[0])
    df = df[df["gpus"] == gpus]
    if df.empty:
        raise UserError(f"no configuration of {hit[0]} on {g} with {gpus} GPUs; the data has {sizes}", d, "gpus")
    left_out = []
    for key, vals in (exclude or {}).items():
        col = EXCLUDE_KEYS[key]
        missing = sorted(v for v in vals if not (df[col] == v).any())
        if missing:
            raise UserError(f"--exclude {key}={','.join(f'{v:g}' for v in missing)}: no such configuration (the "
                            f"data has {sorted(int(v) for v in df[col])})", d, "--exclude")
        left_out += [f"{key}={v:g}" for v in sorted(vals)]
        df = df[~df[col].isin(vals)]
    if len(df) < 2:
        raise UserError("fewer than two configurations left to fit after --exclude", d, "--exclude")
    table = normalise(pd.DataFrame({
        "kind": "decode",
        "n_in": 0,
        "n_out": np.round(df["out_len"]).astype(int),
        "batch": np.maximum(np.round(df["avg_bs"]), 1).astype(int),
        "runtime_s": df["avg_bs"] / df["tput"],
        "tpot_s": df["tpot"],
        "avg_power_w": df["power"],
        "energy_device_j": df["j_per_tok"] * df["avg_bs"],
        "source": df["path"],
    }).sort_values("batch"))
    dev = GPU_KEYS.get(g, g)
    mkey = MODEL_KEYS.get(_norm(hit[0]), _norm(hit[0]))
    precision = df["precision"].iloc[0]
    mnote = ("max_num_seqs " + ", ".join(str(int(v)) for v in sorted(df["max_bs"])))
    notes = [
        f"vLLM with continuous batching, {task} task, {gpus} GPU(s) per replica "
        f"({'tensor parallel ' + str(gpus) if gpus > 1 else 'no parallelism'}); {mnote}. All requests were queued at "
        "once, so the running batch stays near max_num_seqs.",
        "Decode rows: step time = average batch / output throughput (effective: it includes the prefills vLLM "
        "interleaved with decoding" + (" and, at the largest batches, preemptions" if ver == "v2" else "") + "), "
        "so engine.step_includes_prefill is set: the paged policy runs each prefill chunk inside the decode step "
        "that holds it, at its marginal prefill time, and takes the mean prefill share back from every step, so "
        "the steps' total is the measured one; the continuous policy adds its own prefill steps, so its time per "
        "token is pessimistic by the prefill share.",
        "Power is the GPUs' only (no host power in the source).",
    ]
    if ver == "v2":
        notes.append("Precision bf16 assumed: the v2 files do not state it; bf16 is the models' released dtype.")
    meta = {
        "device": dev,
        "model": mkey if mkey in MODEL_KEYS.values() else {
            "name": hit[0], "params_b": float(df["params_b"].iloc[0] or 1.0), "layers": 1, "hidden_size": 1,
            "kv_bytes_per_token": 1},
        "engine": {"name": f"vllm-mlenergy-{ver}", "version": "vLLM (version not stated in the data)",
                   "precision": precision, "step_includes_prefill": True},
        "gpus_per_replica": int(gpus),
        "citation": CITE_V2 if ver == "v2" else CITE_V3,
        "path": _compact_path(df, ver, g, gpus),
        "command": (f"dcsim fit --from mlenergy DATA/mlenergy-leaderboard-{ver} --gpu {gpu} --model {model}"
                    + (f" --task {task}" if task != DEFAULT_TASK[ver] else "") + (f" --gpus {gpus}" if len(sizes) > 1
                                                                                  else "")
                    + "".join(f" --exclude {x}" for x in left_out)),
        "licence": LICENCE_V2 if ver == "v2" else LICENCE_V3,
        "source_kind": "published",
        "notes": notes,
        "activation_reserve_frac": 0.1,
    }
    return table, meta


def _compact_path(df: pd.DataFrame, ver: str, gpu: str, gpus: int) -> str:
    """The files used, relative to the data folder's parent, written once."""
    first = str(df["path"].iloc[0])
    if ver == "v2":
        folder = first.rsplit("/", 1)[0]
        return f"{folder}/bs*+tp*+pp*.json ({len(df)} files)"
    return f"{first.split('#')[0]} (configurations with gpu_model {gpu}, num_gpus {gpus}: {len(df)})"


def _rows_v2(d: Path, task: str) -> list[dict]:
    out = []
    for p in sorted((d / task).glob("*/*/*/*.json")):
        try:
            j = json.loads(p.read_text())
            out.append({
                "gpu": p.parts[-4], "model": j["Model"], "gpus": int(j["TP"]) * int(j.get("PP", 1)),
                "avg_bs": float(j["Avg BS (reqs)"]), "max_bs": float(j["Max BS (reqs)"]),
                "tput": float(j["Token tput (tok/s)"]), "tpot": float(j["Avg TPOT (s)"]),
                "out_len": float(j["Avg Output Tokens"]),
                "j_per_tok": float(j["Energy/req (J)"]) / float(j["Avg Output Tokens"]),
                "power": float(j["Energy/req (J)"]) / float(j["Avg Output Tokens"]) * float(j["Token tput (tok/s)"]),
                "path": "mlenergy-leaderboard-v2/" + str(p.relative_to(d)), "precision": "bf16", "params_b": None,
            })
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            raise UserError(f"unexpected leaderboard v2 file: {e}", p) from None
    return out


def _rows_v3(d: Path, task: str) -> list[dict]:
    out = []
    for p in sorted((d / "models").glob(f"*__{task}.json")):
        try:
            j = json.loads(p.read_text())
            prec = {"bfloat16": "bf16", "float16": "fp16"}.get(j.get("weight_precision", "bf16"),
                                                                 j.get("weight_precision", "bf16"))
            for i, c in enumerate(j["configurations"]):
                out.append({
                    "gpu": c["gpu_model"], "model": j["model_id"], "gpus": int(c["num_gpus"]),
                    "avg_bs": float(c["avg_batch_size"]), "max_bs": float(c["max_num_seqs"]),
                    "tput": float(c["output_throughput_tokens_per_sec"]), "tpot": float(c["median_itl_ms"]) / 1e3,
                    "out_len": float(c["avg_output_len"]), "j_per_tok": float(c["energy_per_token_joules"]),
                    "power": float(c["avg_power_watts"]),
                    "path": f"mlenergy-leaderboard-v3/models/{p.name}#configurations[{i}]", "precision": prec,
                    "params_b": j.get("total_params_billions"),
                })
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            raise UserError(f"unexpected leaderboard v3 file: {e}", p) from None
    return out


@IMPORTERS.register("mlenergy")
class MLEnergy(Importer):
    """`dcsim fit --from mlenergy DATA_DIR --gpu G --model M [--task T] [--gpus N] [--exclude K=V]`."""

    help = "ML.ENERGY leaderboard v2 and v3 (one GPU, model, task and replica size)"
    needs = ("gpu", "model")
    takes = ("task", "gpus", "exclude")

    def load(self, paths: list[Path], opts: dict) -> tuple[pd.DataFrame, dict]:
        return load(paths[0], opts["gpu"], opts["model"], task=opts.get("task"), gpus=opts.get("gpus"),
                    exclude=parse_exclude(opts.get("exclude")))
