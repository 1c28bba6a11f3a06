"""The ranks of a tensor-parallel replica during a calibration sweep: rank 0 drives the sweep (run.Sweep, which
writes the run folder alone), the other ranks follow its orders, so every rank runs the same forwards (whose
collectives need them all) and meters its own device.

Rank 0's sweep sees one backend and one meter, the views `DriverBackend` and `DriverMeter` of a `Replica`:
- each backend call is sent to the other ranks first (load, prepare, run, close), then run on rank 0;
- a run's meter window opens on every rank in its own run, right before its timed region, and closes when its run
  returns; rank 0's `end` gathers the other ranks' readings. An idle window is opened and closed on every rank by
  order;
- the power timeline's samples (and temperatures) are gathered from every rank at each tick, over their own gloo
  group.
Device joules are summed over the ranks (each its own GPU, labelled as its meter labels it; on the CPU, where the
ranks share a package, labels are prefixed `rankN/`); host joules are rank 0's alone (the host is one).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

from dcsim.calibrate.backends.base import Backend, Timing
from dcsim.calibrate.meters.base import Meter, Reading
from dcsim.calibrate.tensor_parallel import Group, token_digest


class Channel:
    """Python objects from rank 0 to every rank (`send`/`recv`) and back to rank 0 (`gather`), over a gloo group."""

    def __init__(self, group: Any, rank: int, size: int) -> None:
        import torch.distributed as dist

        self.dist, self.group, self.rank, self.size = dist, group, rank, size

    def send(self, msg: object) -> None:
        self.dist.broadcast_object_list([msg], src=0, group=self.group)

    def recv(self) -> Any:
        box: list = [None]
        self.dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: object) -> list | None:
        out: list | None = [None] * self.size if self.rank == 0 else None
        self.dist.gather_object(obj, out, dst=0, group=self.group)
        return out


def relabel(labels: dict[str, float], rank: int, prefix: bool) -> dict[str, float]:
    """A rank's per-device figures under the labels the run folder keeps (prefixed `rankN/` where ranks share one)."""
    return {f"rank{rank}/{k}" if prefix else k: v for k, v in labels.items()}


def describe_rank(group: Group, meter: Meter) -> dict:
    """What the manifest records of one rank: its device (for a GPU, which board), meter and multicast settings."""
    from dcsim.calibrate.environment import capture

    env = capture(group.device)
    keep = {k: env[k] for k in ("device", "gpu", "cuda_visible_devices") if k in env}
    return {"ok": True, "device": group.device, "meter": meter.describe(), "environment": keep,
            "env": group.facts.get("env")}


def _reading(r: Reading) -> dict:
    return {"device_j": dict(r.device_j), "host_j": dict(r.host_j)}


