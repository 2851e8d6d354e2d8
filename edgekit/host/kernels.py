"""The llama.cpp kernel configurations edgekit chooses between, the user's override, and the
probe verdict cache (``<EDGEKIT_HOME>/probe/``, or ``EDGEKIT_PROBE_DIR``).

Plain data and files: the probing itself (child processes that load the model) is the llama.cpp
engine's, :mod:`edgekit.engines.llamacpp_probe`. Here so that ``edgekit device`` can show the
verdicts without importing an engine."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from edgekit.errors import UsageError

log = logging.getLogger("edgekit.probe")
PROBE_VERSION = 1
CONFIGS = {"default": True, "plain": False}  # name -> use_extra_bufts (AMX / repacked weights)
MODES = {"auto": None, "on": "default", "off": "plain"}


def probe_dir() -> Path:
    if os.environ.get("EDGEKIT_PROBE_DIR"):
        return Path(os.environ["EDGEKIT_PROBE_DIR"])
    return Path(os.environ.get("EDGEKIT_HOME") or Path.home() / ".cache" / "edgekit") / "probe"


def requested_mode() -> str:
    v = (os.environ.get("EDGEKIT_EXTRA_BUFFERS") or "auto").strip().lower()
    if v not in MODES:
        raise UsageError(
            f"EDGEKIT_EXTRA_BUFFERS={v!r} is not a kernel mode",
            fix="set EDGEKIT_EXTRA_BUFFERS to auto, on or off (or unset it)",
        )
    return v


def compiled_features(system_info: str) -> list[str]:
    """Features llama.cpp's CPU backend was built with: 'AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1' -> names."""
    return sorted({m.group(1) for m in re.finditer(r"([A-Z][A-Z0-9_]+)\s*=\s*1\b", system_info or "")})


def cached_verdicts() -> list[dict]:
    """Every current-version probe record ({key, verdicts}) in the probe folder, newest first."""
    folder = probe_dir()
    try:
        files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    out = []
    for p in files:
        try:
            doc = json.loads(p.read_text())
            if doc.get("version") == PROBE_VERSION:
                out.append({"key": doc["key"], "verdicts": doc["verdicts"]})
        except (OSError, ValueError, KeyError, AttributeError):
            continue
    return out
