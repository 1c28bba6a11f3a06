"""The `paged` engine's two forms of a step with prefill chunks, side by side on one CUDA device: `split` (the padded
decode graph, then an eager prefill forward) and `fused` (one forward over all the step's tokens, as piecewise CUDA
graphs). Each shape runs `--steps` steps in both loops (queued back to back, and served: one device sync a step)
after one untimed step (first captures); prints ms a step and writes them as JSON. Times only (no meter).

    python calibrate/scripts/paged_fused_probe.py llama-2-7b --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

# (decodes, context, chunk tokens, cached tokens before the chunk, chunks)
SHAPES = [(16, 1024, 0, 0, 1), (4, 1024, 64, 0, 1), (32, 1024, 64, 0, 1), (0, 0, 16, 0, 1), (0, 0, 256, 0, 1),
          (0, 0, 2048, 0, 1), (32, 1024, 512, 0, 1), (64, 1024, 512, 512, 1), (16, 1024, 64, 1344, 1),
          (32, 1024, 256, 0, 6), (0, 0, 1024, 1024, 1), (64, 512, 1984, 0, 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("arch")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--json")
    a = ap.parse_args()
    from dcsim.calibrate.backends.paged import PagedBackend

    t0 = time.perf_counter()
    be = PagedBackend(a.device, arch=a.arch, dtype="bf16")
    be.load()
    be.prepare_steps([(b, c, p + j, h) for b, c, p, h, k in SHAPES for j in range(k)])
    print(f"{a.arch}: loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for b, c, p, h, k in SHAPES:
        row = {"decodes": b, "context": c, "prefill_tokens": p, "prefix": h, "chunks": k}
        for mixed in ("split", "fused"):
            for served in (False, True):
                be.mixed = mixed
                if be.eng is not None:
                    be.eng.mixed = mixed
                tc = time.perf_counter()
                be.run_step(b, c, p, h, 1, 3, lambda: None, chunks=k, served=served)  # captures, first-time costs
                cap = time.perf_counter() - tc
                tm = be.run_step(b, c, p, h, a.steps, 3, lambda: None, chunks=k, served=served)
                key = f"{mixed}_{'served' if served else 'queued'}_ms"
                row[key] = round(tm.runtime_s / a.steps * 1e3, 3)
                row[f"{mixed}_first_s"] = max(row.get(f"{mixed}_first_s", 0.0), round(cap, 3))
        row["fused_x"] = round(row["fused_served_ms"] / row["split_served_ms"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    e = be.eng
    facts = {"graph_failures": be.graph_failures, "piece_sizes_captured": sorted(e.pieces), "rebuilt": be.rebuilt}
    print(json.dumps(facts), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"arch": a.arch, "steps": a.steps, "rows": rows, **facts}, f, indent=1)
    be.close()


if __name__ == "__main__":
    main()
