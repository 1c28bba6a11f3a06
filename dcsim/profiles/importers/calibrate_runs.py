"""Calibration run folders written by `dcsim calibrate` -> the measurement table and fit metadata.

Reads runs.csv and manifest.json (format: calibrate/README.md). Rows:
- phase run/warmup, status ok -> kind "run" (n_in, n_out, batch, runtime_s, ttft_s, tpot_s, device and host
  energy); warm-ups keep warmup=True so fitting skips them. `source` is the point id (same for every repeat).
- idle_deep / idle_serving -> kinds idle_deep / idle_serving (the whole window); the metadata's idle powers are
  the window's last third, after the decay from activity.
Failed runs are left out. Energy of a run shorter than `min_energy_s` is set to NaN: the NVML energy counter of
the project's H100/H200 advances in steps: on our runs its ratio to the integral of the 20 Hz power timeline had a
10-90% range of -40%/+50% at 0.1-0.2 s and -19%/+18% at 0.3-0.5 s, against -8%/+8% at 0.5-1 s and -3%/+4% above 2 s.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from dcsim.calibrate.tp_power import note as per_device_note
from dcsim.errors import UserError, read_text
from dcsim.models import ARCH_MODELS, params_b
from dcsim.profiles.fit_settings import setting_points
from dcsim.profiles.importers.base import IMPORTERS, Importer
from dcsim.profiles.measurements import idle_power_w, normalise

MIN_ENERGY_S = 0.5
# GPUs by the name NVML reports -> (device catalogue key in dcsim/profiles/devices.py, whose memory figure): the
# catalogue gives their power-cap and clock models, peak figures and idle fallbacks. Memory: "measured" is the
# manifest's (NVML's total, 150.8 GB on an H200 against the datasheet's 141), "catalogue" the datasheet's: the H100
# profiles were fitted, and their replays validated, with its 80 GB (NVML: 85.5), which sizes their KV caches, so
# they keep it
CATALOGUE = {"NVIDIA H100 80GB HBM3": ("h100-sxm-80gb", "catalogue"), "NVIDIA H200": ("h200", "measured")}
CONFIG_FILE = "config.json"  # the served model's config, beside an endpoint run's runs.csv


def _num(s: pd.Series, file: Path, column: str) -> pd.Series:
    """A runs.csv column as numbers (empty cells: NaN); a cell that is not a number is a UserError naming its
    line and column."""
    v = pd.to_numeric(s, errors="coerce")
    bad = v.isna() & (s.str.strip() != "") & ~s.str.strip().str.lower().isin(("nan", "inf", "-inf"))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"line {i + 2} holds {s.iloc[i][:40]!r}, not a number", file, column)
    return v


def _cache_len(extra: str) -> float:
    """The static KV cache length a run's backend recorded in its `extra` JSON (NaN: a dynamic cache)."""
    try:
        v = json.loads(extra).get("cache_len") if extra else None
    except (ValueError, AttributeError):
        return float("nan")
    return float(v) if isinstance(v, (int, float)) else float("nan")


