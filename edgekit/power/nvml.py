"""NVIDIA GPU power through NVML (``pynvml`` from the ``nvidia-ml-py`` package).

Energy: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load, Volta and newer) is a
hardware counter; without it, ``nvmlDeviceGetPowerUsage`` (mW) is polled and integrated.
On Jetson the NVML power calls raise ``NVMLError_NotSupported``: use the INA3221 rails there.
The ``nvml`` argument accepts any module-like object with the pynvml API (tests use a fake).
"""

from __future__ import annotations

import time
from typing import Any

from edgekit.power.base import PowerMeter, Reading

NVML_ERROR_NOT_SUPPORTED = 3
JETSON_WHY = "NVML power is not supported on this device (Jetson: use the INA3221 rails)"

# nvmlClocksEventReason* / nvmlClocksThrottleReason* bits (same values in both APIs).
REASON_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clock_setting",
}
# Reasons that mean the GPU was slowed down (the others are benign states).
SLOWDOWN_REASONS = {"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"}


def decode_reasons(mask: int, include_benign: bool = False) -> list[str]:
    names = [name for bit, name in REASON_BITS.items() if mask & bit]
    return names if include_benign else [n for n in names if n in SLOWDOWN_REASONS]


def _text(x: Any) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else str(x)


def load_nvml(nvml: Any = None) -> tuple[Any, str | None, str | None]:
    """Import (unless given) and ``nvmlInit`` NVML. Returns (module or None, why, fix)."""
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[no-redef]
        except ImportError:
            return None, "pynvml is not installed", "pip install nvidia-ml-py"
    err = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except err as e:
        return (
            None,
            f"NVML init failed ({_text(e)}): no NVIDIA driver",
            "install the NVIDIA driver (not needed without an NVIDIA GPU)",
        )
    except OSError as e:
        return None, f"NVML library not loadable ({e}): no NVIDIA driver", "install the NVIDIA driver"
    return nvml, None, None


def _not_supported(nvml: Any, e: BaseException) -> bool:
    cls = getattr(nvml, "NVMLError_NotSupported", None)
    return (cls is not None and isinstance(e, cls)) or getattr(e, "value", None) == NVML_ERROR_NOT_SUPPORTED


class NvmlMeter(PowerMeter):
    has_energy_counter = False

    def __init__(self, index: int = 0, nvml: Any = None):
        self.index = index
        self.name = f"nvml:{index}"
        self.available, self.why_unavailable, self.fix = False, None, None
        self.handle = None
        self.total_method = ""
        self._err: type = Exception
        self._nvml, why, fix = load_nvml(nvml)
        if self._nvml is None:
            self.why_unavailable, self.fix = why, fix
            return
        n = self._nvml
        self._err = getattr(n, "NVMLError", Exception)
        try:
            self.handle = n.nvmlDeviceGetHandleByIndex(index)
        except self._err as e:
            self.why_unavailable, self.fix = f"no NVIDIA GPU at index {index} ({_text(e)})", "check `nvidia-smi -L`"
            return
        try:
            n.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.has_energy_counter = True
            self.total_method = "NVML total energy counter"
        except self._err as e:
            if not _not_supported(n, e):
                self.why_unavailable, self.fix = (
                    f"NVML energy counter failed: {_text(e)}",
                    "check `nvidia-smi -q -d POWER`",
                )
                return
        try:
            n.nvmlDeviceGetPowerUsage(self.handle)
            if not self.has_energy_counter:
                self.total_method = "NVML power usage, polled and integrated"
        except self._err as e:
            if _not_supported(n, e):
                if not self.has_energy_counter:
                    self.why_unavailable, self.fix = JETSON_WHY, "use JetsonMeter (INA3221 rails)"
                    return
            else:
                self.why_unavailable, self.fix = (
                    f"NVML power usage failed: {_text(e)}",
                    "check `nvidia-smi -q -d POWER`",
                )
                return
        self.available = True

    def read(self) -> Reading:
        t = time.monotonic()
        e = self.read_energy_mj() if self.has_energy_counter else None
        try:
            p = self.read_power_mw()
        except self._err:
            if e is None:
                raise
            p = None
        return Reading(t=t, energy_mj=e, power_mw=p)

    def read_energy_mj(self) -> float | None:
        if not (self.available and self.has_energy_counter):
            return None
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def read_power_mw(self) -> float | None:
        if not self.available:
            return None
        return float(self._nvml.nvmlDeviceGetPowerUsage(self.handle))

    def temperature_c(self) -> float | None:
        if self.handle is None:
            return None
        try:
            return float(
                self._nvml.nvmlDeviceGetTemperature(self.handle, getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0))
            )
        except (self._err, AttributeError):
            return None

    def memory_used_mb(self) -> float | None:
        """Device memory in use on this GPU, MiB (``nvmlDeviceGetMemoryInfo().used``: every process
        on the GPU, the CUDA contexts included); None where NVML cannot say."""
        if self.handle is None:
            return None
        try:
            return float(self._nvml.nvmlDeviceGetMemoryInfo(self.handle).used) / 2**20
        except (self._err, AttributeError):
            return None

    def throttle_reasons(self, include_benign: bool = False) -> list[str]:
        """Current clock-slowdown reasons ("sw_thermal", "hw_slowdown", ...). Benign: also gpu_idle etc."""
        if self.handle is None:
            return []
        n = self._nvml
        fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            n, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        if fn is None:
            return []
        try:
            return decode_reasons(int(fn(self.handle)), include_benign)
        except self._err:
            return []

    def gpu_info(self) -> dict:
        """name, memory_total_mb, power_limit_mw, driver (None where NVML cannot say)."""
        info: dict = {
            "index": self.index,
            "name": None,
            "memory_total_mb": None,
            "power_limit_mw": None,
            "driver": None,
        }
        if self.handle is None:
            return info
        n, h = self._nvml, self.handle
        calls = {
            "name": lambda: _text(n.nvmlDeviceGetName(h)),
            "memory_total_mb": lambda: n.nvmlDeviceGetMemoryInfo(h).total / 2**20,
            "power_limit_mw": lambda: float(n.nvmlDeviceGetEnforcedPowerLimit(h)),
            "driver": lambda: _text(n.nvmlSystemGetDriverVersion()),
        }
        for key, fn in calls.items():
            try:
                info[key] = fn()
            except (self._err, AttributeError):
                pass
        return info

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
            self.handle = None
            self.available = False


def nvml_gpus(nvml: Any = None) -> tuple[list[dict], str | None]:
    """Every NVIDIA GPU's :meth:`NvmlMeter.gpu_info`, or ([], why)."""
    mod, why, _fix = load_nvml(nvml)
    if mod is None:
        return [], why
    try:
        count = int(mod.nvmlDeviceGetCount())
    except getattr(mod, "NVMLError", Exception) as e:
        return [], f"nvmlDeviceGetCount failed: {_text(e)}"
    finally:
        try:
            mod.nvmlShutdown()
        except Exception:
            pass
    out = []
    for i in range(count):
        m = NvmlMeter(i, mod)
        out.append(m.gpu_info())
        m.close()
    return out, None if count else "NVML found no GPU"
