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
        "energy_median_ape_pct": worst(("energy.run_device", "power.decode")),
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
    def pct(v: float | None) -> str:
        return f"{v:.1f}%" if v is not None else "-"

    print("fit error: worst median absolute % error over the fitted points of time, device energy/power, host "
          "energy\n")
    print(f"{'name':<56} {'device':<28} {'model':<23} {'engine':<22} {'gpus':>4} {'time':>6} {'energy':>7} "
          f"{'host':>6}  provenance of terms")
    for r in rows:
        print(f"{r['name']:<56} {r['device'][:28]:<28} {r['model'][:23]:<23} {r['engine'][:22]:<22} "
              f"{r['gpus_per_replica']:>4} {pct(r['time_median_ape_pct']):>6} {pct(r['energy_median_ape_pct']):>7} "
              f"{pct(r['host_median_ape_pct']):>6}  "
              f"{'DERIVED (datasheet transfer, not fitted): ' if r['derived'] else ''}{r['provenance']}")
    return 0
