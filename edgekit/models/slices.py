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

import re
from pathlib import Path

from edgekit.errors import BackendError, GGUFError, UsageError

_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def _gguf():
    try:
        import gguf

        return gguf
    except ImportError as e:  # pragma: no cover - a base dependency
        raise BackendError("the gguf package is not installed", fix='pip install "gguf>=0.17,<1"') from e


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


def write_slice(src: str | Path, dst: str | Path, blocks: list[int]) -> int:
    """Write ``dst``: ``src`` with only ``blocks`` kept (renumbered in order). Returns its size in bytes."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(str(src), "r")
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError and friends on a bad file
        raise GGUFError(f"{src}: the gguf package cannot read it ({type(e).__name__}: {e})", fix="pass a whole GGUF model") from e
    arch = str(reader.fields["general.architecture"].contents())
    key = f"{arch}.block_count"
    if key not in reader.fields:
        raise GGUFError(f"{src}: no {key} in its metadata, so its blocks cannot be sliced",
                        fix="profile the whole model (`edgekit profile --model ... --quick`)")
    n_layer = int(reader.fields[key].contents())
    if not blocks or len(set(blocks)) != len(blocks) or min(blocks) < 0 or max(blocks) >= n_layer:
        raise UsageError(f"blocks {blocks} are not distinct blocks of a {n_layer}-block model", fix="pick blocks 0..n_layer-1")
    keep = {old: new for new, old in enumerate(sorted(blocks))}
    writer = gguf.GGUFWriter(str(dst), arch)
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = f.contents()
        if f.name == "general.alignment":
            writer.data_alignment = int(value)
        if f.name == key:
            value = len(keep)
        elif sub is not None and f.name.startswith(arch + ".") and isinstance(value, list) and len(value) == n_layer:
            value = [value[b] for b in sorted(keep)]  # a per-block array (e.g. heads per layer)
        writer.add_key_value(f.name, value, vtype, sub_type=sub)
    writer.add_string("general.edgekit.slice_of", Path(src).name)
    writer.add_array("general.edgekit.slice_blocks", sorted(keep))
    plan = []
    for t in reader.tensors:
        m = _BLOCK.fullmatch(t.name)
        if m is None:
            plan.append((t.name, t))
        elif int(m.group(1)) in keep:
            plan.append((f"blk.{keep[int(m.group(1))]}.{m.group(2)}", t))
    for name, t in plan:
        writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, t in plan:
        writer.write_tensor_data(t.data)
    writer.close()
    return Path(dst).stat().st_size
