"""Versioned JSON documents (profiles, accuracy tables, plans): atomic writes and loads whose
errors name the file and the first wrong field."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from edgekit.errors import SchemaError

M = TypeVar("M", bound=BaseModel)


def write_atomic(path: str | Path, data: bytes, what: str) -> Path:
    """Write ``data`` to ``path`` through a unique temp file beside it, fsync and a rename (never a
    half-written file; two writers never share a temp file)."""
    p = Path(path)
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=p.parent, prefix=p.name + ".", suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(p)
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise SchemaError(f"cannot write {what} {p}: {e.strerror or e}", fix="choose a writable --output path") from e
    return p


def save_atomic(doc: BaseModel, path: str | Path, what: str, indent: int = 2, exclude_none: bool = False) -> Path:
    """Write ``doc`` as JSON to ``path`` (see :func:`write_atomic`)."""
    return write_atomic(path, doc.model_dump_json(indent=indent, exclude_none=exclude_none).encode("utf-8"), what)


def append_jsonl(path: str | Path, obj: dict) -> None:
    """Append one JSON line and fsync it (resumable runs: a kill loses at most the torn last line)."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | Path) -> tuple[dict | None, dict[str, dict]]:
    """A resumable run's file: its first line (the settings it was made with; None when unreadable) and its
    records by ``id``, in order, up to a torn last line after a kill; a later line of an id replaces an earlier."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    try:
        head = json.loads(lines[0])
    except (ValueError, IndexError):
        head = None
    done: dict[str, dict] = {}
    for ln in lines[1:]:
        try:
            rec = json.loads(ln)
            done[rec["id"]] = rec
        except (ValueError, KeyError):
            break  # a torn last line after a kill
    return (head if isinstance(head, dict) else None), done


def load_versioned(path: str | Path, cls: type[M], what: str, version: int, remake: str, missing_fix: str) -> M:
    """Load a versioned document; ``remake`` is the command that re-creates it (for the fixes)."""
    p = Path(path)
    if not p.exists():
        raise SchemaError(f"{what} file {p} does not exist", fix=missing_fix)
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SchemaError(f"{what} {p} is not valid JSON ({e})", fix=f"re-create it with `{remake}`") from e
    if isinstance(raw, dict) and raw.get("schema_version") not in (None, version):
        raise SchemaError(
            f"{what} {p} has schema_version {raw.get('schema_version')}, this edgekit reads {version}",
            fix=f"re-create the {what} with this edgekit version",
        )
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "(root)"
        raise SchemaError(
            f"{what} {p} is malformed: field {loc}: {first['msg']}",
            fix=f"re-create it with `{remake}` or correct that field",
        ) from e
