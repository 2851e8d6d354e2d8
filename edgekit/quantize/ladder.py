"""``edgekit quantize SOURCE --to Q8_0,Q4_K_M,...``: a ladder of GGUF variants, each with a card.

Output formats dispatch through :data:`OUTPUT_FORMATS`: every llama.cpp type is handled here; another
format (e.g. ``onnx-int8``) registers a handler with :func:`register_format` and is reached by the
same ``--to`` list, the same results and the same cards.

For each type: refuse a quantized source unless ``allow_requantize`` (then warn: quality is capped by
the source), skip an output whose card and sha256 already match this source (``force`` redoes it),
check the disk against an estimate, let llama.cpp write a temporary file beside the final name,
check it is a whole GGUF, hash it, rename it into place, record its manifest, and write its card
last. An interrupted or failed run leaves no file under the final name and no temporary.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, UsageError
from edgekit.models import check_gguf, variant_file, variant_id
from edgekit.models.integrity import sha256_file
from edgekit.models.variants import check_variant, register
from edgekit.quantize.source import (
    FreeBytes,
    Source,
    check_disk,
    estimate_bytes,
    partial_for,
    resolve_source,
    sweep_partials,
)
from edgekit.schemas import __version__ as edgekit_version
from edgekit.schemas.quant import VariantCard, card_path_for, load_card

log = logging.getLogger("edgekit.quantize")


@dataclass
class QuantizeOptions:
    threads: int = 0  # 0: llama.cpp's default (all cores)
    allow_requantize: bool = False
    imatrix: Path | None = None
    force: bool = False
    free_bytes: FreeBytes | None = None  # injectable free-space probe (tests)
    warn: Callable[[str], None] | None = None  # called at once with each warning (default: the logger)


@dataclass
class QuantizeResult:
    variant_id: str
    type: str
    path: Path
    card_path: Path
    action: str  # "made", "exists" (card and sha256 matched: skipped), "remade" (was broken), "forced"
    size_bytes: int
    seconds: float
    card: VariantCard
    warnings: list[str] = field(default_factory=list)


# The dispatch point for formats other than GGUF: name (lower case) -> handler(source_spec, target,
# options) -> QuantizeResult, or "module:function" imported on first use (so a built-in format such as
# "onnx-int8": "edgekit.quantize.onnx_int8:quantize_onnx_int8" costs nothing until asked for).
FormatHandler = Callable[[str, str, QuantizeOptions], QuantizeResult]
OUTPUT_FORMATS: dict[str, str | FormatHandler] = {
    "onnx-int8": "edgekit.quantize.onnx_export:quantize_onnx_int8",  # needs the [onnx] extra
}


def register_format(name: str, handler: str | FormatHandler) -> None:
    """Add an output format reachable as ``--to NAME`` (e.g. ``onnx-int8``)."""
    OUTPUT_FORMATS[name.lower()] = handler


def _handler(name: str) -> FormatHandler:
    h = OUTPUT_FORMATS[name.lower()]
    if isinstance(h, str):
        import importlib

        mod, _, attr = h.partition(":")
        h = OUTPUT_FORMATS[name.lower()] = getattr(importlib.import_module(mod), attr)
    return h


def gguf_types() -> list[str]:
    from edgekit.engines.llamacpp_quantize import ftypes

    return list(ftypes())


def parse_targets(to: str | Sequence[str]) -> list[str]:
    """``"q8_0, Q4_K_M"`` -> ``["Q8_0", "Q4_K_M"]`` (canonical names); an unknown one is refused
    with the list of valid ones."""
    items = [t.strip() for t in (to.split(",") if isinstance(to, str) else to) for t in t.split(",")]
    items = [t for t in items if t]
    if not items:
        raise UsageError("no output type given", fix="pass --to Q8_0,Q4_K_M (or --dequantize)")
    types = {t.upper(): t for t in gguf_types()}
    out = []
    for t in items:
        name = types.get(t.upper()) or (t.lower() if t.lower() in OUTPUT_FORMATS else None)
        if name is None:
            valid = ", ".join(list(types) + sorted(OUTPUT_FORMATS))
            raise UsageError(f"unknown quant type {t!r}", fix=f"use one or more of: {valid}")
        if name not in out:
            out.append(name)
    return out


def tool_versions(**extra: str) -> dict[str, str]:
    from edgekit.engines.llamacpp_quantize import version

    return {"edgekit": edgekit_version, "llama-cpp-python": version(), **extra}


def quantize(
    source: str,
    to: str | Sequence[str],
    *,
    threads: int = 0,
    allow_requantize: bool = False,
    imatrix: str | Path | None = None,
    force: bool = False,
    free_bytes: FreeBytes | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[QuantizeResult]:
    """Quantize ``source`` (catalogue id, variant id, GGUF path) to every type in ``to``; returns one
    result per type, in order. Each output is a registered variant (``edgekit models list``).
    ``warn(msg)`` hears each warning as it arises (e.g. requantizing); they are also on each result."""
    targets = parse_targets(to)
    opts = QuantizeOptions(
        threads=threads,
        allow_requantize=allow_requantize,
        imatrix=Path(imatrix).expanduser() if imatrix else None,
        force=force,
        free_bytes=free_bytes,
        warn=warn,
    )
    if threads < 0:
        raise UsageError(f"--threads must be >= 0, got {threads}", fix="pass --threads 4 (0: all cores)")
    if opts.imatrix is not None and not opts.imatrix.is_file():
        raise UsageError(f"importance matrix {opts.imatrix} does not exist", fix="check the --imatrix path")
    gguf = [t for t in targets if t.lower() not in OUTPUT_FORMATS]
    results: dict[str, QuantizeResult] = {}
    if gguf:
        for r in _gguf_ladder(resolve_source(source), gguf, opts):
            results[r.type] = r
    for t in targets:
        if t.lower() in OUTPUT_FORMATS:
            results[t] = _handler(t)(source, t, opts)
    return [results[t] for t in targets]


def existing_variant(
    dest: Path, src_sha256: str | None, src_label: str, type_name: str, force: bool, imatrix_sha: str | None = None
) -> tuple[VariantCard | None, str]:
    """(card to reuse, action): ("exists" with the card when it matches this source (``src_sha256``, named
    ``src_label`` in errors) and its file or folder; else the action the new output reports). Refuses to
    replace a variant made from another source. Serves every output format (GGUF files, ONNX folders)."""
    cp = card_path_for(dest)
    if not dest.exists() or not cp.exists():
        return None, "remade" if dest.exists() or cp.exists() else "made"
    try:
        card = load_card(cp)
    except EdgekitError:
        return None, "remade"
    if force:
        return None, "forced"
    if check_variant(card, raise_corrupt=False).status != "verified":
        return None, "remade"
    if card.source.sha256 != src_sha256 or card.type != type_name:
        raise UsageError(
            f"{card.variant_id} already exists, made from {card.source.model_id or card.source.path} "
            f"(sha256 {str(card.source.sha256)[:12]}…), not from {src_label}",
            fix="pass --force to replace it, or `edgekit models rm " + card.variant_id + "` first",
        )
    had = (card.params.get("imatrix") or {}).get("sha256") if isinstance(card.params.get("imatrix"), dict) else None
    if had != imatrix_sha:
        made = f"with importance matrix {had[:12]}…" if had else "without an importance matrix"
        now = "another importance matrix" if imatrix_sha else "no importance matrix"
        raise UsageError(
            f"{card.variant_id} already exists, made {made}; this run asks for {now}",
            fix="pass --force to replace it, or `edgekit models rm " + card.variant_id + "` first",
        )
    return card, "exists"


def _load_imatrix(opts: QuantizeOptions) -> tuple[dict[str, np.ndarray] | None, dict | None]:
    if opts.imatrix is None:
        return None, None
    from edgekit.quantize.imatrix import read_imatrix

    data = read_imatrix(opts.imatrix)
    return data, {"path": str(opts.imatrix.resolve()), "sha256": sha256_file(opts.imatrix), "entries": len(data)}


def _gguf_ladder(src: Source, types: list[str], opts: QuantizeOptions) -> list[QuantizeResult]:
    from edgekit.engines.llamacpp_quantize import FTYPES, quantize_gguf

    warnings: list[str] = []
    if not src.is_float:
        what = src.quant or "quantized tensors"
        if not opts.allow_requantize:
            raise UsageError(
                f"{src.spec} is already quantized ({what}); quantizing it again compounds the error",
                fix=f"make a float reference first (`edgekit quantize {src.spec} --dequantize`, then quantize "
                f"{variant_id(src.base_model, 'F16')}), or pass --allow-requantize",
            )
        warnings.append(f"requantizing a {what} model: every output's quality is capped by the {what} source")
        (opts.warn or log.warning)(warnings[-1])
    imatrix_sha = sha256_file(opts.imatrix) if opts.imatrix is not None and opts.imatrix.is_file() else None
    todo = []
    for t in types:
        dest = variant_file(src.base_model, t)
        card, action = existing_variant(dest, src.sha256, src.spec, t, opts.force, imatrix_sha)
        todo.append((t, dest, card, action))
    sweep_partials(variant_file(src.base_model, "x").parent)
    need = sum(estimate_bytes(src.info, t) for t, _, card, _ in todo if card is None)
    if need:
        check_disk(
            variant_file(src.base_model, "x").parent,
            need,
            f"{src.base_model} in " + ", ".join(t for t, _, c, _ in todo if c is None),
            opts.free_bytes,
        )
    imatrix, imatrix_info = _load_imatrix(opts) if any(c is None for _, _, c, _ in todo) else (None, None)
    out = []
    for t, dest, card, action in todo:
        if card is not None:
            out.append(
                QuantizeResult(
                    card.variant_id, t, dest, card_path_for(dest), "exists", card.size_bytes, 0.0, card, list(warnings)
                )
            )
            continue
        check_disk(dest.parent, estimate_bytes(src.info, t), f"{src.base_model} in {t}", opts.free_bytes)
        t0 = time.perf_counter()
        with partial_for(dest) as tmp:
            quantize_gguf(
                src.path, tmp, t, threads=opts.threads, allow_requantize=opts.allow_requantize, imatrix=imatrix
            )
            check_gguf(tmp)  # a whole GGUF before it gets the final name
            digest = sha256_file(tmp)
            size = tmp.stat().st_size
            os.replace(tmp, dest)
        notes = list(src.notes)
        if not src.is_float:
            notes.append(f"requantized from {src.quant or 'a quantized model'}: quality is capped by the source")
        new = VariantCard(
            variant_id=variant_id(src.base_model, t),
            base_model=src.base_model,
            format="gguf",
            type=t,
            path=str(dest),
            size_bytes=size,
            sha256=digest,
            source=src.source_info(),
            tools=tool_versions(),
            params={
                "tool": "llama_model_quantize",
                "llama_ftype": FTYPES[t],
                "threads": opts.threads,
                "allow_requantize": opts.allow_requantize,
                "imatrix": imatrix_info,
            },
            notes=notes,
        )
        register(new, digest)
        dt = time.perf_counter() - t0
        log.info("%s: %s (%d bytes, %.1f s)", new.variant_id, dest, size, dt)
        out.append(QuantizeResult(new.variant_id, t, dest, card_path_for(dest), action, size, dt, new, list(warnings)))
    return out
