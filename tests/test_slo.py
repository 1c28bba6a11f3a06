"""SLO attainment and goodput against a hand-worked timeline: one replica serving one request at a time, so each
request's TTFT and end-to-end latency are known to the millisecond."""

from __future__ import annotations

import json

import pytest
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main

# toy profile: prefill 0.1 + 0.001 x tokens s, decode step 0.02 + 0.001 x batch = 0.021 s at batch 1.
# Requests of 100 tokens in, 11 out: prefill 0.2 s (first token at 0.2 s of service), 10 steps 0.21 s: 0.41 s.
# Four at t = 0 on one fcfs replica: they start at 0, 0.41, 0.82, 1.23 s, so TTFT 0.2, 0.61, 1.02, 1.43 s and
# end-to-end 0.41, 0.82, 1.23, 1.64 s; TPOT 0.021 s for all.


def _run(tmp_path, capsys, slo: dict | None) -> dict:
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [100] * 4, [11] * 4, arrival=[0.0] * 4)
    extra = {"slo": slo} if slo else {}
    sc = write_scenario(tmp_path, scenario(tr, [{"name": "a", "profile": str(prof), "count": 1}], **extra))
    assert main(["run", str(sc), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("slo, met", [({"ttft_s": 1.0}, 2), ({"ttft_s": 1.1}, 3), ({"e2e_s": 1.0}, 2),
                                      ({"ttft_s": 1.1, "e2e_s": 1.0}, 2), ({"tpot_s": 0.02}, 0),
                                      ({"tpot_s": 0.0211, "e2e_s": 2.0}, 4)])
def test_attainment_and_goodput_count_the_requests_within_every_target(tmp_path, capsys, slo, met):
    s = _run(tmp_path, capsys, slo)
    assert s["makespan_s"] == pytest.approx(1.64)
    assert s["slo"]["met"] == met and s["slo"]["attainment"] == pytest.approx(met / 4)
    assert s["slo"]["goodput_rps"] == pytest.approx(met / 1.64)
    assert s["pools"]["a"]["slo"]["met"] == met
    assert s["slo"]["targets"] == slo


def test_no_slo_no_block_and_an_empty_slo_is_refused(tmp_path, capsys):
    assert "slo" not in _run(tmp_path, capsys, None)
    (tmp_path / "b").mkdir()
    prof = write_profile(tmp_path / "b")
    tr = write_trace(tmp_path / "b", [100], [11])
    for bad, words in (({}, "at least one of ttft_s"), ({"ttft_s": -1}, "slo.ttft_s"),
                       ({"p99": 2}, "slo.p99")):
        sc = write_scenario(tmp_path / "b", scenario(tr, [{"name": "a", "profile": str(prof), "count": 1}],
                                                     slo=bad))
        assert main(["run", str(sc), "--json"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
