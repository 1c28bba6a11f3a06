"""`dcsim profiles [DIR]`: list device profiles (default: the shipped ones in profiles/) with their device,
model, engine, replica size, where their terms came from and how well they fit."""

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
    worst = max(p.fit_error.values(), key=lambda e: e.median_ape_pct, default=None)
    return {
        "file": path.name, "name": p.name, "device": p.device.name, "model": p.model.name,
        "engine": f"{p.engine.name} {p.engine.precision}", "gpus_per_replica": p.gpus_per_replica,
        "provenance": ", ".join(f"{n} {k}" for k, n in sorted(sources.items())),
        "fit_error": {k: [e.median_ape_pct, e.max_ape_pct] for k, e in p.fit_error.items()},
        "worst_median_ape_pct": worst.median_ape_pct if worst else None,
        "serving_idle_w": p.power.serving_idle_w, "not_covered": len(p.not_covered),
    }


def run(args: argparse.Namespace) -> int:
    from dcsim.scenario import PROJECT_ROOT

    d = Path(args.dir) if args.dir else PROJECT_ROOT / "profiles"
    if not d.is_dir():
        raise UserError("profile folder not found", d)
    files = sorted(d.glob("*.yaml"))
    if not files:
        raise UserError("no profile YAMLs here", d)
    rows = [summarize(f) for f in files]
    if args.json:
        for r in rows:
            json.dump(r, sys.stdout)
            sys.stdout.write("\n")
        return 0
    hdr = f"{'name':<58} {'device':<34} {'model':<24} {'engine':<26} {'gpus':>4}  {'fit (worst median APE)':<22} provenance"
    print(hdr)
    for r in rows:
        fit = f"{r['worst_median_ape_pct']:.1f}%" if r["worst_median_ape_pct"] is not None else "-"
        print(f"{r['name']:<58} {r['device'][:34]:<34} {r['model'][:24]:<24} {r['engine'][:26]:<26} "
              f"{r['gpus_per_replica']:>4}  {fit:<22} {r['provenance']}")
    return 0
