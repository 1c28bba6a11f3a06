"""FitMeta (who was measured, read from an importer's dict), the profile's name, and what follows from it alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcsim import models
from dcsim.errors import UserError
from dcsim.profiles import devices as catalogue
from dcsim.profiles.clock_fit import clock_for
from dcsim.profiles.powercap_fit import power_cap_for
from dcsim.profiles.profile import (
    ClockModel,
    ColdStart,
    DeviceInfo,
    EngineInfo,
    Memory,
    ModelInfo,
    PowerCap,
    Provenance,
)


@dataclass
class FitMeta:
    """Who the measurements are about and where they came from (everything a table cannot say)."""

    device: DeviceInfo
    model: ModelInfo
    engine: EngineInfo
    gpus_per_replica: int = 1
    name: str | None = None
    source: Provenance = field(default_factory=lambda: Provenance(source="measured"))
    device_spec: catalogue.DeviceSpec | None = None
    model_spec: models.ModelSpec | None = None
    power_cap: PowerCap | None = None
    power_cap_provenance: Provenance | None = None
    clock: ClockModel | None = None
    clock_provenance: Provenance | None = None
    cold_start: ColdStart | None = None  # the model's load as the calibration measured it
    cold_start_provenance: Provenance | None = None
    serving_idle: tuple[float, Provenance] | None = None
    deep_idle: tuple[float, Provenance] | None = None
    host_idle_w: tuple[float, str] = (0.0, "host idle not measured by the source; 0 W assumed")
    kv_capacity_tokens: int | None = None
    activation_reserve_frac: float = 0.1
    # For engines without a KV cache (every step is a full forward pass): the prefill of T tokens is then the
    # same computation as a decode step over context T, so prefill_s/prefill_w are tied to the decode curves.
    tie_prefill_to_decode: bool = False
    # step sweeps: a decode term per KV token of each sequence (context / sequences) beside the per-token one
    decode_per_seq: bool = False
    notes: list[str] = field(default_factory=list)
    not_covered: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    s = "".join(c.lower() if c.isalnum() or c == "." else "-" for c in text)
    while "--" in s:
        s = s.replace("--", "-")
    return s.strip("-")


def profile_name(device_key: str, model_key: str, engine: str, precision: str, gpus: int = 1) -> str:
    """<device>--<model>--<engine>-<precision>, lower-case slugs; a replica of k GPUs is '<device>-x<k>'."""
    dev = slug(device_key) + (f"-x{gpus}" if gpus > 1 else "")
    return f"{dev}--{slug(model_key)}--{slug(engine)}-{slug(precision)}"


def meta_from_dict(d: dict[str, Any], file: str | None = None) -> FitMeta:
    """Build FitMeta from an importer's metadata dict.

    Keys: device (catalogue key or mapping of DeviceInfo fields), device_key (the catalogue entry of a device given
    as a mapping: its power-cap and clock models, peak figures and idle fallbacks), model (key or ModelInfo
    mapping), engine (mapping of EngineInfo), gpus_per_replica, name, citation, path, command, licence, notes,
    not_covered,
    serving_idle_w / deep_idle_w (value, or mapping with value + Provenance fields), host_idle_w, host_note,
    kv_capacity_tokens, activation_reserve_frac, source_kind (measured|published).
    """
    try:
        gpus = int(d.get("gpus_per_replica", 1))
        dspec = mspec = None
        dev = d["device"]
        if isinstance(dev, str):
            dspec = catalogue.device(dev)
            device = DeviceInfo(name=dspec.name, kind=dspec.kind, memory_gb=dspec.memory_gb, tdp_w=dspec.tdp_w)
        else:
            device = DeviceInfo(**dev)
            key = d.get("device_key") or dev.get("name")  # a catalogued device measured as it is (its memory)
            if key in catalogue.DEVICES:
                dspec = catalogue.DEVICES[key]
        mod = d["model"]
        if isinstance(mod, str):
            mspec = models.model(mod)
            bpv = 2 if d.get("engine", {}).get("precision", "bf16") in ("bf16", "fp16") else 1
            model = ModelInfo(name=mspec.name, params_b=mspec.params_b, layers=mspec.layers,
                              hidden_size=mspec.hidden_size, kv_bytes_per_token=mspec.kv_bytes_per_token(bpv),
                              max_context=mspec.max_context)
        else:
            model = ModelInfo(**mod)
        engine = EngineInfo(**d["engine"])
    except KeyError as e:
        raise UserError(f"fit metadata lacks {e.args[0]!r}", file, str(e.args[0])) from None
    except (TypeError, ValueError) as e:
        raise UserError(f"bad fit metadata: {e}", file) from None
    src = Provenance(source=d.get("source_kind", "published"), citation=d.get("citation"), path=d.get("path"),
                     command=d.get("command"), note=d.get("licence"))
    meta = FitMeta(device=device, model=model, engine=engine, gpus_per_replica=gpus, name=d.get("name"),
                   source=src, device_spec=dspec, model_spec=mspec, notes=list(d.get("notes", [])),
                   not_covered=list(d.get("not_covered", [])), kv_capacity_tokens=d.get("kv_capacity_tokens"),
                   activation_reserve_frac=float(d.get("activation_reserve_frac", 0.1)),
                   tie_prefill_to_decode=bool(d.get("tie_prefill_to_decode", False)),
                   decode_per_seq=bool(d.get("decode_per_seq", False)))
    for key in ("serving_idle_w", "deep_idle_w"):
        v = d.get(key)
        if v is None:
            continue
        if isinstance(v, dict):
            val = float(v["value"])
            prov = Provenance(**{k: v[k] for k in ("source", "citation", "path", "command", "note") if k in v})
        else:
            val, prov = float(v), Provenance(source="published", citation=src.citation)
        setattr(meta, key.replace("_w", ""), (val, prov))
    if "host_idle_w" in d:
        meta.host_idle_w = (float(d["host_idle_w"]), d.get("host_note", "as given by the importer"))
    if dspec is not None:
        meta.power_cap, meta.power_cap_provenance, why = power_cap_for(dspec)
        if why:
            meta.not_covered.append(f"power caps: {why}")
        meta.clock, meta.clock_provenance, _ = clock_for(dspec)
    _measured_settings(meta, d, device.tdp_w)
    load = d.get("cold_start")
    if load:
        meta.cold_start = ColdStart(load_s=float(load["load_s"]), load_j=float(load["load_j"]))
        how = ("random weights built in the real architecture on the device, not read from storage: a lower bound "
               "on a load of trained weights" if load.get("random_weights") else "the model's weights as loaded")
        meta.cold_start_provenance = Provenance(
            source="measured", path=d.get("path"),
            note=f"the backend's model load metered as its own window (phase load), median of {load['n']}: {how}")
    if meta.name is None:
        meta.name = profile_name(dspec.key if dspec else device.name, mspec.key if mspec else model.name,
                                 engine.name, engine.precision, gpus)
    return meta


def _measured_settings(meta: FitMeta, d: dict[str, Any], default_w: float | None) -> None:
    """Where the sweep ran caps or locked clocks (d's cap_points, clock_points), the profile's power_cap and
    clock sections become the measured points, their provenance saying so."""
    from dcsim.profiles.fit_settings import points_note, with_cap_points, with_clock_points

    caps, clocks, path = d.get("cap_points") or [], d.get("clock_points") or [], d.get("path") or "the run folder"
    if caps:
        meta.power_cap = with_cap_points(meta.power_cap, caps, default_w)
        meta.power_cap_provenance = Provenance(source="measured", path=d.get("path"),
                                               note=points_note(caps, "cap_w", "W", path))
    if clocks:
        cm = with_clock_points(meta.clock, clocks)
        if cm is None:
            meta.not_covered.append("locked clocks were measured, but the device's clock range (the points' "
                                    "default clock) is not known, so no clock section")
        else:
            meta.clock = cm
            meta.clock_provenance = Provenance(source="measured", path=d.get("path"),
                                               note=points_note(clocks, "mhz", "MHz", path))


def memory_of(meta: FitMeta) -> tuple[Memory, Provenance]:
    """The replica's memory budget (device memory, weights, an assumed reserve) from the metadata alone."""
    g = meta.gpus_per_replica
    dev_gb = meta.device.memory_gb * g
    bpv = 2 if meta.engine.precision in ("bf16", "fp16") else 1
    weights = meta.model.params_b * bpv
    reserve = round(meta.activation_reserve_frac * dev_gb, 2)
    mem = Memory(device_gb=dev_gb, weights_gb=round(weights, 2), activation_reserve_gb=reserve,
                 kv_capacity_tokens=meta.kv_capacity_tokens)
    spec = meta.device_spec
    whence = "catalogue" if spec is None or meta.device.memory_gb == spec.memory_gb else "as the source measured it"
    note = (f"device memory {meta.device.memory_gb:g} GB x {g} ({whence}); weights {meta.model.params_b:g}e9 "
            f"parameters x {bpv} bytes; reserve {meta.activation_reserve_frac:g} of device memory for "
            "activations and the engine (assumed)")
    return mem, Provenance(source="derived", note=note)


def from_source(src: Provenance, note: str) -> Provenance:
    """The source's provenance with a note saying how a term came from it."""
    return Provenance(source=src.source, citation=src.citation, path=src.path, command=src.command, note=note)
