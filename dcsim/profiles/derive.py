"""Datasheet transfer: carry a measured profile to a device that was never measured.

The source profile holds what its engine achieved on its device; the target keeps that engine efficiency and
changes only what the two datasheets (devices.py) say differs. With k_bw = source / target memory bandwidth,
k_fl = source / target peak dense BF16 throughput and r = target / source power limit (TDP):

- decode_step_s: a decode step reads the weights and the KV cache once; below the ridge point (batch under
  peak FLOPS / bandwidth, about 200-300 on H100/H200) it is bound by memory bandwidth. Every term (intercept,
  batch, context, floor) is multiplied by k_bw, except a fixed per-step overhead `step_overhead_s`, which is
  kept as measured (default 0: the source's achieved bandwidth, bytes per step / step time, is carried, not the
  datasheet's peak). `roofline_overhead_s` offers one from the source alone: the part of its decode step above
  the time its weights take to read at the datasheet bandwidth. That suits an engine whose step is paced by the
  GPU's own kernel sequence (CUDA graphs) when source and target share the compute die (H100 and H200: same
  GH100, same clocks); a host-bound engine's overhead follows its host, which a datasheet does not give.
- prefill_s: prompt work is bound by compute: the per-token, per-token-squared and per-prompt terms are
  multiplied by k_fl. The intercept and the floor (lo) are the fixed cost of an empty prompt (launches, the
  per-run overhead the fit folds into prefill_s) and are kept.
- power (device): idle + dynamic. The target draws its own serving idle plus the source's dynamic power above
  the source's serving idle, scaled by r: w' = idle_t + r * (w - idle_s); ceilings (hi) become hi * r.
  Idle comes from the target's catalogue entry (`idle="catalogue"`) or is the source's idle times r
  (`idle="tdp-ratio"`, for a device with no idle figure, or to leave every target measurement out).
- host power, valid ranges and the source's power-cap model (fractions of the default limit) are carried; the
  cap range comes from the target's catalogue entry; memory from the target's memory size.
Nothing is fitted, so the derived profile has no fit_error; `dcsim fit --derive --check RUN` measures its
error against a calibration run of the target instead (check.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dcsim.errors import UserError
from dcsim.profiles import devices as catalogue
from dcsim.profiles.clock_fit import clock_for
from dcsim.profiles.devices import DeviceSpec
from dcsim.profiles.profile import (
    Curve,
    DeviceInfo,
    Latency,
    Memory,
    Power,
    PowerCap,
    Profile,
    Provenance,
)

IdleRule = Literal["catalogue", "tdp-ratio"]


@dataclass(frozen=True)
class Transfer:
    """The three datasheet ratios and the assumptions that turn a source profile into a target profile."""

    source: DeviceSpec
    target: DeviceSpec
    k_bw: float  # time multiplier of memory-bound terms: source / target bandwidth
    k_fl: float  # time multiplier of compute-bound terms: source / target peak throughput
    r_power: float  # multiplier of dynamic power: target / source power limit
    step_overhead_s: float = 0.0
    idle: IdleRule = "catalogue"

    def describe(self) -> str:
        s, t = self.source, self.target
        return (f"memory bandwidth {s.mem_bw_tbs:g} -> {t.mem_bw_tbs:g} TB/s (decode x {self.k_bw:.4f}), peak "
                f"dense BF16 {s.peak_bf16_tflops:g} -> {t.peak_bf16_tflops:g} TFLOPS (prefill x {self.k_fl:.4f}), "
                f"power limit {s.tdp_w:g} -> {t.tdp_w:g} W (dynamic power x {self.r_power:.4f}); fixed decode-step "
                f"overhead kept {self.step_overhead_s * 1000:g} ms; idle: {self.idle}")


def transfer_between(source: DeviceSpec, target: DeviceSpec, step_overhead_s: float = 0.0,
                     idle: IdleRule = "catalogue") -> Transfer:
    """Ratios of two catalogue devices; a missing datasheet figure is a UserError naming the field."""
    for dev in (source, target):
        for attr in ("mem_bw_tbs", "peak_bf16_tflops", "tdp_w"):
            if getattr(dev, attr) is None:
                raise UserError(f"device {dev.key!r} has no {attr} in the device catalogue "
                                "(dcsim/profiles/devices.py); datasheet transfer needs it", field=attr)
    if step_overhead_s < 0:
        raise UserError("must be >= 0", field="step_overhead_ms")
    if idle not in ("catalogue", "tdp-ratio"):
        raise UserError(f"unknown idle rule {idle!r}; use catalogue or tdp-ratio", field="idle")
    return Transfer(source, target, k_bw=source.mem_bw_tbs / target.mem_bw_tbs,
                    k_fl=source.peak_bf16_tflops / target.peak_bf16_tflops, r_power=target.tdp_w / source.tdp_w,
                    step_overhead_s=step_overhead_s, idle=idle)


def source_device(profile: Profile, file: str | Path | None = None) -> DeviceSpec:
    """The catalogue entry of the device a profile was measured on: by device name, else by the profile name's
    first part (<device>[-xN]--<model>--...)."""
    for d in catalogue.DEVICES.values():
        if d.name == profile.device.name:
            return d
    key = profile.name.split("--")[0]
    if profile.gpus_per_replica > 1 and key.endswith(f"-x{profile.gpus_per_replica}"):
        key = key[: -len(f"-x{profile.gpus_per_replica}")]
    if key in catalogue.DEVICES:
        return catalogue.DEVICES[key]
    raise UserError(f"device {profile.device.name!r} of the source profile is not in the device catalogue; "
                    f"known: {sorted(catalogue.DEVICES)} (give --source-device)", file, "device.name")


def roofline_overhead_s(src: Profile, source: DeviceSpec) -> float:
    """The source's decode-step intercept above its weights' read time at the datasheet bandwidth (>= 0): the
    per-step time that memory bandwidth does not explain."""
    if source.mem_bw_tbs is None:
        raise UserError(f"device {source.key!r} has no mem_bw_tbs in the device catalogue; the roofline overhead "
                        "needs it", field="mem_bw_tbs")
    floor_s = src.memory.weights_gb / src.gpus_per_replica / (source.mem_bw_tbs * 1000.0)
    return max(0.0, src.latency.decode_step_s.intercept - floor_s)


# ---- the transfer rules, one per kind of term ------------------------------------------------------------
def decode_time(c: Curve, k_bw: float, overhead_s: float) -> Curve:
    """Memory-bound decode step: everything but the fixed overhead scales with k_bw."""
    if overhead_s > c.intercept:
        raise UserError(f"step overhead {overhead_s * 1000:g} ms exceeds the source's decode-step intercept "
                        f"{c.intercept * 1000:.3g} ms", field="step_overhead_ms")
    lo = None if c.lo is None else (overhead_s + (c.lo - overhead_s) * k_bw if c.lo > overhead_s else c.lo)
    return Curve(intercept=overhead_s + (c.intercept - overhead_s) * k_bw,
                 coef={k: v * k_bw for k, v in c.coef.items()}, lo=lo,
                 hi=None if c.hi is None else c.hi * k_bw)


def prefill_time(c: Curve, k_fl: float) -> Curve:
    """Compute-bound prefill: work terms scale with k_fl; the empty-prompt cost (intercept, floor) is kept."""
    return Curve(intercept=c.intercept, coef={k: v * k_fl for k, v in c.coef.items()}, lo=c.lo,
                 hi=None if c.hi is None else c.hi * k_fl)


def active_power(c: Curve, r: float, idle_source_w: float, idle_target_w: float) -> Curve:
    """Target idle plus the source's dynamic power above its idle, scaled by the power-limit ratio r."""
    def level(w: float | None) -> float | None:
        return None if w is None else idle_target_w + r * (w - idle_source_w)

    return Curve(intercept=level(c.intercept), coef={k: v * r for k, v in c.coef.items()}, lo=level(c.lo),
                 hi=None if c.hi is None else c.hi * r)


