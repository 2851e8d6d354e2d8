"""Device detection (CPU, RAM, GPUs, Jetson, llama.cpp build, power sensors) and thermal sampling."""

from edgekit.device.detect import DeviceReport, SensorStatus, detect_device
from edgekit.device.sysinfo import llama_build, nvpmodel_mode, parse_nvpmodel_query, parse_tegra_release
from edgekit.device.thermal import ThermalSampler

__all__ = [
    "DeviceReport",
    "SensorStatus",
    "ThermalSampler",
    "detect_device",
    "llama_build",
    "nvpmodel_mode",
    "parse_nvpmodel_query",
    "parse_tegra_release",
]
