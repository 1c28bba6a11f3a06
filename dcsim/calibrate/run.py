"""The sweep driver: idle windows, warm-ups, then every (point, repeat) of the plan under each power
cap, each run metered and appended to runs.csv the moment it completes. Running the same command on
the same folder resumes: finished entries are skipped, decisions repeat exactly (see schedule.py).

Session order: deep idle (before the framework touches the device) -> load the model -> warm-ups ->
serving idle (right after activity, so the decay shows) -> runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from dcsim.calibrate import store
from dcsim.calibrate.backends.base import Backend
from dcsim.calibrate.devices.registry import device_for
from dcsim.calibrate.environment import capture
from dcsim.calibrate.meters import Meter, Reading, parse_device
from dcsim.calibrate.meters.registry import select_meter
from dcsim.calibrate.plan import Plan, Point, check_fits, expand, load_plan, point_id
from dcsim.calibrate.schedule import Schedule
from dcsim.calibrate.timeline import PowerTimeline
from dcsim.errors import UserError

FORMAT = "dcsim-calibrate/1"


@dataclass
class Settings:
    out: Path
    plan_path: Path
    device: str
    identity: dict  # what must match for a resume: model, arch, backend, dtype, weights
    latency_only: bool = False
    power_caps: list[float] = field(default_factory=list)
    allow_power_limit_changes: bool = False
    sm_clocks: list[float] = field(default_factory=list)
    allow_clock_changes: bool = False
    max_minutes: float | None = None
    command: str = ""
    progress: bool = True
    meter_device: str | None = None
    timeline_hz: float = 20.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def _work(n_in: int, n_out: int, batch: int) -> float:
    """Rough cost of one run in decode-step units, for the progress bar and the time budget."""
    return n_out + 1 + n_in * batch / 2048


def _point_work(p: Point) -> float:
    """_work of a plan point; a mixed-step entry: its repeats, each a step plus its chunk's share of a prefill."""
    if p.kind == "step":
        return p.n_out * (1 + p.n_in / 2048)
    return _work(p.n_in, p.n_out, p.batch)


def plan_digest(plan: Plan) -> str:
    """The plan's identity; a plan without mixed steps, or without several chunks a step, digests as before
    those existed, so older folders resume."""
    d = plan.model_dump(mode="json")
    if not plan.steps:
        d.pop("steps", None)
        d.pop("step_repeats", None)
    if d.get("step_loop") == "pipelined":  # the loop every plan ran before there was a choice
        del d["step_loop"]
    if d.get("host_loop", 0) is None:  # nor had any plan a host loop
        del d["host_loop"]
    for st in d.get("steps") or ():  # nor does a step sweep of one chunk, as before the chunks axis
        for axis, alone in (("prefill_chunks", [1]), ("decode_context_spread", [0.0])):
            if st.get(axis) == alone:
                del st[axis]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _float(v: str) -> float:
    try:
        return float(v) if v not in ("", None) else math.nan
    except ValueError:
        return math.nan


def _cap_key(v: str | float | None) -> float | None:
    if v in (None, ""):
        return None
    return float(v)


