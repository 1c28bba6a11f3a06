"""Measured device settings from a user's own sweep: the rows a calibration ran under a power cap
(`--power-caps`) or a locked SM clock (`--clocks`) against the rows at the device's own setting, as the
multipliers a profile's `power_cap` / `clock` section holds with `method: points` (profile.CapPoint, ClockPoint).

For each setting and each request shape (n_in, n_out, batch) run both ways, the ratio of the medians over repeats:
prefill time (TTFT), decode time (time per output token), prefill power (the prefill's counter energy over TTFT)
and decode power (the rest of the energy over the rest of the time); a point is the median over shapes. Energy
ratios use runs long enough for the energy counter (`min_energy_s`); a setting with no such shape gets no point."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from dcsim.profiles.profile import ClockModel, PowerCap

SETTINGS = {"power_cap_w": "cap_w", "sm_clock_mhz": "mhz"}  # the runs.csv column -> the point's field
SHAPE = ["n_in", "n_out", "batch"]


def _per_shape(rows: pd.DataFrame, min_energy_s: float) -> pd.DataFrame:
    """Medians over repeats per shape of the four quantities (power NaN for runs too short for the counter)."""
    t, pf, e = rows["runtime_s"], rows["ttft_s"], rows["energy_device_j"]
    e_pf = rows["energy_prefill_device_j"]
    ok = (t >= min_energy_s) & e.notna() & e_pf.notna() & (t > pf)
    q = pd.DataFrame({
        "prefill_t": pf, "decode_t": rows["tpot_s"],
        "prefill_w": (e_pf / pf).where(ok), "decode_w": ((e - e_pf) / (t - pf)).where(ok),
    })
    return q.groupby([rows[c] for c in SHAPE]).median()


def setting_points(raw: pd.DataFrame, column: str, min_energy_s: float) -> list[dict]:
    """The measured points of `column` ("power_cap_w" or "sm_clock_mhz"): one dict per setting, in the form of
    the profile's point (the setting, prefill/decode time and power multipliers); [] where the sweep ran none, or
    none on a shape also run at the device's own setting."""
    other = [c for c in SETTINGS if c != column]
    ok = (raw["status"] == "ok") & (raw["phase"] == "run")
    for c in other:
        ok &= raw[c].isna()
    rows = raw[ok]
    if column not in rows or rows[column].isna().all():
        return []
    base = _per_shape(rows[rows[column].isna()], min_energy_s)
    out = []
    for v, at in rows[rows[column].notna()].groupby(column):
        got = _per_shape(at, min_energy_s)
        both = got.index.intersection(base.index)
        if not len(both):
            continue
        ratio = got.loc[both] / base.loc[both]
        med = ratio.median()
        if not np.isfinite(med[["prefill_t", "decode_t", "prefill_w", "decode_w"]]).all():
            continue  # no shape long enough for the energy counter at this setting
        out.append({SETTINGS[column]: float(v), "prefill_time_x": round(float(med["prefill_t"]), 4),
                    "decode_time_x": round(float(med["decode_t"]), 4),
                    "prefill_power_x": round(float(med["prefill_w"]), 4),
                    "decode_power_x": round(float(med["decode_w"]), 4), "shapes": int(len(both))})
    return out


def with_cap_points(pc: "PowerCap | None", points: list[dict], default_w: float | None) -> "PowerCap | None":
    """`pc` measured: method points from the sweep's caps (the catalogue's range kept; without one, the range
    from the measured caps up to the device's default limit `default_w`); `pc` itself where none was measured."""
    from dcsim.profiles.profile import CapPoint, PowerCap

    if not points:
        return pc
    pts = [CapPoint(**{k: v for k, v in p.items() if k != "shapes"}) for p in points]
    if pc is not None:
        return pc.model_copy(update={"method": "points", "points": pts})
    caps = [p.cap_w for p in pts]
    top = max(caps + ([default_w] if default_w else []))
    return PowerCap(min_w=min(caps), max_w=top, default_w=top, method="points", points=pts)


def with_clock_points(cm: "ClockModel | None", points: list[dict]) -> "ClockModel | None":
    """`cm` measured: method points from the sweep's locked clocks (its range and default clock kept); None where
    the device's clock range is not known (the default clock, the points' reference, would be a guess)."""
    from dcsim.profiles.profile import ClockPoint

    if not points or cm is None:
        return cm
    pts = [ClockPoint(**{k: v for k, v in p.items() if k != "shapes"}) for p in points]
    return cm.model_copy(update={"method": "points", "points": pts})


def points_note(points: list[dict], key: str, unit: str, path: str) -> str:
    """Provenance words for measured points: which settings, on how many shapes, from where."""
    got = ", ".join(f"{p[key]:g} {unit} ({p['shapes']} shapes)" for p in points)
    return (f"measured points from the sweep's own rows at {got}, against the same shapes at the device's own "
            f"setting ({path}; dcsim.profiles.fit_settings): medians over shapes of the TTFT, time-per-token, "
            "prefill-power and decode-power ratios")
