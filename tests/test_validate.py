"""`dcsim validate`: the replay loop on a real (tiny, random-weight) model on the CPU, workload sizing,
cache sizing as calibrated, the comparison's bookkeeping, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dcsim.cli import main as cli
from dcsim.profiles.profile import load_profile
from dcsim.validate import replay as R
from dcsim.validate import workload as W
from dcsim.validate.compare import compare, forecast

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "profiles" / "h100-sxm-80gb--llama-2-7b--hf-static-bf16.yaml"
GSM8K = ROOT / "traces" / "gsm8k-test.parquet"
CODE = ROOT / "traces" / "azure-code-2023.parquet"


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("torch", reason="torch is needed to run the tiny model")
    pytest.importorskip("transformers", reason="transformers is needed to build the tiny model")
    from dcsim.calibrate.backends.hf import HFBackend

    b = HFBackend("cpu", arch="tiny-llama", dtype="fp32")
    b.load()
    return b


def _meter():
    # No energy counter is readable on a CPU-only test machine (no GPU, RAPL needs root): the calibration
    # tests' stand-in meter draws a constant 50 W, so every window's energy is 50 W x its length.
    from test_calibrate_run import StandInMeter

    return StandInMeter()


def test_fcfs_replay_serves_each_request_once_in_order_from_its_arrival(tiny, tmp_path):
    wl = pd.DataFrame({"n_in": [8, 16, 8, 24, 8, 12], "n_out": [4, 9, 3, 6, 4, 5],
                       "arrival_s": [0.0, 0.0, 0.0, 1.5, 2.5, 2.55]})
    pol = R.ServePolicy("fcfs", 1, 0.0)
    R.warm_up(tiny, pol, {}, lambda m: None)
    res = R.serve(wl, tiny, _meter(), pol, tmp_path, tail_s=0.3, settle_s=0.1)
    req = pd.read_csv(tmp_path / "requests.csv")
    assert sorted(req["id"]) == list(range(6))  # every request exactly once
    assert (req["gen_tokens"] == req["n_out"]).all()  # output length forced
    assert (req["start_s"] >= req["arrival_s"]).all()
    assert list(req["id"]) == sorted(req["id"])  # FIFO
    assert (req["start_s"].to_numpy()[1:] >= req["end_s"].to_numpy()[:-1]).all()  # one at a time
    # a request arriving at an idle server starts at once (the loop sleeps until its arrival)
    prev_end = np.r_[-1.0, req["end_s"].to_numpy()[:-1]]
    free = req[prev_end < req["arrival_s"]]
    assert len(free) >= 2 and ((free["start_s"] - free["arrival_s"]) < 0.05).all()
    # the window holds the last request plus the tail; energy = 50 W x window, active = 50 W x batch time
    assert res["window_s"] == pytest.approx(res["last_end_s"] + 0.3, abs=0.05)
    assert res["energy_j"] == pytest.approx(50.0 * res["window_s"], rel=1e-3)
    busy = (req["end_s"] - req["start_s"]).sum()
    assert res["active_j"] == pytest.approx(50.0 * busy, abs=50.0 * 0.002 * len(req))
    assert res["idle_j"] == pytest.approx(res["energy_j"] - res["active_j"])


def test_batch_energy_from_the_counter_per_batch_or_from_the_timeline(tiny, tmp_path):
    wl = pd.DataFrame({"n_in": [8, 16, 8], "n_out": [6, 9, 3], "arrival_s": [0.0, 0.0, 0.4]})
    pol = R.ServePolicy("fcfs", 1, 0.0)
    R.warm_up(tiny, pol, {}, lambda m: None)
    class Recording(type(_meter())):  # the stand-in, keeping each window's own begin and end (perf_counter)
        def __init__(self) -> None:
            super().__init__()
            self.windows: dict[str, list[float]] = {}

        def begin(self, key, sync=True):
            super().begin(key, sync)
            self.windows[key] = [self.t[key]]

        def end(self, key, sync=True):
            r = super().end(key, sync)
            self.windows[key].append(self.windows[key][0] + r.device_total / 50.0)
            return r

    class Disagreeing(type(_meter())):  # its counter reads 4% above its sampled power, as two meters can
        def end(self, key, sync=True):
            r = super().end(key, sync)
            return type(r)(device_j={k: 1.04 * v for k, v in r.device_j.items()})

    for mode in ("counter", "timeline"):
        out = tmp_path / mode
        out.mkdir()
        meter = Recording() if mode == "counter" else Disagreeing()
        res = R.serve(wl, tiny, meter, pol, out, tail_s=0.2, settle_s=0.1, batch_energy=mode)
        b = pd.read_csv(out / "batches.csv")
        busy = (b["end_s"] - b["start_s"]).sum()
        assert res["batch_energy"] == mode
        if mode == "counter":
            # each batch's energy is its own counter window's, opened before start_s is stamped and closed
            # before end_s is (the window opened after the replay's clock started: its times are upper bounds)
            assert res["active_j"] == pytest.approx(b["energy_j"].sum(), rel=1e-12)
            w0 = meter.windows["window"][0]
            for r in b.itertuples():
                t_begin, t_end = meter.windows[f"b{r.batch_id}"]
                assert r.energy_j == pytest.approx(50.0 * (t_end - t_begin), rel=1e-9)
                assert t_begin - w0 <= r.start_s + 1e-6 and t_end - w0 <= r.end_s + 1e-6
                # and it closes as the run ends (a thread switch, 5 ms in CPython, is the only delay)
                assert r.end_s - (t_end - w0) < 0.02 and r.start_s - (t_begin - w0) < 0.02
        else:
            assert b["energy_j"].isna().all() and b["prefill_energy_j"].isna().all()
            # the timeline's share of the window in the counter's joules: the timeline reads a constant 50 W, so
            # the share is busy time over the window (the rows hold microseconds), and both parts carry the
            # counter's 52 W; the timeline's own integral (50 W x busy) would leave the 4% all in idle
            assert res["active_j"] == pytest.approx(res["energy_j"] * busy / res["window_s"], rel=1e-4)
            assert res["active_j"] == pytest.approx(52.0 * busy, rel=5e-3)
            assert res["idle_j"] == pytest.approx(52.0 * (res["window_s"] - busy), rel=5e-3)

    class Blind(type(_meter())):  # a meter that cannot sample power (a CPU's RAPL counter): no timeline
        def power_w(self):
            return {}

    said = []
    out = tmp_path / "blind"
    out.mkdir()
    res = R.serve(wl, tiny, Blind(), pol, out, tail_s=0.1, settle_s=0.0, batch_energy="timeline", log=said.append)
    assert res["batch_energy"] == "counter" and any("per batch instead" in m for m in said)
    assert res["active_j"] == pytest.approx(pd.read_csv(out / "batches.csv")["energy_j"].sum())


def test_static_replay_gathers_waits_and_pads_as_the_simulator_does(tiny, tmp_path):
    wl = pd.DataFrame({"n_in": [8, 16, 8, 32, 8, 8], "n_out": [4, 8, 4, 6, 4, 5],
                       "arrival_s": [0.0, 0.0, 0.0, 1.0, 2.0, 2.1]})
    pol = R.ServePolicy("static", 3, 0.3)
    R.warm_up(tiny, pol, {}, lambda m: None)
    R.serve(wl, tiny, _meter(), pol, tmp_path, tail_s=0.1, settle_s=0.0)
    req = pd.read_csv(tmp_path / "requests.csv").set_index("id")
    b = pd.read_csv(tmp_path / "batches.csv")
    assert list(b["batch_size"]) == [3, 1, 2]
    # batch 0: full at once, padded to the longest prompt and output
    assert (b.loc[0, "batch_n_in"], b.loc[0, "batch_n_out"]) == (16, 8)
    # request 3 is alone: it waits max_wait_s for company, then runs
    assert req.loc[3, "start_s"] == pytest.approx(1.3, abs=0.05)
    # requests 4 and 5: the wait opened at 2.0 closes at 2.3 with 5 gathered on the way
    assert req.loc[4, "batch_id"] == req.loc[5, "batch_id"] == 2
    assert req.loc[4, "start_s"] == pytest.approx(2.3, abs=0.05)
    assert (req["gen_tokens"] == req["batch_n_out"]).all()


def test_static_cache_lengths_follow_the_calibration_plan():
    from dcsim.calibrate.plan import expand, load_plan

    plan = load_plan(ROOT / "calibrate" / "plans" / "h100-hf-static.yaml")
    shapes = [(p.n_in, p.n_out, p.batch) for p in expand(plan)] + [(128, 32, 1)]
    # batch 1: longest of 2048+32 (input sweep), 32+1024 (output sweep), 256+64 (batch sweep) = 2080;
    # batches 2 and 3 are not in the plan and take batch 4's 256+64 = 320
    assert R.cache_lengths(shapes, [1, 2, 3, 4]) == {1: 2080, 2: 320, 3: 320, 4: 320}
    assert R.cache_lengths(shapes, [100]) == {100: 320}  # beyond the largest: the largest planned batch's
    lengths = {1: 2080, 2: 320}
    ok = pd.DataFrame({"n_in": [128, 100], "n_out": [192, 150], "arrival_s": [0, 1]})
    R.check_fits(ok, lengths, R.ServePolicy("static", 2, 1.0), None)
    # padded: the longest prompt (200) plus the longest output (150) of two different requests = 350 > 320
    bad = pd.DataFrame({"n_in": [200, 20], "n_out": [100, 150], "arrival_s": [0, 1]})
    with pytest.raises(Exception, match="clip"):
        R.check_fits(bad, lengths, R.ServePolicy("static", 2, 1.0), None)
    R.check_fits(bad, lengths, R.ServePolicy("fcfs", 1, 0.0), None)  # alone each fits 2080


def test_workload_is_sized_to_the_asked_utilisation():
    prof = load_profile(H100)
    wl = W.build(W.WorkloadSpec(trace=str(CODE), arrivals="replay", utilisation=0.6, limit=200,
                                clip_in=1792, clip_out=288), prof)
    service = W.isolated_service_s(prof, wl["n_in"].to_numpy(), wl["n_out"].to_numpy())
    assert service.sum() / wl["arrival_s"].iloc[-1] == pytest.approx(0.6, rel=1e-6)
    assert wl["n_in"].max() <= 1792 and wl["n_out"].max() <= 288 and wl["arrival_s"].iloc[0] == 0
    # the trace's own gaps keep their proportions
    raw = pd.read_parquet(CODE).head(200)["arrival_s"].to_numpy()
    ratio = np.diff(wl["arrival_s"].to_numpy()) / np.maximum(np.diff(raw), 1e-12)
    assert np.allclose(ratio[np.diff(raw) > 0.01], ratio[np.diff(raw) > 0.01][0], rtol=1e-3)
    # poisson: rate = utilisation / mean service; over 1,000 requests the mean gap is within 10% of 1/rate
    wl = W.build(W.WorkloadSpec(trace=str(GSM8K), arrivals="poisson", utilisation=0.5, limit=1000, seed=3), prof)
    service = W.isolated_service_s(prof, wl["n_in"].to_numpy(), wl["n_out"].to_numpy())
    assert np.diff(wl["arrival_s"]).mean() == pytest.approx(service.mean() / 0.5, rel=0.1)


def _replay_from_simulation(folder: Path, profile: Path, wl: pd.DataFrame, policy: dict, window: float) -> dict:
    """A replay folder whose 'measurements' are the simulator's own output: a device that behaves exactly as
    the profile says. The comparison must then find no error at all."""
    folder.mkdir()
    wl.to_csv(folder / "workload.csv", index=False)
    meta = {"policy": policy, "window_s": window}
    m, sim_req, _, _ = forecast(folder, meta, profile)
    req = pd.DataFrame({"id": sim_req["id"], "arrival_s": sim_req["arrival_s"], "n_in": sim_req["n_in"],
                        "n_out": sim_req["n_out"], "start_s": sim_req["start_s"],
                        "first_token_s": sim_req["first_token_s"], "end_s": sim_req["done_s"]})
    req.to_csv(folder / "requests.csv", index=False)
    meta.update(profile=str(profile), workload={"requests": len(wl)}, wall_start=0.0, energy_j=m["energy_j"],
                active_j=m["active_j"], idle_j=m["idle_j"])
    (folder / "replay.json").write_text(json.dumps(meta))
    return m


def _without_dynamics(tmp_path: Path) -> Path:
    """The H100 profile without its power dynamics: idle is then serving idle over the idle time, and a step's
    joules do not depend on what came before it (tests/test_power_dynamics.py holds the dynamics' own joules)."""
    import yaml

    d = yaml.safe_load(H100.read_text())
    d["power"].pop("dynamics")
    path = tmp_path / "h100.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.mark.parametrize("policy", [{"policy": "fcfs", "max_batch": 1, "max_wait_s": 0.0},
                                    {"policy": "static", "max_batch": 4, "max_wait_s": 1.0}])