class Replica:
    """Rank 0's side: the local engine and meter, the channels to the other ranks, and what a run left to merge."""

    def __init__(self, group: Group, backend: Backend, meter: Meter) -> None:
        self.group, self.backend, self.meter = group, backend, meter
        size = group.rank.size
        self.control = Channel(group.control, 0, size)
        self.power = Channel(group.power, 0, size)
        self.prefix = not group.device.startswith("cuda")
        self.in_run = False
        self.timing: Timing | None = None
        self.closed = False
        self.power_stopped = False
        self.ranks: list[dict] = []

    def start(self, error: str | None = None) -> list[dict]:
        """Gather every rank's description (device, meter, environment); raises when any rank, this one included
        (`error`), failed to set up."""
        mine = {"ok": False, "error": error} if error else describe_rank(self.group, self.meter)
        self.ranks = [mine, *(self.control.gather(None) or [])[1:]]
        for i, r in enumerate(self.ranks):
            r["rank"] = i
        bad = [f"rank {r['rank']}: {r['error']}" for r in self.ranks if not r.get("ok")]
        if bad:
            self.close()
            from dcsim.errors import UserError

            raise UserError("a rank of the replica could not start: " + "; ".join(bad), None, "--tensor-parallel")
        return self.ranks

    def order(self, *msg: object) -> None:
        self.control.send(msg)

    def close(self) -> None:
        """Tell the other ranks the sweep is over (once; also after an error before the sweep began)."""
        if not self.power_stopped:
            self.power_stopped = True
            self.power.send(("stop",))
        if not self.closed:
            self.closed = True
            self.order("close")

    def __enter__(self) -> "Replica":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DriverBackend(Backend):
    """Rank 0's engine as the sweep sees it: every call ordered on the other ranks, then run here."""

    local_device = True

    def __init__(self, replica: Replica) -> None:
        self.rep = replica
        self.inner = replica.backend
        self.name = self.inner.name
        self.random_weights = True

    def load(self) -> dict:
        self.rep.order("load")
        info = self.inner.load()
        others = self.rep.control.gather(None) or []
        tp = dict(info.get("tensor_parallel") or {})
        tp["ranks"] = [{k: v for k, v in r.items() if k != "ok"} for r in self.rep.ranks]
        for r, o in zip(tp["ranks"], [_load_facts(info), *others[1:]]):
            r.update(o or {})
        info["tensor_parallel"] = tp
        return info

    def prepare(self, shapes: list[tuple[int, int, int]]) -> None:
        self.rep.order("prepare", shapes)
        self.inner.prepare(shapes)

    def needs_warmup(self, n_in: int, n_out: int, batch: int) -> bool:
        return self.inner.needs_warmup(n_in, n_out, batch)

    def max_context(self) -> int | None:
        return self.inner.max_context()

    def run(self, n_in: int, n_out: int, batch: int, seed: int,
            on_start: Callable[[], None], on_first_token: Callable[[], None]) -> Timing:
        self.rep.order("run", n_in, n_out, batch, seed)
        self.rep.in_run = True
        self.rep.timing = None
        tm = self.inner.run(n_in, n_out, batch, seed, on_start, on_first_token)
        ids = getattr(self.inner, "last_ids", None)
        if ids is not None:
            tm.extra["tokens_sha256"] = token_digest(ids)
        tm.extra["seed"] = seed
        self.rep.timing = tm
        return tm

    def close(self) -> None:
        if not self.rep.closed:
            self.rep.closed = True
            self.rep.order("close")
        self.inner.close()


def _load_facts(info: dict) -> dict:
    return {k: info[k] for k in ("memory_allocated_gb", "load_s") if k in info}


class DriverMeter(Meter):
    """Rank 0's meter as the sweep sees it: each window read on every rank, the readings merged."""

    def __init__(self, replica: Replica) -> None:
        self.rep = replica
        self.inner = replica.meter
        self.name = self.inner.name
        self._lock = threading.Lock()

    def begin(self, key: str, sync: bool = True) -> None:
        if not self.rep.in_run:  # an idle window: opened on every rank by order
            self.rep.order("begin", key, sync)
        self.inner.begin(key, sync)

    def end(self, key: str, sync: bool = True) -> Reading:
        in_run = self.rep.in_run
        if not in_run:
            self.rep.order("end", key, sync)
        try:
            mine = self.inner.end(key, sync)
        except Exception:  # noqa: BLE001 - a run that failed before its window opened
            mine = Reading()
        replies = self.rep.control.gather(None) or []
        self.rep.in_run = False
        rd = Reading(device_j=relabel(mine.device_j, 0, self.rep.prefix), host_j=dict(mine.host_j))
        tm = self.rep.timing if in_run else None
        errors, runtimes, agree = [], [], True
        for rank, rep in enumerate(replies[1:], start=1):
            rd.device_j.update(relabel(rep.get("device_j", {}), rank, self.rep.prefix))
            if rep.get("error"):
                errors.append(f"rank {rank}: {rep['error']}")
            if tm is not None:
                runtimes.append(rep.get("runtime_s"))
                agree &= rep.get("gen_tokens") == tm.gen_tokens and rep.get("tokens") == tm.extra.get("tokens_sha256")
        if tm is not None:
            tm.extra["tp_runtime_s"] = [round(tm.runtime_s, 6), *[round(x, 6) if x else None for x in runtimes]]
            tm.extra["tp_tokens_agree"] = bool(agree)
            if errors:
                tm.extra["tp_errors"] = errors
                tm.gen_tokens = -1  # the sweep records the run as failed
        return rd

    def power_w(self) -> dict[str, float]:
        return self._sample("power")

    def temperature_c(self) -> dict[str, float]:
        return self._sample("temp")

    def _sample(self, what: str) -> dict[str, float]:
        with self._lock:
            if self.rep.power_stopped:
                return {}
            mine = self.inner.power_w() if what == "power" else self.inner.temperature_c()
            self.rep.power.send((what,))
            out = relabel(mine, 0, self.rep.prefix)
            for rank, vals in enumerate((self.rep.power.gather(None) or [])[1:], start=1):
                out.update(relabel(vals or {}, rank, self.rep.prefix))
            return out

    def describe(self) -> dict:
        return {**self.inner.describe(), "tensor_parallel": [r.get("meter") for r in self.rep.ranks]}

    def close(self) -> None:
        with self._lock:
            if not self.rep.power_stopped:
                self.rep.power_stopped = True
                self.rep.power.send(("stop",))
        self.inner.close()


