"""`dcsim plan SCENARIO --vary fleet.POOL.count=LO..HI --slo METRIC<=VALUE ... --minimise energy|cost|carbon --out
DIR`: the smallest fleets that meet the objectives (the frontier) and the cheapest of them, by bisection on the
first varied count (dcsim/capacity.py says what it assumes). Points run on local processes or a Dask cluster and
are kept one file each in DIR/points, so the same command resumes; DIR/frontier and DIR/evaluated hold the tables,
DIR/plan.json the question and the answer."""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="the cheapest fleet that meets service-level objectives", description=__doc__)
    p.add_argument("scenario", help="scenario YAML")
    p.add_argument("--vary", action="append", default=[], metavar="fleet.POOL.count=LO..HI",
                   help="a replica count to search (the first is bisected, the others enumerated); repeatable")
    p.add_argument("--slo", action="append", default=[], metavar="METRIC<=VALUE",
                   help="an objective on a summary metric (e.g. ttft_s.p99<=2, tpot_s.p50<=0.1); repeatable")
    p.add_argument("--minimise", "--minimize", default="energy", choices=("energy", "cost", "carbon"),
                   help="what the chosen fleet has least of (default energy)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario field")
    p.add_argument("--out", required=False, help="folder for points/, frontier, evaluated and plan.json")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: every core; 0 runs the points in this process)")
    p.add_argument("--scheduler", metavar="tcp://HOST:8786", help="send the points to this Dask scheduler")
    p.add_argument("--force", action="store_true", help="write into an --out folder that dcsim did not write")
    p.set_defaults(func=run)


PLAN_FORMAT = "dcsim-plan/1"


def is_plan_folder(folder: Path) -> bool:
    """A folder `dcsim plan` wrote: its plan.json."""
    import json

    try:
        return json.loads((folder / "plan.json").read_text(encoding="utf-8")).get("format") == PLAN_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def run(args: argparse.Namespace) -> int:
    from dcsim.capacity import OBJECTIVES, parse_axis, parse_objective
    from dcsim.errors import UserError
    from dcsim.outputs import check_folder

    if not args.out:
        raise UserError("required (the folder for the planner's points and tables)", None, "--out")
    if not args.vary:
        raise UserError("give at least one replica count to search, e.g. fleet.h100.count=1..64", None, "--vary")
    if not args.slo:
        raise UserError("give at least one objective, e.g. ttft_s.p99<=2", None, "--slo")
    if args.workers is not None and args.workers < 0:
        raise UserError("must be 0 or more", None, "--workers")
    if args.workers is not None and args.scheduler:
        raise UserError("give --workers or --scheduler, not both", None, "--scheduler")
    axes = [parse_axis(v) for v in args.vary]
    if len({a.path for a in axes}) != len(axes):
        raise UserError("a count is varied twice", None, "--vary")
    objectives = [parse_objective(s) for s in args.slo]
    out = check_folder(args.out, "plan", args.force, signature=is_plan_folder)
    scenario = Path(args.scenario)
    if not scenario.is_file():
        raise UserError("scenario not found", scenario, "scenario")
    runner = PointRunner(scenario.resolve(), list(args.set), axes, out, args.workers, args.scheduler)
    runner.check(objectives, OBJECTIVES[args.minimise])
    from dcsim.outputs import locked, write_marker

    try:
        with locked(out, "dcsim plan"):
            write_marker(out, "plan", runner.own_files(), complete=False)
            result = runner.search(objectives)
            answer = runner.write(result, objectives, args.minimise)
            write_marker(out, "plan", runner.own_files(), complete=True)
    finally:
        runner.close()
    print(runner.report(result, objectives, args.minimise, answer))
    return 0


