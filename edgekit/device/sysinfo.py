"""Small readers for device facts: /proc/cpuinfo, Jetson model/L4T/nvpmodel, llama.cpp build.

Each returns ``None`` (plus a note where useful) when the fact is not there; nothing is guessed
without saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.host.cpu import cpu_model  # noqa: F401 - re-exported: the device report and tests read it here


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return None


def jetson_model(procfs_root: str | Path) -> str | None:
    """``/proc/device-tree/model`` (NUL-terminated) if it names a Jetson."""
    raw = _read_text(Path(procfs_root) / "device-tree/model")
    if raw is None:
        return None
    model = raw.rstrip("\x00").strip()
    return model if "jetson" in model.lower() else None


def parse_tegra_release(text: str) -> str | None:
    """'# R35 (release), REVISION: 4.1, GCID: ...' -> 'L4T R35.4.1'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text)
    return f"L4T R{m.group(1)}.{m.group(2).rstrip('.')}" if m else None


def jetson_release(sysfs_root: str | Path) -> str | None:
    text = _read_text(Path(sysfs_root) / "etc/nv_tegra_release")
    return parse_tegra_release(text) if text else None


def parse_nvpmodel_query(out: str) -> str | None:
    """`nvpmodel -q` output ('NV Power Mode: MAXN' then the id) -> 'MAXN (mode 0)'."""
    m = re.search(r"NV Power Mode:[ \t]*(\S+)[ \t]*(?:\r?\n\s*(\d+))?", out)
    if not m:
        return None
    return f"{m.group(1)} (mode {m.group(2)})" if m.group(2) else m.group(1)


def parse_nvpmodel_conf(text: str) -> tuple[int | None, dict[int, str]]:
    """'< PM_CONFIG DEFAULT=N >' and '< POWER_MODEL ID=N NAME=X >' -> (default id, {id: name})."""
    d = re.search(r"<\s*PM_CONFIG\s+DEFAULT\s*=\s*(\d+)\s*>", text)
    names = {int(i): n for i, n in re.findall(r"<\s*POWER_MODEL\s+ID\s*=\s*(\d+)\s+NAME\s*=\s*(\S+?)\s*>", text)}
    return (int(d.group(1)) if d else None), names


def nvpmodel_mode(
    sysfs_root: str | Path = "/",
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., Any] = subprocess.run,
) -> tuple[str | None, str | None]:
    """(mode, note). Current mode from `nvpmodel -q` (only on the real root); else the *default*
    from /etc/nvpmodel.conf, labelled as the default, not the current mode."""
    note = None
    if Path(sysfs_root) == Path("/") and which("nvpmodel"):
        try:
            p = run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
            mode = parse_nvpmodel_query((p.stdout or "") + (p.stderr or ""))
            if mode:
                return mode, "current mode from `nvpmodel -q`"
            note = "`nvpmodel -q` printed no mode"
        except (OSError, subprocess.SubprocessError) as e:
            note = f"`nvpmodel -q` failed: {e}"
    else:
        note = "nvpmodel not on PATH"
    text = _read_text(Path(sysfs_root) / "etc/nvpmodel.conf")
    if text:
        default, names = parse_nvpmodel_conf(text)
        if default is not None:
            name = names.get(default)
            mode = f"default: {name} (mode {default})" if name else f"default: mode {default}"
            return mode, f"{note}; this is the default from /etc/nvpmodel.conf, not necessarily the current mode"
    return None, f"{note}; no /etc/nvpmodel.conf"


_BACKENDS = [
    ("cuda", r"CUDA|CUBLAS"),
    ("metal", r"METAL"),
    ("vulkan", r"VULKAN"),
    ("rocm", r"HIP|ROCM"),
    ("sycl", r"SYCL"),
]


def guess_llama_build(
    system_info: str, gpu_offload: bool | None, platform: str = sys.platform
) -> tuple[str | None, str | None]:
    """(build, note) from llama_print_system_info() text and llama_supports_gpu_offload()."""
    if gpu_offload is False:
        return "cpu", None
    for build, pat in _BACKENDS:  # new format 'CUDA : ARCHS = ...', old format 'CUDA = 1'
        if re.search(rf"\b(?:{pat})\s*(?::|=\s*1\b)", system_info, re.IGNORECASE):
            return build, None
    if gpu_offload and platform == "darwin":
        return "metal", "inferred: macOS build with GPU offload (system info names no backend)"
    if gpu_offload:
        return "gpu", "GPU offload supported but system info names no backend"
    if system_info.strip():
        return "cpu", "GPU offload support unknown; system info names no GPU backend"
    return None, "llama.cpp build unknown (no system info, no GPU offload answer)"


def llama_build(module: Any = None) -> dict:
    """{'build', 'version', 'gpu_offload', 'system_info', 'note'}. Imports llama_cpp lazily."""
    out: dict = {"build": None, "version": None, "gpu_offload": None, "system_info": None, "note": None}
    if module is None:
        try:
            import llama_cpp as module  # type: ignore[no-redef]
        except ImportError as e:
            out["note"] = f"llama_cpp is not importable ({e}); llama-cpp-python is not installed or is being installed"
            return out
        except Exception as e:  # a broken shared library raises OSError/RuntimeError
            out["note"] = f"llama_cpp failed to load: {type(e).__name__}: {e}"
            return out
    out["version"] = getattr(module, "__version__", None)
    notes = []
    try:
        out["gpu_offload"] = bool(module.llama_supports_gpu_offload())
    except Exception as e:
        notes.append(f"llama_supports_gpu_offload failed: {e}")
    try:
        info = module.llama_print_system_info()
        out["system_info"] = (info.decode(errors="replace") if isinstance(info, bytes) else str(info)).strip()
    except Exception as e:
        notes.append(f"llama_print_system_info failed: {e}")
    build, note = guess_llama_build(out["system_info"] or "", out["gpu_offload"])
    out["build"] = build
    notes += [note] if note else []
    out["note"] = "; ".join(notes) or None
    return out
