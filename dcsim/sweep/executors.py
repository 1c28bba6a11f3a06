"""Where a sweep's points run: in this process, on a local process pool, or on a Dask cluster; each finished
point (its summary, or the exception it raised) is handed to a callback as it ends."""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from dcsim.errors import UserError
from dcsim.sweep.spec import Point

OnDone = Callable[[Point, "dict | BaseException"], None]


def run_point(base: str, overrides: list[str]) -> dict:
    """Simulate one point (in a worker process or on a Dask worker); returns the summary and wall seconds."""
    from dcsim.results import strict_json, summarize
    from dcsim.scenario import load_scenario
    from dcsim.sim.engine import simulate

    t0 = time.perf_counter()
    sc = load_scenario(base, overrides)
    summary = summarize(simulate(sc, base))
    # strict: an undefined statistic is None (null) here as in the point file, whether run now or resumed
    return {"summary": json.loads(strict_json(summary, indent=None)), "seconds": time.perf_counter() - t0}


def local_cores() -> int:
    """Cores this process may run on (the default number of local workers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _run_here(base: str, todo: list[Point], on_done: OnDone) -> None:
    """Each point in turn in this process."""
    for p in todo:
        try:
            res: dict | BaseException = run_point(base, list(p.overrides))
        except Exception as e:  # noqa: BLE001 - reported with the point, the sweep goes on
            res = e
        on_done(p, res)


def _run_pool(base: str, todo: list[Point], workers: int, on_done: OnDone) -> None:
    """The points on a pool of `workers` fresh processes, each reported as it ends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: workers start clean (no copied threads or locks from the parent)
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {ex.submit(run_point, base, list(p.overrides)): p for p in todo}
        for fut in as_completed(futures):
            exc = fut.exception()
            on_done(futures[fut], exc if exc is not None else fut.result())
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def connect_dask(scheduler: str):
    """A dask.distributed Client of that scheduler; a missing package or an unreachable address is a UserError."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise UserError("--scheduler needs dask.distributed: pip install 'dcsim[dask]'", None, "--scheduler") from None
    try:
        return Client(scheduler, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {e}", None, "--scheduler") from None


def _run_dask(base: str, todo: list[Point], client, on_done: OnDone) -> None:
    """The points as tasks of the Dask client, each reported as it ends; all cancelled if this stops."""
    from dask.distributed import as_completed

    futures = []
    try:
        by_key = {}
        for p in todo:
            fut = client.submit(run_point, base, list(p.overrides), key=f"dcsim-point-{p.id}", pure=False)
            by_key[fut.key] = p
            futures.append(fut)
        for fut in as_completed(futures, loop=client.loop):
            p = by_key[fut.key]
            if fut.status == "finished":
                on_done(p, fut.result())
            else:
                exc = fut.exception()
                on_done(p, exc if isinstance(exc, BaseException) else RuntimeError(f"task {fut.status}"))
            fut.release()
    except BaseException:
        client.cancel(futures)
        raise


def run_points(base: str, todo: list[Point], workers: int | None, client, on_done: OnDone) -> None:
    """Run the points on the Dask client if given, else in this process (workers 0) or on a pool of that many
    processes (None: every core), never more processes than points."""
    if client is not None:
        _run_dask(base, todo, client, on_done)
    elif workers == 0:
        _run_here(base, todo, on_done)
    else:
        n = workers or local_cores()
        _run_pool(base, todo, max(1, min(n, len(todo))), on_done)
