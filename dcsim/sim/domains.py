"""A scenario's routing domains simulated in parallel, on a local process pool or a Dask cluster: the parent reads
the trace and draws every request's inputs once, sends each domain its share, and merges the domains' results as
they come back (dcsim.sim.engine.Merger, the merge a run in one process uses), so that the result is the same,
byte for byte, wherever the domains ran."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from dcsim.scenario import Scenario
from dcsim.sim.engine import (
    Merger,
    Part,
    RawResults,
    finish,
    load_grid,
    load_pool_series,
    load_pools,
    part_done,
    plan_parts,
    prepare,
    run_part,
)

_NONE = np.empty(0)


def domain_task(scenario_file: str, overrides: list[str], part: Part) -> tuple[RawResults, float]:
    """Simulate one domain on a worker: the scenario and its pools read again there, the domain's requests as
    the parent drew them. Returns its results without what the parent already holds (the scenario, the pools,
    the series, the requests' inputs), and the seconds it took."""
    from dcsim.scenario import load_scenario

    t0 = time.perf_counter()
    sc = load_scenario(scenario_file, overrides)
    pools = load_pools(sc, scenario_file)
    raw = run_part(sc, scenario_file, part, pools, load_grid(sc, scenario_file),
                   load_pool_series(sc, scenario_file, "carbon"), load_pool_series(sc, scenario_file, "price"))
    slim = dataclasses.replace(raw, scenario=None, pools=[], n_in=_NONE, n_out=_NONE, arrival_s=_NONE, grid={},
                               pool_carbon=[], pool_price=[])
    return slim, time.perf_counter() - t0


def simulate_split(sc: Scenario, scenario_file: str | Path, overrides: list[str], workers: int | None, client,
                   progress: Callable[[str], None] | None = None) -> RawResults:
    """Run a scenario's domains on a pool of `workers` local processes (None: every core), or on the Dask
    `client` if given, and merge them; `progress` is told of each domain as it ends. The workers read the
    scenario file again with the same `overrides`, so it must be where they can see it."""
    from dcsim.sweep.executors import local_cores, run_tasks

    if sc.domains is None:
        raise ValueError("simulate_split runs a scenario's domains; this one has none")
    inputs = prepare(sc, scenario_file)
    merged = Merger(sc, inputs)
    count = len(sc.domains)
    file = str(scenario_file)

    run = uuid.uuid4().hex[:12]  # Dask keys of this run's own: two runs on one cluster never share a task

    def tasks():
        for k, part in enumerate(plan_parts(sc, inputs)):
            yield (k, part), f"dcsim-domain-{run}-{k}", domain_task, (file, list(overrides), part)

    def on_done(tag: tuple[int, Part], res: object) -> None:
        if isinstance(res, BaseException):
            raise res
        k, part = tag
        raw, seconds = res
        merged.add(k, part, raw)
        if progress is not None:
            progress(part_done(merged.parts, count, part, seconds))

    # a domain's inputs are built as it is sent: two a worker (a Dask worker's thread) at most are in flight
    slots = sum(client.nthreads().values()) if client is not None else workers or local_cores()
    in_flight = 2 * max(1, slots)
    run_tasks(tasks(), count, workers, client, on_done, in_flight)
    return finish(sc, scenario_file, merged.result())