def follow(group: Group, backend: Backend, meter: Meter | None, error: str | None = None) -> int:
    """A rank other than 0: report ready (or `error`), then carry out rank 0's orders until it closes the sweep;
    the power samples are answered by a thread of their own. Returns 0, or 1 after a failed start."""
    rank = group.rank.rank
    control = Channel(group.control, rank, group.rank.size)
    power = Channel(group.power, rank, group.rank.size)
    control.gather({"ok": False, "error": error or "no meter"} if error or meter is None else
                   describe_rank(group, meter))

    def answer_power() -> None:
        while True:
            msg = power.recv()
            if msg[0] == "stop":
                return
            try:
                vals = meter.power_w() if msg[0] == "power" else meter.temperature_c()  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - a failed sample is an empty one, as the timeline counts it
                vals = {}
            power.gather(vals)

    sampler = threading.Thread(target=answer_power, daemon=True, name="tp-power")
    sampler.start()
    try:
        while True:
            op, *args = control.recv()
            if op == "close":
                break
            if error or meter is None:
                continue
            if op == "load":
                info = backend.load()
                control.gather(_load_facts(info))
            elif op == "prepare":
                backend.prepare(args[0])
            elif op == "begin":
                meter.begin(args[0], args[1])
            elif op == "end":
                control.gather(_reading(meter.end(args[0], args[1])))
            elif op == "run":
                control.gather(_follow_run(backend, meter, *args))
    finally:
        sampler.join(timeout=5)
        if meter is not None:
            meter.close()
        backend.close()
    return 1 if error else 0


def _follow_run(backend: Backend, meter: Meter, n_in: int, n_out: int, batch: int, seed: int) -> dict:
    """One ordered run on this rank, metered from right before its timed region to its return."""
    key = f"run-{time.time()}"
    opened = []

    def on_start() -> None:
        meter.begin(key)
        opened.append(key)

    try:
        tm = backend.run(n_in, n_out, batch, seed, on_start, lambda: None)
    except Exception as e:  # noqa: BLE001 - reported to rank 0, which records the run as failed
        if opened:
            try:
                meter.end(key, sync=False)
            except Exception:  # noqa: BLE001
                pass
        return {"error": f"{type(e).__name__}: {str(e)[:300]}", "device_j": {}}
    r = meter.end(key)
    ids = getattr(backend, "last_ids", None)
    return {**_reading(r), "runtime_s": tm.runtime_s if math.isfinite(tm.runtime_s) else None,
            "gen_tokens": tm.gen_tokens, "tokens": token_digest(ids) if ids is not None else None}
