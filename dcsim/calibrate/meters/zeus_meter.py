"""Meter through Zeus's ZeusMonitor: the NVML total-energy counter (Volta and newer), AMD SMI, RAPL
for Intel/AMD CPUs and Apple silicon (with zeus-apple-silicon installed)."""

from __future__ import annotations

import logging
import warnings

from dcsim.calibrate.meters.base import METERS, Meter, MeterUnavailable, Reading

# Apple SoC fields that belong to the accelerator; the rest (CPU clusters, DRAM) is host.
_SOC_DEVICE_FIELDS = ("gpu_mj", "gpu_sram_mj", "ane_mj")
_SOC_HOST_FIELDS = ("cpu_total_mj", "dram_mj")


@METERS.register("zeus")
class ZeusMeter(Meter):
    """kind 'cuda' meters GPU `index` (CUDA_VISIBLE_DEVICES-relative, like torch) and, where RAPL is
    readable, the CPU packages and DRAM as host; kind 'cpu' meters the CPU packages + DRAM as the
    device; kind 'mps' meters the Apple SoC. `sync=False` skips torch's device synchronisation (for
    windows around work that runs in another process)."""

    name = "zeus"
    kinds = ("cuda", "cpu", "mps")
    rank = 0

    @classmethod
    def open(cls, kind: str, index: int | None, sync: bool) -> "ZeusMeter":
        try:
            return cls(kind, index, sync=sync)
        except ImportError as e:
            raise MeterUnavailable(f"zeus not importable ({e}); pip install 'dcsim[calibrate]'") from None
        except RuntimeError as e:
            raise MeterUnavailable(f"zeus: {e}") from None

    def __init__(self, kind: str, index: int | None = None, sync: bool = True) -> None:
        from zeus.monitor import ZeusMonitor  # ImportError -> caller tries the next meter

        logging.getLogger("zeus").setLevel(logging.WARNING)
        self.kind = kind
        self.index = index or 0
        self.sync = sync
        if kind == "cuda":
            self.mon = ZeusMonitor(gpu_indices=[self.index], sync_execution_with="torch")
            if len(self.mon.gpus) <= self.index:
                raise RuntimeError(f"no GPU {self.index} visible to NVML/AMD SMI")
        elif kind == "cpu":
            self.mon = ZeusMonitor(gpu_indices=[], sync_execution_with="torch")
            if not self.mon.cpu_indices:
                raise RuntimeError("RAPL is not readable (no /sys/class/powercap/intel-rapl zone, or no permission)")
        elif kind == "mps":
            self.mon = ZeusMonitor(gpu_indices=[], cpu_indices=[], sync_execution_with="torch")
            if not self.mon.soc_is_present:
                raise RuntimeError("no Apple silicon meter (pip install zeus-apple-silicon)")
        else:
            raise RuntimeError(f"zeus cannot meter device kind {kind!r}")
        self._gpus = self.mon.gpus

    def begin(self, key: str, sync: bool = True) -> None:
        self.mon.begin_window(key, sync_execution=sync and self.sync and self.kind == "cuda")

    def end(self, key: str, sync: bool = True) -> Reading:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero energy in a window shorter than the counter period
            m = self.mon.end_window(key, sync_execution=sync and self.sync and self.kind == "cuda")
        r = Reading()
        host = r.device_j if self.kind == "cpu" else r.host_j
        for i, e in (m.gpu_energy or {}).items():
            r.device_j[f"gpu{i}"] = float(e)
        for i, e in (m.cpu_energy or {}).items():
            host[f"cpu{i}"] = float(e)
        for i, e in (m.dram_energy or {}).items():
            host[f"dram{i}"] = float(e)
        soc = m.soc_energy
        if soc is not None:
            for f in _SOC_DEVICE_FIELDS:
                v = getattr(soc, f, None)
                if v is not None:
                    r.device_j[f"soc_{f[:-3]}"] = v / 1000.0
            for f in _SOC_HOST_FIELDS:
                v = getattr(soc, f, None)
                if v is not None:
                    r.host_j[f"soc_{f[:-3]}"] = v / 1000.0
        return r

    def power_w(self) -> dict[str, float]:
        if self.kind != "cuda":
            return {}
        try:
            return {f"gpu{self.index}": self._gpus.get_instant_power_usage(self.index) / 1000.0}
        except Exception:  # noqa: BLE001 - instant power field unsupported: fall back to NVML's averaged power
            return {f"gpu{self.index}": self._gpus.get_average_power_usage(self.index) / 1000.0}

    def temperature_c(self) -> dict[str, float]:
        if self.kind != "cuda":
            return {}
        try:
            return {f"gpu{self.index}": float(self._gpus.get_gpu_temperature(self.index))}
        except Exception:  # noqa: BLE001 - a GPU or driver without the sensor: no temperature column
            return {}

    def describe(self) -> dict:
        import zeus

        d = {"meter": self.name, "zeus_version": getattr(zeus, "__version__", "?"), "kind": self.kind,
             "gpu_indices": list(self.mon.gpu_indices), "cpu_indices": list(self.mon.cpu_indices),
             "soc": bool(self.mon.soc_is_present)}
        if self.kind == "cuda":
            d["gpu_energy_source"] = ("nvml_total_energy_counter"
                                      if self._gpus.supports_get_total_energy_consumption(self.index)
                                      else "zeus_power_polling")
        return d
