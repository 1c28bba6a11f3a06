"""Device probe: does transformers' static-cache generate (auto-compiled decode step) work on this
machine, what does a compile cost, and what decode time does it reach against eager? Prints one line
per measurement. Usage: python3 calibrate/scripts/probe_static.py ARCH [DEVICE]"""

import sys
import time

from dcsim.calibrate.backends.hf import HFBackend

arch = sys.argv[1] if len(sys.argv) > 1 else "llama-2-7b"
dev = sys.argv[2] if len(sys.argv) > 2 else "cuda:0"
noop = lambda: None  # noqa: E731


def timed(b, n_in, n_out, batch, label):
    t = b.run(n_in, n_out, batch, 1, noop, noop)
    ms = (t.runtime_s - t.ttft_s) / (n_out - 1) * 1000
    print(f"PROBE {label}: n_in={n_in} n_out={n_out} batch={batch} runtime={t.runtime_s:.3f}s "
          f"ttft={t.ttft_s * 1000:.1f}ms decode={ms:.2f}ms/step gen={t.gen_tokens} {t.extra}", flush=True)


t0 = time.time()
st = HFBackend(dev, arch=arch, static=True)
info = st.load()
print("PROBE load", round(time.time() - t0, 1), "s", info["torch"], info["transformers"], flush=True)
st.prepare([(128, 128, 1), (128, 128, 8)])
for k in range(3):
    timed(st, 128, 64, 1, f"static call{k}")
timed(st, 128, 128, 1, "static longer-output same cache")
timed(st, 32, 16, 1, "static shorter same cache")
for k in range(2):
    timed(st, 128, 64, 8, f"static batch8 call{k}")
try:
    from torch._dynamo.utils import counters
    print("PROBE dynamo counters", {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles")})
except Exception as e:  # noqa: BLE001 - a probe prints what it cannot read
    print("PROBE counters n/a", e)
st.static = False
st.name = "hf"
for k in range(2):
    timed(st, 128, 64, 1, f"eager call{k}")
timed(st, 128, 64, 8, "eager batch8")
print("PROBE total", round(time.time() - t0, 1), "s")
