"""`dcsim profiles [DIR]`: list device profiles (default: the shipped ones in profiles/) with their device,
model, engine, replica size, where their terms came from and how well they fit. Profiles in a `derived/`
subfolder (datasheet transfers, `dcsim fit --derive`) are listed after them, marked derived: they were not
fitted, so they have no fit error."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from dcsim.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profiles", help="list device profiles", description=__doc__)
    p.add_argument("dir", nargs="?", help="folder of profile YAMLs (default: the shipped profiles/)")
    p.add_argument("--json", action="store_true", help="print one JSON object per profile")
    p.set_defaults(func=run)


def summarize(path: Path) -> dict:
    """One line's worth of facts about a profile file."""
    from dcsim.profiles.profile import load_profile

    p = load_profile(path)
    sources = Counter(v.source for k, v in p.provenance.items() if k != "source")
    def worst(keys: tuple[str, ...]) -> float | None:
        vals = [e.median_ape_pct for k, e in p.fit_error.items() if k.startswith(keys)]
        return max(vals) if vals else None

    derived = bool(p.provenance.get("source")) and p.provenance["source"].source == "derived"
    return {
        "file": path.name, "derived": derived, "name": p.name, "device": p.device.name, "model": p.model.name,
        "engine": f"{p.engine.name} {p.engine.precision}", "gpus_per_replica": p.gpus_per_replica,
        "provenance": ", ".join(f"{n} {k}" for k, n in sorted(sources.items())),
        "fit_error": {k: [e.median_ape_pct, e.max_ape_pct] for k, e in p.fit_error.items()},
        "time_median_ape_pct": worst(("latency.",)),
        "energy_median_ape_pct": worst(("energy.run_device", "energy.step_device", "energy.mixed_step_device",
                                        "power.decode")),
        "host_median_ape_pct": worst(("energy.run_host",)),
        "serving_idle_w": p.power.serving_idle_w, "not_covered": len(p.not_covered),
    }


def run(args: argparse.Namespace) -> int:
    from dcsim.scenario import PROJECT_ROOT

    d = Path(args.dir) if args.dir else PROJECT_ROOT / "profiles"
    if not d.is_dir():
        raise UserError("profile folder not found", d)
    files = sorted(d.glob("*.yaml")) + sorted((d / "derived").glob("*.yaml"))
    if not files:
        raise UserError("no profile YAMLs here", d)
    rows = [summarize(f) for f in files]
    if args.json:
        for r in rows:
            json.dump(r, sys.stdout)
            sys.stdout.write("\n")
        return 0
    for line in table_lines(rows):
        print(line)
    return 0


WIDTH = 100  # the listing fits a terminal this wide


def table_lines(rows: list[dict]) -> list[str]:
    """Two lines per profile, each at most WIDTH columns: the name and its fit errors, then (indented) device,
    model, engine, GPUs and where its terms came from. A name too long to share its line has the errors below."""
    def pct(v: float | None) -> str:
        return f"{v:.1f}%" if v is not None else "-"

    out = ["fit error: worst median absolute % error over the fitted points of time, device energy/power, host",
           "energy; below each name: device, model, engine, GPUs per replica, where its terms came from", ""]
    for r in rows:
        errs = (f"time {pct(r['time_median_ape_pct']):>6}  energy {pct(r['energy_median_ape_pct']):>6}  "
                f"host {pct(r['host_median_ape_pct']):>6}")
        room = WIDTH - len(errs) - 1
        if len(r["name"]) <= room:
            out.append(f"{r['name']:<{room}} {errs}")
        else:
            out += [r["name"][:WIDTH], " " * (WIDTH - len(errs)) + errs]
        gpus = f"{r['gpus_per_replica']} GPU" + ("s" if r["gpus_per_replica"] > 1 else "")
        what = ("DERIVED (datasheet transfer, not fitted): " if r["derived"] else "") + r["provenance"]
        detail = f"    {r['device']} | {r['model']} | {r['engine']} | {gpus} | {what}"
        while len(detail) > WIDTH:  # wrap at a separator, continuation indented
            cut = detail.rfind(" ", 0, WIDTH)
            out.append(detail[:cut])
            detail = "      " + detail[cut + 1:]
        out.append(detail)
    return out
