"""Block slices of a GGUF model: the same file with only some transformer blocks kept.

A slice keeps every metadata key (tokenizer, chat template, hyper-parameters), the embedding,
output norm and output head, and the chosen blocks renumbered 0..k-1; ``<arch>.block_count`` and
every per-block array (a metadata array with one entry per block) are cut to match. Tensor bytes
are copied as they are, so each kept block has the file's own quant types and shapes.

``edgekit profile --slices`` times a 1-block and a k-block slice and extrapolates to the whole
depth (see :mod:`edgekit.profile.slices`): seconds on files that would take minutes to profile, and
the kernels timed are the model's own (per-type CPU kernel speed varies 2x with matrix width, so no
device-wide per-type table predicts it; benchmarks/README.md).
"""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path
from typing import Optional

from edgekit.errors import GGUFError, UsageError
from edgekit.models.gguf import GGML_TYPE_SIZE, GGUF_MAGIC, _Reader

_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def slice_blocks(n_layer: int, k: int) -> tuple[list[int], list[int]]:
    """(one middle block, k blocks evenly spread over the depth that include it): the two slices.

    The k blocks include the first and last (llama.cpp's mixed quant types give them more bits)
    and the middle one, so the k-block slice samples the file's mix of block types."""
    if n_layer < 2 or k < 2 or k > n_layer:
        raise UsageError(f"cannot take a {k}-block slice of a {n_layer}-block model",
                         fix="profile the whole model (`edgekit profile --model ... --quick`)")
    mid = n_layer // 2
    spread = {round(i * (n_layer - 1) / (k - 1)) for i in range(k)}
    if mid not in spread:  # replace the spread block nearest the middle
        spread.remove(min(spread - {0, n_layer - 1}, key=lambda b: abs(b - mid)))
        spread.add(mid)
    return [mid], sorted(spread)


_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # GGUFValueType
_STRING, _ARRAY = 8, 9


def _str(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, value, sub: Optional[int] = None) -> bytes:
    """One serialized metadata pair (scalar, string, or array of scalars/strings)."""
    def one(t, v):
        return _str(v.encode() if isinstance(v, str) else bytes(v)) if t == _STRING else struct.pack("<" + _SCALAR[t], v)

    out = _str(key.encode()) + struct.pack("<I", vtype)
    if vtype == _ARRAY:
        return out + struct.pack("<IQ", sub, len(value)) + b"".join(one(sub, v) for v in value)
    return out + one(vtype, value)


def _header(mm, path: Path):
    """(version, metadata pairs as (key, type, element type, start, end, value), tensors as
    (name, dims, type, offset, bytes), data start) from edgekit's own header reader (fast on large vocabularies)."""
    r = _Reader(mm, path)
    r.pos = 4
    version = r.unpack("<I")
    if mm[:4] != GGUF_MAGIC or version not in (2, 3):
        raise GGUFError(f"{path} is not a GGUF v2/v3 model", fix="pass a .gguf file")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    kvs, meta = [], {}
    for _ in range(n_kv):
        start = r.pos
        key = r.string()
        vtype = r.unpack("<I")
        sub = struct.unpack_from("<I", mm, r.pos)[0] if vtype == _ARRAY else None
        meta[key] = value = r.value(vtype)
        kvs.append((key, vtype, sub, start, r.pos, value))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
        ttype, offset = r.unpack("<I"), r.unpack("<Q")
        bs = GGML_TYPE_SIZE.get(ttype)
        if bs is None:
            raise GGUFError(f"{path}: tensor {name} has a type ({ttype}) edgekit cannot size", fix="profile the whole model")
        n_el = 1
        for d in dims:
            n_el *= d
        tensors.append((name, dims, ttype, offset, n_el // bs[1] * bs[0]))
    align = int(meta.get("general.alignment", 32))
    return version, kvs, meta, tensors, (r.pos + align - 1) // align * align, align


def write_slice(src: str | Path, dst: str | Path, blocks: list[int]) -> int:
    """Write ``dst``: ``src`` with only ``blocks`` kept (renumbered in order). Returns its size in bytes.

    Metadata pairs are copied as raw bytes (a 262k-token vocabulary costs no parsing), except the
    block count and per-block arrays, which are re-serialized; tensor data is copied unchanged."""
    src = Path(src)
    with open(src, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        version, kvs, meta, tensors, data_start, align = _header(mm, src)
        arch = str(meta.get("general.architecture", ""))
        key = f"{arch}.block_count"
        if key not in meta:
            raise GGUFError(f"{src}: no {key} in its metadata, so its blocks cannot be sliced",
                            fix="profile the whole model (`edgekit profile --model ... --quick`)")
        n_layer = int(meta[key])
        if not blocks or len(set(blocks)) != len(blocks) or min(blocks) < 0 or max(blocks) >= n_layer:
            raise UsageError(f"blocks {blocks} are not distinct blocks of a {n_layer}-block model",
                             fix="pick blocks 0..n_layer-1")
        keep = {old: new for new, old in enumerate(sorted(blocks))}
        out_kv = []
        for k, vtype, sub, start, end, value in kvs:
            if k == key:
                out_kv.append(_kv(k, vtype, len(keep)))
            elif sub in _SCALAR and k.startswith(arch + ".") and isinstance(value, list) and len(value) == n_layer:
                out_kv.append(_kv(k, vtype, [value[b] for b in sorted(keep)], sub))  # a per-block array: cut
            else:
                out_kv.append(bytes(mm[start:end]))
        out_kv.append(_kv("general.edgekit.slice_of", _STRING, src.name))
        out_kv.append(_kv("general.edgekit.slice_blocks", _ARRAY, sorted(keep), 5))  # INT32
        plan = []
        for name, dims, ttype, offset, nbytes in tensors:
            m = _BLOCK.fullmatch(name)
            if m is None or int(m.group(1)) in keep:
                new = name if m is None else f"blk.{keep[int(m.group(1))]}.{m.group(2)}"
                plan.append((new, dims, ttype, data_start + offset, nbytes))
        pad = lambda n: -n % align  # noqa: E731
        infos, at = [], 0
        for name, dims, ttype, _, nbytes in plan:
            infos.append(_str(name.encode()) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, at))
            at += nbytes + pad(nbytes)
        with open(dst, "wb") as out:
            out.write(struct.pack("<4sIQQ", GGUF_MAGIC, version, len(plan), len(out_kv)))
            for b in out_kv + infos:
                out.write(b)
            out.write(b"\0" * pad(out.tell()))
            for _, _, _, pos, nbytes in plan:
                if pos + nbytes > len(mm):
                    raise GGUFError(f"{src} is truncated", fix="the file is incomplete; re-copy or re-download it")
                out.write(mm[pos: pos + nbytes])
                out.write(b"\0" * pad(nbytes))
    return Path(dst).stat().st_size
