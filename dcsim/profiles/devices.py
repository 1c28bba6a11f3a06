"""Datasheet facts about devices, each number with where it came from.

Fitting a profile needs facts a measurement sweep does not give: memory size, power-limit range, peak
throughput for the roofline prefill estimate; deriving a profile for an unmeasured device (derive.py) also needs
its memory bandwidth and power limit. They live here, one entry per device, with a citation for every number;
`None` means no public figure was found. Models (their shapes for the KV-cache size) are in dcsim/models.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dcsim.errors import UserError

# Citations used below, by short key.
CITES = {
    "nv-a100": "NVIDIA A100 Tensor Core GPU datasheet (2021): 40 GB HBM2; max TDP 400 W (SXM4), 250 W (PCIe "
               "40 GB); 312 TFLOPS dense BF16",
    "nv-h100": "NVIDIA H100 Tensor Core GPU datasheet (2023): H100 SXM 80 GB, max TDP up to 700 W, 989 TFLOPS "
               "dense BF16",
    "nv-v100": "NVIDIA Tesla V100 GPU datasheet (2020): 16/32 GB HBM2; 300 W (SXM2), 250 W (PCIe); 125 TFLOPS "
               "tensor (FP16)",
    "nv-b200": "NVIDIA HGX B200 / DGX B200 specifications (2024): 180 GB HBM3e per GPU (1,440 GB per 8 GPUs), up to "
               "1,000 W per GPU, 2.25 PFLOPS dense BF16 (HGX B200 at 1,000 W, as tabulated by G. Lockwood's "
               "B200 notes)",
    "nv-h200": "NVIDIA H200 Tensor Core GPU datasheet (2024): H200 SXM 141 GB HBM3e, 4.8 TB/s memory bandwidth, "
               "989 TFLOPS dense BF16 (1,979 with sparsity), max TDP up to 700 W",
    "nv-h100-bw": "NVIDIA H100 Tensor Core GPU datasheet (2023): H100 SXM memory bandwidth 3.35 TB/s (HBM3)",
    "nv-a100-bw": "NVIDIA A100 Tensor Core GPU datasheet (2021): A100 40 GB PCIe and SXM4 memory bandwidth "
                  "1,555 GB/s (HBM2)",
    "nv-v100-bw": "NVIDIA Tesla V100 GPU datasheet (2020): memory bandwidth 900 GB/s (HBM2, PCIe and SXM2)",
    "nv-b200-bw": "NVIDIA HGX B200 specifications (2024): 64 TB/s HBM3e bandwidth for 8 GPUs, 8 TB/s per GPU",
    "apple-m1pro-bw": "Apple MacBook Pro (14-inch, 2021) technical specifications: M1 Pro, 200 GB/s memory bandwidth",
    "smi-a100-sxm4": "nvidia-smi -q of an A100 SXM4 40 GB (HBM2 1215 MHz, 400 W) quoted in NVIDIA/nvidia-docker "
                     "issue #1648: Min Power Limit 100 W, Max Power Limit 400 W",
    "measured-h100": "read with nvidia-smi on this project's NVIDIA H100 80GB HBM3 on 2026-11-23 "
                 "(power.min_limit 200 W, power.max_limit 700 W, default 700 W, 81559 MiB); see "
                 "profiles/measured/h100-idle-2026-11-23/",
    "measured-h100-idle": "measured on this project's NVIDIA H100 80GB HBM3 on 2026-11-23 with nvidia-smi at 4 Hz: "
                      "70.2 W with no process; 120.1 W while a process held a CUDA context and 58 GB after a burst "
                      "of matrix products (SM clock stays at 1980 MHz); see profiles/measured/h100-idle-2026-11-23/",
    "measured-h200": "read with NVML by dcsim calibrate on this project's NVIDIA H200 on 2026-11-23 (power limit "
                 "range 200-700 W, default 700 W); see calibrate/runs/h200-llama-2-7b-hf-static/manifest.json",
    "measured-h200-idle": "measured by dcsim calibrate on this project's NVIDIA H200 on 2026-11-23, NVML energy over "
                      "the tail of each idle window: 79.3 W with no process (last 5 s of 15 s), 120.2 W with the "
                      "model loaded and no request (last 12 s of 36 s); see calibrate/runs/h200-llama-2-7b-hf/"
                      "runs.csv, rows idle_deep and idle_serving",
    "measured-h200-clocks": "read with NVML by dcsim calibrate on this project's NVIDIA H200 (manifest "
                            "gpu facts of calibrate/runs/h200-llama-2-7b-hf-static): clock_sm_max_mhz 1980 "
                            "(the default application clock, the profiles' curves' clock) and clock_sm_mhz 345 "
                            "at idle, the lowest SM clock it reported",
    "wilkins-swing-idle": "nvidia-smi log at job start (no model loaded) in the authors' repository "
                          "github.com/grantwilkins/energy-inference, cuda/falcon-40b/2024-04-18/10-13-05/"
                          "nvidia-smi.csv: three A100 40 GB GPUs of Swing at 49.6, 55.1 and 51.3 W (mean 52.0 W)",
    "m1-powermetrics": "powermetrics samples of an Apple M1 (MacBookAir10,1, macOS 12) in the shared data set "
                       "powermetrics-samples (codecarbon test data, MIT): 'GPU Power' 9-153 mW at idle",
    "apple-m1pro": "Apple MacBook Pro (14-inch, 2021) technical specifications: M1 Pro with 16 GB or 32 GB unified "
                   "memory",
    "kaplan2020": "Kaplan et al. 2020, 'Scaling Laws for Neural Language Models': a forward pass costs about "
                  "2 x parameters FLOPs per token",
}


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator as the catalogue knows it; cap_* are nvidia-smi power-limit bounds per device."""

    key: str
    name: str
    kind: str
    memory_gb: float
    tdp_w: float | None
    peak_bf16_tflops: float | None
    cap_min_w: float | None
    cap_max_w: float | None
    cap_default_w: float | None
    deep_idle_w: float | None
    serving_idle_w: float | None
    cite: dict[str, str] = field(default_factory=dict)  # field -> key in CITES or free text
    idle_source: str = "published"  # provenance kind of the idle figures: measured | published | assumed
    mem_bw_tbs: float | None = None  # peak memory bandwidth per device, TB/s (datasheet)
    clock_min_mhz: float | None = None  # lockable SM clock range (nvidia-smi -lgc), where a published clock sweep
    clock_max_mhz: float | None = None  # covers the device (profiles/clock_fit.py)

    def citation(self, what: str) -> str:
        ref = self.cite.get(what)
        if ref is None:
            return "no public figure found"
        return CITES.get(ref, ref)


