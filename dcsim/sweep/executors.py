"""Where a sweep's points (and a split run's domains) run: in this process, on a local process pool, or on a Dask
cluster; each finished task (its result, or the exception it raised) is handed to a callback as it ends."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable

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


# one task: (what the callback is told, a Dask key, a function importable by name, its arguments)
Task = tuple[Any, str, Callable[..., Any], tuple]
OnTaskDone = Callable[[Any, Any], None]  # (the task's tag, its result or the exception it raised)


def _run_here(tasks: Iterable[Task], on_done: OnTaskDone) -> None:
    """Each task in turn in this process."""
    for tag, _, fn, args in tasks:
        try:
            res = fn(*args)
        except Exception as e:  # noqa: BLE001 - reported with the task; the callback decides what follows
            res = e
        on_done(tag, res)


def _run_pool(tasks: Iterable[Task], workers: int, on_done: OnTaskDone, in_flight: int | None) -> None:
    """The tasks on a pool of `workers` fresh processes, each reported as it ends; at most `in_flight` submitted
    and not yet reported (None: all at once), so that a caller building each task's inputs as it is taken holds
    no more of them than that."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn: workers start clean (no copied threads or locks from the parent)
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    todo = iter(tasks)
    pending: dict = {}
    try:
        while True:
            for tag, _, fn, args in todo:
                pending[ex.submit(fn, *args)] = tag
                if in_flight is not None and len(pending) >= in_flight:
                    break
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in [f for f in pending if f in done]:  # in order of submission
                exc = fut.exception()
                on_done(pending.pop(fut), exc if exc is not None else fut.result())
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


def _run_dask(tasks: Iterable[Task], client, on_done: OnTaskDone, in_flight: int | None = None) -> None:
    """The tasks on the Dask client, each reported as it ends, at most `in_flight` submitted and not yet reported
    (None: all at once); all cancelled if this stops."""
    from dask.distributed import as_completed

    todo = iter(tasks)
    futures = []
    by_key = {}

    def submit() -> bool:
        task = next(todo, None)
        if task is None:
            return False
        tag, key, fn, args = task
        fut = client.submit(fn, *args, key=key, pure=False)
        by_key[fut.key] = tag
        futures.append(fut)
        return True

    try:
        while (in_flight is None or len(futures) < in_flight) and submit():
            pass
        done = as_completed(futures, loop=client.loop)
        for fut in done:
            tag = by_key.pop(fut.key)
            if fut.status == "finished":
                on_done(tag, fut.result())
            else:
                exc = fut.exception()
                on_done(tag, exc if isinstance(exc, BaseException) else RuntimeError(f"task {fut.status}"))
            futures.remove(fut)
            fut.release()
            if in_flight is not None and submit():
                done.add(futures[-1])
    except BaseException:
        client.cancel(futures)
        raise


def run_tasks(tasks: Iterable[Task], n_tasks: int, workers: int | None, client, on_done: OnTaskDone,
              in_flight: int | None = None) -> None:
    """Run the tasks on the Dask client if given, else in this process (workers 0) or on a pool of that many
    processes (None: every core), never more processes than tasks; each result (or exception) goes to `on_done`
    as its task ends, and an exception `on_done` raises stops the rest."""
    if client is not None:
        _run_dask(tasks, client, on_done, in_flight)
    elif workers == 0:
        _run_here(tasks, on_done)
    else:
        n = workers or local_cores()
        _run_pool(tasks, max(1, min(n, n_tasks)), on_done, in_flight)


def run_points(base: str, todo: list[Point], workers: int | None, client, on_done: OnDone) -> None:
    """Run a sweep's points (run_tasks: on the Dask client, in this process or on a pool of processes)."""
    tasks = [(p, f"dcsim-point-{p.id}", run_point, (base, list(p.overrides))) for p in todo]
    run_tasks(tasks, len(todo), workers, client, on_done)
