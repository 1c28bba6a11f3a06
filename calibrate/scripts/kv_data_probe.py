"""The `paged` engine's served steps read over a KV cache of zeros and over one filled with a real forward's K/V
(kv_data "zeros" and "model"), side by side on one CUDA device and metered: each shape runs about `--seconds` of
served steps in each form, in alternating rounds (zeros, model, zeros, model, ...) so that a drift in the device's
state falls on both. Only the cache's contents differ between the forms: the same steps, the same block tables.
Writes one CSV row per (round, form, shape).

    python calibrate/scripts/kv_data_probe.py llama-2-7b --csv out.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import time

# (decodes, context, chunk tokens, cached tokens before the chunk)
SHAPES = [(16, 1024, 0, 0), (64, 1024, 0, 0), (32, 2048, 0, 0), (4, 1024, 64, 0), (32, 1024, 64, 0),
          (0, 0, 256, 0), (0, 0, 1024, 1024), (16, 1024, 64, 1344), (128, 512, 0, 0)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("arch")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--latency-only", action="store_true", help="no meter (a dry run off a GPU)")
    a = ap.parse_args()
    from dcsim.calibrate.backends.paged import FILL_TOKENS, PagedBackend
    from dcsim.calibrate.meters.registry import select_meter

    t0 = time.perf_counter()
    be = PagedBackend(a.device, arch=a.arch, dtype="bf16", kv_data="zeros")
    be.load()
    be.prepare_steps(SHAPES)
    meter = select_meter(a.device, a.latency_only)
    e = be.engine()
    fill_ids = be.prompt(FILL_TOKENS, 1, 99)[0]
    print(f"{a.arch}: loaded in {time.perf_counter() - t0:.1f} s; {e.alloc.num_blocks} blocks", flush=True)
    reps = {}
    for sh in SHAPES:  # first-time costs (captures), and each shape's steps for about --seconds
        tm = be.run_step(*sh, 8, 3, lambda: None, served=True)
        reps[sh] = max(16, math.ceil(a.seconds / (tm.runtime_s / 8)))
    fields = ["round", "kv_data", "decodes", "context", "prefill_tokens", "prefix", "steps", "runtime_s",
              "ms_per_step", "energy_j", "avg_power_w", "t_start"]
    with open(a.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in range(a.rounds):
            for form in ("zeros", "model"):
                eng = be.engine()
                if form == "zeros":
                    for c in (*eng.k_cache, *eng.v_cache):
                        c.zero_()
                else:
                    eng.fill_kv(fill_ids)
                be.sync()
                for sh in SHAPES:
                    key = f"{r}-{form}-{sh}"
                    ts = time.time()
                    tm = be.run_step(*sh, reps[sh], 3, lambda key=key: meter.begin(key), served=True)
                    j = meter.end(key).device_total
                    row = {"round": r, "kv_data": form, "decodes": sh[0], "context": sh[1], "prefill_tokens": sh[2],
                           "prefix": sh[3], "steps": reps[sh], "runtime_s": round(tm.runtime_s, 6),
                           "ms_per_step": round(tm.runtime_s / reps[sh] * 1e3, 4), "energy_j": round(j, 3),
                           "avg_power_w": round(j / tm.runtime_s, 2), "t_start": round(ts, 3)}
                    w.writerow(row)
                    f.flush()
                    print(row, flush=True)
    if be.eng is not None and be.rebuilt:
        print(f"engine rebuilt {be.rebuilt} times", flush=True)
    be.close()


if __name__ == "__main__":
    main()
