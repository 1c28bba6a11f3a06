"""NVIDIA GPUs (the cuda device kind): the NVML facts environment.json records under "gpu" (pynvml, getters only)
and the power limit through Zeus's GPU layer (zeus.device.get_gpus(), which takes AMD GPUs through AMD SMI where
NVML is absent). pynvml and zeus are imported only when called, so a CPU-only install loads this module."""

from __future__ import annotations

import os

from dcsim.calibrate.devices.base import DEVICES, ClockLimits, Device, PowerLimits


def gpu_facts(index: int) -> dict:
    """NVML facts about one GPU (CUDA_VISIBLE_DEVICES-relative index); empty where NVML is absent.
    Only getters are called."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - no driver
        return {"nvml_error": str(e)}
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    phys = index
    if vis:
        try:
            phys = [int(x) for x in vis.split(",")][index]
        except (ValueError, IndexError):
            pass
    h = pynvml.nvmlDeviceGetHandleByIndex(phys)
    out: dict = {}

    def get(name: str, fn, *args, scale: float | None = None):
        try:
            v = fn(*args)
            if isinstance(v, bytes):
                v = v.decode()
            out[name] = v / scale if scale else v
        except Exception:  # noqa: BLE001 - a field this driver lacks is recorded as null
            out[name] = None

    get("name", pynvml.nvmlDeviceGetName, h)
    # which physical GPU this was: identical models differ by about 13% in busy power for the same work, so a
    # replay is set against its calibration knowing whether the same board ran both
    get("uuid", pynvml.nvmlDeviceGetUUID, h)
    get("serial", pynvml.nvmlDeviceGetSerial, h)
    get("pci_bus_id", lambda: pynvml.nvmlDeviceGetPciInfo(h).busId)
    get("vbios_version", pynvml.nvmlDeviceGetVbiosVersion, h)
    get("driver_version", pynvml.nvmlSystemGetDriverVersion)
    get("cuda_driver_version", pynvml.nvmlSystemGetCudaDriverVersion_v2)
    get("memory_total_gb", lambda: pynvml.nvmlDeviceGetMemoryInfo(h).total / 1e9)
    get("power_limit_w", pynvml.nvmlDeviceGetPowerManagementLimit, h, scale=1000)
    get("power_limit_enforced_w", pynvml.nvmlDeviceGetEnforcedPowerLimit, h, scale=1000)
    get("power_limit_default_w", pynvml.nvmlDeviceGetPowerManagementDefaultLimit, h, scale=1000)
    get("power_limit_range_w", lambda: [x / 1000 for x in pynvml.nvmlDeviceGetPowerManagementLimitConstraints(h)])
    get("persistence_mode", lambda: bool(pynvml.nvmlDeviceGetPersistenceMode(h)))
    get("compute_mode", pynvml.nvmlDeviceGetComputeMode, h)
    get("pstate", pynvml.nvmlDeviceGetPerformanceState, h)
    get("temperature_c", pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
    get("clock_sm_mhz", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
    get("clock_mem_mhz", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM)
    get("clock_sm_max_mhz", pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM)
    get("clock_mem_max_mhz", pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM)
    get("app_clock_sm_mhz", pynvml.nvmlDeviceGetApplicationsClock, h, pynvml.NVML_CLOCK_SM)
    get("app_clock_mem_mhz", pynvml.nvmlDeviceGetApplicationsClock, h, pynvml.NVML_CLOCK_MEM)
    get("power_now_w", pynvml.nvmlDeviceGetPowerUsage, h, scale=1000)
    get("mig_mode", lambda: pynvml.nvmlDeviceGetMigMode(h)[0])
    get("compute_processes", lambda: len(pynvml.nvmlDeviceGetComputeRunningProcesses(h)))
    return out


@DEVICES.register("nvidia")
class NvidiaGPU(Device):
    """A CUDA device: `environment` records the NVML facts of its index (CUDA_VISIBLE_DEVICES-relative, like
    torch); `power_limits` is Zeus's GPUs object, milliwatts by that same index."""

    name = "nvidia"
    kinds = ("cuda",)

    def environment(self, device: str) -> dict:
        """{"gpu": NVML facts} for "cuda" or "cuda:N" (N defaults to 0)."""
        return {"gpu": gpu_facts(int(device.partition(":")[2] or 0))}

    def clock_limits(self) -> ClockLimits:
        """Zeus's GPUs object, whose locked-clock methods take MHz; ImportError without zeus."""
        from zeus.device import get_gpus

        return get_gpus()

    def power_limits(self) -> PowerLimits:
        """Zeus's GPUs object (NVIDIA through NVML, else AMD through AMD SMI); ImportError without zeus."""
        from zeus.device import get_gpus

        return get_gpus()