def test_a_device_that_behaves_like_the_profile_gives_zero_error(tmp_path, policy):
    h100 = _without_dynamics(tmp_path)
    prof = load_profile(h100)
    wl = W.build(W.WorkloadSpec(trace=str(GSM8K), arrivals="poisson", utilisation=0.8, limit=60, seed=5,
                                clip_in=128, clip_out=192), prof)
    m = _replay_from_simulation(tmp_path / "case", h100, wl, policy, float(wl["arrival_s"].iloc[-1]) + 30.0)
    out = compare(tmp_path / "case")
    for k, v in out["metrics"].items():
        assert abs(v["rel_error"]) < 1e-9, k
        assert v["in_band"] and v["band_lo"] <= v["forecast"] <= v["band_hi"], k
    # joules are conserved: active + idle = total, and idle is serving-idle power over the idle time
    assert m["active_j"] + m["idle_j"] == pytest.approx(m["energy_j"])
    busy = pd.read_csv(tmp_path / "case" / "sim_requests.csv")
    assert m["idle_j"] > 0 and (tmp_path / "case" / "power.png").is_file()
    if policy["policy"] == "fcfs":
        idle_s = float(out["window_s"]) - (busy["done_s"] - busy["start_s"]).sum()
        assert m["idle_j"] == pytest.approx(prof.power.serving_idle_w * idle_s, rel=1e-6)
        # the spread band: every service one calibration CV slower and costlier at its top end
        cv = prof.spread_cv
        b = out["metrics"]
        assert b["busy_s"]["band_hi"] == pytest.approx(m["busy_s"] * (1 + cv["latency.run_s"]), rel=1e-9)
        assert b["active_j"]["band_hi"] == pytest.approx(m["active_j"] * (1 + cv["energy.run_device_j"]), rel=1e-9)
        assert b["busy_s"]["band_lo"] == pytest.approx(m["busy_s"] * (1 - cv["latency.run_s"]), rel=1e-9)


