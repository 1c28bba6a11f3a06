"""`dcsim run SCENARIO`: simulate one scenario and print or write its results."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dcsim.scenario import Scenario
    from dcsim.sim.engine import RawResults


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="simulate a scenario file", description=__doc__)
    p.add_argument("scenario", help="scenario YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario field, e.g. router.input_threshold=64 or fleet.a100.count=4")
    p.add_argument("--out", help="write summary.json, requests.parquet, replicas.csv, power.csv and plots here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-plots", action="store_true", help="with --out: skip the PNG plots")
    p.add_argument("--force", action="store_true",
                   help="write into an --out folder that dcsim did not write (only its own files are replaced)")
    p.add_argument("--workers", type=int, default=None,
                   help="a scenario with domains: simulate them on this many local processes (default: one after "
                        "another in this process)")
    p.add_argument("--scheduler", metavar="tcp://HOST:8786",
                   help="a scenario with domains: simulate them on this Dask scheduler's workers (they must see the "
                        "same files)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dcsim.errors import UserError
    from dcsim.outputs import check_folder
    from dcsim.results import strict_json, summarize
    from dcsim.run_outputs import is_run_folder, write_outputs
    from dcsim.scenario import load_scenario

    if args.workers is not None and args.workers < 0:
        raise UserError("must be 0 or more", None, "--workers")
    if args.workers is not None and args.scheduler:
        raise UserError("give --workers or --scheduler, not both", None, "--scheduler")
    if args.out:  # refused before any work
        check_folder(args.out, "run", args.force, signature=is_run_folder)
    sc = load_scenario(args.scenario, args.overrides)
    raw = _simulate(sc, args)
    summary = summarize(raw)
    if args.out:
        write_outputs(raw, summary, args.out, plots=not args.no_plots, force=args.force)
    if args.json:
        sys.stdout.write(strict_json(summary, indent=2) + "\n")
    else:
        print(format_summary(summary))
        if args.out:
            print(f"\nwrote {args.out}/ (summary.json, requests.parquet, replicas.csv, power.csv, plots)")
    return 0


def _simulate(sc: Scenario, args: argparse.Namespace) -> RawResults:
    """The run in this process, or its domains on local processes or a Dask cluster (progress on stderr)."""
    from dcsim.sim.engine import simulate

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    split = bool(args.workers) or args.scheduler is not None
    if sc.domains is None:
        if split:
            print(f"note: {'--scheduler' if args.scheduler else '--workers'} splits a scenario's domains, and this "
                  "one declares none: it runs in this process", file=sys.stderr)
        return simulate(sc, args.scenario)
    if not split:
        return simulate(sc, args.scenario, progress)
    from dcsim.sim.domains import simulate_split

    if args.scheduler is None:
        return simulate_split(sc, args.scenario, args.overrides, args.workers, None, progress)
    from dcsim.sweep.executors import connect_dask

    client = connect_dask(args.scheduler)
    try:
        return simulate_split(sc, args.scenario, args.overrides, None, client, progress)
    finally:
        client.close()


def format_summary(s: dict) -> str:
    """A console table of the headline figures and one row per pool."""
    lines = [
        f"scenario {s['scenario']} (seed {s['seed']})",
        f"  requests   {s['requests_completed']} completed, {s['requests_rejected']} rejected, "
        f"{s['requests_unfinished']} unfinished; {s['tokens_in']} tokens in, {s['tokens_out']} out",
        f"  time       {s['makespan_s']:.1f} s; {s['throughput_tokens_per_s']:.1f} output tokens/s",
        f"  energy     {s['energy_j'] / 3.6e6:.4f} kWh (active {s['active_j'] / 3.6e6:.4f}, idle "
        f"{s['idle_j'] / 3.6e6:.4f}, host {s['host_j'] / 3.6e6:.4f}); facility {s['facility_j'] / 3.6e6:.4f} kWh",
        f"  efficiency {s['tokens_per_joule']:.3f} output tokens/J; {s['energy_per_request_j']:.1f} J/request; "
        f"mean power {s['mean_power_w']:.0f} W",
        f"  latency    wait mean {s['wait_s']['mean']:.3f} s p99 {s['wait_s']['p99']:.3f} s; "
        f"TTFT p50 {s['ttft_s']['p50']:.3f} s; e2e p50 {s['e2e_s']['p50']:.2f} s p99 {s['e2e_s']['p99']:.2f} s",
    ]
    if s.get("carbon_g") or s.get("cost"):
        lines.append(f"  facility   {s['carbon_g'] / 1e3:.3f} kg CO2e; cost {s['cost']:.4f} {s.get('currency', '')}")
    if s.get("slo"):
        t = ", ".join(f"{k.removesuffix('_s').upper()} <= {v:g} s" for k, v in s["slo"]["targets"].items())
        which = "interactive requests" if s.get("request_classes") else "requests"
        lines.append(f"  slo        {t}: {s['slo']['attainment']:.1%} of {which} met it "
                     f"({s['slo']['met']}); goodput {s['slo']['goodput_rps']:.3f} requests/s")
    rc = s.get("request_classes")
    if rc:  # batch requests: deadlines and deferrals
        b = rc["batch"]
        due = f"the {b['deadline_s']:g} s deadline" if b["deadline_s"] is not None else "their deadlines"
        lines.append(f"  batch      {b['requests']} of {s['requests_total']} requests; {b['deadline_misses']} missed "
                     f"{due}; {b['deferred']} deferred")
    d = s.get("dispatch")
    if d:
        lines.append(f"  dispatch   {d['name']}: {d['carbon_g'] / 1e3:.3f} kg CO2e against "
                     f"{d['carbon_g_without_deferral'] / 1e3:.3f} kg sent at arrival ({d['carbon_saved_g'] / 1e3:.3f} "
                     f"kg saved); deadline misses {d['deadline_misses']} against "
                     f"{d['deadline_misses_without_deferral']}")
    hdr = f"  {'pool':<14}{'replicas':>9}{'done':>8}{'kWh':>10}{'tok/J':>9}{'util':>7}{'e2e p50':>9}{'e2e p99':>9}"
    lines += ["", hdr]
    def sec(x: float | None) -> str:  # a pool that completed nothing has no latency: a dash, not 'nan'
        return f"{x:>9.2f}" if x is not None and x == x else f"{'-':>9}"

    for name, p in s["pools"].items():
        lines.append(
            f"  {name:<14}{p['replicas']:>9}{p['requests_completed']:>8}{p['energy_j'] / 3.6e6:>10.4f}"
            f"{p['tokens_per_joule']:>9.3f}{p['utilisation']:>7.0%}{sec(p['e2e_s']['p50'])}{sec(p['e2e_s']['p99'])}"
        )
    for name, p in s["pools"].items():
        e = p.get("engine")
        if e and "cold_prompts" in e:  # a pool that started cold: the first-time shape costs it paid
            lines.append(f"  {name}: {e['cold_prompts']} new prompt shapes and {e['cold_kv_lengths']} new KV lengths "
                         f"paid {e['cold_s']:.1f} s and {e['cold_j'] / 3.6e6:.4f} kWh (cold_shapes)")
        if e and "preemptions" in e:  # what a paged engine's scheduler did
            itl = e.get("itl_s")
            lines.append(f"  {name}: {e['preemptions']} preemptions, prefix-cache hits {e['prefix_hit_rate']:.1%} "
                         f"of prompt tokens" + (f"; ITL p50 {itl['p50'] * 1e3:.1f} ms p99 {itl['p99'] * 1e3:.1f} ms"
                                                if itl else ""))
    a = s.get("autoscaling")
    if a:  # what the autoscaler did: loads, time off, energy against always-on, cold starts' wait
        x = a["extra_ttft_s"]
        lines += ["", f"  autoscaling {a['policy']}: {a['loads']} loads ({s['load_j'] / 3.6e6:.4f} kWh), "
                  f"{a['off_replica_s']:.0f} replica-s off ({s['off_j'] / 3.6e6:.4f} kWh); "
                  f"{a['saved_vs_always_on_share']:.1%} less energy than always on with the same work",
                  f"  cold starts {a['requests_waited_for_load']} requests ({a['share_waited_for_load']:.1%}) waited "
                  f"for a load: extra TTFT mean {x['mean'] or 0:.2f} s p99 {x['p99'] or 0:.2f} s"]
    fac = s.get("facility")
    if fac:  # the power hierarchy: each level's peak against its limit and what the manager did
        lines += ["", f"  {'level':<14}{'limit W':>9}{'peak W':>9}{'above s':>9}{'caps':>6}{'capped s':>10}"
                  f"   power policy {fac['policy']}"]
        for name, lv in fac["levels"].items():
            lim = "-" if lv["limit_w"] is None else f"{lv['limit_w']:.0f}"
            lines.append(f"  {name:<14}{lim:>9}{lv['peak_w']:>9.0f}{lv['time_above_limit_s']:>9.1f}"
                         f"{lv['cap_events']:>6}{lv['time_capped_s']:>10.1f}")
    un = s.get("unattributed_active_j") or 0.0
    if abs(un) > 1e-9 * max(s["active_j"], 1e-300):
        lines.append(f"  note: {un / 3.6e6:.4f} kWh of the active energy is carried by no counted request "
                     f"(unattributed_active_j: requests unfinished at the horizon or arrived during the warm-up)")
    for w in s.get("warnings", []):
        lines.append(f"  note: {w}")
    return "\n".join(lines)
