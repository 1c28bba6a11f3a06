"""Regression over the committed validation cases: rerun the simulator side of every replay recorded under
validation/ from its raw files, and fail if a forecast error grows past the limit validation/limits.yaml
sets for it (the target where the case met it, the recorded miss where it did not)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from dcsim.validate.compare import PAGED_TARGETS, TARGETS, TIMELINE_TARGET, compare

ROOT = Path(__file__).resolve().parents[1]
CASES = sorted(p.parent for p in (ROOT / "validation").glob("*/replay.json"))


class CaseLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limits: dict[str, float]
    misses_because: str | None = None


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cases: dict[str, CaseLimits]


LIMITS = Limits.model_validate(yaml.safe_load((ROOT / "validation" / "limits.yaml").read_text()))


def test_every_committed_case_has_limits_for_every_target():
    assert CASES, "no committed validation case"
    assert sorted(LIMITS.cases) == sorted(c.name for c in CASES)
    for name, c in LIMITS.cases.items():
        targets = _targets(ROOT / "validation" / name)
        assert set(c.limits) == set(targets), name
        # a limit looser than the target must say why
        assert all(v <= targets[k] for k, v in c.limits.items()) or c.misses_because, name


def _targets(case: Path) -> dict[str, float]:
    """The targets a case is held to: a paged engine's replays also to TTFT p50/p95 and TPOT p50; every case with a
    power timeline to its per-second error above idle (power_timeline)."""
    policy = json.loads((case / "replay.json").read_text())["policy"].get("policy")
    targets = dict(PAGED_TARGETS if policy == "paged" else TARGETS)
    if (case / "power.csv").is_file():
        targets["power_timeline"] = TIMELINE_TARGET
    return targets


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_forecast_errors_stay_within_their_limits(case, tmp_path):
    work = tmp_path / case.name
    shutil.copytree(case, work)
    # the profile the committed comparison was made with: the replay's own, or one given to --compare-only
    # (a case sized with a datasheet transfer before the device's own profile was fitted)
    profile = ROOT / json.loads((case / "comparison.json").read_text())["profile"]
    out = compare(work, profile)
    # every replayed request was simulated and finished inside the measured window (compare refuses otherwise)
    assert out["workload"]["requests"] == len((work / "requests.csv").read_text().splitlines()) - 1
    committed = json.loads((case / "comparison.json").read_text())
    recorded = committed["metrics"]
    for metric, limit in LIMITS.cases[case.name].limits.items():
        if metric == "power_timeline":  # a weighted error, not a signed one
            err = out["timeline"]["wape_above_idle"]
            assert err <= limit, f"{case.name} power timeline: {err:.1%} of the energy above idle, past {limit:.0%}"
            assert err == pytest.approx(committed["timeline"]["wape_above_idle"], abs=1e-6)
            continue
        err = out["metrics"][metric]["rel_error"]
        assert abs(err) <= limit, f"{case.name} {metric}: error {err:+.1%} past its limit {limit:.0%}"
        # the committed comparison is what this code computes from the committed raw files
        assert err == pytest.approx(recorded[metric]["rel_error"], abs=1e-6), metric
    # the measured side is the raw data: total energy = active + idle as the meter split it
    m = out["metrics"]
    assert m["energy_j"]["measured"] == pytest.approx(m["active_j"]["measured"] + m["idle_j"]["measured"])
    assert m["energy_j"]["forecast"] == pytest.approx(m["active_j"]["forecast"] + m["idle_j"]["forecast"])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_replayed_workload_is_rebuilt_from_the_shipped_trace(case):
    """workload.csv is what the recorded options cut from the shipped trace: the case can be replayed again."""
    import pandas as pd

    from dcsim.profiles.profile import load_profile
    from dcsim.validate import workload as W

    meta = json.loads((case / "replay.json").read_text())
    spec = W.WorkloadSpec(**{**meta["workload_spec"], "trace": str(ROOT / meta["workload_spec"]["trace"])})
    # sized with the folder's copy of the profile, where it keeps one (a refit of the shipped one since does not
    # change what was replayed)
    rebuilt = W.build(spec, load_profile(W.sizing_profile(case, meta, ROOT)))
    committed = W.read(case / "workload.csv")
    pd.testing.assert_frame_equal(rebuilt.reset_index(drop=True), committed, check_dtype=False, atol=1e-6)


# The H200 cases against the transfer of the H100 profile with the roofline rule (profiles/README.md, "Derived
# profiles"), which never saw an H200 measurement but the datasheet: when written, latency errors -6.3% to +5.7%
# and energy -7.4% to -4.2% over the four cases. Bounds: those, widened by 1 point.
@pytest.mark.parametrize("case", [c for c in CASES if c.name.startswith("h200g-")], ids=lambda c: c.name)
def test_roofline_transfer_forecasts_the_h200_replays(case, tmp_path):
    work = tmp_path / case.name
    shutil.copytree(case, work)
    out = compare(work, ROOT / "profiles" / "derived" /
                  "h200--llama-2-7b--hf-graph-bf16--from-h100-sxm-80gb--roofline.yaml")["metrics"]
    for k in ("wait_mean_s", "e2e_p50_s", "e2e_p95_s"):
        assert abs(out[k]["rel_error"]) <= 0.073, k
    assert -0.084 <= out["energy_j"]["rel_error"] <= -0.032


@pytest.mark.parametrize("case", [c for c in CASES if "-paged-" in c.name], ids=lambda c: c.name)
def test_a_paged_replays_active_energy_spans_the_engines_busy_time(case):
    """Active energy over the spans the engine held a request: at least the steps' own (replay.json), whose
    host gaps between back-to-back steps it adds; active + idle is the window's energy; busy power is active energy
    over the busy time the comparison reports; and it is the power timeline's own share of the window over those
    spans, in the counter's joules (the samples' trapezoids, summed here independently of the code under test)."""
    import pandas as pd

    meta = json.loads((case / "replay.json").read_text())
    m = json.loads((case / "comparison.json").read_text())["metrics"]
    act, idle, e = m["active_j"]["measured"], m["idle_j"]["measured"], m["energy_j"]["measured"]
    assert meta["active_j"] < act < e and act + idle == pytest.approx(e, rel=1e-12)
    assert m["busy_power_w"]["measured"] == pytest.approx(act / m["busy_s"]["measured"], rel=1e-12)
    req = pd.read_csv(case / "requests.csv")
    spans = sorted(zip(req["start_s"] + meta["wall_start"], req["end_s"] + meta["wall_start"]))
    merged = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    p = pd.read_csv(case / "power.csv").sort_values("t")
    t, w = p["t"].to_numpy(float), p["power_w"].to_numpy(float)
    fine = np.concatenate([np.linspace(a, b, max(2, int((b - a) * 200))) for a, b in merged])
    edges = np.concatenate([[0], np.cumsum([max(2, int((b - a) * 200)) for a, b in merged])])
    def trapezoids(x: np.ndarray) -> float:
        y = np.interp(x, t, w)
        return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))

    total = sum(trapezoids(fine[i:j]) for i, j in zip(edges[:-1], edges[1:]))
    w0 = meta["wall_start"]
    window = trapezoids(np.linspace(w0, w0 + meta["window_s"], int(meta["window_s"] * 200)))
    # the timeline's share of the window that falls in the spans, in the counter's joules
    assert act == pytest.approx(e * total / window, rel=2e-3)
    # so idle is the timeline's own idle share too: from the profile's serving idle to 20% above it (the device
    # decays to it after work). With idle as the counter's remainder, two cases read 0.73x and 0.83x of it.
    import yaml

    serving = yaml.safe_load((case / "profile.yaml").read_text())["power"]["serving_idle_w"]
    assert 0.9 * serving < idle / (meta["window_s"] - m["busy_s"]["measured"]) < 1.2 * serving