def test_a_drifted_profile_scales_time_and_energy_of_every_step():
    prof = load_profile(H100)
    evaluator, dv = prof.evaluator(), prof.drifted(1.1, 1.05).evaluator()
    for tokens, batch in ((64, 1), (1800, 1), (512, 4)):
        t0, w0, _ = evaluator.prefill(tokens, tokens * tokens / batch, batch)
        t1, w1, _ = dv.prefill(tokens, tokens * tokens / batch, batch)
        assert t1 == pytest.approx(1.1 * t0) and t1 * w1 == pytest.approx(1.05 * t0 * w0)
        d0, d1 = evaluator.decode_run(batch, tokens, 200), dv.decode_run(batch, tokens, 200)
        assert d1[0] == pytest.approx(1.1 * d0[0]) and d1[1] == pytest.approx(1.05 * d0[1])
    assert dv.idle_w == evaluator.idle_w


def test_bad_input_is_refused_with_exit_2_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "v"
    base = ["validate", "--profile", str(H100), "--trace", str(GSM8K), "--out", str(out), "--dry-run"]
    assert cli(["validate", "--profile", str(tmp_path / "nope.yaml"), "--trace", str(GSM8K), "--out", str(out)]) == 2
    assert "profile not found" in capsys.readouterr().err
    assert cli(base[:4] + [str(tmp_path / "none.parquet")] + base[5:]) == 2
    assert "--trace" in capsys.readouterr().err
    # the workload would not fit the caches calibration used for batches of 4 (320 positions)
    assert cli(base + ["--arrivals", "poisson", "--rate", "1", "--batching", "static", "--max-batch", "4"]) == 2
    err = capsys.readouterr().err
    assert "--clip-in" in err and "320" in err
    assert cli(base + ["--arrivals", "replay"]) == 2  # GSM8K has no timestamps
    assert "poisson" in capsys.readouterr().err
    # the Azure conversation trace holds prompts longer than Llama-2's 4,096-token context
    conv = ["validate", "--profile", str(H100), "--trace", str(ROOT / "traces" / "azure-conv-2023.parquet"),
            "--out", str(out), "--dry-run", "--utilisation", "0.5", "--backend", "hf"]
    assert cli(conv) == 2
    assert "4096" in capsys.readouterr().err
    assert cli(conv + ["--clip-in", "3000", "--clip-out", "1000"]) == 0
    assert not out.exists()


