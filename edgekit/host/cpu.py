"""What of this machine's CPU may this process use, and which instructions does it have?

* :func:`isa_flags` -- the instruction sets llama.cpp's CPU kernels care about, read from
  ``/proc/cpuinfo`` (x86: AVX2, AVX-512 F/VNNI/BF16, AMX tile/int8/bf16; ARM: NEON, dotprod,
  i8mm, SVE).
* :func:`usable_cpus` -- the CPUs this process may actually run on: its affinity mask, the
  cgroup CPU quota of its cgroup and every parent (containers, systemd ``CPUQuota=``), and the
  physical cores among them. The thread count edgekit uses by default comes from here.

Every reader takes an injectable root (``procfs_root``, ``sysfs_root``) so recorded fixture trees
can be read; nothing is guessed without a note saying so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

# (implementer, part) from /proc/cpuinfo on ARM -> core name (subset that runs edgekit).
_ARM_PARTS = {
    ("0x41", "0xd03"): "ARM Cortex-A53",
    ("0x41", "0xd07"): "ARM Cortex-A57",
    ("0x41", "0xd08"): "ARM Cortex-A72",
    ("0x41", "0xd0b"): "ARM Cortex-A76",
    ("0x41", "0xd0c"): "ARM Neoverse-N1",
    ("0x41", "0xd41"): "ARM Cortex-A78",
    ("0x41", "0xd42"): "ARM Cortex-A78AE",
    ("0x41", "0xd4f"): "ARM Neoverse-V2",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}


# flag in /proc/cpuinfo -> the name llama.cpp's system info uses
X86_FLAGS = {
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx512f": "AVX512",
    "avx512_vnni": "AVX512_VNNI",
    "avx512_bf16": "AVX512_BF16",
    "avx_vnni": "AVX_VNNI",
    "amx_tile": "AMX_TILE",
    "amx_int8": "AMX_INT8",
    "amx_bf16": "AMX_BF16",
}
ARM_FLAGS = {"asimd": "NEON", "asimddp": "DOTPROD", "i8mm": "MATMUL_INT8", "sve": "SVE", "sve2": "SVE2"}


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return None


def isa_flags(procfs_root: str | Path = "/proc") -> dict[str, bool]:
    """{llama.cpp name: present} for the instruction sets that matter to its CPU kernels.

    Read from the first processor's ``flags`` (x86) or ``Features`` (ARM) line; empty when
    cpuinfo is unreadable."""
    text = _read(Path(procfs_root) / "cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "flags":
            have = set(value.split())
            return {name: flag in have for flag, name in X86_FLAGS.items()}
        if key == "features":
            have = set(value.split())
            return {name: flag in have for flag, name in ARM_FLAGS.items()}
    return {}


def cpu_model(procfs_root: str | Path = "/proc") -> str | None:
    """``model name`` from cpuinfo; on ARM without it, the core name from implementer/part."""
    text = _read(Path(procfs_root) / "cpuinfo")
    if not text:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip().lower(), v.strip())
    if fields.get("model name"):
        return fields["model name"]
    impl, part = fields.get("cpu implementer", "").lower(), fields.get("cpu part", "").lower()
    if (impl, part) in _ARM_PARTS:
        return _ARM_PARTS[(impl, part)]
    if impl and part:
        return f"ARM CPU (implementer {impl}, part {part})"
    return fields.get("hardware") or fields.get("processor") or None


def has_amx(flags: dict[str, bool]) -> bool:
    return bool(flags.get("AMX_TILE"))


def int8_u8s8_saturates(flags: dict[str, bool]) -> bool:
    """True on an x86 CPU without VNNI (AVX-512 VNNI or AVX-VNNI): onnxruntime's uint8 x int8 kernels
    there sum pairs of products into int16 (``VPMADDUBSW``), which overflows for weights quantized to
    the full int8 range -- a dynamically quantized model then produces garbage (SmolLM2-135M's
    perplexity went from 12.9 to 3146 on an AVX2-only AMD EPYC). Weights in 7 bits (onnxruntime's
    ``reduce_range``) cannot overflow. False on ARM and when the flags are unknown."""
    x86 = "AVX2" in flags or "AVX" in flags
    return x86 and not (flags.get("AVX512_VNNI") or flags.get("AVX_VNNI"))


# -- CPUs this process may use ----------------------------------------------------------------
@dataclass
class UsableCPUs:
    """The CPUs this process may use. ``count`` is what a thread pool should size itself to."""

    logical: int  # CPUs the machine has online
    physical: int | None  # physical cores the machine has (psutil), None when unknown
    affinity: list[int] = field(default_factory=list)  # CPUs in this process's affinity mask
    quota: float | None = None  # cgroup CPU quota in CPUs (e.g. 1.5), None when unlimited
    quota_source: str | None = None  # the cgroup file that set it
    count: int = 1
    why: str = ""

    def as_dict(self) -> dict:
        return {
            "logical": self.logical,
            "physical": self.physical,
            "affinity": self.affinity,
            "quota_cpus": self.quota,
            "quota_source": self.quota_source,
            "usable": self.count,
            "why": self.why,
        }


def _cgroup_paths(procfs_root: Path) -> list[tuple[str, str]]:
    """(hierarchy controllers, path) lines of /proc/self/cgroup."""
    text = _read(procfs_root / "self" / "cgroup") or ""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def cgroup_quota(sysfs_root: str | Path = "/", procfs_root: str | Path = "/proc") -> tuple[float | None, str | None]:
    """(CPUs, source file): the tightest CPU quota on this process's cgroup and its parents.

    cgroup v2: ``cpu.max`` ("max 100000" = none, "150000 100000" = 1.5 CPUs); v1:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 = none). (None, None) when unlimited."""
    root, proc = Path(sysfs_root), Path(procfs_root)
    best: tuple[float | None, str | None] = (None, None)

    def consider(q: float, src: Path) -> None:
        nonlocal best
        if q > 0 and (best[0] is None or q < best[0]):
            best = (q, str(src))

    for controllers, rel in _cgroup_paths(proc):
        rel = rel.strip().lstrip("/")
        if controllers == "":  # v2 unified hierarchy
            base = root / "sys/fs/cgroup"
            parts = [p for p in rel.split("/") if p]
            for i in range(len(parts), -1, -1):
                f = base.joinpath(*parts[:i]) / "cpu.max"
                text = _read(f)
                if text:
                    fields = text.split()
                    if len(fields) == 2 and fields[0] != "max":
                        try:
                            consider(int(fields[0]) / int(fields[1]), f)
                        except (ValueError, ZeroDivisionError):
                            pass
        elif "cpu" in controllers.split(","):
            for mount in ("sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpu"):
                base = root / mount
                if not base.is_dir():
                    continue
                parts = [p for p in rel.split("/") if p]
                for i in range(len(parts), -1, -1):
                    d = base.joinpath(*parts[:i])
                    q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                    try:
                        if q and p and int(q) > 0:
                            consider(int(q) / int(p), d / "cpu.cfs_quota_us")
                    except (ValueError, ZeroDivisionError):
                        pass
                break
    return best


def _affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def _physical() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:  # psutil can fail in odd sandboxes
        return None


def usable_cpus(
    sysfs_root: str | Path = "/",
    procfs_root: str | Path = "/proc",
    *,
    affinity: list[int] | None = None,
    physical: int | None = None,
    logical: int | None = None,
) -> UsableCPUs:
    """The CPUs this process may use; ``count`` = min(physical cores, CPUs in the affinity mask,
    floor of the cgroup quota), at least 1. The injectable arguments serve fixture tests."""
    logical = logical if logical is not None else (os.cpu_count() or 1)
    aff = affinity if affinity is not None else _affinity()
    phys = physical if physical is not None else _physical()
    quota, src = cgroup_quota(sysfs_root, procfs_root)
    limits = [(len(aff), f"{len(aff)} CPU(s) in the affinity mask")]
    if phys:
        # hyper-threads share a core's execution units: llama.cpp is fastest at one thread per core
        share = phys if len(aff) >= logical else max(1, round(len(aff) * phys / logical))
        limits.append((share, f"{share} physical core(s)"))
    if quota is not None:
        limits.append((max(1, math.floor(quota + 1e-9)), f"cgroup quota {quota:g} CPU(s) ({src})"))
    count, why = min(limits, key=lambda x: x[0])
    return UsableCPUs(
        logical=logical, physical=phys, affinity=aff, quota=quota, quota_source=src, count=max(1, count), why=why
    )
