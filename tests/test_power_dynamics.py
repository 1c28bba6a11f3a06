"""Power dynamics (profile power.dynamics): a busy period rises from the state the last fall left and falls to idle
after it. Checked against hand-worked segments, against a step-by-step reference of the same state equation on a
real simulation (energies move between active and idle exactly as the terms say; times, tokens and requests do not
move), a synthetic timeline of known constants, and the committed H100 duty-cycle run the shipped profiles are
fitted from."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main
from dcsim.profiles.power_dynamics import apply_dynamics, fit_dynamics
from dcsim.results import power_timeline, requests_table, summarize
from dcsim.scenario import load_scenario
from dcsim.sim.engine import simulate

REPO = Path(__file__).resolve().parents[1]
DUTY = REPO / "calibrate" / "runs" / "h100-llama-2-7b-hf-static-duty"


def test_two_busy_periods_by_hand():
    """Idle 100 W, rise 0.1 s, fall 0.05 s: [0, 1] at 300 W and [1, 2] at 200 W are one period; [3, 3.5] at 400 W
    is the next; the run ends at 5 s."""
    t0, t1 = np.array([0.0, 1.0, 3.0]), np.array([1.0, 2.0, 3.5])
    e = np.array([300.0, 200.0, 200.0])
    a = apply_dynamics(t0, t1, e, 100.0, 0.1, 0.05, 5.0)
    lost = [200 * 0.1 * (1 - math.exp(-10)), 100 * 0.1 * (math.exp(-10) - math.exp(-20))]
    state = 100 + 100 * math.exp(-1 / 0.05)  # what the fall over the 1 s gap left of the 200 W period's end
    lost.append((400 - state) * 0.1 * (1 - math.exp(-0.5 / 0.1)))
    assert a.e == pytest.approx(e - np.array(lost), rel=1e-13)
    assert a.tail_e == pytest.approx([100 * 0.05 * (1 - math.exp(-20)), 300 * 0.05 * (1 - math.exp(-30))], rel=1e-13)
    assert list(a.tail_t0) == [2.0, 3.5] and list(a.tail_t1) == pytest.approx([2.5, 4.0])  # at most 10 falls
    none = apply_dynamics(t0, t1, e, 100.0, 0.0, 0.0, 5.0)
    assert list(none.e) == list(e) and list(none.tail_e) == [0.0, 0.0]


def _reference(t0, t1, e, idle, rise, fall, end):
    """The same state equation, one segment at a time: (joules a period's rise takes off, joules its falls add)."""
    lost = tail = 0.0
    prev_end, prev_p = None, None
    for a, b, x in zip(t0, t1, e):
        p = x / (b - a)
        if prev_end is None or a > prev_end:
            if prev_end is not None:
                tail += (prev_p - idle) * fall * (1 - math.exp(-(a - prev_end) / fall))
            s = idle if prev_end is None else idle + (prev_p - idle) * math.exp(-(a - prev_end) / fall)
            start = a
        lost += (p - s) * rise * (math.exp(-(a - start) / rise) - math.exp(-(b - start) / rise))
        prev_end, prev_p = b, p
    tail += (prev_p - idle) * fall * (1 - math.exp(-(end - prev_end) / fall))
    return lost, tail


@pytest.mark.parametrize("policy", [{"policy": "fcfs"}, {"policy": "static", "max_batch": 4, "max_wait_s": 0.3}])
def test_a_simulation_moves_exactly_the_rise_and_the_fall(tmp_path, policy):
    plain = write_profile(tmp_path, name="plain")
    d = yaml.safe_load(plain.read_text())
    d["name"] = "dyn"
    d["power"]["dynamics"] = {"rise_s": 0.15, "fall_s": 0.07}
    (tmp_path / "dyn.yaml").write_text(yaml.safe_dump(d))
    rng = np.random.default_rng(4)
    n = 40
    arr = np.cumsum(rng.exponential(0.8, n))
    trace = write_trace(tmp_path, rng.integers(20, 400, n), rng.integers(2, 60, n), arr)
    runs = {}
    for name in ("plain", "dyn"):
        pool = {"name": "p", "profile": str(tmp_path / f"{name}.yaml"), "count": 2, "batching": policy}
        sc = load_scenario(write_scenario(tmp_path, scenario(trace, [pool], router={"name": "round_robin"}),
                                          f"{name}.yaml.sc"))
        raw = simulate(sc)
        runs[name] = raw, summarize(raw)
    (p_raw, p_sum), (d_raw, d_sum) = runs["plain"], runs["dyn"]
    lost = tail = 0.0
    for seg in p_raw.segments:
        x, y = _reference(seg.t0, seg.t1, seg.e, 50.0, 0.15, 0.07, p_raw.end_s)
        lost, tail = lost + x, tail + y
    assert lost > 1.0 and tail > 1.0  # the case has work to rise and fall
    pe, de = p_sum, d_sum
    assert de["active_j"] == pytest.approx(pe["active_j"] - lost, rel=1e-11)
    assert de["idle_j"] == pytest.approx(pe["idle_j"] + tail, rel=1e-11)
    assert de["energy_j"] == pytest.approx(pe["energy_j"] - lost + tail, rel=1e-11)
    # requests keep the joules of their steps; the rise is the part of active energy no request carries
    assert de["unattributed_active_j"] == pytest.approx(pe["unattributed_active_j"] - lost, abs=1e-9)
    # nothing but energy moves: every request's times are the same
    a, b = requests_table(p_raw), requests_table(d_raw)
    assert (a[["start_s", "first_token_s", "done_s"]].to_numpy() == b[["start_s", "first_token_s", "done_s"]]
            .to_numpy()).all()
    # the power timeline integrates to the run's energy, falls included
    tl = power_timeline(d_raw)
    assert float((tl["fleet_w"] * (tl["t_end_s"] - tl["t_start_s"])).sum()) == pytest.approx(de["energy_j"], rel=1e-9)


def _synthetic_run(d: Path, rise: float, fall: float, idle: float = 100.0, plateau: float = 400.0) -> None:
    """A run folder: eight 2 s runs, 2 s of idle between, sampled at 20 Hz from the first-order state."""
    d.mkdir()
    starts = 10.0 + 4.0 * np.arange(8)
    t = np.arange(0.0, starts[-1] + 6.0, 0.05)
    w = np.full(len(t), idle)
    x, prev = idle, 0.0
    for k, tt in enumerate(t):  # exact integration of the state between samples (piecewise-constant target)
        busy = any(s <= prev < s + 2.0 for s in starts)  # the target over the interval since the last sample
        target, tau = (plateau, rise) if busy else (idle, fall)
        x = target + (x - target) * math.exp(-(tt - prev) / tau) if k else x
        prev, w[k] = tt, x
    rows = ["entry,phase,status,t_start,t_end,ttft_s,runtime_s"]
    rows += [f"r{k},run,ok,{s},{s + 2.0},0.04,2.0" for k, s in enumerate(starts)]
    (d / "runs.csv").write_text("\n".join(rows) + "\n")
    (d / "power.csv").write_text("t,device,power_w\n" + "".join(f"{a:.3f},gpu0,{b:.3f}\n" for a, b in zip(t, w)))


def test_the_fit_finds_the_constants_of_a_known_timeline(tmp_path):
    _synthetic_run(tmp_path / "run", rise=0.12, fall=0.07)
    f = fit_dynamics(tmp_path / "run")
    assert len(f.rises) == len(f.falls) == 7  # no run before the first, no gap after the last
    # 20 Hz samples, linear between them: within 5% of constants of a few samples
    assert f.rise_s == pytest.approx(0.12, rel=0.05) and f.fall_s == pytest.approx(0.07, rel=0.05)
    assert f.idle_w == pytest.approx(100.0, abs=0.01)


def test_the_shipped_h100_profiles_hold_what_the_duty_run_gives():
    f = fit_dynamics(DUTY)
    assert (len(f.rises), len(f.falls)) == (5, 8)
    for name in ("hf-graph", "hf-static"):
        prof = yaml.safe_load((REPO / "profiles" / f"h100-sxm-80gb--llama-2-7b--{name}-bf16.yaml").read_text())
        assert prof["power"]["dynamics"] == {"rise_s": round(f.rise_s, 4), "fall_s": round(f.fall_s, 4)}
        assert prof["provenance"]["power.dynamics"]["path"] == "calibrate/runs/h100-llama-2-7b-hf-static-duty"


def test_a_run_without_idle_gaps_or_on_another_device_is_refused(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    args = ["fit", str(REPO / "calibrate" / "runs" / "h100-llama-2-7b-hf-static"), "--kv-cache", "live", "-o",
            str(out), "--no-plot", "--dynamics-from"]
    assert main(args + [str(REPO / "calibrate" / "runs" / "h100-llama-2-7b-hf-graph-standard")]) == 2
    err = capsys.readouterr().err
    assert "--dynamics-from" in err and "cooldown_s" in err and "Traceback" not in err and not out.exists()
    assert main(args + [str(REPO / "calibrate" / "runs" / "h200-llama-2-7b-hf-graph-standard")]) == 2
    err = capsys.readouterr().err
    assert "NVIDIA H200" in err and "--dynamics-from" in err and not out.exists()


def test_the_timeline_row_by_hand(tmp_path):
    """Two 1 s bins: measured 300 and 100 W (samples at 20 Hz), forecast 250 and 150 W, serving idle 100 W: the
    absolute error is 50 + 50 J over 200 J above idle, 50%; the first row is read from power.csv, every device
    summed."""
    import pandas as pd

    from dcsim.validate.compare import timeline_error

    wall = 1000.0
    t = wall + np.arange(0.0, 2.0, 0.05)
    w = np.where(t - wall < 1.0, 300.0, 100.0)
    rows = [f"{a:.3f},gpu{g},{b / 2:.3f}\n" for a, b in zip(t, w) for g in (0, 1)]
    (tmp_path / "power.csv").write_text("t,device,power_w\n" + "".join(rows))
    sim = pd.DataFrame({"t_start_s": [0.0, 1.0], "t_end_s": [1.0, 2.0], "fleet_w": [250.0, 150.0]})
    tl = timeline_error(tmp_path, {"wall_start": wall}, sim, 100.0)
    assert tl["bins"] == 2 and tl["wape_above_idle"] == pytest.approx(0.5) and tl["pass"] is False
    assert timeline_error(tmp_path / "none", {"wall_start": wall}, sim, 100.0) is None


def test_the_power_dynamics_plan_reads_rises_and_falls():
    """The plan for a device without a duty run: each run after 1.5 s of idle, outputs long enough for a rise."""
    from dcsim.calibrate.plan import expand, load_plan

    plan = load_plan(REPO / "calibrate" / "plans" / "power-dynamics.yaml")
    pts = expand(plan)
    assert plan.cooldown_s >= 1.0 and {p.batch for p in pts} == {1}
    assert sum(p.n_out >= 128 for p in pts) >= 3  # runs of a second or more on a 7B model (8-9 ms a token)
