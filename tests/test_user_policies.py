"""A router or batching policy of one's own, named in the scenario by file, module path or entry point: `dcsim run`
and `dcsim sweep` use it as they use the shipped ones (its own parameters checked, refusals naming the file and
the field), and on Dask workers it gives the results of the local run. The example in examples/custom_router/
is held to a hand-worked case."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main
from dcsim.sweep import load_sweep, run_sweep

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_router"
LEAST_TOKENS = "./least_tokens.py:LeastOutstandingTokens"

# shortest known job first, one request at a time: a batching policy of one's own, in an importable package
SJF = '''
from dcsim.sim.batching import BatchParams, Policy
from pydantic import Field


class SjfParams(BatchParams):
    pause_s: float = Field(default=0.0, ge=0)


class ShortestFirst(Policy):
    Params = SjfParams

    def run(self, rep):
        env, evaluator, log, q = rep.env, rep.evaluator, rep.log, rep.queue
        while True:
            if not q:
                yield rep.idle_wait()
                continue
            r = min(q, key=lambda x: x.n_in + x.est_out)
            q.remove(r)
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
'''


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def hand_case(tmp_path: Path, router: dict) -> Path:
    """Two one-at-a-time replicas of the toy profile (a request of p prompt and 10 output tokens takes
    0.1 + 0.001 p s of prefill and 9 x 0.021 s of decode). A (200 prompt tokens) at 0, B, C, D (50 each) at
    0.01-0.03 s, E (50) at 2 s, when all have finished."""
    shutil.copy(EXAMPLE / "least_tokens.py", tmp_path)
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [200, 50, 50, 50, 50], [10] * 5, [0.0, 0.01, 0.02, 0.03, 2.0])
    return write_scenario(tmp_path, scenario(tr, [{"name": "p", "profile": str(prof), "count": 2}], router=router))


def replicas_chosen(tmp_path: Path, sc: Path, capsys, name: str = "out") -> list[int]:
    rc, _, err = run_cli(["run", str(sc), "--out", str(tmp_path / name), "--no-plots"], capsys)
    assert rc == 0, err
    return pd.read_parquet(tmp_path / name / "requests.parquet")["replica"].tolist()


def test_the_example_router_follows_outstanding_tokens(tmp_path, capsys):
    # A (210 tokens) -> 0 (tie); B -> 1 (0 < 210); C -> 1 (60 < 210); D -> 1 (120 < 210); E at 2 s: all finished,
    # both at 0 again -> 0 (had finished requests been kept, 1 with 180 < 210). Counting requests instead
    # (least_outstanding) alternates: 0, 1, 0, 1, 0.
    assert replicas_chosen(tmp_path, hand_case(tmp_path, {"name": LEAST_TOKENS}), capsys) == [0, 1, 1, 1, 0]
    assert replicas_chosen(tmp_path, hand_case(tmp_path, {"name": "least_outstanding"}), capsys, "lo") == \
        [0, 1, 0, 1, 0]
    # output tokens weighing 20: A 400, B/C/D 250 -> C to 1 (250 < 400), D to 0 (500 > 400)
    sc = hand_case(tmp_path, {"name": LEAST_TOKENS, "output_weight": 20})
    assert replicas_chosen(tmp_path, sc, capsys, "w20") == [0, 1, 1, 0, 0]


def test_the_example_scenario_runs_from_any_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the router file is read beside the scenario, not from the current folder
    rc, out, err = run_cli(["run", str(EXAMPLE / "scenario.yaml"), "--set", "trace.sample=200", "--json"], capsys)
    assert rc == 0, err
    s = json.loads(out)
    assert s["requests_completed"] == 200 and s["scenario"] == "custom-router"


def test_its_parameters_are_checked_by_its_own_model(tmp_path, capsys):
    sc = hand_case(tmp_path, {"name": LEAST_TOKENS, "output_weight": -1})
    rc, _, err = run_cli(["run", str(sc)], capsys)
    assert rc == 2 and f"{sc}: field 'router.output_weight': " in err and "greater than or equal to 0" in err
    rc, _, err = run_cli(["run", str(sc), "--set", "router.output_weight=1", "--set", "router.weight=2"], capsys)
    assert rc == 2 and f"{sc}: field 'router.weight': unknown key (check the spelling)" in err


@pytest.mark.parametrize("name, field, says", [
    ("regtest_no_such_pkg.routers:Sqf", "router.name", "no module named 'regtest_no_such_pkg'"),
    ("./least_tokens.py:Nope", "router.name", "has no attribute 'Nope' (it defines: LeastOutstandingTokens)"),
    ("./least_tokens.py:LeastTokensParams", "router.name",
     "class LeastTokensParams is not a router: it must subclass dcsim.sim.routers.Router"),
    ("./missing.py:Sqf", "router.name", "file not found: "),
    ("./broken.py:Sqf", "router.name", "broken.py, line 2): NameError: name 'undefined_name' is not defined"),
    ("nosuch", "router.name",
     "unknown router 'nosuch' (known: carbon_cost, energy_cost, least_outstanding, least_work, "),
])
def test_a_router_that_cannot_be_found_is_refused_naming_file_and_field(tmp_path, capsys, name, field, says):
    sc = hand_case(tmp_path, {"name": name})
    (tmp_path / "broken.py").write_text("import math\nx = undefined_name\n")
    rc, _, err = run_cli(["run", str(sc)], capsys)
    assert rc == 2 and f"{sc}: field '{field}': " in err and says in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_batching_policy_by_file_is_checked_and_refused_like_a_shipped_one(tmp_path, capsys):
    (tmp_path / "sjf.py").write_text(SJF)
    sc = hand_case(tmp_path, {"name": "round_robin"})
    ok = ["run", str(sc), "--set", "fleet.p.batching={policy: ./sjf.py:ShortestFirst, pause_s: 0.5}",
          "--out", str(tmp_path / "out"), "--no-plots"]
    rc, _, err = run_cli(ok, capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["run", str(sc), "--set", "fleet.p.batching={policy: ./sjf.py:ShortestFirst, "
                          "max_num_seqs: 4}"], capsys)
    assert rc == 2 and f"{sc}: field 'fleet.0.batching.max_num_seqs': unknown key (check the spelling)" in err
    rc, _, err = run_cli(["run", str(sc), "--set", f"fleet.p.batching.policy={LEAST_TOKENS}"], capsys)
    assert rc == 2 and f"{sc}: field 'fleet.0.batching.policy': batching policy " in err
    assert "class LeastOutstandingTokens is not a batching policy: it must subclass dcsim.sim.batching.base.Policy" \
        in err and "Traceback" not in err



LOOSE = """
from pydantic import BaseModel
from dcsim.sim.batching import Policy
from dcsim.sim.routers import Router