def test_the_recorded_command_is_what_was_typed(monkeypatch):
    import argparse

    from dcsim.cli import command_line

    # run as `python -m dcsim.commands.validate ARGS`: the standalone entry hands its argv over
    args = argparse.Namespace(argv=["--profile", "p q.yaml", "--limit", "5"])
    assert command_line(args, "validate") == "dcsim validate --profile 'p q.yaml' --limit 5"
    # run as `dcsim validate ARGS`: taken from the process's own argument list
    monkeypatch.setattr("sys.argv", ["dcsim", "validate", "--dry-run"])
    assert command_line(argparse.Namespace(), "validate") == "dcsim validate --dry-run"


def test_a_forecast_slower_than_the_device_still_finishes_and_says_by_how_much(tmp_path):
    # the device behaved like the profile; the profile judged is 1.5 x slower at the same energy per step, so
    # its last requests run past the measured window: the comparison must carry them through, not fail
    h100 = _without_dynamics(tmp_path)
    prof = load_profile(h100)
    wl = W.build(W.WorkloadSpec(trace=str(GSM8K), arrivals="poisson", utilisation=0.8, limit=40, seed=7), prof)
    _replay_from_simulation(tmp_path / "case", h100, wl, {"policy": "fcfs", "max_batch": 1, "max_wait_s": 0.0},
                            float(wl["arrival_s"].iloc[-1]) + 5.0)
    slow = tmp_path / "slow.yaml"
    prof.drifted(1.5, 1.0).to_yaml(slow)
    out = compare(tmp_path / "case", slow)["metrics"]
    assert out["busy_s"]["rel_error"] == pytest.approx(0.5, rel=1e-9)
    assert out["active_j"]["rel_error"] == pytest.approx(0.0, abs=1e-9)
    assert out["wait_mean_s"]["rel_error"] > 0.5  # queueing amplifies a slower service
