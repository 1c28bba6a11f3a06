"""Routing domains: a scenario's fleet split into parts behind routers of their own, each simulated on its own
(one after another, on a process pool, on a Dask cluster) and merged into the same results, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from simkit import scenario, write_profile, write_scenario, write_trace

from dcsim.cli import main
from dcsim.results import power_timeline, replicas_table, requests_table, strict_json, summarize
from dcsim.scenario import load_scenario
from dcsim.sim.engine import assign_domains, prepare, run_part, simulate

N = 300


def make_case(d: Path, seed: int = 1) -> dict:
    """Three pools of two device kinds (one batching continuously), a trace of N requests whose first two arrive
    at 0, and two domains: `east` (pools b1, random router) and `west` (a1 and a2, not next to each other in the
    fleet, least outstanding)."""
    a = write_profile(d, name="a")
    b = write_profile(d, name="b", prefill=(0.05, 0.0005), decode=(0.01, 0.0005), idle_w=30.0)
    rng = np.random.default_rng(3)
    arr = np.concatenate(([0.0, 0.0], np.sort(rng.uniform(0, 40, N - 2))))
    tr = write_trace(d, rng.integers(10, 500, N), rng.integers(1, 100, N), arr)
    pools = [{"name": "a1", "profile": str(a), "count": 2},
             {"name": "b1", "profile": str(b), "count": 3},
             {"name": "a2", "profile": str(a), "count": 1, "batching": {"policy": "continuous", "max_batch": 8}}]
    return scenario(tr, pools, seed=seed, router={"name": "least_outstanding"},
                    domains=[{"name": "east", "pools": ["b1"], "share": 2.0, "router": {"name": "random"}},
                             {"name": "west", "pools": ["a2", "a1"], "share": 1.0}])


def outputs(raw) -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return (strict_json(summarize(raw)), requests_table(raw), replicas_table(raw), power_timeline(raw))


def assert_same(x, y) -> None:
    assert x[0] == y[0]
    for a, b in zip(x[1:], y[1:]):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("extra", [{}, {"request_classes": {"batch": {"share": 0.3, "deadline_s": 60}},
                                        "slo": {"ttft_s": 1.0}, "warmup_s": 2.0},
                                   {"arrivals": {"kind": "poisson", "rate_per_s": 9.0}, "horizon_s": 30.0,
                                    "router": {"name": "random"}}],
                         ids=["plain", "classes", "random-router-horizon"])
def test_one_domain_holding_every_pool_is_the_run_without_domains(tmp_path, extra):
    data = make_case(tmp_path)
    data.update(extra)
    del data["domains"]
    plain = outputs(simulate(load_scenario(write_scenario(tmp_path, data, "plain.yaml"))))
    data["domains"] = [{"name": "all", "pools": ["b1", "a1", "a2"], "share": 0.5}]
    one = outputs(simulate(load_scenario(write_scenario(tmp_path, data, "one.yaml"))))
    assert_same(plain, one)


def test_requests_go_to_domains_by_share_from_a_stream_of_their_own(tmp_path):
    data = make_case(tmp_path)
    sc = load_scenario(write_scenario(tmp_path, data))
    which = assign_domains(sc, 30_000)
    assert abs(np.mean(which == 0) - 2 / 3) < 0.01  # shares 2 : 1, normalised
    plain = dict(data)
    del plain["domains"]
    a = requests_table(simulate(sc))
    b = requests_table(simulate(load_scenario(write_scenario(tmp_path, plain, "plain.yaml"))))
    pd.testing.assert_series_equal(a["arrival_s"], b["arrival_s"])  # no other draw moved
    assert (a["replica"] != b["replica"]).any()


def test_split_runs_equal_the_run_in_one_process_byte_for_byte(tmp_path, capsys):
    sc = write_scenario(tmp_path, make_case(tmp_path))
    rc, _, err = run_cli(["run", str(sc), "--out", str(tmp_path / "one"), "--no-plots"], capsys)
    assert rc == 0, err
    assert "domain 1/2 done (east, " in err and "domain 2/2 done (west, " in err
    rc, _, err = run_cli(["run", str(sc), "--out", str(tmp_path / "two"), "--no-plots", "--workers", "2"], capsys)
    assert rc == 0, err
    assert err.count(" done (") == 2
    for name in ("summary.json", "requests.parquet", "replicas.csv", "power.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    s = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert s["requests_total"] == N and s["requests_completed"] == N


def test_split_on_dask_equals_the_run_in_one_process(tmp_path, capsys):
    distributed = pytest.importorskip("dask.distributed", reason="dask[distributed] not installed")
    sc = write_scenario(tmp_path, make_case(tmp_path))
    assert run_cli(["run", str(sc), "--out", str(tmp_path / "one"), "--no-plots"], capsys)[0] == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        rc, _, err = run_cli(["run", str(sc), "--out", str(tmp_path / "dask"), "--no-plots", "--scheduler",
                              c.scheduler_address], capsys)
        # more domains than the 4 kept in flight (2 a worker thread): each further one sent as one ends
        from dcsim.sim.domains import simulate_split

        data = make_case(tmp_path)
        data["fleet"] = [dict(data["fleet"][0], name=f"p{k}", count=1) for k in range(6)]
        data["domains"] = [{"name": f"d{k}", "pools": [f"p{k}"], "share": 1.0 + k} for k in range(6)]
        path = write_scenario(tmp_path, data, "six.yaml")
        sc6 = load_scenario(path)
        lines: list[str] = []
        with distributed.Client(c.scheduler_address, set_as_default=False) as client:
            split = simulate_split(sc6, path, [], None, client, lines.append)
        assert len(lines) == 6 and lines[-1].startswith("domain 6/6 done (")
        assert_same(outputs(simulate(sc6)), outputs(split))
    assert rc == 0, err
    for name in ("summary.json", "requests.parquet", "replicas.csv", "power.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes(), name


def test_split_with_paged_engines_and_shared_prefixes(tmp_path):
    """Prefix ids travel with each domain's requests: a paged pool's cache hits are those of the run in one
    process, on a pool of 2 processes too."""
    from dcsim.sim.domains import simulate_split
    from dcsim.traces.trace import Trace

    data = make_case(tmp_path)
    rng = np.random.default_rng(5)
    n_in = rng.integers(64, 400, N)
    pid = np.where(rng.random(N) < 0.6, rng.integers(0, 5, N), -1)
    Trace(n_in, rng.integers(1, 60, N), np.sort(rng.uniform(0, 30, N)), None, {"source": "test"}, pid,
          np.where(pid >= 0, 48, 0)).validate().to_parquet(tmp_path / "prefix.parquet")
    data["trace"] = {"path": str(tmp_path / "prefix.parquet")}
    for p in data["fleet"]:
        p["batching"] = {"policy": "paged", "max_num_seqs": 8, "max_num_batched_tokens": 512,
                         "chunked_prefill": True, "enable_prefix_caching": True}
    path = write_scenario(tmp_path, data)
    sc = load_scenario(path)
    here = simulate(sc)
    assert summarize(here)["pools"]["b1"]["engine"]["prefix_hit_rate"] > 0
    assert_same(outputs(here), outputs(simulate_split(sc, path, [], 2, None)))


def test_a_domain_is_its_pools_alone_on_its_requests(tmp_path):
    """Each domain's requests, replayed at the same times on its pools alone as a scenario of their own (the
    first domain routing with the stream a scenario without domains has), end exactly as they do in the split
    run."""
    data = make_case(tmp_path)
    sc = load_scenario(write_scenario(tmp_path, data))
    req = requests_table(simulate(sc))
    which = assign_domains(sc, N)
    assert sorted(which[:2]) == [0, 1]  # each domain's first request arrives at 0: replay keeps its times
    for k, d in enumerate(data["domains"]):
        ids = np.flatnonzero(which == k)
        mine = req.iloc[ids].reset_index(drop=True)
        tr = write_trace(tmp_path, mine["n_in"], mine["n_out"], mine["arrival_s"], name=f"{d['name']}.parquet")
        alone = dict(data, trace={"path": str(tr)}, router=d.get("router", data["router"]),
                     fleet=[p for p in data["fleet"] if p["name"] in d["pools"]])
        del alone["domains"]
        got = requests_table(simulate(load_scenario(write_scenario(tmp_path, alone, f"{d['name']}.yaml"))))
        cols = ["arrival_s", "pool", "status", "start_s", "first_token_s", "done_s", "energy_j", "e2e_s"]
        pd.testing.assert_frame_equal(got[cols], mine[cols], check_exact=True)
        first = {p["name"]: i for i, p in enumerate(data["fleet"])}  # replicas: the same ones, numbered in the fleet
        offset = np.cumsum([0] + [p["count"] for p in data["fleet"]])
        local = np.cumsum([0] + [p["count"] for p in alone["fleet"]])
        rank = got["replica"] - got["pool"].map({p["name"]: local[i] for i, p in enumerate(alone["fleet"])})
        assert (mine["replica"] == rank + mine["pool"].map({n: offset[i] for n, i in first.items()})).all()


def test_conservation_and_quantiles_of_the_merged_table(tmp_path):
    """Every request is in one domain; tokens and active joules add up over the domains, and so does the energy
    once each domain's replicas idle to the run's end (hand-worked: idle watts x replicas x the seconds between
    the domain's end and the run's); the p99 comes from the merged table, not from the domains' p99s."""
    data = make_case(tmp_path)
    path = write_scenario(tmp_path, data)
    sc = load_scenario(path)
    merged = simulate(sc)
    s = summarize(merged)
    inputs = prepare(sc, path)
    from dcsim.sim.engine import plan_parts

    parts = list(plan_parts(sc, inputs))
    ids = np.concatenate([p.requests for p in parts])
    assert np.array_equal(np.sort(ids), np.arange(N))
    raws = [run_part(sc, path, p, inputs.pools, inputs.grid, inputs.pool_carbon, inputs.pool_price) for p in parts]
    sums = [summarize(r) for r in raws]
    assert s["tokens_out"] == sum(x["tokens_out"] for x in sums) and s["tokens_in"] == sum(x["tokens_in"] for x in sums)
    assert s["active_j"] == pytest.approx(sum(x["active_j"] for x in sums), rel=1e-12)
    idle_w = {"a": 50.0, "b": 30.0}  # serving idle of the profiles (make_case)
    extra = sum(idle_w[pool.profile.name] * pool.count * (merged.end_s - r.end_s)
                for r in raws for pool in r.pools)
    assert extra > 0
    assert s["energy_j"] == pytest.approx(sum(x["energy_j"] for x in sums) + extra, rel=1e-12)
    tables = [requests_table(r) for r in raws]
    e2e = np.concatenate([t["e2e_s"].to_numpy() for t in tables])
    assert s["e2e_s"]["p99"] == float(np.quantile(e2e, 0.99))
    assert s["e2e_s"]["p99"] != pytest.approx(np.mean([x["e2e_s"]["p99"] for x in sums]), rel=1e-3)
    w = np.array([len(t) for t in tables])
    assert s["e2e_s"]["p99"] != pytest.approx(np.dot(w, [x["e2e_s"]["p99"] for x in sums]) / w.sum(), rel=1e-3)