def read_raw(run_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """runs.csv as a typed DataFrame and the manifest."""
    d = Path(run_dir)
    runs, man = d / "runs.csv", d / "manifest.json"
    if not runs.is_file() or not man.is_file():
        raise UserError("not a calibration run folder (needs runs.csv and manifest.json)", d)
    try:
        manifest = json.loads(read_text(man))
    except ValueError as e:
        raise UserError(f"not valid JSON: {e}", man) from None
    if not isinstance(manifest, dict) or manifest.get("format") != "dcsim-calibrate/1":
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UserError(f"unknown format {got!r}; expected dcsim-calibrate/1", man, "format")
    text = read_text(runs)
    try:
        raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise UserError(f"not a readable CSV table: {str(e).strip()}", runs) from None
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise UserError(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} (has "
                        f"{', '.join(map(str, raw.columns[:12]))}{', ...' if len(raw.columns) > 12 else ''})",
                        runs, missing[0])
    for c in OPTIONAL:
        if c not in raw.columns:
            raw[c] = ""  # a column this run's version did not write: no value in any row
    for c in NUMERIC:
        raw[c] = _num(raw[c], runs, c)
    return raw, manifest


# runs.csv columns without which no row can be read; the other numeric ones may be absent (empty in every row)
REQUIRED = ("phase", "status", "n_in", "n_out", "batch", "runtime_s")
NUMERIC = ("n_in", "n_out", "batch", "repeat", "runtime_s", "ttft_s", "tpot_s", "gen_tokens", "energy_device_j",
           "energy_host_j", "energy_prefill_device_j", "energy_timeline_j", "avg_power_w", "peak_power_w",
           "tail_s", "tail_power_w", "power_cap_w", "t_start", "t_end", "sm_clock_mhz")
OPTIONAL = tuple(c for c in (*NUMERIC, "point", "extra") if c not in REQUIRED)


def _first_time(runs: pd.DataFrame, d: Path) -> pd.Series:
    """Which runs met a shape for the first time in their session (dcsim.profiles.cold_shapes): they pay the
    engine's first-time costs, which are not run-to-run spread."""
    from dcsim.profiles.cold_shapes import new_shapes

    if runs.empty or not {"session", "t_start"} <= set(runs.columns):
        return pd.Series(False, index=runs.index)
    t = new_shapes(runs.assign(folder=str(d)))
    return ((t["new_prompt"] > 0) | (t["new_kv"] > 0)).reindex(runs.index)


def load(run_dir: str | Path, cap_w: float | None = None,
         min_energy_s: float = MIN_ENERGY_S, model_config: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """(measurement table, fit metadata) of one run folder; `cap_w` picks the rows run under that power limit
    (default: the device's own limit). `model_config`: the model's config.json (or its folder), for a run whose
    manifest holds none (an endpoint run: the served model's shapes are not visible from outside)."""
    d = Path(run_dir)
    raw, man = read_raw(d)
    caps = raw["power_cap_w"]
    sel = caps.isna() if cap_w is None else np.isclose(caps, cap_w)
    sel = sel & raw["sm_clock_mhz"].isna()  # rows under a locked SM clock are not the device's own clocking
    name = d.name
    ok = raw["status"] == "ok"
    runs = raw[raw["phase"].isin(["run", "warmup"]) & ok & sel].copy()
    steps = raw[(raw["phase"] == "step") & ok & sel].copy()
    if not (runs["phase"] == "run").any() and steps.empty:
        raise UserError("holds no finished run" + ("" if cap_w is None else f" under a {cap_w:g} W cap") +
                        " (status ok, phase run or step) to fit", d / "runs.csv")
    short = runs["runtime_s"] < min_energy_s
    runs.loc[short, ["energy_device_j", "energy_host_j", "avg_power_w"]] = np.nan
    table = pd.DataFrame({
        "kind": "run", "n_in": runs["n_in"], "n_out": runs["n_out"], "batch": runs["batch"],
        "runtime_s": runs["runtime_s"], "ttft_s": runs["ttft_s"], "tpot_s": runs["tpot_s"],
        "energy_device_j": runs["energy_device_j"], "energy_host_j": runs["energy_host_j"],
        "avg_power_w": runs["avg_power_w"], "repeat": runs["repeat"].fillna(0),
        "warmup": runs["phase"] == "warmup", "source": name + ":" + runs["point"],
        "cache_len": runs["extra"].map(_cache_len),
        "first_time": _first_time(runs, d),
    })
    step_t = pd.DataFrame()
    if not steps.empty:
        for c in ("context", "prefill_prefix", "graph_batch"):
            if c not in steps.columns:
                raise UserError("step rows without their column", d / "runs.csv", c)
            steps[c] = _num(steps[c], d / "runs.csv", c)
        short_s = steps["runtime_s"] < min_energy_s
        steps.loc[short_s, ["energy_device_j", "energy_host_j", "avg_power_w"]] = np.nan
        step_t = pd.DataFrame({
            "kind": "step", "n_in": steps["n_in"], "n_out": steps["n_out"], "batch": steps["batch"],
            "runtime_s": steps["runtime_s"], "energy_device_j": steps["energy_device_j"],
            "energy_host_j": steps["energy_host_j"], "avg_power_w": steps["avg_power_w"],
            "repeat": steps["repeat"].fillna(0), "warmup": False, "source": name + ":" + steps["point"],
            "context": steps["context"], "prefill_prefix": steps["prefill_prefix"],
            "graph_batch": steps["graph_batch"],
            "prefill_chunks": (_num(steps["prefill_chunks"], d / "runs.csv", "prefill_chunks")
                               if "prefill_chunks" in steps.columns else np.nan),
        })
        short = pd.concat([short, short_s])
    idle = raw[raw["phase"].isin(["idle_deep", "idle_serving"]) & ok]
    idle_t = pd.DataFrame({
        "kind": idle["phase"], "n_in": 0, "n_out": 0, "batch": 0, "runtime_s": idle["runtime_s"],
        "energy_device_j": idle["energy_device_j"], "energy_host_j": idle["energy_host_j"],
        "avg_power_w": idle["avg_power_w"], "repeat": 0, "warmup": False, "source": name + ":" + idle["phase"],
    })
    table = normalise(pd.concat([x for x in (table, step_t, idle_t) if len(x)], ignore_index=True),
                      str(d / "runs.csv"))
    return table, _meta(d, raw, man, cap_w, int(short.sum()), min_energy_s, model_config)


IDLE = (("idle_serving", "serving_idle_w"), ("idle_deep", "deep_idle_w"))


def load_many(run_dirs: list[str | Path], model_config: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """One table of several run folders fitted together (e.g. a mixed-step sweep and a prefix-step sweep of one
    engine): each row keeps its folder in `source`. They must share the device, the model, the engine and its
    precision. The metadata is the first folder's with every folder's path, plan and measured power caps; its
    idle powers come from the first folder that measured them; notes that differ are kept with their folder."""
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) == 1:
        return load(dirs[0], model_config=model_config)
    names = [d.name for d in dirs]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise UserError(f"two run folders named {n!r} (their rows would be taken for repeats of one shape)",
                            dirs[i], "path")
    loaded = [load(d, model_config=model_config) for d in dirs]
    first = loaded[0][1]
    for d, (_, m) in zip(dirs[1:], loaded[1:]):
        for field, got, want in (
                ("device", _device_name(m), _device_name(first)),
                ("model", m["model"], first["model"]),
                ("engine", m["engine"]["name"], first["engine"]["name"]),
                ("precision", m["engine"]["precision"], first["engine"]["precision"]),
                ("step_loop", m["step_loop"], first["step_loop"]),
                ("mixed_step", m["engine"].get("mixed_step"), first["engine"].get("mixed_step")),
                ("kv_data", m["engine"].get("kv_data"), first["engine"].get("kv_data"))):
            if got != want:
                raise UserError(f"measured with {field} {got!r}, not {want!r} as {dirs[0].as_posix()}; folders fitted "
                                "together must share the device, model, engine, precision, step loop (served "
                                "steps hold the host's time between device syncs, pipelined ones do not), mixed "
                                "step (fused or split forwards) and KV cache contents (a model's values or zeros: "
                                "zeros draw less power)", d, field)
    table = normalise(pd.concat([t for t, _ in loaded], ignore_index=True), ", ".join(str(d) for d in dirs))
    meta = dict(first)
    paths = [m["path"] for _, m in loaded]
    meta["path"] = "; ".join(paths)
    meta["citation"] = ("measured with dcsim calibrate; raw data " + ", ".join(paths) +
                        " (runs.csv, manifest.json, power.csv of each)")
    meta["command"] = "dcsim fit " + " ".join(paths) + first["command"][len("dcsim fit " + paths[0]):]
    meta["plan"] = ", ".join(str(m.get("plan")) for _, m in loaded)
    meta["power_caps_measured_w"] = sorted({c for _, m in loaded for c in m["power_caps_measured_w"]})
    for key, field in (("cap_points", "cap_w"), ("clock_points", "mhz")):  # a setting's first folder's point
        seen: dict[float, dict] = {}
        for _, m in loaded:
            for pt in m.get(key, []):
                seen.setdefault(pt[field], pt)
        meta[key] = [seen[v] for v in sorted(seen)]
    for _, key in IDLE:
        found = [m[key] for _, m in loaded if key in m]
        if found:
            meta[key] = found[0]
    common = [n for n in first["notes"] if all(n in m["notes"] for _, m in loaded[1:])]
    meta["notes"] = common + [f"{Path(m['path']).name}: {n}" for _, m in loaded for n in m["notes"] if n not in common]
    meta["not_covered"] = list(dict.fromkeys(n for _, m in loaded for n in m["not_covered"]))  # in any folder
    return table, meta


def borrow_idle(table: pd.DataFrame, meta: dict, run_dir: str | Path, other_dir: str | Path) -> dict:
    """`meta` of `run_dir` (its measurement `table`) with the idle powers of `other_dir`, another run on the same
    device model, for a run that measured no idle windows (idle draw belongs to the device, not to the model or
    the plan); by the statistic the fit takes from a run's own windows (measurements.idle_power_w)."""
    if table["kind"].isin([kind for kind, _ in IDLE]).any():
        raise UserError(f"{run_dir} measured its own idle windows; --idle-from is for a run without them",
                        None, "--idle-from")
    other_table, other = load(other_dir)
    mine, theirs = _device_name(meta), _device_name(other)
    if mine != theirs:
        raise UserError(f"measured on {theirs!r}, not on this run's {mine!r}", other_dir, "--idle-from")
    found = {key: (kind, w) for kind, key in IDLE if (w := idle_power_w(other_table, kind)) is not None}
    if not found:
        raise UserError("it measured no idle windows either", other_dir, "--idle-from")
    for key, (kind, w) in found.items():
        meta[key] = {"value": round(w, 2), "source": "measured", "path": other["path"], "citation": other["citation"],
                     "note": f"median of the {kind} windows of {other['path']}, another run on this device model "
                             "(this run has none)"}
    meta["command"] += f" --idle-from {Path(other_dir).as_posix()}"
    return meta


def _device_name(meta: dict) -> str:
    d = meta["device"]
    return d if isinstance(d, str) else str(d.get("name"))


def _run_temperatures(d: Path, raw: pd.DataFrame) -> str | None:
    """A note on the device temperature during the measured runs (temperature.csv, 1 Hz), or None without one:
    busy power rises with temperature, and a profile's power holds for GPUs about as warm as its calibration."""
    path = d / "temperature.csv"
    if not path.is_file():
        return None
    try:
        t = pd.read_csv(path)
        ts, temp = t["t"].to_numpy(float), t["temp_c"].to_numpy(float)
    except (ValueError, KeyError, pd.errors.ParserError) as e:
        raise UserError(f"unreadable temperature timeline: {e}", path) from None
    runs = raw[(raw["phase"] == "run") & (raw["status"] == "ok")]
    inside = np.zeros(len(ts), bool)
    for a, b in runs[["t_start", "t_end"]].itertuples(index=False):
        inside |= (ts >= a - 0.5) & (ts <= b + 0.5)  # 1 Hz samples: a short run gets the nearest one
    v = temp[inside & np.isfinite(temp)]
    if not len(v):
        return None
    p10, p50, p90 = np.percentile(v, [10, 50, 90])
    return (f"Device temperature during the measured runs ({len(v)} samples of temperature.csv): median "
            f"{p50:.0f} C, 10-90% {p10:.0f}-{p90:.0f} C, range {v.min():.0f}-{v.max():.0f} C. The power curves "
            "hold for a device about this warm; the simulator has no temperature.")


def _config(d: Path, be: dict, model_config: str | Path | None) -> tuple[dict, str | None]:
    """The model's config: --model-config's, else the one the run recorded, else a config.json shipped in the run
    folder (an endpoint run whose server read its model from elsewhere); (config, the file it came from)."""
    if model_config is None:
        if be.get("model_config") or not (d / CONFIG_FILE).is_file():
            return be.get("model_config") or {}, None
        model_config = d / CONFIG_FILE
    p = Path(model_config)
    p = p / CONFIG_FILE if p.is_dir() else p
    if not p.is_file():
        raise UserError("model config not found (a config.json or the model folder holding one)", p,
                        "--model-config")
    try:
        return json.loads(p.read_text()), str(p)
    except ValueError as e:
        raise UserError(f"not JSON: {e}", p, "--model-config") from None


def _gpu_memory_gb(d: Path, name: str, gpu: dict) -> float:
    """A GPU's memory size: as the manifest recorded it, else the device catalogue's for that name; with
    neither, a UserError saying where it was looked for."""
    from dcsim.profiles.devices import DEVICES

    mem = gpu.get("memory_total_gb")
    if isinstance(mem, (int, float)) and not isinstance(mem, bool) and math.isfinite(mem) and mem > 0:
        return round(float(mem), 1)
    known = [dev.memory_gb for dev in DEVICES.values() if dev.name == name]
    if known:
        return known[0]
    raise UserError(f"the manifest records no memory size for GPU {name!r} and the device catalogue does not know "
                    f"it (known: {', '.join(sorted(dev.name for dev in DEVICES.values()))}); record its memory "
                    "in GiB there", d / "manifest.json", "sessions.environment.gpu.memory_total_gb")


def _session_info(man: dict) -> tuple[dict, dict]:
    env, backend = {}, {}
    for s in man.get("sessions", []):
        env = env or s.get("environment", {})
        backend = backend or s.get("backend", {})
    return env, backend


def _cold_start(raw: pd.DataFrame, ident: dict) -> dict | None:
    """The metered model loads (phase load, one a session): median seconds and device joules; None where the
    folder has none with energy (a --latency-only run, or one from before loads were metered)."""
    rows = raw[(raw["phase"] == "load") & (raw["status"] == "ok")]
    rows = rows[rows["energy_device_j"].notna() & (rows["runtime_s"] > 0)]
    if rows.empty:
        return None
    return {"load_s": float(rows["runtime_s"].median()), "load_j": float(rows["energy_device_j"].median()),
            "n": int(len(rows)), "random_weights": ident.get("weights") == "random"}


def _meta(d: Path, raw: pd.DataFrame, man: dict, cap_w: float | None, n_short: int, min_energy_s: float,
          model_config: str | Path | None = None) -> dict:
    env, be = _session_info(man)
    ident = man.get("identity", {})
    gpu = env.get("gpu", {})
    gname = gpu.get("name")
    device_key, memory = CATALOGUE.get(gname or "", (None, None))
    if device_key:
        from dcsim.profiles.devices import DEVICES

        spec = DEVICES[device_key]
        device: object = {"name": spec.name, "kind": spec.kind, "tdp_w": spec.tdp_w,
                          "memory_gb": _gpu_memory_gb(d, spec.name, gpu) if memory == "measured" else spec.memory_gb}
    elif gname:
        device = {"name": gname, "kind": "gpu", "memory_gb": _gpu_memory_gb(d, gname, gpu),
                  "tdp_w": gpu.get("power_limit_default_w")}
    else:
        device = {"name": env.get("cpu_model") or env.get("device", "unknown"),
                  "kind": "cpu" if ident.get("device_kind") == "cpu" else "soc", "memory_gb": 1.0}
    cfg, cfg_file = _config(d, be, model_config)
    arch = ident.get("arch")
    if arch in ARCH_MODELS and cfg_file is None:
        model: object = ARCH_MODELS[arch]
    else:
        if not cfg:
            raise UserError("the run records no model configuration (an endpoint run: the served model's shapes "
                            "are not visible from outside); give the served model's config.json with "
                            f"--model-config, or put it in the run folder as {CONFIG_FILE}",
                            d / "manifest.json", "model_config")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                               "vocab_size") if k not in cfg]
        if missing:
            raise UserError(f"the model config lacks {missing}", cfg_file or d / "manifest.json", missing[0])
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        bpv = 4 if ident.get("dtype") == "fp32" else 2
        cfg = {"num_key_value_heads": cfg["num_attention_heads"], **cfg}  # no grouped-query attention if unsaid
        params = be.get("params_b") or float(f"{params_b(SimpleNamespace(**cfg)):.6g}")
        model = {"name": arch or ident.get("model") or "model", "params_b": params,
                 "layers": cfg["num_hidden_layers"], "hidden_size": cfg["hidden_size"],
                 "kv_bytes_per_token": 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * hd * bpv,
                 "max_context": cfg.get("max_position_embeddings", 4096)}
    rel = d.as_posix()
    cites = f"measured with dcsim calibrate; raw data {rel} (runs.csv, manifest.json, power.csv)"
    notes = []
    if ident.get("weights") == "random":
        notes.append("Random weights in the real architecture (the measurement machine had no network access to "
                     "download weights): same shapes and FLOPs as the trained model; output tokens are forced "
                     "(min_new_tokens = max_new_tokens), so the lengths match the plan.")
    if be.get("backend") == "hf":
        notes.append("Transformers eager generate (dynamic KV cache): at small batch the host sets the pace, and "
                     "step times vary from run to run by tens of percent.")
    elif be.get("backend") == "hf-static":
        notes.append("Transformers generate with a static KV cache sized to each batch size's longest shape and "
                     "the decode step compiled (torch.compile, CUDA graphs); prefill runs eagerly.")
    elif be.get("backend") == "hf-graph":
        notes.append("dcsim's own greedy loop over a transformers static KV cache sized to each batch size's longest "
                     "shape: eager prefill, then one replay of a captured CUDA graph per decode step (no host work "
                     "between steps)" + ("; CUDA graph capture failed for " + ", ".join(be["graph_capture_failures"])
                                         + ", which decoded eagerly." if be.get("graph_capture_failures") else "."))
    if n_short:
        notes.append(f"{n_short} runs shorter than {min_energy_s:g} s kept their time but not their energy (the "
                     "NVML energy counter is too coarse there).")
    temp = _run_temperatures(d, raw)
    if temp:
        notes.append(temp)
    gpus = int(ident.get("gpus_per_replica", 1))
    tp_note = per_device_note(raw, gpus, ident.get("device_kind") == "cuda")
    if tp_note:
        notes.append(tp_note)
    sessions = man.get("sessions", [])
    notes.append(f"{len(sessions)} session(s): " + ", ".join(f"{s.get('status')}" for s in sessions))
    meta: dict = {
        "device": device, "device_key": device_key, "model": model,
        "engine": {"name": be.get("backend", ident.get("backend", "hf")),
                   "version": f"transformers {be.get('transformers')}, torch {be.get('torch')}",
                   "precision": ident.get("dtype") or "bf16",
                   # the paged engine's mixed steps: "fused" or "split" since 2026-12-04; before, the folders ran
                   # them split and recorded a sentence saying so
                   # and what its KV cache held where no step wrote: "model" or "zeros" since 2026-12-05; before,
                   # zeros (the cache as allocated)
                   **({"mixed_step": "fused" if (be.get("decode") or {}).get("mixed_step") == "fused" else "split",
                       "kv_data": (be.get("decode") or {}).get("kv_data") or "zeros"}
                      if be.get("backend") == "paged" else {})},
        "gpus_per_replica": gpus, "citation": cites, "path": rel,
        "command": f"dcsim fit {rel}" + (f" --model-config {Path(cfg_file).as_posix()}" if cfg_file else ""),
        "source_kind": "measured", "notes": notes, "not_covered": [],
        "environment": env, "plan": man.get("plan", {}).get("name"), "power_cap_w": cap_w,
        "step_loop": man.get("plan", {}).get("step_loop", "pipelined"),
        "power_caps_measured_w": sorted({float(c) for c in raw["power_cap_w"].dropna()}),
        # the sweep's own caps and locked clocks against the device's own setting (fit_settings)
        "cold_start": _cold_start(raw, ident),
        "cap_points": setting_points(raw, "power_cap_w", min_energy_s),
        "clock_points": setting_points(raw, "sm_clock_mhz", min_energy_s),
    }
    if meta["step_loop"] == "served":
        notes.append("steps timed as a server runs them (step_loop: served): decode rows loaded from the host and "
                     "tokens read back, one device sync a step")
    for phase, key in IDLE:
        rows = raw[(raw["phase"] == phase) & (raw["status"] == "ok")]
        if len(rows) and math.isfinite(rows["tail_power_w"].iloc[0]):
            r = rows.iloc[0]
            how = ("model loaded, no request, right after the warm-ups" if phase == "idle_serving" else
                   "before the process created a device context, no model loaded")
            meta[key] = {"value": round(float(r["tail_power_w"]), 2), "source": "measured", "path": rel,
                         "note": f"NVML energy over the last {r['tail_s']:.0f} s of a {r['runtime_s']:.0f} s window "
                                 f"({how}); whole-window mean {r['avg_power_w']:.1f} W"}
    if not (raw["energy_host_j"].notna().any()):
        meta["not_covered"].append("host (CPU, DRAM) energy: RAPL was not readable where this ran")
    return meta


@IMPORTERS.register("run")
class RunFolders(Importer):
    """`dcsim fit RUN_DIR [RUN_DIR...] [--model-config C] [--idle-from OTHER]`: calibration run folders."""

    help = "calibration run folders of dcsim calibrate (several of one device, model and engine fit together)"
    takes = ("model_config", "idle_from")
    many = True

    def load(self, paths: list[Path], opts: dict) -> tuple[pd.DataFrame, dict]:
        for d in paths:
            if not Path(d).is_dir():
                raise UserError("calibration run folder not found", d)
        table, meta = load_many(paths, model_config=opts.get("model_config"))
        if opts.get("idle_from"):
            if not Path(opts["idle_from"]).is_dir():
                raise UserError("calibration run folder not found", opts["idle_from"], "--idle-from")
            meta = borrow_idle(table, meta, ", ".join(str(d) for d in paths), opts["idle_from"])
        return table, meta
