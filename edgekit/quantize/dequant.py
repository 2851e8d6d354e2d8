"""``edgekit quantize SOURCE --dequantize``: an F16 reference from a quantized GGUF.

The catalogue ships quantized files only, so the best float model edgekit can offer is the
quantized weights written back as F16 (``gguf.quants.dequantize``: exactly the numbers llama.cpp
computes with, up to F16 rounding). It is a *reference* for quality deltas and a float source the
ladder can quantize from without ``--allow-requantize``; it is no better than its source, and the
card says so. Every metadata key (tokenizer, chat template, hyper-parameters) is copied;
``general.file_type`` becomes F16; tensors stored as F32 (norms, biases) stay F32, F16 stays F16,
BF16 becomes F32 (exact), every quantized tensor becomes F16. Tensors are streamed one at a time.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from edgekit.errors import BackendError, GGUFError, UsageError
from edgekit.models import check_gguf, variant_file, variant_id
from edgekit.models.integrity import sha256_file
from edgekit.models.variants import register
from edgekit.quantize.ladder import QuantizeResult, existing_variant, tool_versions
from edgekit.quantize.source import FreeBytes, check_disk, partial_for, resolve_source, sweep_partials
from edgekit.schemas.quant import VariantCard, card_path_for

log = logging.getLogger("edgekit.quantize")

F16_FILE_TYPE = 1  # llama_ftype MOSTLY_F16


def _gguf():
    try:
        from importlib.metadata import version

        import gguf

        return gguf, version("gguf")
    except ImportError as e:
        raise BackendError("the gguf package is not installed", fix='pip install "gguf>=0.17,<1"') from e


def reference_note(quant: str) -> str:
    return f"reference is a dequantized {quant} model; absolute quality is relative to it"


def dequantize(source: str, *, force: bool = False, free_bytes: FreeBytes | None = None) -> QuantizeResult:
    """Write an F16 GGUF of quantized ``source`` (catalogue id, variant id, GGUF path) as variant
    ``<base>-f16`` with a card that names what it was dequantized from."""
    gguf, gguf_version = _gguf()
    src = resolve_source(source)
    if src.is_float:
        raise UsageError(
            f"{src.spec} is already a float model ({src.quant}); there is nothing to dequantize",
            fix=f"quantize it directly: `edgekit quantize {src.spec} --to Q8_0,Q4_K_M`",
        )
    dest = variant_file(src.base_model, "F16")
    card, action = existing_variant(dest, src.sha256, src.spec, "F16", force)
    if card is not None:
        return QuantizeResult(card.variant_id, "F16", dest, card_path_for(dest), "exists", card.size_bytes, 0.0, card)
    sweep_partials(dest.parent)
    n_el = int(src.info.extra.get("n_elements", 0))
    check_disk(
        dest.parent,
        int(n_el * 2 * 1.05) + int(src.info.extra.get("header_bytes", 0)),
        f"the F16 reference of {src.base_model}",
        free_bytes,
    )
    t0 = time.perf_counter()
    with partial_for(dest) as tmp:
        counts = _write_f16(gguf, src.path, tmp)
        check_gguf(tmp)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, dest)
    quant = src.quant or "quantized"
    lineage = src.dequantized_from or quant
    new = VariantCard(
        variant_id=variant_id(src.base_model, "F16"),
        base_model=src.base_model,
        format="gguf",
        type="F16",
        path=str(dest),
        size_bytes=size,
        sha256=digest,
        source=src.source_info().model_copy(update={"dequantized_from": quant}),
        tools=tool_versions(gguf=gguf_version),
        params={"tool": "gguf.quants.dequantize", "tensors": counts},
        notes=[reference_note(lineage)],
    )
    register(new, digest)
    dt = time.perf_counter() - t0
    log.info("%s: %s (%d bytes, %.1f s)", new.variant_id, dest, size, dt)
    return QuantizeResult(new.variant_id, "F16", dest, card_path_for(dest), action, size, dt, new)


def _write_f16(gguf, src_path, out_path) -> dict[str, int]:
    """Stream ``src_path`` into ``out_path`` as F16; returns how many tensors were dequantized / kept."""
    T = gguf.GGMLQuantizationType
    try:
        reader = gguf.GGUFReader(str(src_path), "r")
    except Exception as e:  # gguf raises ValueError and friends on a bad file
        raise GGUFError(
            f"{src_path}: the gguf package cannot read it ({type(e).__name__}: {e})", fix="pass a whole GGUF model"
        ) from e
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(out_path), arch)
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type"):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        if f.name == "general.alignment":
            writer.data_alignment = int(f.contents())
        writer.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    writer.add_file_type(F16_FILE_TYPE)
    counts = {"dequantized": 0, "kept_f32": 0, "kept_f16": 0, "bf16_to_f32": 0, "kept_other": 0}
    plan = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # numpy order
        n = int(t.n_elements)
        if t.tensor_type in (T.F32, T.BF16):
            plan.append((t, np.float32, shape, n * 4, None))
            counts["kept_f32" if t.tensor_type == T.F32 else "bf16_to_f32"] += 1
        elif t.tensor_type == T.F16:
            plan.append((t, np.float16, shape, n * 2, None))
            counts["kept_f16"] += 1
        elif t.tensor_type in (T.I8, T.I16, T.I32, T.I64, T.F64):
            plan.append((t, t.data.dtype, shape, int(t.n_bytes), None))
            counts["kept_other"] += 1
        else:
            plan.append((t, np.float16, shape, n * 2, "dequantize"))
            counts["dequantized"] += 1
    for t, dtype, shape, nbytes, _ in plan:
        writer.add_tensor_info(t.name, shape, np.dtype(dtype), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t, dtype, shape, _, how in plan:
        if how == "dequantize":
            try:
                arr = gguf.quants.dequantize(t.data, t.tensor_type)
            except NotImplementedError as e:
                raise UsageError(
                    f"{t.name}: the gguf package cannot dequantize {t.tensor_type.name} tensors",
                    fix="dequantize a model in a more common type (Q4_0, Q4_1, Q8_0, K-quants)",
                ) from e
            arr = arr.astype(np.float16)
        elif t.tensor_type == T.BF16:
            arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        else:
            arr = np.asarray(t.data, dtype=dtype)
        writer.write_tensor_data(np.ascontiguousarray(arr.reshape(shape)))
    writer.close()
    with open(out_path, "rb+") as f:
        os.fsync(f.fileno())
    return counts