def test_workers_without_domains_is_a_note_and_the_same_run(tmp_path, capsys):
    data = make_case(tmp_path)
    del data["domains"]
    sc = write_scenario(tmp_path, data)
    rc, here, _ = run_cli(["run", str(sc), "--json"], capsys)
    rc2, split, err = run_cli(["run", str(sc), "--json", "--workers", "2"], capsys)
    assert rc == rc2 == 0 and here == split
    assert "note: --workers splits a scenario's domains, and this one declares none" in err


BAD = [
    ("unknown pool", {"domains": [{"name": "x", "pools": ["a1", "b1", "a2", "c9"], "share": 1}]},
     "no pool named 'c9'", "domains.0.pools.3"),
    ("pool in two", {"domains": [{"name": "x", "pools": ["a1", "b1"], "share": 1},
                                 {"name": "y", "pools": ["a2", "a1"], "share": 1}]},
     "pool 'a1' is already in domain 'x'", "domains.1.pools.1"),
    ("pool in none", {"domains": [{"name": "x", "pools": ["a1"], "share": 1}]},
     "pools 'b1', 'a2' in no domain", "domains"),
    ("zero share", {"domains": [{"name": "x", "pools": ["a1", "b1", "a2"], "share": 0}]},
     "greater than 0", "domains.0.share"),
    ("repeated name", {"domains": [{"name": "x", "pools": ["a1"], "share": 1},
                                   {"name": "x", "pools": ["b1", "a2"], "share": 1}]},
     "domain names must be unique", "domains.1.name"),
    ("no domains", {"domains": []}, "at least 1 item", "domains"),
    ("power hierarchy", {"facility": {"power": {"rows": [{"name": "r", "racks": [
        {"name": "k", "replicas": {"a1": 2, "b1": 3, "a2": 1}}]}]}}},
     "not supported with domains: the power hierarchy", "facility.power"),
    ("autoscaling", {"autoscaling": {"name": "reactive"}}, "not supported with domains: an autoscaler",
     "autoscaling.name"),
    ("bad domain router", {"domains": [{"name": "x", "pools": ["a1", "b1"], "share": 1},
                                       {"name": "y", "pools": ["a2"], "share": 1,
                                        "router": {"name": "least_outstanding", "bogus": 1}}]},
     "(in domain 'y')", "domains.1.router.bogus"),
]


