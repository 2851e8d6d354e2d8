"""Power and energy meters: NVML (NVIDIA GPUs), Jetson INA3221 rails, RAPL (x86), null.

:func:`detect_meters` tries every kind and returns them all, unavailable ones with the reason;
:func:`best_meter` picks one. A reading is never invented: without a sensor the answer is
``unavailable`` with the reason. :func:`estimated_cpu_power_mw` is the one estimate, labelled so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import UsageError
from edgekit.figures import Figure, estimated
from edgekit.power.base import EnergyWindow, PowerMeter, PowerSampler, Reading, trapezoid_mj
from edgekit.power.jetson import JetsonMeter, is_jetson
from edgekit.power.null import NullMeter
from edgekit.power.nvml import NvmlMeter, decode_reasons
from edgekit.power.rapl import RaplMeter


def detect_meters(sysfs_root: str | Path = "/", nvml: Any = None) -> list[PowerMeter]:
    """Every meter kind, in priority order: NVML GPU 0, Jetson rails, RAPL (available or not)."""
    return [NvmlMeter(0, nvml=nvml), JetsonMeter(sysfs_root), RaplMeter(sysfs_root)]


def best_meter(sysfs_root: str | Path = "/", nvml: Any = None) -> PowerMeter:
    """NVML (if available and not a Jetson), else Jetson rails, else RAPL, else a NullMeter
    whose reason lists why each meter is unavailable. The meters not chosen are closed."""
    meters = detect_meters(sysfs_root, nvml)
    nv, jet, rapl = meters
    jetson = is_jetson(sysfs_root)
    chosen: PowerMeter | None = None
    if nv.available and not jetson:
        chosen = nv
    elif jet.available:
        chosen = jet
    elif rapl.available:
        chosen = rapl
    elif nv.available:  # a Jetson whose NVML does report power, but no rails found
        chosen = nv
    for m in meters:
        if m is not chosen:
            m.close()
    if chosen is not None:
        return chosen
    reason = "; ".join(f"{m.name}: {m.why_unavailable}" for m in meters)
    fixes = "; ".join(f"{m.name}: {m.fix}" for m in meters if m.fix)
    return NullMeter(reason=f"no power sensor ({reason})", fix=fixes or None)


def estimated_cpu_power_mw(tdp_w: float, cpu_percent: float) -> Figure:
    """CPU power *estimate* = load x TDP. Labelled ``estimated``; never a measurement.

    ``cpu_percent`` is whole-machine load in 0..100 (``psutil.cpu_percent()``).
    """
    if tdp_w is None or tdp_w <= 0:
        raise UsageError(f"TDP must be > 0 W, got {tdp_w}", fix="pass the CPU's TDP in watts (from its datasheet)")
    if not 0 <= cpu_percent <= 100:
        raise UsageError(f"CPU load must be 0..100 %, got {cpu_percent}", fix="pass psutil.cpu_percent()")
    return estimated(
        tdp_w * 1000.0 * cpu_percent / 100.0,
        "mW",
        how="CPU load × TDP",
        note=f"{cpu_percent:.0f}% of {tdp_w:g} W TDP; not a measurement",
    )


__all__ = [
    "EnergyWindow",
    "JetsonMeter",
    "NullMeter",
    "NvmlMeter",
    "PowerMeter",
    "PowerSampler",
    "RaplMeter",
    "Reading",
    "best_meter",
    "decode_reasons",
    "detect_meters",
    "estimated_cpu_power_mw",
    "is_jetson",
    "trapezoid_mj",
]