def _idle(src: Profile, t: Transfer) -> tuple[float, float, str, list[str]]:
    """(serving, deep) idle of the replica, how they were obtained, and not_covered entries."""
    g = src.gpus_per_replica
    dev = t.target
    if t.idle == "catalogue" and dev.serving_idle_w is not None and dev.deep_idle_w is not None:
        note = (f"{dev.serving_idle_w:g} W serving, {dev.deep_idle_w:g} W deep per device x {g}, from the target's "
                f"catalogue entry ({dev.idle_source}): {dev.citation('serving_idle_w')}")
        return dev.serving_idle_w * g, dev.deep_idle_w * g, note, []
    why = "" if t.idle == "tdp-ratio" else " (the target's catalogue entry has no idle figures)"
    note = f"source idle x power-limit ratio {t.r_power:.4f}{why}"
    return (src.power.serving_idle_w * t.r_power, src.power.deep_idle_w * t.r_power, note,
            ["idle power: the source's idle scaled by the power-limit ratio, not a figure of the target"])


def _power_cap(src: Profile, t: Transfer) -> tuple[PowerCap | None, str, list[str]]:
    pc, dev = src.power_cap, t.target
    if pc is None:
        return None, "the source has no power-cap model", ["power caps: the source profile has none"]
    if None in (dev.cap_min_w, dev.cap_max_w, dev.cap_default_w):
        return None, "no cap range", [f"power caps: no power-limit range for {dev.key} in the device catalogue"]
    x = dev.cap_default_w / pc.default_w
    new = PowerCap(min_w=dev.cap_min_w, max_w=dev.cap_max_w, default_w=dev.cap_default_w, method=pc.method,
                   static_w=round(pc.static_w * x, 1), exponent=pc.exponent,
                   compute_bound_prefill=pc.compute_bound_prefill, compute_bound_decode=pc.compute_bound_decode,
                   points=[p.model_copy(update={"cap_w": p.cap_w * x}) for p in pc.points])
    note = (f"the source's cap model carried as fractions of the default limit (static floor {pc.static_w:g} -> "
            f"{new.static_w:g} W, cap points x {x:.4f}); range {dev.cap_min_w:g}-{dev.cap_max_w:g} W, default "
            f"{dev.cap_default_w:g} W: {dev.citation('cap_max_w')}")
    return new, note, []