class Loose(BaseModel):  # a model of its own, not the base's: it would let a misspelt key pass
    weight: float = 1.0


class LooseRouter(Router):
    Params = Loose

    def choose(self, r):
        return self.candidates[0]


class LoosePolicy(Policy):
    Params = Loose
"""


def test_a_params_model_that_does_not_refuse_unknown_keys_is_refused(tmp_path, capsys):
    (tmp_path / "loose.py").write_text(LOOSE)
    sc = hand_case(tmp_path, {"name": "./loose.py:LooseRouter", "wieght": 2})
    rc, _, err = run_cli(["run", str(sc)], capsys)
    assert rc == 2 and f"{sc}: field 'router.name': " in err and "Traceback" not in err
    assert "its Params (Loose) must subclass dcsim.sim.routers.Params, which refuses unknown keys" in err
    rc, _, err = run_cli(["run", str(sc), "--set", "router={name: round_robin}",
                          "--set", "fleet.p.batching.policy=./loose.py:LoosePolicy"], capsys)
    assert rc == 2 and f"{sc}: field 'fleet.0.batching.policy': " in err and "Traceback" not in err
    assert "its Params (Loose) must subclass dcsim.sim.batching.BatchParams" in err

# ---- on Dask workers ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A folder on sys.path (the client's, which spawned workers inherit) holding an importable package with a
    policy and an installed distribution declaring it as entry point `regtest_sjf` of dcsim.policies."""
    root = tmp_path_factory.mktemp("plugins")
    (root / "regtest_userpol").mkdir()
    (root / "regtest_userpol" / "__init__.py").write_text("")
    (root / "regtest_userpol" / "sjf.py").write_text(SJF)
    info = root / "regtest_userpol-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: regtest-userpol\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dcsim.policies]\nregtest_sjf = regtest_userpol.sjf:ShortestFirst\n")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


