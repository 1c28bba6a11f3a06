"""The replay workload: which requests, with which token counts, arriving when.

A validation replays exactly this table on the device and feeds exactly this table to the simulator, so
it is built once, written to `workload.csv` (n_in, n_out, arrival_s; the first arrival at 0) and read
back by both sides. Arrivals either follow the trace's own timestamps (stretched or compressed) or a
Poisson process; either can be sized to a target utilisation of one replica (this sizes the load; it tunes
nothing the comparison judges): for one request at a time (and static batches) by the profile's isolated service
time; for an iteration-level engine (`paged`, `continuous`) as a fraction of the request rate the engine sustains
on these requests, the simulated rate with every request waiting (`sustained_rate`).

A trace with prefix identities (`prefix_id` and `prefix_len`, or `session_id`: dcsim.traces.trace.prefix_columns)
gives the table two more columns, prefix_id (empty for none) and prefix_len, which the simulator reads back as a
trace's and the paged replay builds its prompts from. A prefix is cut to the request's own (clipped) prompt, and
to the (clipped) prompt plus output of the latest earlier request of its id in the table, the most a later turn
of a conversation can share with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dcsim.errors import UserError, check_input
from dcsim.profiles.profile import Profile
from dcsim.traces.trace import cap_by_earlier, load_trace

COLUMNS = ("n_in", "n_out", "arrival_s")
PREFIX_COLUMNS = ("prefix_id", "prefix_len")  # only where the trace has prefix identities


@dataclass(frozen=True)
class WorkloadSpec:
    """How to cut a replay workload from a trace; `utilisation` overrides time_scale / rate_per_s."""

    trace: str
    arrivals: str = "replay"  # replay | poisson
    time_scale: float | None = None
    rate_per_s: float | None = None
    utilisation: float | None = None
    limit: int | None = None
    skip: int = 0
    clip_in: int | None = None
    clip_out: int | None = None
    seed: int = 0
    batching: dict | None = None  # an iteration-level engine's scheduler (policy + parameters): sizes by its rate


# a replay folder's copy of the profile its workload was sized with (written by dcsim validate)
SIZING_PROFILE = "profile.yaml"


def sizing_profile(folder: Path, meta: dict, root: Path = Path(".")) -> Path:
    """The profile a replay's workload was sized with: the folder's own copy, or (folders from before the copy
    was kept) the path replay.json names."""
    own = Path(folder) / SIZING_PROFILE
    return own if own.is_file() else Path(root) / meta["profile"]


def isolated_service_s(profile: Profile, n_in: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """Batch-1 service time of each request by the profile: what the simulator's routers predict."""
    from dcsim.sim.replica import predicted_service_s

    evaluator = profile.evaluator()
    return np.array([predicted_service_s(evaluator, a, b) for a, b in zip(n_in.tolist(), n_out.tolist())], dtype=float)


def sustained_rate(profile: Profile, n_in: np.ndarray, n_out: np.ndarray, batching: dict) -> float:
    """Requests per second one replica of `profile` with `batching` sustains on these requests: every request at
    once, the completions between the 10th and the 90th percentile over their time (the ramp up and the tail of a
    closed batch left out)."""
    import tempfile

    from dcsim.scenario import AllAtOnceArrivals, Batching, Pool, Scenario, TraceRef
    from dcsim.sim.engine import simulate
    from dcsim.traces.trace import Trace

    with tempfile.TemporaryDirectory() as d:
        tr = Path(d) / "w.parquet"
        Trace(np.asarray(n_in, np.int64), np.asarray(n_out, np.int64), None, None, {"source": "sizing"}).to_parquet(tr)
        p = Path(d) / "p.yaml"
        profile.to_yaml(p)
        sc = Scenario(name="sizing", trace=TraceRef(path=str(tr)), arrivals=AllAtOnceArrivals(),
                      fleet=[Pool(name="replica", profile=str(p), count=1, batching=Batching(**batching))])
        done = np.sort(simulate(sc).log["done_s"])
    lo, hi = np.percentile(done, [10, 90])
    if hi <= lo:
        return len(done) / max(float(done[-1]), 1e-9)
    return 0.8 * len(done) / float(hi - lo)


