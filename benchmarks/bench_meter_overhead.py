"""What one meter read costs on this GPU: NVML's energy counter and power readings, and a Zeus measurement window
(begin + end, with and without the device synchronisation), timed back to back on an idle device.

Why: a replay that opens and closes a counter window per batch spends that time between batches, and a counter
read between a run's first token and its decode loop lengthens the run. Run it on the GPU being calibrated:

    python benchmarks/bench_meter_overhead.py [--index 0] [--repeats 200] [--csv OUT.csv]

Prints the median and the 10th/90th percentiles in milliseconds per call; --csv keeps every timing.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from typing import Callable


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # first call pays one-off set-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=int, default=0, help="GPU index (NVML order)")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--csv", help="write every timing here (what, call, ms)")
    a = ap.parse_args(argv)
    try:
        import pynvml
    except ImportError:
        print("needs nvidia-ml-py (pip install nvidia-ml-py) and an NVIDIA GPU", file=sys.stderr)
        return 2
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        print(f"NVML is not readable here ({e}): run this on the GPU's machine", file=sys.stderr)
        return 2
    h = pynvml.nvmlDeviceGetHandleByIndex(a.index)
    cases: dict[str, Callable[[], object]] = {
        "nvml total energy counter": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
        "nvml power (averaged)": lambda: pynvml.nvmlDeviceGetPowerUsage(h),
    }
    instant = getattr(pynvml, "NVML_FI_DEV_POWER_INSTANT", None)
    if instant is not None:
        cases["nvml power (instant field)"] = lambda: pynvml.nvmlDeviceGetFieldValues(h, [instant])
        cases["nvml temperature"] = lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.init()
            cases["torch.cuda.synchronize (idle)"] = torch.cuda.synchronize
    except ImportError:
        torch = None
    try:
        from zeus.monitor import ZeusMonitor

        mon = ZeusMonitor(gpu_indices=[a.index], sync_execution_with="torch" if torch else "cuda")
        for sync in (True, False):
            def window(sync: bool = sync) -> None:
                mon.begin_window("bench", sync_execution=sync)
                mon.end_window("bench", sync_execution=sync)
            cases[f"zeus window begin+end (sync={sync})"] = window
    except ImportError:
        print("zeus not installed: its window is not timed", file=sys.stderr)
    rows = []
    print(f"{'call':<40} {'median ms':>10} {'p10':>8} {'p90':>8}  (n={a.repeats})")
    for name, fn in cases.items():
        ms = _time(fn, a.repeats)
        q = statistics.quantiles(ms, n=10)
        print(f"{name:<40} {statistics.median(ms):>10.3f} {q[0]:>8.3f} {q[-1]:>8.3f}")
        rows += [(name, i, f"{v:.4f}") for i, v in enumerate(ms)]
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("what", "call", "ms"))
            w.writerows(rows)
    print(f"device: {pynvml.nvmlDeviceGetName(h)}, driver {pynvml.nvmlSystemGetDriverVersion()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
