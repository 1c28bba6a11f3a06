"""The indexed routers choose exactly the replica a plain scan of the candidates chooses, request by request.

The scans below are the routers as they were before the indexes (dcsim/sim/replica_index.py): `min` over the
candidates, or a loop keeping the first strictly smaller score. They run beside the shipped routers in real
simulations of randomised heterogeneous fleets (one-at-a-time and batching pools, two pools of one device, bursts
that saturate them, idle gaps, request shapes drawn from a few values so that predictions tie), and on replicas
whose backlogs differ in the last bit yet round to the same predicted finish.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np
import pytest
import simpy
from simkit import profile_dict, scenario, write_profile, write_trace

from dcsim.profiles.profile import Profile
from dcsim.scenario import Batching, Scenario
from dcsim.sim.engine import simulate
from dcsim.sim.replica import Replica
from dcsim.sim.requests import Request, RequestLog
from dcsim.sim.routers import (
    EnergyCost,
    EnergyCostParams,
    Fleet,
    LeastOutstanding,
    LeastWork,
    Router,
    TokenThreshold,
    make_router,
)

# ---- the plain scans (the routers before the indexes) --------------------------------------------------------


def scan_wait_s(rep):
    if rep.outstanding < rep.parallel:
        return 0.0 if rep.parallel > 1 else rep.backlog_s
    return rep.backlog_s / rep.parallel


def scan_finish(fleet, rep, r, alone):
    if rep.parallel == 1:
        return rep.backlog_s + alone[0], alone[1]
    b = min(rep.outstanding, rep.parallel - 1) + 1
    if b == 1:
        return scan_wait_s(rep) + alone[0], alone[1]
    evaluator = fleet.evaluators[rep.pool]
    n_in, n_out = r.n_in, r.est_out
    t_pf, w_pf, _ = evaluator.prefill(n_in, float(n_in) * n_in, 1)
    step_t, step_w = evaluator.decode_step(b, b * (n_in + n_out / 2.0))
    t = t_pf + (n_out - 1) * step_t
    e = t_pf * w_pf + (n_out - 1) * step_t * step_w / b
    return scan_wait_s(rep) + t, e


def scan_least_outstanding(reps):
    """(choice, how many candidates share its count)."""
    best = min(reps, key=attrgetter("outstanding"))
    return best, sum(rep.outstanding == best.outstanding for rep in reps)


def scan_least_work(router, r):
    best, bt = None, float("inf")
    alone = {}
    ts = []
    for rep in router.candidates:
        a = alone.get(rep.pool)
        if a is None:
            a = alone[rep.pool] = router.fleet.evaluators[rep.pool].served_alone(r.n_in, r.est_out)
        t = scan_finish(router.fleet, rep, r, a)[0]
        ts.append(t)
        if t < bt:
            best, bt = rep, t
    return best, ts.count(bt)


def scan_energy_cost(router, r):
    alone = {}
    es, ts = [], []
    for rep in router.candidates:
        a = alone.get(rep.pool)
        if a is None:
            a = alone[rep.pool] = router.fleet.evaluators[rep.pool].served_alone(r.n_in, r.est_out)
        t, e = scan_finish(router.fleet, rep, r, a)
        es.append(e)
        ts.append(t)
    e_max = max(es) or 1.0
    t_max = max(ts) or 1.0
    lam = router.params.lam
    best, bc = None, float("inf")
    cs = []
    for rep, e, t in zip(router.candidates, es, ts):
        c = lam * e / e_max + (1.0 - lam) * t / t_max
        cs.append(c)
        if c < bc:
            best, bc = rep, c
    return best, cs.count(bc)


# ---- the shipped routers, each choice checked against its scan ----------------------------------------------

DECISIONS: list[tuple[int, int, int, int]] = []  # (request, indexed choice, scanned choice, replicas tied)


def record(r, got, scanned):
    want, tied = scanned
    DECISIONS.append((r.rid, got.index, want.index, tied))
    return got


class CheckedLeastOutstanding(LeastOutstanding):
    def choose(self, r):
        return record(r, super().choose(r), scan_least_outstanding(self.candidates))


class CheckedLeastWork(LeastWork):
    def choose(self, r):
        return record(r, super().choose(r), scan_least_work(self, r))


class CheckedEnergyCost(EnergyCost):
    def choose(self, r):
        return record(r, super().choose(r), scan_energy_cost(self, r))


class CheckedTokenThreshold(TokenThreshold):
    def choose(self, r):
        small = r.n_in <= self.t_in and (self.t_out is None or r.est_out <= self.t_out)
        return record(r, super().choose(r), scan_least_outstanding(self.small if small else self.large))


class ScanLeastWork(Router):
    needs_work = True

    def choose(self, r):
        return scan_least_work(self, r)[0]


class ScanEnergyCost(Router):
    Params = EnergyCostParams
    needs_work = True

    def choose(self, r):
        return scan_energy_cost(self, r)[0]


class ScanLeastOutstanding(Router):
    def choose(self, r):
        return scan_least_outstanding(self.candidates)[0]


def ref(cls: type) -> str:
    return f"{__name__}:{cls.__name__}"


# ---- randomised fleets ----------------------------------------------------------------------------------------


def random_case(tmp_path, seed):
    """A shuffled fleet of one-at-a-time and batching pools (two of them on one device; a paged pool small enough to
    preempt) and a bursty trace whose request shapes repeat."""
    rng = np.random.default_rng(seed)
    slow = write_profile(tmp_path, name="slow", prefill=(0.2, 0.002), decode=(0.04, 0.001), prefill_w=60,
                         decode_w=(40, 1), idle_w=5)
    fast = write_profile(tmp_path, name="fast", prefill=(0.05, 0.0005), decode=(0.01, 0.0005), prefill_w=600,
                         decode_w=(400, 10))
    mid = write_profile(tmp_path, name="mid")
    pools = [{"name": "a", "profile": str(slow), "count": int(rng.integers(2, 5)), "batching": {"policy": "fcfs"}},
             {"name": "b", "profile": str(slow), "count": int(rng.integers(2, 4)), "batching": {"policy": "fcfs"}},
             {"name": "c", "profile": str(fast), "count": int(rng.integers(2, 5)),
              "batching": {"policy": "continuous", "max_batch": int(rng.integers(2, 5))}},
             {"name": "d", "profile": str(mid), "count": int(rng.integers(2, 4)),
              "batching": {"policy": "static", "max_batch": 2}},
             {"name": "e", "profile": str(fast), "count": int(rng.integers(2, 4)),
              "batching": {"policy": "paged", "max_num_seqs": int(rng.integers(2, 5)), "max_num_batched_tokens": 256,
                           "kv_blocks": 20}}]
    pools = [pools[i] for i in rng.permutation(len(pools))]
    n = 400
    n_in = rng.choice([8, 16, 64, 200], n)
    n_out = rng.choice([1, 2, 5, 20], n)
    gaps = np.where(rng.random(n) < 0.5, 0.0, rng.exponential(0.3, n))  # bursts of simultaneous arrivals
    gaps[rng.random(n) < 0.03] = 30.0  # and gaps that let the fleet drain
    tr = write_trace(tmp_path, n_in, n_out, np.cumsum(gaps))
    knowledge = [{"mode": "oracle"}, {"mode": "max_tokens", "max_tokens": 8},
                 {"mode": "predicted", "relative_error": 0.5}][seed % 3]
    return tr, pools, knowledge, n


ROUTERS = {
    "least_outstanding": {"name": ref(CheckedLeastOutstanding)},
    "least_outstanding-pools": {"name": ref(CheckedLeastOutstanding), "pools": ["c", "a"]},
    "least_work": {"name": ref(CheckedLeastWork)},
    "least_work-pools": {"name": ref(CheckedLeastWork), "pools": ["b", "d"]},
    "energy_cost-0.5": {"name": ref(CheckedEnergyCost), "lambda": 0.5},
    "energy_cost-0": {"name": ref(CheckedEnergyCost), "lambda": 0.0},
    "energy_cost-0.9": {"name": ref(CheckedEnergyCost), "lambda": 0.9},
    "energy_cost-1": {"name": ref(CheckedEnergyCost), "lambda": 1.0},
    "token_threshold": {"name": ref(CheckedTokenThreshold), "input_threshold": 16, "small_pool": "a",
                        "large_pool": "c"},
    "token_threshold-one-pool": {"name": ref(CheckedTokenThreshold), "input_threshold": 16, "small_pool": "b",
                                 "large_pool": "b"},
}
SCANS = {ref(CheckedLeastOutstanding): ref(ScanLeastOutstanding), ref(CheckedLeastWork): ref(ScanLeastWork),
         ref(CheckedEnergyCost): ref(ScanEnergyCost)}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("which", ROUTERS)
def test_indexed_routers_choose_what_the_scan_chooses(tmp_path, seed, which):
    spec = ROUTERS[which]
    tr, pools, knowledge, n = random_case(tmp_path, seed)
    sc = Scenario.model_validate(scenario(tr, pools, router=spec, output_knowledge=knowledge, seed=seed))
    DECISIONS.clear()
    raw = simulate(sc)
    got = list(DECISIONS)
    # every request routed once, in order, and where the router sent it
    assert [d[0] for d in got] == list(range(n))
    assert raw.log["replica"].tolist() == [d[1] for d in got]
    assert set(raw.log["status"].tolist()) <= {1, 2}  # done or rejected: none lost
    # the indexed choice is the scan's, request by request
    wrong = [d for d in got if d[1] != d[2]]
    assert not wrong, f"{len(wrong)} of {n} differ, first (request, indexed, scan, tied): {wrong[0]}"
    # and ties were there to break
    assert sum(d[3] > 1 for d in got) >= 50
    # the whole run is the scan router's, byte for byte
    if spec["name"] in SCANS:
        plain = dict(spec, name=SCANS[spec["name"]])
        raw2 = simulate(Scenario.model_validate(scenario(tr, pools, router=plain, output_knowledge=knowledge,
                                                         seed=seed)))
        for k, v in raw.log.items():
            assert v.tobytes() == raw2.log[k].tobytes(), k
        assert raw.end_s == raw2.end_s


# ---- backlogs one bit apart ------------------------------------------------------------------------------------


def hand_fleet(pools):
    """Real replicas (their processes never started) of the given (profile dict, batching, count) pools."""
    env = simpy.Environment()
    log = RequestLog(1000)
    reps, evs = [], []
    for p, (prof, batching, count) in enumerate(pools):
        evaluator = Profile.model_validate(prof).evaluator()
        evs.append(evaluator)
        for _ in range(count):
            reps.append(Replica(env, len(reps), p, evaluator, Batching.model_validate(batching), log))
    return reps, Fleet(reps, [f"p{i}" for i in range(len(pools))], evs)


def give(rep, preds, rid):
    out = []
    for pred in preds:
        r = Request(rid, 10, 10, 0.0, 10)
        r.pred = pred
        rep.submit(r)
        out.append(r)
        rid += 1
    return out


def test_backlogs_that_round_to_one_finish_go_to_the_first(tmp_path):
    # A long request on a slow fcfs device: its service alone (about 200 s) swamps the last bits of the backlogs,
    # so 0.1 + 0.2 (0.30000000000000004) and 0.3 predict the same finish and the first replica must win although
    # its backlog is the larger; in between, a replica one second behind and exact duplicates.
    slow = profile_dict("slow", decode=(1.0, 0.0))
    reps, fleet = hand_fleet([(slow, {"policy": "fcfs"}, 7)])
    backlogs = [[0.1, 0.2], [1.3], [0.3], [0.3], [0.2, 0.1], [0.1, 0.2], [5.0]]
    rid = 0
    for i in [3, 6, 1, 2, 0, 5, 4]:  # submitted out of order, so the heap holds them in a scrambled shape
        rid += len(give(reps[i], backlogs[i], rid))
    assert reps[0].backlog_s != reps[2].backlog_s
    r = Request(999, 10, 200, 0.0, 200)
    a = fleet.evaluators[0].served_alone(r.n_in, r.est_out)[0]
    assert reps[0].backlog_s + a == reps[2].backlog_s + a  # the tie the index must see
    rng = np.random.default_rng(0)
    for spec in ({"name": "least_work"}, {"name": "energy_cost", "lambda": 0.3}, {"name": "energy_cost"}):
        router = make_router(spec, fleet, rng)
        scan = scan_least_work if spec["name"] == "least_work" else scan_energy_cost
        want, tied = scan(router, r)
        assert want is reps[0] and tied >= 4
        assert router.choose(r) is want
    # the first replica finishes its requests: now the third and fourth tie exactly (0.3) with the sixth
    # (0.30000000000000004): the third
    for q in list(reps[0].queue):
        reps[0].complete(q, 0.0)
    reps[0].submit(Request(998, 10, 10, 0.0, 10))  # busy again, behind a request it knows nothing of
    for spec in ({"name": "least_work"}, {"name": "energy_cost", "lambda": 0.3}):
        router = make_router(spec, fleet, rng)
        scan = scan_least_work if spec["name"] == "least_work" else scan_energy_cost
        want, _ = scan(router, r)
        assert router.choose(r) is want


def test_saturated_batching_replicas_by_backlog_and_count(tmp_path):
    # continuous, at most 2 at once: replicas with 0 or 1 outstanding predict no wait; with 2 or more, a wait of
    # half their backlog. Counts and backlogs are set so that each class in turn holds the least finish.
    fast = profile_dict("fast", prefill=(0.05, 0.0005), decode=(0.01, 0.0005))
    slow = profile_dict("slow", prefill=(0.2, 0.002), decode=(0.04, 0.001))
    reps, fleet = hand_fleet([(fast, {"policy": "continuous", "max_batch": 2}, 5), (slow, {"policy": "fcfs"}, 3)])
    rng = np.random.default_rng(1)
    specs = [{"name": "least_work"}, {"name": "energy_cost", "lambda": 0.2}, {"name": "energy_cost", "lambda": 0.7},
             {"name": "energy_cost", "lambda": 1.0}, {"name": "least_outstanding"}]
    routers = [(make_router(s, fleet, rng), s) for s in specs]
    live = []
    rid = 0
    pick = np.random.default_rng(7)
    for step in range(400):
        r = Request(10_000 + step, int(pick.choice([10, 100])), int(pick.choice([2, 10])), 0.0, 0)
        r.est_out = r.n_out
        for router, spec in routers:
            scan = {"least_work": scan_least_work, "energy_cost": scan_energy_cost}.get(spec["name"])
            want = scan(router, r)[0] if scan else scan_least_outstanding(router.candidates)[0]
            assert router.choose(r) is want, (step, spec)
        # load or drain a replica at random, with preds from a few values (exact ties) or sums of them
        if live and pick.random() < 0.45:
            rep, q = live.pop(int(pick.integers(len(live))))
            rep.complete(q, 0.0)
        else:
            rep = reps[int(pick.integers(len(reps)))]
            (q,) = give(rep, [float(pick.choice([0.1, 0.2, 0.3, 0.7]))], rid)
            rid += 1
            live.append((rep, q))


def test_energy_cost_with_no_positive_finish_falls_back_to_the_scan():
    # a profile whose fitted curves go negative (no clamp): every predicted finish is below zero, so T/T_max would
    # fall as the wait grows and the index's order does not hold; energy_cost then scans, least_work needs no order
    neg = profile_dict("neg", prefill=(-5.0, 0.0), decode=(-1.0, 0.0))
    reps, fleet = hand_fleet([(neg, {"policy": "fcfs"}, 3), (neg, {"policy": "continuous", "max_batch": 2}, 3)])
    r = Request(999, 10, 10, 0.0, 10)
    assert fleet.predict(0, r)[0] < 0
    rng = np.random.default_rng(0)
    routers = [(make_router(s, fleet, rng), s["name"]) for s in
               ({"name": "energy_cost", "lambda": 0.4}, {"name": "least_work"})]
    rid = 0
    for i, preds in enumerate([[-3.0], [], [-1.0, -2.0], [-1.0], [-2.0, -1.0, -0.5], [-0.5]]):
        rid += len(give(reps[i], preds, rid))
        for router, name in routers:
            want = (scan_energy_cost if name == "energy_cost" else scan_least_work)(router, r)[0]
            assert router.choose(r) is want, (i, name)