@pytest.mark.parametrize("label,patch,message,field", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["here", "pool"])
def test_bad_domains_exit_2(tmp_path, capsys, label, patch, message, field, workers):
    data = make_case(tmp_path)
    data.update(patch)
    sc = write_scenario(tmp_path, data)
    rc, _, err = run_cli(["run", str(sc), "--out", str(tmp_path / "res"), *workers], capsys)
    assert rc == 2, err
    assert message in err and str(sc) in err and f"field '{field}'" in err
    assert "Traceback" not in err and not (tmp_path / "res").exists()


def test_deferring_dispatch_is_refused_with_domains(tmp_path, capsys):
    data = make_case(tmp_path)
    (tmp_path / "c.csv").write_text("t_s,value\n0,100\n")
    data.update(request_classes={"batch": {"share": 0.5, "deadline_s": 100}},
                dispatch={"name": "carbon_defer", "threshold": 50},
                facility={"carbon_series": {"path": str(tmp_path / "c.csv")}})
    rc, _, err = run_cli(["run", str(write_scenario(tmp_path, data))], capsys)
    assert rc == 2 and "field 'dispatch.name': not supported with domains: deferral" in err
    assert "Traceback" not in err


def test_workers_and_scheduler_together_are_refused(tmp_path, capsys):
    sc = write_scenario(tmp_path, make_case(tmp_path))
    rc, _, err = run_cli(["run", str(sc), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], capsys)
    assert rc == 2 and "field '--scheduler': give --workers or --scheduler, not both" in err


