"""What is this device? CPU, RAM, NVIDIA GPUs, Jetson model/L4T/power mode, llama.cpp build,
and which power sensors work (with the reason and fix for those that do not).

``sysfs_root`` re-roots every file read (``/sys``, ``/etc``, and ``/proc`` unless ``procfs_root``
is given), so recorded fixture trees can be read. Host facts from psutil (cores, frequency, RAM,
hostname) are only filled on the real root ``/``: under a fixture root they are left empty
rather than mixed in from the machine running the code.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field

from edgekit.device import sysinfo
from edgekit.errors import UsageError
from edgekit.host import kernels, peers
from edgekit.host.cpu import isa_flags, usable_cpus
from edgekit.host.threads import policy
from edgekit.power import JetsonMeter, NullMeter, RaplMeter, detect_meters, is_jetson
from edgekit.power.nvml import nvml_gpus
from edgekit.schemas.profile import DeviceFacts, DeviceInfo, GPUInfo


class SensorStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    available: bool
    why_unavailable: str | None = None
    fix: str | None = None
    method: str | None = None  # how the total is obtained, e.g. "VDD_IN rail"
    energy_counter: bool = False


class DeviceReport(DeviceFacts):
    """The detected device: :class:`DeviceFacts` (``cpu_freq_mhz`` the current frequency, from psutil) plus
    what only detection knows: sensors, notes, llama.cpp's build details and CPU support."""

    model_config = ConfigDict(extra="forbid")

    cpu_freq_max_mhz: float | None = None  # 0/unknown on many VMs -> None
    nvml_note: str | None = None  # why no NVIDIA GPU was listed
    is_jetson: bool = False
    nvpmodel_note: str | None = None
    llama_system_info: str | None = None
    llama_note: str | None = None
    power_sensors: list[SensorStatus] = Field(default_factory=list)
    # CPU support: instruction sets (cpuinfo), what llama.cpp compiled in, the CPUs this process may
    # use, how its threads share them, and the kernel probe's cached verdicts (edgekit.host)
    cpu_isa: dict[str, bool] = Field(default_factory=dict)
    llama_features: list[str] = Field(default_factory=list)
    usable_cpus: dict = Field(default_factory=dict)
    threading: dict = Field(default_factory=dict)
    kernel_mode: str | None = None  # EDGEKIT_EXTRA_BUFFERS: auto / on / off
    kernel_probes: list[dict] = Field(default_factory=list)
    edgekit_peers: list[dict] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def to_json(self, indent: int = 2) -> str:
        return self.model_dump_json(indent=indent)

    def to_device_info(self) -> DeviceInfo:
        """The profile's record: the shared facts, the maximum frequency where known, the ISA flags set."""
        facts = self.model_dump(include=set(DeviceFacts.model_fields))
        facts["cpu_freq_mhz"] = self.cpu_freq_max_mhz or self.cpu_freq_mhz
        return DeviceInfo(**facts, cpu_isa=[k for k, v in self.cpu_isa.items() if v] or None)

    @property
    def available_sensors(self) -> list[SensorStatus]:
        return [s for s in self.power_sensors if s.available]


def _device_name(r: DeviceReport) -> str:
    if r.jetson_model:
        return r.jetson_model
    cores = r.cpu_cores_logical or r.cpu_cores_physical
    freq = r.cpu_freq_max_mhz or r.cpu_freq_mhz
    cpu = " ".join(
        x
        for x in (
            f"{cores}-core" if cores else "",
            r.cpu_model or "unknown CPU",
            f"{freq / 1000:.1f} GHz" if freq else "",
        )
        if x
    )
    if r.gpus:
        return f"{r.gpus[0].name or 'NVIDIA GPU'} + {cpu}"
    return cpu


