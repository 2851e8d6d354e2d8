"""Checks of front-door values that are not sampling options: threads, context size, durations and
caps, output paths, server URLs, text. The CLI and the library front doors (``evaluate``,
``make_plan``, ``run_query``) call these before any work, so a bad value fails in one line naming
the flag and the fix -- never after a model load or a long run.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from edgekit.errors import UsageError

MAX_THREADS = 512  # llama.cpp's GGML_MAX_N_THREADS; 99999 aborted the process (std::bad_alloc)
MIN_CTX = 16
MAX_CTX = 1 << 24  # 16M tokens: above every catalogue model's trained context; llama.cpp's n_ctx is 32-bit


def check_gpu_layers(gpu_layers: int | None, engine: str | None = None, flag: str = "--gpu-layers") -> int | None:
    """None (the engine's default: 0, CPU only) or an integer >= -1 (-1: every layer on the GPU);
    only the llama.cpp engine offloads layers."""
    if gpu_layers is None:
        return None
    if isinstance(gpu_layers, bool) or not isinstance(gpu_layers, int) or gpu_layers < -1:
        raise UsageError(
            f"invalid {flag}: must be an integer >= -1, got {gpu_layers!r}",
            fix=f"pass {flag} -1 for every layer on the GPU, N for the first N, 0 for none",
        )
    if engine is not None and engine not in ("llama.cpp", "llamacpp", "llama_cpp"):
        raise UsageError(
            f"{flag} applies to the llama.cpp engine, not to {engine}", fix=f"drop {flag}, or use --engine llama.cpp"
        )
    return gpu_layers


def check_threads(threads: int | None, flag: str = "--threads") -> int | None:
    """None (the engine's default) or an integer in 1..MAX_THREADS."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise UsageError(
            f"invalid {flag}: must be an integer in 1..{MAX_THREADS}, got {threads!r}",
            fix=f"pass {flag} as the number of CPU threads (e.g. the physical cores), or omit it",
        )
    return threads


def check_ctx(n_ctx: int, flag: str = "--ctx") -> int:
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not MIN_CTX <= n_ctx <= MAX_CTX:
        raise UsageError(
            f"invalid {flag}: must be an integer in {MIN_CTX}..{MAX_CTX} tokens, got {n_ctx!r}",
            fix=f"pass {flag} as a context size in tokens, e.g. {flag} 8192",
        )
    return n_ctx


def check_positive(value: float | None, flag: str, unit: str, example: str) -> float | None:
    """None, or a finite number > 0 (NaN, infinity, 0 and negatives are refused)."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v <= 0:
        raise UsageError(
            f"invalid {flag}: must be a finite number > 0 ({unit}), got {value!r}",
            fix=f"pass e.g. {flag} {example}, or omit it",
        )
    return v


def check_text(value: str | None, what: str) -> str | None:
    """Refuse text that is not valid Unicode: bytes that are not UTF-8 reach Python's argv as lone
    surrogates ('caf\\udce9' for Latin-1 'café'). They are refused rather than replaced with U+FFFD:
    the model would silently see other text than the user wrote."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start : e.end]
        raw = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}" for c in bad)
        raise UsageError(
            f"{what} is not valid UTF-8 (bytes {raw} at character {e.start})",
            fix="pass UTF-8 text: set a UTF-8 locale, or convert it, e.g. `iconv -f latin1 -t utf-8`",
        ) from None
    return value


def check_output_path(path: str | os.PathLike, flag: str = "--output", example: str = "out.json") -> Path:
    """An output file we can create: not a directory, and its folder exists or can be made, and is
    writable (probed with a temporary file, so it also holds for root and read-only mounts)."""
    p = Path(path)
    if str(path).strip() == "":
        raise UsageError(f"{flag} is empty", fix=f"pass {flag} PATH.json")
    if p.is_dir():
        raise UsageError(f"{flag} {p} is a directory, not a file", fix=f"pass a file path, e.g. {flag} {p / example}")
    anc = p.parent if str(p.parent) else Path(".")
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise UsageError(f"{flag} {p}: {anc} is a file, not a folder", fix=f"choose a path in a folder for {flag}")
    try:
        with tempfile.NamedTemporaryFile(dir=anc, prefix=".edgekit-write-test-"):
            pass
    except OSError as e:
        raise UsageError(
            f"{flag} {p}: cannot write in {anc} ({e.strerror or e})", fix=f"choose a writable path for {flag}"
        ) from None
    return p


def check_base_url(url: str | None, flag: str = "--base-url") -> str | None:
    """None, or an http(s) URL with a host (and a valid port, if any)."""
    if url is None:
        return None
    fix = f"pass {flag} http://host:port/v1"
    try:
        u = urlsplit(url)
        u.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise UsageError(f"{flag} {url!r} is not a valid URL ({e})", fix=fix) from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"{flag} {url!r} is not an http(s) URL with a host", fix=fix)
    return url