def _memory(src: Profile, t: Transfer) -> tuple[Memory, str]:
    g = src.gpus_per_replica
    frac = src.memory.activation_reserve_gb / src.memory.device_gb
    dev_gb = t.target.memory_gb * g
    mem = Memory(device_gb=dev_gb, weights_gb=src.memory.weights_gb, activation_reserve_gb=round(frac * dev_gb, 2))
    note = (f"device memory {t.target.memory_gb:g} GB x {g} ({t.target.citation('memory_gb')}); weights as the "
            f"source; reserve the source's fraction {frac:.3g} of device memory; KV capacity follows from these")
    return mem, note


def derive_profile(src: Profile, t: Transfer, source_path: str, name: str | None = None,
                   command: str | None = None) -> Profile:
    """The target's profile by datasheet transfer (module docstring); every term's provenance says so."""
    serving, deep, idle_note, nc_idle = _idle(src, t)
    lat = Latency(prefill_s=prefill_time(src.latency.prefill_s, t.k_fl),
                  decode_step_s=decode_time(src.latency.decode_step_s, t.k_bw, t.step_overhead_s))
    s_idle = src.power.serving_idle_w
    power = Power(prefill_w=active_power(src.power.prefill_w, t.r_power, s_idle, serving),
                  decode_w=active_power(src.power.decode_w, t.r_power, s_idle, serving),
                  serving_idle_w=round(serving, 2), deep_idle_w=round(deep, 2), host=src.power.host)
    cap, cap_note, nc_cap = _power_cap(src, t)
    mem, mem_note = _memory(src, t)
    how = f"derived from {source_path} by datasheet transfer ({t.describe()})"
    s, d = t.source, t.target
    cites = "; ".join(dict.fromkeys(dev.citation(f) for dev in (s, d)
                                    for f in ("mem_bw_tbs", "peak_bf16_tflops", "tdp_w")))

    def prov(note: str, kind: str = "derived") -> Provenance:
        return Provenance(source=kind, citation=f"{how}; datasheets: {cites}", path=source_path, command=command,
                          note=note)

    provenance = {
        "latency.prefill_s": prov(f"source prefill work terms x {t.k_fl:.4f} (peak-throughput ratio); intercept "
                                  "and floor kept (fixed cost of an empty prompt)"),
        "latency.decode_step_s": prov(f"source decode step x {t.k_bw:.4f} (bandwidth ratio) above a kept fixed "
                                      f"overhead of {t.step_overhead_s * 1000:g} ms: the source's achieved "
                                      "bandwidth carried"),
        "power.prefill_w": prov(f"target serving idle + {t.r_power:.4f} x (source power - source serving idle "
                                f"{s_idle:g} W)"),
        "power.decode_w": prov(f"target serving idle + {t.r_power:.4f} x (source power - source serving idle "
                               f"{s_idle:g} W)"),
        "power.serving_idle_w": prov(idle_note, d.idle_source if t.idle == "catalogue" and d.serving_idle_w
                                     is not None else "derived"),
        "power.deep_idle_w": prov(idle_note, d.idle_source if t.idle == "catalogue" and d.deep_idle_w
                                  is not None else "derived"),
        "memory": prov(mem_note),
        "source": prov(f"source profile {src.name}, measured on {s.name}; its own sources: "
                       + (src.provenance["source"].citation or "-") if "source" in src.provenance
                       else f"source profile {src.name}"),
    }
    if cap is not None or src.power_cap is not None:
        provenance["power_cap"] = prov(cap_note)
    clock, clock_prov, _ = clock_for(d)
    if clock is not None:
        provenance["clock"] = clock_prov
    if src.power.host is not None:
        provenance["power.host"] = prov("carried unchanged from the source (host, not device)")
    not_covered = [
        f"every latency and power term: derived from {src.name} by datasheet transfer, not measured on {d.name}; "
        "no fit error (not fitted); check it against a measurement of the target where one exists",
        f"decode above the ridge point (batch > {d.peak_bf16_tflops / d.mem_bw_tbs:.0f}): the step is taken as "
        "memory-bound at every batch",
        "valid_range: the shapes measured on the source, not on the target",
        *nc_idle, *nc_cap,
        *[f"source: {x}" for x in src.not_covered],
    ]
    notes = [f"Derived profile: {how}. Engine efficiency (achieved bandwidth, achieved throughput, dynamic power) "
             f"is the source's, measured on {s.name}.", *([src.notes] if src.notes else [])]
    return Profile(
        name=name or derived_name(src, d), device=DeviceInfo(name=d.name, kind=d.kind, memory_gb=d.memory_gb,
                                                             tdp_w=d.tdp_w),
        model=src.model, engine=src.engine, gpus_per_replica=src.gpus_per_replica, latency=lat, power=power,
        power_cap=cap, clock=clock, memory=mem, provenance=provenance, valid_range=dict(src.valid_range), fit_error={},
        spread_cv={}, not_covered=not_covered, notes="\n".join(notes),
    )


def derived_name(src: Profile, target: DeviceSpec) -> str:
    """<target>[-xN]--<model>--<engine>--from-<source device>: the source's name with the device swapped."""
    parts = src.name.split("--")
    g = f"-x{src.gpus_per_replica}" if src.gpus_per_replica > 1 else ""
    src_dev = parts[0]
    rest = "--".join(parts[1:]) if len(parts) > 1 else src.name
    return f"{target.key}{g}--{rest}--from-{src_dev.removesuffix(g) if g else src_dev}"
