"""Background sampling of CPU frequency, temperatures and GPU throttle reasons.

The profiler runs a :class:`ThermalSampler` around a measurement and flags drift from
:meth:`ThermalSampler.summary` (fields match :class:`edgekit.schemas.profile.DriftReport`).

Sources: CPU frequency from ``psutil.cpu_freq()`` on the real root (``scaling_cur_freq`` files
under any other root); temperatures from ``psutil.sensors_temperatures()`` (real root only) and
``/sys/devices/virtual/thermal/thermal_zone*/{type,temp}`` (millidegree C); NVML GPU temperature
and clock-slowdown reasons (only slowdowns: ``sw_thermal``, ``hw_slowdown``... not ``gpu_idle``).
Readings a sensor marks as invalid (<= -40 C, e.g. Jetson's -256 C for an unpowered zone) and
Jetson's ``PMIC-Die`` zone (a fixed 100 C placeholder on Xavier) are skipped.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil

from edgekit.power.nvml import NvmlMeter
from edgekit.power.periodic import PeriodicThread

_IGNORED_ZONES = {"pmic-die"}


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read().strip()


class ThermalSampler:
    def __init__(self, sysfs_root: str | Path = "/", nvml: Any = None, interval_s: float = 0.5, gpu_index: int = 0):
        self.root = Path(sysfs_root)
        self.real_root = self.root == Path("/")
        self.interval_s = float(interval_s)
        self.samples: list[dict] = []
        self.errors: list[str] = []
        self._gpu: NvmlMeter | None = None
        if nvml is not None or self.real_root:
            g = NvmlMeter(gpu_index, nvml=nvml)
            self._gpu = g if g.handle is not None else None
        self._ticker = PeriodicThread(self.sample, self.interval_s, "edgekit-thermal")
        self._lock = threading.Lock()

    # -- sources -----------------------------------------------------------------------------
    def cpu_freq_mhz(self) -> float | None:
        if self.real_root:
            f = psutil.cpu_freq()
            if f is not None and f.current and f.current > 0:
                return float(f.current)
        vals = []
        for p in self.root.glob("sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"):
            try:
                vals.append(float(_read(p)) / 1000.0)  # kHz -> MHz
            except (OSError, ValueError):
                continue
        return sum(vals) / len(vals) if vals else None

    def temperatures_c(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.real_root and hasattr(psutil, "sensors_temperatures"):
            try:
                for chip, entries in (psutil.sensors_temperatures() or {}).items():
                    for i, e in enumerate(entries):
                        if e.current is not None and e.current > -40:
                            out[f"{chip}/{e.label or i}"] = float(e.current)
            except (OSError, RuntimeError) as e:
                self.errors.append(f"psutil.sensors_temperatures: {e}")
        for z in sorted(self.root.glob("sys/devices/virtual/thermal/thermal_zone*")):
            try:
                kind, milli = _read(z / "type"), float(_read(z / "temp"))
            except (OSError, ValueError):
                continue
            c = milli / 1000.0
            if kind.lower() in _IGNORED_ZONES or c <= -40:
                continue
            out[f"{z.name}/{kind}"] = c
        if self._gpu is not None:
            t = self._gpu.temperature_c()
            if t is not None:
                out[f"gpu{self._gpu.index}"] = t
        return out

    # -- sampling ----------------------------------------------------------------------------
    def sample(self) -> dict:
        try:
            s = {
                "t": time.monotonic(),
                "cpu_freq_mhz": self.cpu_freq_mhz(),
                "temps_c": self.temperatures_c(),
                "throttle_reasons": self._gpu.throttle_reasons() if self._gpu is not None else [],
                "gpu_mem_used_mb": self._gpu.memory_used_mb() if self._gpu is not None else None,
            }
        except Exception as e:  # never crash the sampling thread
            with self._lock:
                self.errors.append(f"{type(e).__name__}: {e}")
            return {}
        with self._lock:
            self.samples.append(s)
        return s

    def start(self) -> ThermalSampler:
        self._ticker.start()
        return self

    def stop(self) -> ThermalSampler:
        self._ticker.stop()
        return self

    def close(self) -> None:
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.close()

    def summary(self) -> dict:
        with self._lock:
            samples = list(self.samples)
        freqs = [s["cpu_freq_mhz"] for s in samples if s.get("cpu_freq_mhz") is not None]
        max_t, max_name = None, None
        for s in samples:
            for name, c in s["temps_c"].items():
                if max_t is None or c > max_t:
                    max_t, max_name = c, name
        reasons = sorted({r for s in samples for r in s["throttle_reasons"]})
        mem = [s.get("gpu_mem_used_mb") for s in samples if s.get("gpu_mem_used_mb") is not None]
        return {
            "cpu_freq_start_mhz": freqs[0] if freqs else None,
            "cpu_freq_min_mhz": min(freqs) if freqs else None,
            "max_temp_c": max_t,
            "max_temp_sensor": max_name,
            "throttle_reasons": reasons,
            # GPU memory in use (whole device, MiB): at the first sample (before a model loads, when
            # the sampler starts first) and the highest sample (every interval_s)
            "gpu_mem_used_start_mb": mem[0] if mem else None,
            "gpu_mem_used_peak_mb": max(mem) if mem else None,
            "samples": len(samples),
            "errors": list(self.errors),
        }
