"""Quantized variants in the cache: the registry that ``edgekit quantize`` writes and everyone reads.

A variant is a model file under ``<cache>/models/variants/`` with a card beside it
(``<file>.card.json``, :class:`edgekit.schemas.quant.VariantCard`). The card is the registration:
a file without one is not a variant, and the card is written last, after the file is in place and
its sha256 manifest recorded. A variant id (``smollm2-135m-instruct-q8_0``) works wherever a
catalogue id does: ``resolve()``, ``Runtime(...)``, ``edgekit run --model``, ``edgekit models path``.

Integrity is the catalogue's: every load runs the cheap stat-vs-manifest check and a full re-hash
when it trips, and the hash must equal the card's sha256 (the card plays the catalogue's part).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.models.integrity import (
    CORRUPT,
    MISSING,
    UNVERIFIED,
    VERIFIED,
    Check,
    ModelCorrupt,
    cheap_check,
    manifest_path_for,
    models_dir,
    record,
    sha256_file,
    verify_mode,
)
from edgekit.schemas.quant import VariantCard, card_path_for, load_card

log = logging.getLogger("edgekit.models")

CARD_GLOB = "*.card.json"


def variants_dir() -> Path:
    return models_dir() / "variants"


def variant_id(base_model: str, type_name: str) -> str:
    return f"{base_model}-{type_name.lower()}"


def variant_file(base_model: str, type_name: str, suffix: str = ".gguf") -> Path:
    """Where the variant of ``base_model`` in ``type_name`` lives: ``<variants>/<model>-<TYPE>.gguf``."""
    return variants_dir() / f"{base_model}-{type_name}{suffix}"


def list_variants() -> list[VariantCard]:
    """Every registered variant (a readable card under the variants folder), sorted by id. A card
    that does not load is skipped with a warning on the ``edgekit.models`` logger."""
    d = variants_dir()
    if not d.is_dir():
        return []
    out = []
    for cp in sorted(d.glob(CARD_GLOB)):
        try:
            out.append(load_card(cp))
        except EdgekitError as e:
            log.warning("skipping variant card %s: %s", cp, e.one_line())
    return sorted(out, key=lambda c: c.variant_id)


def find_variant(spec: str) -> VariantCard | None:
    """The card of variant id ``spec``, or None."""
    if os.sep in spec or spec.endswith(".gguf"):
        return None
    for c in list_variants():
        if c.variant_id == spec:
            return c
    return None


def register(card: VariantCard, sha256: str, hash_s: float | None = None) -> Path:
    """Record the manifest of the file the card describes (its hash computed by the caller), then
    write the card (atomic). Returns the card's path."""
    path = Path(card.path)
    record(path, sha256, spec=card.variant_id, by="quantize", hash_s=hash_s)
    return card.save(card_path_for(path))


def _corrupt(card: VariantCard, reason: str) -> ModelCorrupt:
    src = card.source.model_id or card.source.path
    return ModelCorrupt(
        f"variant {card.variant_id} ({card.path}) is corrupt, not loaded: {reason}",
        fix=f"remake it: `edgekit quantize {src} --to {card.type} --force`",
    )


def check_variant(card: VariantCard, verify: str | None = None, raise_corrupt: bool = True) -> Check:
    """The load check of a variant file: cheap (stat vs manifest) unless it trips or ``verify="full"``,
    then a re-hash compared with the card's sha256 (and recorded). Raises ModelCorrupt if it does not
    match (``raise_corrupt``), else returns the Check."""
    path = Path(card.path)
    mode = verify_mode(verify)
    if card.format == "onnx":  # a folder has no manifest to trust: auto hashes it, as a file without one is hashed
        return _check_folder(card, full=True, raise_corrupt=raise_corrupt)
    c = cheap_check(path, None, card.variant_id)
    if c.status == MISSING:
        if raise_corrupt:
            raise _corrupt(card, "the file is missing (its card is still there)")
        return c
    if mode == "auto" and c.status == VERIFIED and c.sha256 == card.sha256:
        return c
    return _rehash(card, sha256_file, raise_corrupt, record_it=True)