def write_domain_trace(d: Path, names: list, csv: bool = False) -> Path:
    from dcsim.traces.trace import Trace

    n = len(names)
    rng = np.random.default_rng(8)
    n_in, n_out, arr = rng.integers(10, 300, n), rng.integers(1, 50, n), np.sort(rng.uniform(0, 20, n))
    if csv:
        p = d / "domains.csv"
        pd.DataFrame({"n_in": n_in, "n_out": n_out, "arrival_s": arr, "domain": names}).to_csv(p, index=False)
        return p
    p = d / "domains.parquet"
    Trace(n_in, n_out, arr, None, {"source": "test"}, domain=np.array(names, dtype=object)).to_parquet(p)
    return p


@pytest.mark.parametrize("csv", [False, True], ids=["parquet", "csv"])
def test_the_trace_may_name_each_requests_domain(tmp_path, csv):
    data = make_case(tmp_path)
    names = ["east", "west", "west", "east", "west"] * 20
    data["trace"] = {"path": str(write_domain_trace(tmp_path, names, csv))}
    data["domains_from_trace"] = True
    for d in data["domains"]:
        del d["share"]
    req = requests_table(simulate(load_scenario(write_scenario(tmp_path, data))))
    assert (req["pool"][np.array(names) == "east"] == "b1").all()
    assert req["pool"][np.array(names) == "west"].isin(["a1", "a2"]).all()
    del data["domains"], data["domains_from_trace"]  # a scenario without domains reads the trace as before
    plain = requests_table(simulate(load_scenario(write_scenario(tmp_path, data, "plain.yaml"))))
    tr = write_trace(tmp_path, req["n_in"], req["n_out"], pd.read_parquet(data["trace"]["path"])["arrival_s"]
                     if not csv else pd.read_csv(data["trace"]["path"])["arrival_s"], name="bare.parquet")
    data["trace"] = {"path": str(tr)}
    pd.testing.assert_frame_equal(plain, requests_table(simulate(load_scenario(write_scenario(tmp_path, data,
                                                                                            "bare.yaml")))))