DEVICES: dict[str, DeviceSpec] = {
    d.key: d
    for d in (
        DeviceSpec(
            "m1-pro", "Apple M1 Pro (GPU of the SoC)", "soc", 32.0, None, None, None, None, None,
            deep_idle_w=0.03, serving_idle_w=0.03,
            cite={"memory_gb": "assumed 32 GB: a 16 GB M1 Pro could not keep the 13.5 GB fp16 weights of a 7B "
                               "model on its GPU beside the OS; Apple sells it with 16 or 32 GB (apple-m1pro)",
                  "deep_idle_w": "m1-powermetrics", "serving_idle_w": "m1-powermetrics",
                  "mem_bw_tbs": "apple-m1pro-bw"},
            idle_source="assumed", mem_bw_tbs=0.2,  # the idle GPU of an M1 (MacBook Air) stands in for the M1 Pro's
        ),
        DeviceSpec(
            "v100-16gb", "NVIDIA Tesla V100 16GB (form factor not stated by the source)", "gpu", 16.0, 250.0, 125.0,
            None, None, None, None, None,
            cite={"memory_gb": "nv-v100", "tdp_w": "nv-v100 (PCIe figure; the source's measured draw stayed below "
                                                   "250 W)", "peak_bf16_tflops": "nv-v100 (FP16 tensor; no BF16)",
                  "mem_bw_tbs": "nv-v100-bw"},
            mem_bw_tbs=0.9,
        ),
        DeviceSpec(
            "a100-pcie-40gb", "NVIDIA A100 PCIe 40GB", "gpu", 40.0, 250.0, 312.0, None, 250.0, 250.0, None, None,
            cite={"memory_gb": "nv-a100", "tdp_w": "nv-a100", "peak_bf16_tflops": "nv-a100",
                  "cap_max_w": "nv-a100", "cap_default_w": "nv-a100", "mem_bw_tbs": "nv-a100-bw"},
            mem_bw_tbs=1.555,
        ),
        DeviceSpec(
            "a100-sxm4-40gb", "NVIDIA A100-SXM4-40GB", "gpu", 40.0, 400.0, 312.0, 100.0, 400.0, 400.0, 52.0, None,
            cite={"memory_gb": "nv-a100", "tdp_w": "nv-a100", "peak_bf16_tflops": "nv-a100",
                  "cap_min_w": "smi-a100-sxm4", "cap_max_w": "smi-a100-sxm4", "cap_default_w": "smi-a100-sxm4",
                  "deep_idle_w": "wilkins-swing-idle", "mem_bw_tbs": "nv-a100-bw"},
            mem_bw_tbs=1.555,
        ),
        DeviceSpec(
            "h100-sxm-80gb", "NVIDIA H100 80GB HBM3 (SXM)", "gpu", 80.0, 700.0, 989.0, 200.0, 700.0, 700.0, 70.2, 120.1,
            cite={"memory_gb": "nv-h100", "tdp_w": "nv-h100", "peak_bf16_tflops": "nv-h100",
                  "cap_min_w": "measured-h100", "cap_max_w": "measured-h100", "cap_default_w": "measured-h100",
                  "deep_idle_w": "measured-h100-idle", "serving_idle_w": "measured-h100-idle",
                  "mem_bw_tbs": "nv-h100-bw"},
            idle_source="measured", mem_bw_tbs=3.35,
        ),
        DeviceSpec(
            "h200", "NVIDIA H200 (SXM, 141 GB)", "gpu", 141.0, 700.0, 989.0, 200.0, 700.0, 700.0, 79.3, 120.2,
            cite={"memory_gb": "nv-h200", "tdp_w": "nv-h200", "peak_bf16_tflops": "nv-h200", "mem_bw_tbs": "nv-h200",
                  "cap_min_w": "measured-h200", "cap_max_w": "measured-h200", "cap_default_w": "measured-h200",
                  "deep_idle_w": "measured-h200-idle", "serving_idle_w": "measured-h200-idle",
                  "clock_min_mhz": "measured-h200-clocks", "clock_max_mhz": "measured-h200-clocks"},
            idle_source="measured", mem_bw_tbs=4.8, clock_min_mhz=345.0, clock_max_mhz=1980.0,
        ),
        DeviceSpec(
            "b200", "NVIDIA B200 (HGX, 180 GB)", "gpu", 180.0, 1000.0, 2250.0, None, 1000.0, 1000.0, None, None,
            cite={"memory_gb": "nv-b200", "tdp_w": "nv-b200", "peak_bf16_tflops": "nv-b200",
                  "cap_max_w": "nv-b200", "cap_default_w": "nv-b200", "mem_bw_tbs": "nv-b200-bw"},
            mem_bw_tbs=8.0,
        ),
    )
}

def device(key: str, field: str = "device") -> DeviceSpec:
    """The catalogue entry of `key`; an unknown key is a UserError naming `field` and the known keys."""
    try:
        return DEVICES[key]
    except KeyError:
        raise UserError(f"unknown device {key!r}; known: {', '.join(sorted(DEVICES))}", field=field) from None