class PointRunner:
    """Runs the planner's fleets as sweep points in one folder: checked, fingerprinted, reused when finished."""

    def __init__(self, scenario: Path, overrides: list[str], axes, out: Path, workers: int | None,
                 scheduler: str | None) -> None:
        from dcsim.scenario import load_scenario
        from dcsim.sweep.executors import connect_dask

        self.scenario, self.overrides, self.axes, self.out, self.workers = scenario, overrides, axes, out, workers
        self.seed = load_scenario(scenario, overrides).seed
        self.client = connect_dask(scheduler) if scheduler else None
        self.ran = self.reused = 0
        self.ids: list[str] = []

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def _sweep(self, fleets: list[tuple[int, ...]]):
        """The fleets as a sweep whose zip rows are the fleets: the sweep machinery's own points, ids and
        fingerprints (sweep.spec.expand), so the planner's point files are a sweep's."""
        from dcsim.sweep.spec import Sweep, SweepSpec, expand

        rows = {a.path: [f[i] for f in fleets] for i, a in enumerate(self.axes)}
        spec = SweepSpec(base=str(self.scenario), set=list(self.overrides), zip=rows)
        points = expand(spec, [self.seed], self.scenario)
        return Sweep(self.scenario, spec, self.scenario, [[a.path for a in self.axes]], [self.seed], points)

    def check(self, objectives, objective_metric: str) -> None:
        """Every objective's metric (and the one minimised) exists in this scenario's summary: a one-request run
        of the smallest fleet; and the corners of the search are valid scenarios."""
        from dcsim.errors import UserError
        from dcsim.sweep.check import validate_points
        from dcsim.sweep.tables import probe_metrics

        corners = [tuple(c) for c in itertools.product(*((a.lo, a.hi) for a in self.axes))]
        sweep = self._sweep(corners)
        validate_points(sweep)
        names = set(probe_metrics(sweep))
        for o in objectives:
            if o.metric not in names:
                near = sorted(n for n in names if o.metric.split(".")[0] in n)[:6]
                raise UserError(f"no summary metric {o.metric!r}" + (f" (similar: {', '.join(near)})" if near else ""),
                                None, "--slo")
        if objective_metric not in names:
            raise UserError(f"the summary has no {objective_metric!r}", None, "--minimise")

    def evaluate(self, fleets: list[tuple[int, ...]]) -> dict[tuple[int, ...], dict[str, float]]:
        """Simulate the fleets not already in the folder; return every one's flattened summary."""
        from dcsim.errors import UserError
        from dcsim.sweep.check import validate_points
        from dcsim.sweep.executors import run_points
        from dcsim.sweep.folder import finished_points, point_path, point_record, write_json
        from dcsim.sweep.tables import flatten

        sweep = self._sweep(fleets)
        fingerprints = validate_points(sweep)
        (self.out / "points").mkdir(parents=True, exist_ok=True)
        done = finished_points(self.out, sweep, fingerprints)
        self.reused += len(done)
        todo = [p for p in sweep.points if p.id not in done]
        failures = []

        def on_done(p, res) -> None:
            if isinstance(res, BaseException):
                failures.append((p, res))
                return
            rec = point_record(p, fingerprints[p.id], res)
            write_json(point_path(self.out, p), rec)
            done[p.id] = rec

        if todo:
            print(f"plan: simulating {len(todo)} fleet(s): "
                  + "; ".join(" ".join(f"{k.split('.')[-2]}={v}" for k, v in p.values.items()) for p in todo),
                  file=sys.stderr, flush=True)
            run_points(str(self.scenario), todo, self.workers, self.client, on_done)
        self.ran += len(todo) - len(failures)
        if failures:
            p, e = failures[0]
            msg = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            raise UserError(f"{len(failures)} fleet(s) failed (finished ones are kept; run again to retry): "
                            f"{p.values}: {msg}", self.scenario)
        self.ids += [p.id for p in sweep.points if p.id not in self.ids]
        return {f: flatten(done[p.id]["summary"]) for f, p in zip(fleets, sweep.points)}

    def search(self, objectives):
        from dcsim.capacity import plan

        return plan(self.axes, objectives, self.evaluate)

    def own_files(self) -> list[str]:
        return sorted({"plan.json", "frontier.csv", "frontier.parquet", "evaluated.csv", "evaluated.parquet"}
                      | {f"points/{i}.json" for i in self.ids})

    def write(self, result, objectives, minimise: str) -> dict | None:
        """frontier and evaluated tables, plan.json; returns the chosen fleet ({path: count, metrics...})."""
        import pandas as pd

        from dcsim.capacity import OBJECTIVES
        from dcsim.sweep.folder import write_json, write_table

        metric = OBJECTIVES[minimise]
        keep = [o.metric for o in objectives] + [metric, "requests_completed", "requests_total"]
        keep = list(dict.fromkeys(keep))
        paths = [a.path for a in self.axes]
        rows = [{**dict(zip(paths, counts)), "meets": result.feasible[counts], **{k: s.get(k) for k in keep}}
                for counts, s in sorted(result.evaluated.items())]
        evaluated = pd.DataFrame(rows)
        front = [{**dict(zip(paths[1:], rest)), paths[0]: n, **({k: result.evaluated[(n, *rest)].get(k)
                                                                 for k in keep} if n is not None else {})}
                 for rest, n in sorted(result.minimal.items())]
        frontier = pd.DataFrame(front, columns=paths[1:] + [paths[0]] + keep)
        write_table(evaluated, self.out / "evaluated")
        write_table(frontier, self.out / "frontier")
        best = result.cheapest(metric)
        answer = None if best is None else {**dict(zip(paths, best[0])), **{k: best[1].get(k) for k in keep}}
        grid = math.prod(a.hi - a.lo + 1 for a in self.axes)
        write_json(self.out / "plan.json", {
            "format": PLAN_FORMAT, "scenario": str(self.scenario), "set": self.overrides, "seed": self.seed,
            "vary": [{"path": a.path, "lo": a.lo, "hi": a.hi} for a in self.axes],
            "slo": [str(o) for o in objectives], "minimise": minimise, "answer": answer,
            "fleets_evaluated": len(result.evaluated), "grid_fleets": grid, "rounds": result.rounds,
            "ran_now": self.ran, "reused": self.reused})
        return answer

    def report(self, result, objectives, minimise: str, answer: dict | None) -> str:
        from dcsim.capacity import OBJECTIVES

        grid = math.prod(a.hi - a.lo + 1 for a in self.axes)
        lines = [f"{len(result.evaluated)} of {grid} fleets simulated in {result.rounds} rounds "
                 f"({self.ran} now, {self.reused} from earlier runs); objectives: "
                 + ", ".join(str(o) for o in objectives)]
        first = self.axes[0].path
        for rest, n in sorted(result.minimal.items()):
            where = " ".join(f"{a.path}={v}" for a, v in zip(self.axes[1:], rest))
            lines.append(f"  {where + ': ' if where else ''}least {first} meeting them: "
                         + (str(n) if n is not None else f"none up to {self.axes[0].hi}"))
        if answer is None:
            lines.append("no fleet in the ranges meets every objective")
        else:
            from dcsim.report import folder_currency

            metric = OBJECTIVES[minimise]
            unit = f" {folder_currency(self.out)}" if metric == "cost" else ""  # money marked with its currency
            lines.append("cheapest by " + minimise + ": " + " ".join(f"{a.path}={answer[a.path]}" for a in self.axes)
                         + f" ({metric} {answer[metric]:.6g}{unit.rstrip()})")
        lines.append(f"wrote {self.out}/ (points/, frontier, evaluated, plan.json)")
        return "\n".join(lines)