@pytest.mark.parametrize("names,csv,message,where", [
    (["east", "west", "north"], False, "row 2 names domain 'north', which is none of the scenario's domains "
     "(east, west)", "domains.parquet: field 'domain'"),
    (["east", None, "west"], True, "row 1 names no domain", "domains.csv: field 'domain'"),
    (None, False, "has no domain column", "scenario.yaml: field 'domains_from_trace'"),
])
def test_a_bad_domain_column_exits_2(tmp_path, capsys, names, csv, message, where):
    data = make_case(tmp_path)
    if names is not None:
        data["trace"] = {"path": str(write_domain_trace(tmp_path, names, csv))}
    data["domains_from_trace"] = True
    for d in data["domains"]:
        del d["share"]
    rc, _, err = run_cli(["run", str(write_scenario(tmp_path, data))], capsys)
    assert rc == 2 and message in err and where in err and "Traceback" not in err, err


@pytest.mark.parametrize("from_trace,drop,field", [(True, False, "domains.0.share"), (False, True, "domains.0.share")])
def test_share_or_the_trace_not_both_nor_neither(tmp_path, capsys, from_trace, drop, field):
    data = make_case(tmp_path)
    data["domains_from_trace"] = from_trace
    if drop:
        for d in data["domains"]:
            del d["share"]
    rc, _, err = run_cli(["run", str(write_scenario(tmp_path, data))], capsys)
    assert rc == 2 and f"field '{field}'" in err and "Traceback" not in err, err


def test_domains_from_trace_needs_domains(tmp_path, capsys):
    data = make_case(tmp_path)
    del data["domains"]
    data["domains_from_trace"] = True
    rc, _, err = run_cli(["run", str(write_scenario(tmp_path, data))], capsys)
    assert rc == 2 and "field 'domains_from_trace': needs domains" in err


def test_split_with_power_dynamics_equals_the_run_in_one_process(tmp_path, capsys):
    """The rise and fall are applied to the merged run (over its whole time), so a split run holds them the same."""
    import yaml

    case = make_case(tmp_path)
    for pool in case["fleet"]:
        d = yaml.safe_load(Path(pool["profile"]).read_text())
        d["power"]["dynamics"] = {"rise_s": 0.16, "fall_s": 0.065}
        Path(pool["profile"]).write_text(yaml.safe_dump(d))
    sc = write_scenario(tmp_path, case)
    for out, extra in (("one", []), ("two", ["--workers", "2"])):
        rc, _, err = run_cli(["run", str(sc), "--out", str(tmp_path / out), "--no-plots", *extra], capsys)
        assert rc == 0, err
    for name in ("summary.json", "requests.parquet", "replicas.csv", "power.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    s = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert s["unattributed_active_j"] < 0  # the rise: joules no request carries
