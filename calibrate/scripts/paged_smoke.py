"""Smoke test of the `paged` engine on a CUDA device, before a calibration: builds a random-weight architecture,
checks that decode graphs capture (Triton attention inside), and prints decode step times at a few batch sizes
and contexts, a prefill, and a few mixed steps. Nothing is written; a minute or two for a 7B/8B model.

    python calibrate/scripts/paged_smoke.py llama-2-7b [--device cuda:0]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("arch")
    ap.add_argument("--device", default="cuda:0")
    a = ap.parse_args()
    from dcsim.calibrate.backends.paged import PagedBackend

    t0 = time.perf_counter()
    be = PagedBackend(a.device, arch=a.arch, dtype="bf16")
    info = be.load()
    print(f"{a.arch}: loaded in {time.perf_counter() - t0:.1f} s, {info['params_b']} B params", flush=True)
    be.prepare([(2048, 64, 1), (256, 128, 64), (512, 512, 32), (256, 32, 256)])
    out = {}
    for n_in, n_out, b in ((32, 256, 1), (2048, 64, 1), (256, 128, 64), (256, 32, 256)):
        be.run(n_in, min(n_out, 8), b, 1, lambda: None, lambda: None)  # capture and warm
        tm = be.run(n_in, n_out, b, 2, lambda: None, lambda: None)
        step_ms = (tm.runtime_s - tm.ttft_s) / max(n_out - 1, 1) * 1e3
        out[f"run i{n_in} o{n_out} b{b}"] = {"ttft_ms": round(tm.ttft_s * 1e3, 2), "step_ms": round(step_ms, 3),
                                             **tm.extra}
        print(f"run i{n_in} o{n_out} b{b}: ttft {tm.ttft_s * 1e3:.1f} ms, decode {step_ms:.3f} ms/step "
              f"({tm.extra})", flush=True)
    for b, ctx, p, h in ((1, 512, 0, 0), (32, 512, 0, 0), (32, 2048, 0, 0), (0, 0, 512, 0), (0, 0, 512, 1536),
                         (32, 512, 256, 0), (64, 1024, 512, 512), (3, 100, 0, 0)):
        tm = be.run_step(b, ctx, p, h, 20, 3, lambda: None)
        print(f"step B={b} L={ctx} P={p} H={h}: {tm.runtime_s / 20 * 1e3:.3f} ms/step (graph batch "
              f"{tm.extra['graph_batch']}, graph {tm.extra['graph']})", flush=True)
    print(json.dumps({"graph_failures": be.graph_failures, "rebuilt": be.rebuilt}))
    be.close()


if __name__ == "__main__":
    main()