def _host_facts(r: DeviceReport) -> None:
    r.hostname = socket.gethostname()
    r.cpu_cores_physical = psutil.cpu_count(logical=False)
    r.cpu_cores_logical = psutil.cpu_count(logical=True)
    try:
        f = psutil.cpu_freq()
    except (OSError, RuntimeError, NotImplementedError):
        f = None
    if f is not None:
        r.cpu_freq_mhz = float(f.current) if f.current else None
        r.cpu_freq_max_mhz = float(f.max) if f.max else None
    else:
        r.notes.append("CPU frequency: psutil.cpu_freq() gave nothing")
    r.ram_total_mb = psutil.virtual_memory().total / 2**20


def _cpu_support(r: DeviceReport, root: Path, proc: Path) -> None:
    r.cpu_isa = isa_flags(proc)
    r.llama_features = kernels.compiled_features(r.llama_system_info or "")
    if root == Path("/"):
        r.usable_cpus = usable_cpus(root, proc).as_dict()
        r.threading = policy()
        r.edgekit_peers = peers.live_peers()
        r.kernel_probes = kernels.cached_verdicts()
    try:
        r.kernel_mode = kernels.requested_mode()
    except UsageError as e:
        r.notes.append(e.one_line())
    if r.cpu_isa.get("AMX_TILE") and "AMX_INT8" in r.llama_features:
        r.notes.append(
            "this CPU has AMX and llama.cpp was built with AMX kernels: edgekit probes them in a child "
            "process before the first load of each model and falls back to plain buffers if they crash"
        )


def detect_device(
    sysfs_root: str | Path = "/", nvml: Any = None, procfs_root: str | Path | None = None, llama_module: Any = None
) -> DeviceReport:
    """Detect the device. ``nvml`` and ``llama_module`` are injectable (defaults: pynvml, llama_cpp)."""
    root = Path(sysfs_root)
    proc = Path(procfs_root) if procfs_root is not None else root / "proc"
    r = DeviceReport(name="unknown device")
    if root == Path("/"):
        _host_facts(r)
    else:
        r.notes.append(f"host facts (cores, frequency, RAM, hostname) not read: sysfs_root is {root}, not /")
    r.cpu_model = sysinfo.cpu_model(proc)
    if r.cpu_model is None:
        r.notes.append(f"CPU model: no 'model name' in {proc / 'cpuinfo'}")

    if nvml is not None or root == Path("/"):
        gpus, why = nvml_gpus(nvml)
        r.gpus = [
            GPUInfo(**{k: g.get(k) for k in ("index", "name", "memory_total_mb", "power_limit_mw", "driver")})
            for g in gpus
            if g.get("name")
        ]
        r.nvml_note = why
    else:
        r.nvml_note = "NVML not queried: fixture root and no nvml module given"

    r.is_jetson = is_jetson(root) or sysinfo.jetson_model(proc) is not None
    if r.is_jetson:
        r.jetson_model = sysinfo.jetson_model(proc)
        r.jetson_release = sysinfo.jetson_release(root)
        r.nvpmodel_mode, r.nvpmodel_note = sysinfo.nvpmodel_mode(root)
        if r.jetson_release is None:
            r.notes.append("L4T release: /etc/nv_tegra_release missing or unparsable")

    lb = sysinfo.llama_build(llama_module)
    r.llama_build, r.llama_cpp_python, r.gpu_offload = lb["build"], lb["version"], lb["gpu_offload"]
    r.llama_system_info, r.llama_note = lb["system_info"], lb["note"]
    _cpu_support(r, root, proc)

    if nvml is not None or root == Path("/"):
        meters = detect_meters(root, nvml=nvml)
    else:
        meters = [
            NullMeter("NVML not queried: fixture root and no nvml module given"),
            JetsonMeter(root),
            RaplMeter(root),
        ]
        meters[0].name = "nvml:0"
    for m in meters:
        r.power_sensors.append(
            SensorStatus(
                name=m.name,
                available=m.available,
                why_unavailable=m.why_unavailable,
                fix=m.fix,
                method=getattr(m, "total_method", None) or None,
                energy_counter=bool(m.available and m.has_energy_counter),
            )
        )
        m.close()
    if not r.available_sensors:
        r.notes.append("no power sensor available: energy figures will be 'unavailable'")
    r.name = _device_name(r)
    return r
