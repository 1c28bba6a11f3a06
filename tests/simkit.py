"""Small hand-built inputs for simulator tests: a profile with round numbers, traces, scenarios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from dcsim.profiles.profile import Profile
from dcsim.traces.trace import Trace


def profile_dict(name: str = "toy", *, prefill=(0.1, 0.001), decode=(0.02, 0.001), prefill_w=300.0,
                 decode_w=(200.0, 10.0), idle_w=50.0, deep_w=10.0, kv_tokens=1_000_000,
                 host: dict | None = None, cap: dict | None = None, max_context: int = 100_000) -> dict:
    """prefill_s = a + b*tokens; decode_step_s = a + b*batch; prefill_w const; decode_w = a + b*batch."""
    d = {
        "name": name,
        "device": {"name": "Toy GPU", "memory_gb": 80},
        "model": {"name": "toy", "params_b": 7, "layers": 32, "hidden_size": 4096,
                  "kv_bytes_per_token": 524288, "max_context": max_context},
        "engine": {"name": "toy"},
        "latency": {"prefill_s": {"intercept": prefill[0], "coef": {"tokens": prefill[1]}},
                    "decode_step_s": {"intercept": decode[0], "coef": {"batch": decode[1]}}},
        "power": {"prefill_w": {"intercept": prefill_w},
                  "decode_w": {"intercept": decode_w[0], "coef": {"batch": decode_w[1]}},
                  "serving_idle_w": idle_w, "deep_idle_w": deep_w},
        "memory": {"device_gb": 80, "weights_gb": 14, "kv_capacity_tokens": kv_tokens},
        "provenance": {"all": {"source": "assumed", "note": "hand-made numbers for tests"}},
    }
    if host:
        d["power"]["host"] = host
    if cap:
        d["power_cap"] = cap
    Profile.model_validate(d)
    return d


def write_profile(dirpath: Path, **kw) -> Path:
    d = profile_dict(**kw)
    p = dirpath / f"{d['name']}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def write_trace(dirpath: Path, n_in, n_out, arrival=None, name: str = "trace.parquet") -> Path:
    t = Trace(np.asarray(n_in, dtype=np.int64), np.asarray(n_out, dtype=np.int64),
              None if arrival is None else np.asarray(arrival, dtype=np.float64), None, {"source": "test"})
    p = dirpath / name
    t.to_parquet(p)
    return p


def write_scenario(dirpath: Path, data: dict, name: str = "scenario.yaml") -> Path:
    p = dirpath / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def scenario(trace: Path, pools: list[dict], **kw) -> dict:
    d = {"name": "test", "seed": 1, "trace": {"path": str(trace)}, "arrivals": {"kind": "replay"},
         "fleet": pools}
    d.update(kw)
    return d


def run_pool(tmp_path: Path, profile: Path, n_in, n_out, arrival, batching: dict, **pool):
    """One replica of `profile` serving a trace the test writes, with the pool's other fields (None: left out):
    (raw results, requests table, summary)."""
    from dcsim.results import requests_table, summarize
    from dcsim.scenario import Scenario
    from dcsim.sim.engine import simulate

    tr = write_trace(tmp_path, n_in, n_out, arrival)
    spec = {"name": "p", "profile": str(profile), "count": 1, "batching": batching}
    spec.update({k: v for k, v in pool.items() if v is not None})
    raw = simulate(Scenario.model_validate(scenario(tr, [spec])))
    return raw, requests_table(raw), summarize(raw)