def _rehash(card: VariantCard, hasher, raise_corrupt: bool, record_it: bool) -> Check:
    """Hash the variant now (``hasher``: a file's or a folder's sha256) and hold the digest against
    its card's: CORRUPT (raised if ``raise_corrupt``) or VERIFIED (the manifest recorded if ``record_it``)."""
    path = Path(card.path)
    t0 = time.perf_counter()
    digest = hasher(path)
    dt = time.perf_counter() - t0
    if digest != card.sha256:
        c = Check(
            path,
            CORRUPT,
            f"sha256 {digest[:12]}… does not match its card's {card.sha256[:12]}…",
            None,
            card.variant_id,
            sha256=digest,
            expected_sha256=card.sha256,
            hashed=True,
            hash_s=dt,
        )
        if raise_corrupt:
            raise _corrupt(card, c.reason)
        return c
    rec = record(path, digest, spec=card.variant_id, by="load", hash_s=dt) if record_it else None
    return Check(
        path,
        VERIFIED,
        f"sha256 re-hashed in {dt:.2f} s and matches its card",
        None,
        card.variant_id,
        rec,
        digest,
        card.sha256,
        True,
        dt,
    )


def _check_folder(card: VariantCard, full: bool, raise_corrupt: bool) -> Check:
    """An exported folder (ONNX): its graph and weight files' total size against the card on every check
    (cheap), the sha256 over them (``folder_sha256``) when ``full``."""
    from edgekit.models.folder_hash import folder_sha256, onnx_files

    path = Path(card.path)
    files = onnx_files(path) if path.is_dir() else []
    if not files:
        if raise_corrupt:
            raise _corrupt(card, "the folder or its .onnx files are missing (its card is still there)")
        return Check(path, MISSING, "the folder or its .onnx files are missing", None, card.variant_id)
    size = sum(p.stat().st_size for p in files)
    if size != card.size_bytes:
        if raise_corrupt:
            raise _corrupt(card, f"its files hold {size} bytes, its card says {card.size_bytes}")
        return Check(
            path,
            CORRUPT,
            f"its files hold {size} bytes, its card says {card.size_bytes}",
            None,
            card.variant_id,
            expected_sha256=card.sha256,
        )
    if not full:
        return Check(
            path,
            UNVERIFIED,
            "folder: sizes match its card, not re-hashed (models verify re-hashes it)",
            None,
            card.variant_id,
            expected_sha256=card.sha256,
        )
    return _rehash(card, folder_sha256, raise_corrupt, record_it=False)


def variant_status(card: VariantCard, verify: bool = False) -> Check:
    """verified / unverified / corrupt / missing, without raising (``verify``: re-hash now)."""
    path = Path(card.path)
    if verify:
        return check_variant(card, "full", raise_corrupt=False)
    if card.format == "onnx":
        return _check_folder(card, full=False, raise_corrupt=False)
    c = cheap_check(path, None, card.variant_id)
    if c.status == VERIFIED and c.sha256 != card.sha256:
        return Check(
            path,
            CORRUPT,
            "its manifest's sha256 differs from its card's",
            None,
            card.variant_id,
            c.manifest,
            c.sha256,
            card.sha256,
        )
    return c


def variant_rows(verify: bool = False) -> list[dict]:
    """One row per variant for `edgekit models list`."""
    rows = []
    for card in list_variants():
        c = variant_status(card, verify=verify)
        rows.append(
            {
                "id": card.variant_id,
                "base_model": card.base_model,
                "format": card.format,
                "type": card.type,
                "size_bytes": card.size_bytes,
                "sha256": card.sha256,
                "path": card.path,
                "status": c.status,
                "status_reason": c.reason,
                "source": card.source.model_id or card.source.path,
                "dequantized_from": card.source.dequantized_from,
                "created": card.created,
                "has_quality": card.quality is not None,
            }
        )
    return rows


def remove_variant(card: VariantCard) -> None:
    """Delete a variant's file, manifest and card (the card last, so a crash leaves it listed, not orphaned)."""
    path = Path(card.path)
    for p in (path, manifest_path_for(path, None)):
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    card_path_for(path).unlink(missing_ok=True)


__all__ = [
    "variants_dir",
    "variant_id",
    "variant_file",
    "list_variants",
    "find_variant",
    "register",
    "check_variant",
    "variant_status",
    "variant_rows",
    "remove_variant",
]