class Sweep:
    def __init__(self, s: Settings, backend: Backend, meter: Meter | None = None) -> None:
        self.s = s
        self.backend = backend
        self.plan = load_plan(s.plan_path)
        self.points = expand(self.plan)
        if any(p.kind == "step" for p in self.points) and not hasattr(backend, "run_step"):
            raise UserError(f"the plan has mixed steps (steps:), which the {backend.name} backend cannot run; use "
                            "--backend paged", s.plan_path, "steps")
        if self.plan.host_loop is not None and getattr(backend, "name", None) != "paged":
            raise UserError(f"the plan has a host loop (host_loop:), which runs the paged engine's serving loop; "
                            f"the {backend.name} backend has none: use --backend paged", s.plan_path, "host_loop")
        # each setting the plan runs under: (power cap W, locked SM clock MHz), None for the device's own
        self.caps: list[tuple[float | None, float | None]] = [
            (None, None), *((c, None) for c in s.power_caps), *((None, m) for m in s.sm_clocks)]
        if s.sm_clocks and not s.allow_clock_changes:
            raise UserError("locking the GPU's SM clock needs --allow-clock-changes (the clock is unlocked "
                            "afterwards, also after an error or Ctrl-C)", None, "--sm-clocks")
        if s.sm_clocks and parse_device(s.device)[0] != "cuda":
            raise UserError("--sm-clocks needs a CUDA device", None, "--sm-clocks")
        if s.power_caps and not s.allow_power_limit_changes:
            raise UserError("changing the GPU power limit needs --allow-power-limit-changes (the original limit "
                            "is restored afterwards, also after an error or Ctrl-C)", None, "--power-caps")
        if s.power_caps and parse_device(s.device)[0] != "cuda":
            raise UserError("--power-caps needs a CUDA device", None, "--power-caps")
        self.out = s.out
        self._created = not self.out.exists()
        if meter is None:  # before anything is written: no meter, no folder
            meter = select_meter(s.device, s.latency_only, s.meter_device)
        # prefill_energy: how a run's prefill energy is read; folders from before "timeline" read the counter
        # inside the timed run (3-4 ms longer runs), so their runs do not mix with these
        self.identity = {**s.identity, "device_kind": parse_device(s.device)[0], "plan": self.plan.name,
                         "plan_sha256": plan_digest(self.plan), "power_caps_w": list(s.power_caps),
                         "prefill_energy": "timeline"}
        if s.sm_clocks:  # only where set: folders without clock sweeps resume as before
            self.identity["sm_clocks_mhz"] = list(s.sm_clocks)
        man = store.read_manifest(self.out)
        if man is not None:
            old = man.get("identity", {})
            diff = sorted(k for k in set(old) | set(self.identity) if old.get(k) != self.identity.get(k))
            if diff:
                raise UserError(f"this folder holds a different sweep (differs in {diff}); resume with the same "
                                "command or choose another --out", self.out / store.MANIFEST)
        else:
            man = {"format": FORMAT, "identity": self.identity, "plan": self.plan.model_dump(mode="json"),
                   "points": [p.id for p in self.points], "sessions": []}
            self.out.mkdir(parents=True, exist_ok=True)
            store.write_atomic(self.out / store.PLAN, s.plan_path.read_text())
        self.manifest = man
        self.rows = store.read_rows(self.out / store.RUNS, repair=True)
        self.schedules = {c: Schedule(self.plan, self.points) for c in self.caps}
        for row in self.rows:
            if row["phase"] not in ("run", "step"):
                continue
            cap = (_cap_key(row["power_cap_w"]), _cap_key(row.get("sm_clock_mhz")))
            if cap not in self.schedules:
                continue
            self.schedules[cap].record(row["point"], int(row["repeat"]), self._metrics(row))
        self.done_phases = {r["phase"] for r in self.rows}
        self.meter = meter
        self.session = len(man["sessions"])
        self.timeline: PowerTimeline | None = None
        self._work_done = 0.0
        self._time_in_runs = 0.0
        self._warmup_s = 0.0  # longest warm-up seen (a compile, for compiled backends)
        self._warm_prompts: set[tuple[int, int]] = set()  # (n_in, batch) this process has run
        self._clock: float | None = None  # the SM clock locked now (recorded in each row), None: the device's own

    @staticmethod
    def _metrics(row: dict) -> dict:
        if row["status"] != "ok":
            return {"failed": 1.0}
        return {k: _float(row.get(k, "")) for k in ("runtime_s", "energy_device_j", "ttft_s")}

    # ---- one window ---------------------------------------------------------------------------
    def _failed(self, m, entry: str, row: dict, st: dict, e: Exception, recover: bool = False) -> dict:
        """Record a run or step that raised (out of memory, a server error) as failed, closing its meter window;
        the point is not retried."""
        try:
            m.end(entry, sync=False)
        except Exception:  # noqa: BLE001 - the window may never have opened
            pass
        fix = getattr(self.backend, "recover", None) if recover else None
        if fix:
            fix()
        row.update(status="failed", error=f"{type(e).__name__}: {str(e)[:300]}", t_start=st.get("t0"),
                   t_end=round(time.time(), 3))
        self.writer.write(row)
        self._log(f"{entry}: FAILED {row['error']}")
        return row

    def _timeline_stats(self, t0: float, t1: float) -> tuple[float, float]:
        tl = self.timeline
        if tl is None or not tl.active:
            return math.nan, math.nan
        e = tl.energy_j(t0, t1)
        with tl._lock:
            peaks = [max(p.values()) for t, p in tl.samples if t0 <= t <= t1 and p]
        return (sum(e.values()) if e else math.nan), (max(peaks) if peaks else math.nan)

    def _write_window(self, entry: str, phase: str, t0: float, t1: float, r: Reading, **extra: float) -> None:
        """The row of a metered window with no request in it (an idle window, the model's load): its span, the
        meter's reading `r`, the timeline's energy and peak over it."""
        e_tl, peak = self._timeline_stats(t0, t1)
        self.writer.write({
            "entry": entry, "phase": phase, "n_in": 0, "n_out": 0, "batch": 0, "repeat": 0,
            "session": self.session, "t_start": round(t0, 3), "t_end": round(t1, 3), "runtime_s": t1 - t0,
            "energy_device_j": r.device_total, "energy_host_j": r.host_total, "energy_timeline_j": e_tl,
            "avg_power_w": r.device_total / (t1 - t0), "peak_power_w": peak, **extra,
            "energy_by_device": {**r.device_j, **r.host_j}, "backend": self.backend.name, "meter": self.meter.name,
            "status": "ok"})

    def _idle(self, phase: str, seconds: float) -> None:
        m = self.meter
        tail_s = seconds / 3.0
        if self.timeline:
            self.timeline.label = phase
        t0 = time.time()
        m.begin(phase, sync=False)
        time.sleep(seconds - tail_s)
        m.begin(phase + "/tail", sync=False)
        t_tail = time.perf_counter()
        time.sleep(tail_s)
        tail = m.end(phase + "/tail", sync=False)
        tail_s = time.perf_counter() - t_tail  # the window as slept, not as asked: a sleep overshoots by ms
        r = m.end(phase, sync=False)
        t1 = time.time()
        self._write_window(phase, phase, t0, t1, r, tail_s=tail_s, tail_power_w=tail.device_total / tail_s)
        self._log(f"{phase}: {r.device_total / (t1 - t0):.1f} W mean over {t1 - t0:.0f} s, "
                  f"{tail.device_total / tail_s:.1f} W over the last {tail_s:.0f} s")

    def _load(self) -> dict:
        """The backend's model load, metered as a row of its own (phase `load`): a cold start's wall time and
        device energy, which `dcsim fit` gives the profile as its `cold_start`. Returns the backend's facts."""
        m = self.meter
        entry = f"load-s{self.session}"
        if self.timeline:
            self.timeline.label = "load"
        t0 = time.time()
        m.begin(entry, sync=False)
        info = self.backend.load()
        r = m.end(entry)  # after a device sync: the load's queued work is in the window
        t1 = time.time()
        self._write_window(entry, "load", t0, t1, r)
        self._log(f"model load: {t1 - t0:.1f} s, {r.device_total:.0f} J")
        return info

    def _window(self, entry: str) -> tuple[dict, Callable[[], None]]:
        """(a dict the run fills, the callback that opens the meter window when the backend starts the run)."""
        st: dict = {}
        if self.timeline:
            self.timeline.label = entry

        def on_start() -> None:
            self.meter.begin(entry)
            st["t0"] = time.time()

        return st, on_start

    def _run(self, phase: str, entry: str, n_in: int, n_out: int, batch: int, repeat: int,
             cap: float | None, seed: int) -> dict:
        m = self.meter
        st, on_start = self._window(entry)

        def on_first() -> None:
            # nothing but the time: a counter read here sits inside the timed run (runs read that way carry a
            # fitted 3.2-4.3 ms after their first token on the H100/H200); prefill energy: the power timeline
            st["t_first"] = time.time()

        row = {"entry": entry, "phase": phase, "point": point_id(n_in, n_out, batch), "n_in": n_in,
               "n_out": n_out, "batch": batch, "repeat": repeat, "power_cap_w": cap, "session": self.session,
               "backend": self.backend.name, "meter": m.name}
        if self._clock is not None:
            row["sm_clock_mhz"] = self._clock
        try:
            tm = self.backend.run(n_in, n_out, batch, seed, on_start, on_first)
        except Exception as e:  # noqa: BLE001 - out of memory, server error: record it, do not retry this point
            return self._failed(m, entry, row, st, e, recover=True)
        r = m.end(entry)
        t1 = time.time()
        t0 = st["t0"]
        e_tl, peak = self._timeline_stats(t0, t1)
        e_pre, _ = self._timeline_stats(t0, st.get("t_first", t0 + tm.ttft_s))
        ok = tm.gen_tokens == n_out
        dev = r.device_total
        row.update({
            "t_start": round(t0, 3), "t_end": round(t1, 3), "runtime_s": tm.runtime_s, "ttft_s": tm.ttft_s,
            "tpot_s": (tm.runtime_s - tm.ttft_s) / (n_out - 1) if n_out > 1 else math.nan,
            "gen_tokens": tm.gen_tokens, "energy_device_j": dev, "energy_host_j": r.host_total,
            "energy_prefill_device_j": e_pre, "energy_timeline_j": e_tl,
            "avg_power_w": dev / tm.runtime_s if not math.isnan(dev) else (e_tl / tm.runtime_s),
            "peak_power_w": peak, "energy_by_device": {**r.device_j, **r.host_j} or None,
            "extra": tm.extra or None, "status": "ok" if ok else "failed",
            "error": None if ok else f"generated {tm.gen_tokens} tokens per sequence, expected {n_out}",
        })
        self.writer.write(row)
        if not self.s.progress:
            self._log(f"{entry}: {tm.runtime_s:.3f} s, ttft {tm.ttft_s * 1000:.1f} ms, "
                      f"{dev:.1f} J, {row['avg_power_w']:.0f} W" + ("" if ok else f" {row['error']}"))
        return row

    def _step(self, entry: str, p: Point, repeat: int, cap: float | None, seed: int) -> dict:
        """One mixed-step entry: the backend sets the state up, then runs the same step p.n_out times between
        two device syncs; the meter window encloses exactly those repeats."""
        m = self.meter
        st, on_start = self._window(entry)

        row = {"entry": entry, "phase": "step", "point": p.id, "n_in": p.n_in, "n_out": p.n_out, "batch": p.batch,
               "repeat": repeat, "power_cap_w": cap, "session": self.session, "backend": self.backend.name,
               "meter": m.name, "context": p.batch * p.context, "prefill_prefix": p.prefix,
               # only where several: a folder from before the column (its own header) resumes one-chunk steps
               **({"prefill_chunks": p.chunks} if p.chunks > 1 else {})}
        if self._clock is not None:
            row["sm_clock_mhz"] = self._clock
        try:
            tm = self.backend.run_step(p.batch, p.context, p.n_in, p.prefix, p.n_out, seed, on_start,
                                       chunks=p.chunks, spread=p.spread,
                                       **({"served": True} if self.plan.step_loop == "served" else {}))
        except Exception as e:  # noqa: BLE001 - out of memory: record it, do not retry this point
            return self._failed(m, entry, row, st, e)
        r = m.end(entry)
        t1 = time.time()
        t0 = st["t0"]
        e_tl, peak = self._timeline_stats(t0, t1)
        dev = r.device_total
        ok = tm.gen_tokens == p.n_out
        row.update({
            "t_start": round(t0, 3), "t_end": round(t1, 3), "runtime_s": tm.runtime_s, "gen_tokens": tm.gen_tokens,
            "energy_device_j": dev, "energy_host_j": r.host_total, "energy_timeline_j": e_tl,
            "avg_power_w": dev / tm.runtime_s if not math.isnan(dev) else (e_tl / tm.runtime_s),
            "peak_power_w": peak, "energy_by_device": {**r.device_j, **r.host_j} or None,
            "extra": tm.extra or None, "graph_batch": tm.extra.get("graph_batch"), "status": "ok" if ok else "failed",
            "error": None if ok else f"ran {tm.gen_tokens} steps, expected {p.n_out}",
        })
        self.writer.write(row)
        if not self.s.progress:
            self._log(f"{entry}: {tm.runtime_s:.3f} s for {p.n_out} steps, {dev:.1f} J")
        return row

    # ---- the session --------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def _remaining_work(self) -> float:
        pts = {p.id: p for p in self.points}
        tot = 0.0
        for sch in self.schedules.values():
            for pid, n in sch.remaining_by_point().items():
                tot += n * _point_work(pts[pid])
        return tot

    def _over_budget(self, t_session0: float, p: Point) -> bool:
        if self.s.max_minutes is None:
            return False
        per_work = self._time_in_runs / self._work_done if self._work_done else 0.0
        expected = per_work * _point_work(p) * 1.2 + self.plan.cooldown_s
        if p.kind == "run" and self.backend.needs_warmup(p.n_in, p.n_out, p.batch):
            expected += self._warmup_s * 1.2  # a compile for this shape is due first
        return time.time() - t_session0 + expected > self.s.max_minutes * 60

    def execute(self) -> dict:
        t_session0 = time.time()
        self._bar = None
        self.writer = None
        s, plan = self.s, self.plan
        sess = {"id": self.session, "started": _now(), "command": s.command,
                "environment": capture(s.meter_device or s.device), "meter": self.meter.describe(),
                "status": "running"}
        self.manifest["sessions"].append(sess)
        store.write_manifest(self.out, self.manifest)
        self.writer = store.RowWriter(self.out / store.RUNS, store.columns_of(self.out / store.RUNS),
                                      fmt=store.format_value)
        self.timeline = PowerTimeline(self.meter.power_w, self.out / store.POWER, 1.0 / s.timeline_hz,
                                      read_temp=self.meter.temperature_c).start()
        sess["power_timeline"] = self.timeline.active
        guard = None
        clock_guard = None
        n_new = 0
        try:
            metered = self.meter.name != "none"
            if metered and plan.idle.deep_s > 0 and "idle_deep" not in self.done_phases:
                torch = sys.modules.get("torch")
                held = bool(torch is not None and getattr(torch, "cuda", None) and torch.cuda.is_initialized())
                sess["deep_idle_how"] = ("sampled by this process before it created any device context "
                                         f"(framework device context initialised: {held}); no model loaded")
                self._idle("idle_deep", plan.idle.deep_s)
            sess["backend"] = self._load() if metered else self.backend.load()
            store.write_manifest(self.out, self.manifest)
            check_fits(plan, self.backend.max_context(), s.plan_path)
            shapes = [(p.n_in, p.n_out, p.batch) for p in self.points if p.kind == "run"]
            w = plan.warmup
            shapes.append((w.n_in, w.n_out, w.batch))
            self.backend.prepare(shapes)
            steps = [(p.batch, p.context, p.n_in, p.prefix) for p in self.points if p.kind == "step"]
            if steps:
                self.backend.prepare_steps(steps)
            for k in range(w.runs):
                t_w = time.time()
                self._run("warmup", f"warmup-s{self.session}-{k}", w.n_in, w.n_out, w.batch, k, None,
                          _seed(plan.seed, "warmup", self.session, k))
                self._warmup_s = max(self._warmup_s, time.time() - t_w)
                self._warm_prompts.add((w.n_in, w.batch))
            if metered and plan.idle.serving_s > 0 and "idle_serving" not in self.done_phases:
                self._idle("idle_serving", plan.idle.serving_s)
            self._bar = _progress(s.progress, self._remaining_work())
            paused = False
            for key in self.caps:
                cap, clock = key
                sch = self.schedules[key]
                if sch.remaining() == 0:
                    continue
                self._clock = clock
                tag = (f"-cap{cap:g}" if cap is not None else "") + (f"-clk{clock:g}" if clock is not None else "")
                seed_key = cap if clock is None else f"clk{clock:g}"
                if clock_guard is not None:
                    clock_guard.restore()  # unlocked between clocks, and for every setting without one
                if clock is not None and clock_guard is None:
                    from dcsim.calibrate.clocks import ClockGuard

                    kind, index = parse_device(s.device)
                    clock_guard = ClockGuard(device_for(kind).clock_limits(), index, log=self._log)
                    clock_guard.check(s.sm_clocks)
                    clock_guard.__enter__()
                if clock is not None:
                    clock_guard.set(clock)
                if cap is not None and guard is None:
                    from dcsim.calibrate.powercap import PowerLimitGuard

                    kind, index = parse_device(s.device)
                    guard = PowerLimitGuard(device_for(kind).power_limits(), index, log=self._log)
                    guard.check(s.power_caps)
                    guard.__enter__()
                if cap is not None:
                    guard.set(cap)
                for p, r in sch:
                    if self._over_budget(t_session0, p):
                        paused = True
                        break
                    if p.kind == "step":
                        entry = f"{p.id}-r{r}" + tag
                        t_run = time.time()
                        row = self._step(entry, p, r, cap, _seed(plan.seed, p.id, r, seed_key))
                        self._time_in_runs += time.time() - t_run
                        self._work_done += _point_work(p)
                        sch.record(p.id, r, self._metrics({k: store.format_value(v) for k, v in row.items()}))
                        n_new += 1
                        if self._bar is not None:
                            self._bar.update(_point_work(p))
                        if plan.cooldown_s:
                            time.sleep(plan.cooldown_s)
                        continue
                    if self.backend.needs_warmup(p.n_in, p.n_out, p.batch):
                        t_w = time.time()
                        self._run("warmup", f"warmup-s{self.session}-{p.id}", p.n_in, p.n_out, p.batch, 0, cap,
                                  _seed(plan.seed, "warmup", p.id))
                        self._warmup_s = max(self._warmup_s, time.time() - t_w)
                        self._warm_prompts.add((p.n_in, p.batch))
                    if plan.warmup.per_prompt and (p.n_in, p.batch) not in self._warm_prompts:
                        self._run("warmup", f"warmup-s{self.session}-{p.id}-prompt", p.n_in, min(2, p.n_out),
                                  p.batch, 0, cap, _seed(plan.seed, "warmup-prompt", self.session, p.id))
                    self._warm_prompts.add((p.n_in, p.batch))
                    if self._bar is not None:
                        rb = sch.remaining_by_point()
                        self._bar.set_postfix_str(f"{p.id} repeat {r + 1}" + (f" cap {cap:g}W" if cap else "")
                                                  + (f" clock {clock:g} MHz" if clock else "")
                                                  + f" | {sum(rb.values())} runs left", refresh=True)
                    entry = f"{p.id}-r{r}" + tag
                    t_run = time.time()
                    row = self._run("run", entry, p.n_in, p.n_out, p.batch, r, cap,
                                    _seed(plan.seed, p.id, r, seed_key))
                    self._time_in_runs += time.time() - t_run
                    self._work_done += _point_work(p)
                    sch.record(p.id, r, self._metrics({k: store.format_value(v) for k, v in row.items()}))
                    n_new += 1
                    if self._bar is not None:
                        self._bar.total = self._bar.n + _point_work(p) + self._remaining_work()
                        self._bar.update(_point_work(p))
                    if plan.cooldown_s:
                        time.sleep(plan.cooldown_s)
                if paused:
                    break
            left = sum(sch.remaining() for sch in self.schedules.values())
            if not paused and not left and plan.host_loop is not None:
                from dcsim.calibrate.host_loop import run_host_loop

                if self.timeline:
                    self.timeline.label = "host-loop"
                sess["host_loop"] = [p.name for p in run_host_loop(self.backend, self.meter, self.out,
                                                                   plan.host_loop, self._log)]
            sess["status"] = "complete" if left == 0 else "paused (time budget)"
            if left:
                self._log(f"stopped for the time budget with {left} runs left; the same command resumes")
        except KeyboardInterrupt:
            sess["status"] = "interrupted"
            self._log(f"interrupted; {n_new} runs of this session are saved in {self.out}; "
                      "the same command resumes")
            raise
        except BaseException as e:
            sess["status"] = f"failed: {type(e).__name__}: {e}"[:500]
            if isinstance(e, UserError) and self._created and not n_new and not self.rows:
                self._discard = True  # bad input before anything was measured: leave no folder behind
            raise
        finally:
            try:
                try:
                    if clock_guard is not None:
                        clock_guard.__exit__(None, None, None)
                        sess["sm_clock_restored"] = True
                finally:
                    if guard is not None:
                        guard.__exit__(None, None, None)
                        sess["power_limit_restored"] = True
            finally:
                if self._bar is not None:
                    self._bar.close()
                self.timeline.stop()
                self.meter.close()
                self.writer.close()
                self.backend.close()
                sess["ended"] = _now()
                sess["runs_this_session"] = n_new
                if getattr(self, "_discard", False):
                    shutil.rmtree(self.out, ignore_errors=True)
                else:
                    store.write_manifest(self.out, self.manifest)
        return {"status": sess["status"], "runs": n_new,
                "left": sum(sch.remaining() for sch in self.schedules.values())}


def _progress(enabled: bool, total: float):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=round(total), unit="step", desc="calibrate", file=sys.stderr, mininterval=1.0,
                bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {elapsed}<{remaining} {postfix}")


def calibrate(s: Settings, backend: Backend, meter: Meter | None = None) -> dict:
    """Run (or resume) one sweep into s.out; returns {"status", "runs", "left"}."""
    return Sweep(s, backend, meter).execute()