def build(spec: WorkloadSpec, profile: Profile) -> pd.DataFrame:
    """The workload table for a spec; raises UserError naming the option that is wrong."""
    path = check_input(spec.trace, "--trace", "trace file")  # a folder is named as one
    tr = load_trace(path)
    lo = spec.skip
    hi = len(tr) if spec.limit is None else min(len(tr), lo + spec.limit)
    if hi <= lo:
        raise UserError(f"no requests left after --skip {spec.skip} (the trace has {len(tr)})", spec.trace, "--skip")
    n_in = tr.n_in[lo:hi].astype(np.int64)
    n_out = tr.n_out[lo:hi].astype(np.int64)
    if spec.clip_in:
        n_in = np.minimum(n_in, spec.clip_in)
    if spec.clip_out:
        n_out = np.minimum(n_out, spec.clip_out)
    n_out = np.maximum(n_out, 1)
    ctx = profile.model.max_context
    if ctx and int((n_in + n_out).max()) > ctx:
        worst = int((n_in + n_out).max())
        raise UserError(f"a request needs {worst} tokens of context but the model holds {ctx}; pass --clip-in / "
                        "--clip-out", spec.trace, "--clip-in")
    service = isolated_service_s(profile, n_in, n_out)
    n = len(n_in)
    if spec.utilisation is not None and spec.batching is not None:  # as a fraction of the engine's own rate
        rate_u = spec.utilisation * sustained_rate(profile, n_in, n_out, spec.batching)
        service = np.full(n, spec.utilisation / rate_u)  # the mean gap such a rate needs, as busy seconds
    if spec.arrivals == "replay":
        if tr.arrival_s is None:
            raise UserError("this trace has no arrival times; use --arrivals poisson", spec.trace, "--arrivals")
        a = np.asarray(tr.arrival_s[lo:hi], np.float64)
        a = a - a[0]
        scale = spec.time_scale if spec.time_scale is not None else 1.0
        if spec.utilisation is not None:
            span = a[-1] if n > 1 else 0.0
            if span <= 0:
                raise UserError("the chosen requests all arrive at once; cannot size a utilisation", spec.trace,
                                "--utilisation")
            # n requests over span*scale seconds: busy fraction = sum(service) / (span * scale)
            scale = float(service.sum() / (spec.utilisation * span))
        arrival = a * scale
    elif spec.arrivals == "poisson":
        rate = spec.rate_per_s
        if spec.utilisation is not None:
            rate = spec.utilisation / float(service.mean())
        if rate is None or rate <= 0:
            raise UserError("poisson arrivals need --rate or --utilisation", None, "--rate")
        rng = np.random.default_rng(spec.seed)
        gaps = rng.exponential(1.0 / rate, size=n)
        gaps[0] = 0.0
        arrival = np.cumsum(gaps)
    else:
        raise UserError(f"unknown arrivals {spec.arrivals!r}; expected replay or poisson", None, "--arrivals")
    wl = pd.DataFrame({"n_in": n_in, "n_out": n_out, "arrival_s": np.round(arrival, 6)})
    if tr.prefix_id is not None:
        pid, plen = prefixes(tr.prefix_id[lo:hi], tr.prefix_len[lo:hi], n_in, n_out)
        wl["prefix_id"] = pd.array([p if p >= 0 else None for p in pid.tolist()], dtype="Int64")
        wl["prefix_len"] = plen
    return wl


def prefixes(pid: np.ndarray, plen: np.ndarray, n_in: np.ndarray, n_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The workload's prefix ids and lengths: no longer than the request's prompt, nor than the prompt plus output
    of the latest earlier request of its id (a conversation's earlier turns clipped with it); 0 without an id."""
    pid = np.asarray(pid, dtype=np.int64)
    plen = np.where(pid >= 0, np.minimum(np.asarray(plen, dtype=np.int64), n_in), 0)
    return pid, cap_by_earlier(pid, plen, n_in, n_out)


def describe(wl: pd.DataFrame, profile: Profile, batching: dict | None = None) -> dict:
    """Headline facts of a workload: size, span, offered utilisation by the profile (for an iteration-level engine,
    the offered request rate against the rate it sustains on these requests)."""
    service = isolated_service_s(profile, wl["n_in"].to_numpy(), wl["n_out"].to_numpy())
    span = float(wl["arrival_s"].iloc[-1]) if len(wl) else 0.0
    out = {
        "requests": int(len(wl)),
        "arrival_span_s": round(span, 3),
        "n_in_mean": round(float(wl["n_in"].mean()), 1),
        "n_out_mean": round(float(wl["n_out"].mean()), 1),
        "predicted_busy_s": round(float(service.sum()), 2),
        "offered_utilisation": round(float(service.sum() / span), 3) if span > 0 else None,
    }
    if batching is not None:
        rate = sustained_rate(profile, wl["n_in"].to_numpy(), wl["n_out"].to_numpy(), batching)
        out["sustained_rate_per_s"] = round(rate, 3)
        out["offered_utilisation"] = round(len(wl) / span / rate, 3) if span > 0 else None
    return out


def read(path: Path) -> pd.DataFrame:
    """Read a workload.csv back, checking its columns."""
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"missing columns {missing}", path, missing[0])
    if len(df) == 0:
        raise UserError("the workload holds no requests", path)
    if (df["n_in"] < 1).any() or (df["n_out"] < 1).any():
        raise UserError("token counts must be at least 1", path, "n_in/n_out")
    if (np.diff(df["arrival_s"].to_numpy()) < 0).any():
        raise UserError("arrival times must be non-decreasing", path, "arrival_s")
    return df[list(COLUMNS) + [c for c in PREFIX_COLUMNS if c in df.columns]]
