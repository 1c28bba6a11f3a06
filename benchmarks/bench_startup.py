"""Start-up: whole-process wall time of `dcsim run` on a small scenario, against the interpreter's own floors.

The scenario is scenarios/quickstart.yaml drawing --requests requests (default 10) from its trace, written to a
temporary folder. Every case is a fresh process; the cases are interleaved, round after round, so a change in the
machine's load falls on all of them alike. Usage:
    python benchmarks/bench_startup.py [--repeats 15] [--requests 10] [--root DIR] [--imports]
--root DIR times the dcsim package found in DIR (another checkout, to compare commits in one run); --imports
also prints where `dcsim run`'s import time goes (python -X importtime), by top-level package. Byte code is
cached (in the temporary folder), as in an installed copy: the first, untimed round writes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def small_scenario(d: Path, requests: int) -> Path:
    """The quickstart scenario drawing `requests` requests from its trace, written into d."""
    sc = yaml.safe_load((REPO / "scenarios" / "quickstart.yaml").read_text(encoding="utf-8"))
    sc["trace"] = {**sc["trace"], "path": str(REPO / sc["trace"]["path"]), "sample": requests}
    path = d / "small.yaml"
    path.write_text(yaml.safe_dump(sc, sort_keys=False), encoding="utf-8")
    return path


def cases(scenario: Path, out: Path) -> dict[str, list[str]]:
    """Name -> argument list after the interpreter, for one checkout."""
    run = ["-m", "dcsim.cli", "run", str(scenario)]
    return {
        "dcsim run": run,
        "dcsim run --json": [*run, "--json"],
        "dcsim run --out --no-plots": [*run, "--out", str(out), "--no-plots", "--force"],
        "dcsim run --out (plots)": [*run, "--out", str(out), "--force"],
    }


FLOORS = {"python -c pass": ["-c", "pass"], "python -c 'import simpy'": ["-c", "import simpy"]}


def timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def import_breakdown(args: list[str], env: dict[str, str], cwd: Path, runs: int = 5) -> list[tuple[str, float]]:
    """Seconds of import time (self times, median of `runs` runs of python -X importtime) by what pulled each
    module in: the outermost third-party package on its import chain (numpy, pydantic, ...), else the dcsim
    module nearest it (dcsim.scenario, ...), else the standard library. What `python -c pass` imports is left
    out (the floor)."""
    def parse(text: str) -> list[tuple[int, int, str]]:
        rows = []
        for line in text.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, _, name = line.removeprefix("import time:").split("|")
            rows.append((int(self_us), (len(name) - len(name.lstrip()) - 1) // 2, name.strip()))
        return rows

    def importtime(a: list[str]) -> str:
        return subprocess.run([sys.executable, "-X", "importtime", *a], env=env, cwd=cwd, check=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr

    floor = {name for _, _, name in parse(importtime(["-c", "pass"]))}
    per_run = [one_breakdown(parse(importtime(args)), floor) for _ in range(runs)]
    groups = {g for b in per_run for g in b}
    med = {g: statistics.median(b.get(g, 0.0) for b in per_run) for g in groups}
    return sorted(med.items(), key=lambda kv: -kv[1])


def one_breakdown(rows: list[tuple[int, int, str]], floor: set[str]) -> dict[str, float]:
    by: dict[str, float] = {}
    for i, (self_us, depth, name) in enumerate(rows):
        if name in floor:
            continue
        chain = [name]  # the module, then its importers out to the one the command imported itself
        for later in rows[i + 1:]:  # importtime lists a module before the one that imported it
            if later[1] < depth:
                chain.append(later[2])
                depth = later[1]
        tops = [m.split(".")[0] for m in chain]
        third = [m for m in tops if m != "dcsim" and m not in sys.stdlib_module_names and not m.startswith("_")]
        ours = [m for m in chain if m.split(".")[0] == "dcsim"]
        group = (third[-1] if third else ".".join(ours[0].split(".")[:2]) if ours else "standard library")
        by[group] = by.get(group, 0.0) + self_us / 1e6
    return by


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--root", type=Path, default=REPO, help="the checkout whose dcsim package is timed")
    ap.add_argument("--compare", type=Path, action="append", default=[], metavar="DIR",
                    help="another checkout to time in the same rounds (labelled by its folder name)")
    ap.add_argument("--imports", action="store_true", help="also print the import-time breakdown of dcsim run")
    a = ap.parse_args(argv)
    roots = [a.root.resolve(), *(c.resolve() for c in a.compare)]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPYCACHEPREFIX": str(d / "pyc")}
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        scenario = small_scenario(d, a.requests)
        todo: dict[str, tuple[list[str], dict[str, str], Path]] = {k: (v, base, REPO) for k, v in FLOORS.items()}
        for i, root in enumerate(roots):
            env = {**base, "PYTHONPATH": str(root)}
            for name, args in cases(scenario, d / f"out{i}").items():
                todo[name if len(roots) == 1 else f"{name} [{root.name}]"] = (args, env, root)
        for args, env, cwd in todo.values():  # warm the file cache and write the byte code
            timed(args, env, cwd)
        times: dict[str, list[float]] = {k: [] for k in todo}
        load = [os.getloadavg()[0]]
        for _ in range(a.repeats):
            for name, (args, env, cwd) in todo.items():
                times[name].append(timed(args, env, cwd))
        load.append(os.getloadavg()[0])
        floor = statistics.median(times["python -c pass"])
        print(f"dcsim at {', '.join(map(str, roots))}; {a.requests} requests; median of {a.repeats}, the cases "
              f"interleaved; load average {load[0]:.2f} before, {load[1]:.2f} after")
        print("| case | median s | min s | max s | x python -c pass |\n|---|---:|---:|---:|---:|")
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"| {name} | {m:.3f} | {min(ts):.3f} | {max(ts):.3f} | {m / floor:.2f} |")
        if a.imports:
            for root in roots:
                args, env, cwd = todo["dcsim run" if len(roots) == 1 else f"dcsim run [{root.name}]"]
                parts = import_breakdown(args, env, cwd)
                print(f"\nimport time of dcsim run ({root.name}) beyond python -c pass's, by what pulled it in "
                      f"(medians of 5 runs): {sum(s for _, s in parts):.3f} s")
                for name, s in parts:
                    if s >= 0.001:
                        print(f"  {name:<24} {s:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
