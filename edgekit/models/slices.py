"""Block slices of a GGUF model: the same file with only some transformer blocks kept.

A slice keeps every metadata key (tokenizer, chat template, hyper-parameters), the embedding,
output norm and output head, and the chosen blocks renumbered 0..k-1; ``<arch>.block_count`` and
every per-block array (a metadata array with one entry per block) are cut to match. Tensor bytes
are copied as they are, so each kept block has the file's own quant types and shapes.

``edgekit profile --slices`` times a 1-block and a k-block slice and extrapolates to the whole
depth (see :mod:`edgekit.profile.slice_estimate`): seconds on files that would take minutes to profile, and
the kernels timed are the model's own (per-type CPU kernel speed varies 2x with matrix width, so no
device-wide per-type table predicts it; benchmarks/README.md).
"""

from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path

from edgekit.errors import GGUFError, UsageError
from edgekit.models.gguf import GGUF_MAGIC, header_layout

_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def slice_blocks(n_layer: int, k: int) -> tuple[list[int], list[int]]:
    """(one middle block, k blocks evenly spread over the depth that include it): the two slices.

    The k blocks include the first and last (llama.cpp's mixed quant types give them more bits)
    and the middle one, so the k-block slice samples the file's mix of block types."""
    if n_layer < 2 or k < 2 or k > n_layer:
        raise UsageError(
            f"cannot take a {k}-block slice of a {n_layer}-block model",
            fix="profile the whole model (`edgekit profile --model ... --quick`)",
        )
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


def _kv(key: str, vtype: int, value, sub: int | None = None) -> bytes:
    """One serialized metadata pair (scalar, string, or array of scalars/strings)."""

    def one(t, v):
        return (
            _str(v.encode() if isinstance(v, str) else bytes(v)) if t == _STRING else struct.pack("<" + _SCALAR[t], v)
        )

    out = _str(key.encode()) + struct.pack("<I", vtype)
    if vtype == _ARRAY:
        return out + struct.pack("<IQ", sub, len(value)) + b"".join(one(sub, v) for v in value)
    return out + one(vtype, value)


def write_slice(src: str | Path, dst: str | Path, blocks: list[int]) -> int:
    """Write ``dst``: ``src`` with only ``blocks`` kept (renumbered in order). Returns its size in bytes.

    Metadata pairs are copied as raw bytes (a 262k-token vocabulary costs no parsing), except the
    block count and per-block arrays, which are re-serialized; tensor data is copied unchanged."""
    src = Path(src)
    with open(src, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        lay = header_layout(mm, src)
        meta = lay.metadata
        arch = str(meta.get("general.architecture", ""))
        key = f"{arch}.block_count"
        if key not in meta:
            raise GGUFError(
                f"{src}: no {key} in its metadata, so its blocks cannot be sliced",
                fix="profile the whole model (`edgekit profile --model ... --quick`)",
            )
        n_layer = int(meta[key])
        if not blocks or len(set(blocks)) != len(blocks) or min(blocks) < 0 or max(blocks) >= n_layer:
            raise UsageError(
                f"blocks {blocks} are not distinct blocks of a {n_layer}-block model", fix="pick blocks 0..n_layer-1"
            )
        keep = {old: new for new, old in enumerate(sorted(blocks))}
        out_kv = []
        for k, vtype, sub, start, end, value in lay.kvs:
            if k == key:
                out_kv.append(_kv(k, vtype, len(keep)))
            elif sub in _SCALAR and k.startswith(arch + ".") and isinstance(value, list) and len(value) == n_layer:
                out_kv.append(_kv(k, vtype, [value[b] for b in sorted(keep)], sub))  # a per-block array: cut
            else:
                out_kv.append(bytes(mm[start:end]))
        out_kv.append(_kv("general.edgekit.slice_of", _STRING, src.name))
        out_kv.append(_kv("general.edgekit.slice_blocks", _ARRAY, sorted(keep), 5))  # INT32
        plan = []
        for name, dims, ttype, offset, nbytes in lay.tensors:
            if nbytes is None:
                raise GGUFError(
                    f"{src}: tensor {name} has a type ({ttype}) edgekit cannot size", fix="profile the whole model"
                )
            m = _BLOCK.fullmatch(name)
            if m is None or int(m.group(1)) in keep:
                new = name if m is None else f"blk.{keep[int(m.group(1))]}.{m.group(2)}"
                plan.append((new, dims, ttype, lay.data_start + offset, nbytes))
        pad = lambda n: -n % lay.align
        infos, at = [], 0
        for name, dims, ttype, _, nbytes in plan:
            infos.append(_str(name.encode()) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, at))
            at += nbytes + pad(nbytes)
        with open(dst, "wb") as out:
            out.write(struct.pack("<4sIQQ", GGUF_MAGIC, lay.version, len(plan), len(out_kv)))
            for b in out_kv + infos:
                out.write(b)
            out.write(b"\0" * pad(out.tell()))
            for _, _, _, pos, nbytes in plan:
                if pos + nbytes > len(mm):
                    raise GGUFError(f"{src} is truncated", fix="the file is incomplete; re-copy or re-download it")
                out.write(mm[pos : pos + nbytes])
                out.write(b"\0" * pad(nbytes))
    return Path(dst).stat().st_size