@pytest.fixture(scope="module")
def cluster(plugin_path):
    distributed = pytest.importorskip("dask.distributed", reason="dask[distributed] not installed")
    # worker processes (spawned): each imports the user's classes itself, as on a cluster of machines
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def sweep_both_ways(tmp_path: Path, body: dict, cluster, capsys) -> pd.DataFrame:
    sw_file = tmp_path / "sweep.yaml"
    sw_file.write_text(yaml.safe_dump(body, sort_keys=False))
    rc, _, err = run_cli(["sweep", str(sw_file), "--out", str(tmp_path / "dask"), "--scheduler",
                          cluster.scheduler_address, "--no-progress"], capsys)
    assert rc == 0, err
    local = run_sweep(load_sweep(sw_file), tmp_path / "local", workers=0, progress=False)
    dask = pd.read_parquet(tmp_path / "dask" / "results.parquet")
    pd.testing.assert_frame_equal(dask, local.results, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dask" / "summary.parquet"), local.summary,
                                  check_exact=True)
    return dask


def test_a_sweep_of_the_example_on_dask_workers_equals_the_local_run(tmp_path, cluster, capsys):
    routers = [{"name": "least_outstanding"}, {"name": LEAST_TOKENS, "output_weight": 4}]
    res = sweep_both_ways(tmp_path, {"base": str(EXAMPLE / "scenario.yaml"), "set": ["trace.sample=300"],
                                     "grid": {"router": routers}, "seeds": [1, 2]}, cluster, capsys)
    assert len(res) == 4 and res["wait_s.p99"].nunique() == 4  # the two routers route differently


def test_a_policy_by_module_path_or_entry_point_runs_on_dask_workers(tmp_path, cluster, capsys):
    prof = write_profile(tmp_path)
    tr = write_trace(tmp_path, [400, 300, 200, 100, 50, 10], [10] * 6, [0.0] * 6)
    write_scenario(tmp_path, scenario(tr, [{"name": "p", "profile": str(prof), "count": 1}]), "base.yaml")
    policies = ["fcfs", "regtest_userpol.sjf:ShortestFirst", "regtest_sjf"]
    res = sweep_both_ways(tmp_path, {"base": "base.yaml", "grid": {"fleet.0.batching.policy": policies},
                                     "seeds": [1]}, cluster, capsys)
    by = res.set_index("fleet.0.batching.policy")["e2e_s.p50"]
    # one replica, all six at 0: first come first served runs the longest first; shortest-first the reverse
    assert by["regtest_userpol.sjf:ShortestFirst"] == by["regtest_sjf"] < by["fcfs"]


def test_a_resumed_sweep_reruns_its_points_when_the_users_router_file_changes(tmp_path):
    from dcsim.sweep import load_sweep, run_sweep

    ex = Path(__file__).resolve().parents[1] / "examples" / "custom_router"
    d = tmp_path / "ex"
    shutil.copytree(ex, d)
    (d / "small.yaml").write_text(
        "name: small\nbase: scenario.yaml\nset: ['trace.sample=200']\n"
        "grid:\n  arrivals.rate_per_s: [10.0, 20.0]\nseeds: [1]\n")
    out = tmp_path / "out"
    first = run_sweep(load_sweep(d / "small.yaml"), out, workers=0, progress=False)
    again = run_sweep(load_sweep(d / "small.yaml"), out, workers=0, progress=False)
    assert (first.ran, again.ran, again.reused) == (2, 0, 2)
    with open(d / "least_tokens.py", "a") as f:
        f.write("\n# an edit: the router's code is not what the points ran\n")
    edited = run_sweep(load_sweep(d / "small.yaml"), out, workers=0, progress=False)
    assert (edited.ran, edited.reused) == (2, 0)
