"""``edgekit quantize SOURCE --to onnx-int8``: a GGUF (or a Hugging Face folder) as an int8 ONNX model.

The path, each step with its tool:

1. **load** -- a GGUF through transformers (``from_pretrained(dir, gguf_file=...)``: its tensors
   dequantized to float32, its tokenizer rebuilt from the GGUF's vocabulary), or a Hugging Face
   model folder as it is;
2. **tokenizer check** (GGUF sources) -- the tokenizer that will be saved must turn a fixed probe
   text into the same ids as llama.cpp does on the GGUF; a mismatch is refused in one line before
   any export work (transformers' GGUF conversion drops ``add_bos_token`` and the eos token, so
   both are set from the GGUF's metadata first);
3. **export** -- optimum's ONNX exporter, task ``text-generation-with-past`` (one graph, inputs
   ``input_ids``/``attention_mask``/``position_ids`` + ``past_key_values.*``, all with a dynamic
   batch axis: the engine decodes n samples as one batch);
4. **int8** -- onnxruntime ``quantize_dynamic``: MatMul weights to int8 (per-channel, 7-bit range:
   ``reduce_range``, so that x86 CPUs without VNNI, whose uint8 x int8 kernels sum into int16, do not
   overflow -- with the full range the model's output there is garbage), activations
   quantized at run time (uint8, per tensor), except the MLP down projections (:data:`KEEP_FLOAT`,
   recorded in the card); the float32 graph is deleted unless ``keep_fp32``;
5. **register** -- the folder ``<cache>/models/variants/<base>-onnx-int8/`` (model.onnx,
   tokenizer files, config.json, generation_config.json) is written under a temporary name and
   renamed into place; then its card, ``<folder>.card.json`` (sha256 over the folder's onnx
   files, source GGUF sha256, tool versions, timings).

Needs the ``onnx`` extra (``pip install 'edgekit[onnx]'``, CPU torch); without it every entry
point fails with one line naming the install command.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.quantize.ladder import QuantizeResult

from edgekit import engines
from edgekit.errors import BackendError, EdgekitError, UsageError
from edgekit.models.folder_hash import EXTERNAL_DATA, folder_sha256, onnx_files
from edgekit.models.gguf import read_gguf
from edgekit.models.integrity import sha256_file
from edgekit.models.store import resolve
from edgekit.models.variants import variants_dir
from edgekit.schemas.quant import SourceInfo, VariantCard, card_path_for

log = logging.getLogger("edgekit.quantize")

TYPE = "onnx-int8"
INSTALL = "pip install 'edgekit[onnx]' --extra-index-url https://download.pytorch.org/whl/cpu"
# Digits, spaces, punctuation, a newline, accents, CJK and an emoji: where tokenizers part ways.
PROBE = "Hello world! 3 + 4 = 7; x_1 = [10, 200].\n  Indented\tline: naïve café, 東京, 🙂 -- done."
# MatMuls left in float32: the MLP down projections carry the activation outliers that per-tensor
# dynamic uint8 activations clip (SmolLM2-135M, a 45-token text: ppl 12.6 float32, 21.1 all-int8,
# 14.5 with its 30 down projections kept float; the file grows 222 -> 302 MB). () quantizes all.
KEEP_FLOAT: tuple[str, ...] = ("mlp/down_proj",)
TOOLS = ("transformers", "optimum", "optimum-onnx", "onnxruntime", "onnx", "torch", "gguf", "edgekit")


class TokenizerMismatch(UsageError):
    """The exported tokenizer does not tokenise like the GGUF source."""


def _need_extra() -> None:
    missing = []
    for mod in ("onnxruntime", "optimum.exporters.onnx", "transformers", "torch", "gguf"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod.split(".")[0])
    if missing:
        raise BackendError(f"the onnx path needs {', '.join(missing)}", fix=INSTALL)


def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def variant_folder(base_model: str) -> Path:
    return variants_dir() / f"{base_model}-{TYPE}"


# -- source ------------------------------------------------------------------------------------
def _source(source: str) -> tuple[Path | None, Path, SourceInfo, str]:
    """(gguf file or None, load dir, SourceInfo, base model id) of ``source``."""
    p = Path(source).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(
                f"{p} is neither a Hugging Face model folder (no config.json) nor a GGUF file",
                fix="pass a folder with config.json + weights, a .gguf file or a catalogue id",
            )
        return None, p, SourceInfo(path=str(p.resolve())), p.name.lower()
    r = resolve(source)
    info = read_gguf(r.path)
    src = SourceInfo(
        path=str(r.path),
        sha256=r.sha256 or sha256_file(r.path),
        quant=info.quant,
        model_id=r.entry.id if r.entry else None,
    )
    base = r.entry.id if r.entry else r.path.stem.lower()
    return r.path, r.path.parent, src, base


@contextlib.contextmanager
def _quiet():
    """transformers/optimum print progress bars and tracer warnings; keep them off the terminal
    unless EDGEKIT_DEBUG is set (they go to the edgekit.quantize logger at DEBUG)."""
    if os.environ.get("EDGEKIT_DEBUG"):
        yield
        return
    import warnings

    buf = io.StringIO()
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        logging.getLogger("optimum").setLevel(logging.ERROR)
    except ImportError:
        pass
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        warnings.simplefilter("ignore")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield
    log.debug("%s", buf.getvalue())


def load_tokenizer(spec: str | Path, gguf_info: Any = None):
    """A transformers tokenizer from a folder or a .gguf file. From a GGUF, ``add_bos_token`` and
    the eos token are set from its metadata (transformers' conversion loses them)."""
    from transformers import AutoTokenizer

    p = Path(spec)
    try:
        with _quiet():
            if p.is_file():
                tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
            else:
                tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # an unsupported tokenizer is the user's to fix
        raise UsageError(
            f"could not load a tokenizer from {p} ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
            fix="pass a GGUF whose architecture transformers supports, or a folder with tokenizer files",
        ) from e
    if p.is_file():
        meta = (gguf_info or read_gguf(p)).metadata
        if "tokenizer.ggml.add_bos_token" in meta:
            tok.add_bos_token = bool(meta["tokenizer.ggml.add_bos_token"])
        eos = meta.get("tokenizer.ggml.eos_token_id")
        if eos is not None and int(eos) < len(tok):
            tok.eos_token = tok.convert_ids_to_tokens(int(eos))
    return tok


def check_tokenizer(tokenizer: Any, gguf_path: Path, label: str = "the exported tokenizer") -> list[int]:
    """Refuse (one line) a tokenizer that does not turn :data:`PROBE` into the ids llama.cpp
    gives on ``gguf_path``. Returns the ids."""
    ref_engine = engines.create("llama.cpp", str(gguf_path), n_ctx=256, max_n=1, threads=1)
    try:
        want = ref_engine.tokenize(PROBE, add_special=True)  # type: ignore[attr-defined]
    finally:
        ref_engine.close()
    got = list(tokenizer(PROBE, add_special_tokens=True)["input_ids"])
    if got != want:
        i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise TokenizerMismatch(
            f"tokenizer mismatch: {label} and the GGUF {gguf_path.name} (llama.cpp) "
            "tokenise the probe text differently "
            f"from token {i} ({len(got)} vs {len(want)} ids; got {got[i : i + 3]}, llama.cpp {want[i : i + 3]})",
            fix="export with the GGUF's own tokenizer (drop tokenizer=), "
            "or pass the tokenizer folder that belongs to this model",
        )
    return want


# -- export ------------------------------------------------------------------------------------
def export_onnx_int8(
    source: str,
    out_dir: str | Path | None = None,
    *,
    tokenizer: str | Path | None = None,
    base_model: str | None = None,
    per_channel: bool = True,
    keep_float: tuple[str, ...] = KEEP_FLOAT,
    keep_fp32: bool = False,
    force: bool = False,
    opset: int | None = None,
) -> VariantCard:
    """Export ``source`` (catalogue id, .gguf path, or Hugging Face model folder) to an int8 ONNX
    folder with KV cache and write its card. ``out_dir``: the folder to create (default
    ``<cache>/models/variants/<base>-onnx-int8``); it must not exist unless ``force``.
    ``keep_float``: MatMul node-name fragments left in float32 (:data:`KEEP_FLOAT`; ``()``: all int8).
    ``tokenizer``: a tokenizer folder or .gguf to use instead of the source's own (checked against
    a GGUF source like the source's own). Returns the card (saved as ``<out_dir>.card.json``)."""
    _need_extra()
    gguf_path, load_dir, src, base = _source(source)
    base = base_model or base
    out = Path(out_dir).expanduser() if out_dir is not None else variant_folder(base)
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", fix="pass --force to remake it, or another output folder")
    gguf_info = read_gguf(gguf_path) if gguf_path is not None else None
    t0 = time.perf_counter()
    tok = load_tokenizer(tokenizer if tokenizer is not None else (gguf_path or load_dir), gguf_info)
    probe_ids = None
    if gguf_path is not None:
        label = (
            f"the tokenizer from {Path(tokenizer).name}"
            if tokenizer is not None
            else "the tokenizer transformers rebuilt"
        )
        probe_ids = check_tokenizer(tok, gguf_path, label)
    model = _load_model(gguf_path, load_dir)
    load_s = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_s, opset_used = _export(model, tok, tmp / "fp32", opset)
        del model
        t1 = time.perf_counter()
        kept = _quantize(tmp / "fp32", tmp, per_channel, tuple(keep_float))
        quant_s = time.perf_counter() - t1
        for name in os.listdir(tmp / "fp32"):  # config, generation config, tokenizer files
            if not name.endswith((".onnx",) + EXTERNAL_DATA):
                shutil.move(str(tmp / "fp32" / name), tmp / name)
        tok.save_pretrained(str(tmp))  # again: the checked tokenizer (its add_bos / eos fixes) wins
        if keep_fp32:
            (tmp / "fp32").rename(tmp / "float32")
        else:
            shutil.rmtree(tmp / "fp32")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = onnx_files(out)
    card = VariantCard(
        variant_id=f"{base}-{TYPE}",
        base_model=base,
        format="onnx",
        type=TYPE,
        path=str(out.resolve()),
        size_bytes=sum(p.stat().st_size for p in files),
        sha256=folder_sha256(out),
        source=src,
        tools=tool_versions(),
        params={
            "task": "text-generation-with-past",
            "opset": opset_used,
            "weight_type": "QInt8",
            "op_types": ["MatMul"],
            "per_channel": per_channel,
            "reduce_range": True,
            "float32_matmuls": {"match": list(keep_float), "count": len(kept)},
            "activations": "dynamic uint8",
            "kv_dtype": "float32",
            "files": [p.name for p in files],
            "tokenizer": str(tokenizer) if tokenizer else "source",
            "tokenizer_probe_ids": probe_ids,
            "load_s": round(load_s, 2),
            "export_s": round(export_s, 2),
            "quantize_s": round(quant_s, 2),
        },
        notes=(
            [
                f"weights dequantized from {src.quant} to float32 before export: quality is relative to the "
                f"{src.quant} GGUF, not to the original model"
            ]
            if src.quant
            else []
        ),
    )
    card.save(card_path_for(out))
    return card


def _load_model(gguf_path: Path | None, load_dir: Path):
    from transformers import AutoModelForCausalLM

    where = gguf_path or load_dir
    try:
        with _quiet():
            if gguf_path is not None:
                return AutoModelForCausalLM.from_pretrained(
                    str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32"
                )
            return AutoModelForCausalLM.from_pretrained(str(load_dir), dtype="float32")
    except EdgekitError:
        raise
    except Exception as e:  # unsupported arch / quant type: one line
        raise UsageError(
            f"transformers could not load {where} ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
            fix="use a GGUF whose architecture and tensor types transformers can dequantize "
            "(llama, qwen2, gemma3 ...), or a Hugging Face model folder",
        ) from e


def _export(model: Any, tok: Any, dest: Path, opset: int | None) -> tuple[float, int | None]:
    """optimum's exporter on an in-memory model (saved to a folder first: the exporter loads by path)."""
    from optimum.exporters.onnx import main_export

    t0 = time.perf_counter()
    staged = dest.parent / "hf"
    with _quiet():
        model.save_pretrained(str(staged))
        tok.save_pretrained(str(staged))
        try:
            main_export(
                str(staged),
                output=str(dest),
                task="text-generation-with-past",
                device="cpu",
                do_validation=False,
                opset=opset,
            )
        except Exception as e:
            raise BackendError(
                f"optimum could not export this model to ONNX ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160] if str(e) else ''})",
                fix="check that optimum-onnx supports the architecture; EDGEKIT_DEBUG=1 shows its log",
            ) from e
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    used = None
    try:
        import onnx

        used = max(
            (
                o.version
                for o in onnx.load(str(dest / "model.onnx"), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx")
            ),
            default=None,
        )
    except Exception:  # the opset is a card detail
        pass
    return time.perf_counter() - t0, used


def _quantize(src_dir: Path, dest_dir: Path, per_channel: bool, keep_float: tuple[str, ...]) -> list[str]:
    """Dynamic int8 of every MatMul except those whose node name contains one of ``keep_float``;
    returns the names kept in float32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = src_dir / "model.onnx"
    graph = onnx.load(str(model), load_external_data=False).graph
    kept = [n.name for n in graph.node if n.op_type == "MatMul" and any(k in n.name for k in keep_float)]
    big = any(p.name.endswith(EXTERNAL_DATA) for p in src_dir.iterdir())
    with _quiet():
        quantize_dynamic(
            str(model),
            str(dest_dir / "model.onnx"),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=True,  # 7-bit weights: no int16 overflow in the u8s8 kernels of x86 CPUs without VNNI
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=kept,
            use_external_data_format=big,
        )
    return kept


__all__ = [
    "export_onnx_int8",
    "check_tokenizer",
    "load_tokenizer",
    "folder_sha256",
    "onnx_files",
    "variant_folder",
    "TokenizerMismatch",
    "TYPE",
    "PROBE",
    "INSTALL",
]


def quantize_onnx_int8(source: str, target: str, opts) -> QuantizeResult:
    """``edgekit quantize SOURCE --to onnx-int8``: the handler registered in the quantize ladder's
    OUTPUT_FORMATS. An existing folder is treated as the ladder treats its files (``ladder.existing_variant``):
    reused when its card matches this source and its files hash to the card, remade when broken,
    refused when made from another source; ``--force`` remakes it."""
    import time

    from edgekit.quantize.ladder import QuantizeResult, existing_variant

    t0 = time.perf_counter()
    _need_extra()
    _, _, src, base = _source(source)
    out = variant_folder(base)
    cp = card_path_for(out)
    old, action = existing_variant(out, src.sha256, src.model_id or src.path, TYPE, opts.force)
    if old is not None and not old.params.get("reduce_range"):
        old, action = None, "remade"  # full-range int8 weights: garbage on x86 CPUs without VNNI
    if old is not None:
        return QuantizeResult(
            old.variant_id, old.type, Path(old.path), cp, action, old.size_bytes, time.perf_counter() - t0, old
        )
    card = export_onnx_int8(source, out, force=True)
    return QuantizeResult(
        card.variant_id, card.type, Path(card.path), cp, action, card.size_bytes, time.perf_counter() - t0, card
    )
