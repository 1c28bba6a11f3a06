"""Batching policies are chosen by name: a policy written in one place (here, in this file) is picked from a
scenario with its own parameters, checked by its own model; the shipped ones register themselves."""

from __future__ import annotations

from typing import Generator

import pytest
from pydantic import Field
from simkit import scenario, write_profile, write_trace

from dcsim.errors import UserError, validate_file
from dcsim.results import requests_table
from dcsim.scenario import Scenario
from dcsim.sim.batching import POLICIES, BatchParams, Policy, policy
from dcsim.sim.engine import simulate


class LifoParams(BatchParams):
    pause_s: float = Field(default=0.0, ge=0, description="idle time between two requests")


@policy("test_lifo")
class Lifo(Policy):
    """One request at a time, the most recent arrival first, with a pause between requests."""

    Params = LifoParams

    def run(self, rep) -> Generator:
        env, evaluator, log, q = rep.env, rep.evaluator, rep.log, rep.queue
        while True:
            if not q:
                yield rep.idle_wait()
                continue
            r = q.pop()
            now = env.now
            t, e = evaluator.served_alone(r.n_in, r.n_out)
            log.start[r.rid] = now
            log.first[r.rid] = now + evaluator.prefill(r.n_in, float(r.n_in) ** 2, 1)[0]
            r.energy = e
            yield env.timeout(t)
            rep.segment(now, now + t, e, 0.0)
            rep.complete(r, now + t)
            if self.params.pause_s:
                yield env.timeout(self.params.pause_s)


def test_the_shipped_policies_register_themselves():
    assert {"fcfs", "static", "continuous", "paged"} <= set(POLICIES)


def test_a_policy_written_elsewhere_is_chosen_by_name(tmp_path):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [100, 100, 100], [11, 11, 11], [0.0, 0.1, 0.2])
    sc = Scenario.model_validate(scenario(tr, [{"name": "p", "profile": str(prof), "count": 1,
                                                "batching": {"policy": "test_lifo", "pause_s": 0.5}}]))
    req = requests_table(simulate(sc))
    # A alone (0.41 s), then C (the newest) after a 0.5 s pause, then B: toy profile requests take 0.41 s each
    assert req["start_s"].tolist() == pytest.approx([0.0, 0.91 + 0.41 + 0.5, 0.91])
    assert req["done_s"].tolist() == pytest.approx([0.41, 2.23, 1.32])


def test_its_parameters_are_checked_by_its_own_model(tmp_path):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [10], [2], [0.0])
    with pytest.raises(UserError) as e:
        validate_file(Scenario, scenario(tr, [{"name": "p", "profile": str(prof), "count": 1,
                                                "batching": {"policy": "test_lifo", "pause_s": -1}}]), "s.yaml")
    assert e.value.field == "fleet.0.batching.pause_s" and "greater than or equal to 0" in e.value.reason
    with pytest.raises(UserError) as e:  # another policy's parameter is an unknown key here
        validate_file(Scenario, scenario(tr, [{"name": "p", "profile": str(prof), "count": 1,
                                                "batching": {"policy": "test_lifo", "max_num_seqs": 4}}]), "s.yaml")
    assert e.value.field == "fleet.0.batching.max_num_seqs" and "unknown key" in e.value.reason
