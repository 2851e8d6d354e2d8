"""Quantized-variant cards: what a variant is, where it came from, and how much quality it lost.

``edgekit quantize`` writes one card (JSON, ``<file>.card.json`` beside the variant) per output.
The planner reads cards to turn a variant into a candidate: its size, its lineage (``base_model``)
and its quality delta against the reference, from which it derives a labelled accuracy prior when
the variant has no accuracy table of its own.

Every quality number is a :class:`~edgekit.figures.Figure` (``measured`` with the text and token
count in ``source``), never a bare float.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.figures import Figure
from edgekit.jsonio import load_versioned, save_atomic

CARD_SCHEMA_VERSION = 1

VariantFormat = Literal["gguf", "onnx"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SourceInfo(_M):
    """The file (or folder) a variant was made from."""

    path: str
    sha256: str | None = None  # of the file; for a folder, of its sorted (name, sha256) listing
    quant: str | None = None  # the source's own type: "F16", "Q4_K_M", ...
    model_id: str | None = None  # catalogue id when the source is a catalogue model
    dequantized_from: str | None = None  # set on an F16 reference made by --dequantize: the 4-bit type it came from


class QualityReport(_M):
    """Quality of one variant on a fixed text, relative to a reference variant."""

    text_name: str  # e.g. "edgekit/data/texts/<name>.txt"
    text_sha256: str
    n_tokens: int  # tokens scored (the second half of each n_ctx window, as llama-perplexity does)
    n_ctx: int  # window length used
    reference: str | None = None  # variant id / path of the reference; None when this is the reference
    ppl: Figure  # perplexity (unit "ppl")
    kl_mean: Figure | None = None  # mean KL(ref || variant) over scored tokens, nats (unit "nats")
    kl_p99: Figure | None = None
    top1_agree: Figure | None = None  # fraction of tokens where argmax matches the reference (unit "fraction")
    note: str | None = None


class VariantCard(_M):
    schema_version: int = CARD_SCHEMA_VERSION
    kind: Literal["edgekit-variant-card"] = "edgekit-variant-card"
    variant_id: str  # catalogue-style id: "<base_model>-<type lower>", e.g. "smollm2-135m-instruct-q8_0"
    base_model: str  # catalogue id (or file stem) of the model family this variant belongs to
    format: VariantFormat
    type: str  # "Q8_0", "F16", "onnx-int8", ...
    path: str  # file (gguf) or folder (onnx)
    size_bytes: int
    sha256: str  # of the file; for onnx, of the model.onnx file(s) listing
    source: SourceInfo
    tools: dict[str, str] = Field(default_factory=dict)  # {"llama-cpp-python": "0.3.36", "edgekit": ..., "gguf": ...}
    params: dict[str, object] = Field(default_factory=dict)  # threads, imatrix path+sha, allow_requantize ...
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    quality: QualityReport | None = None
    notes: list[str] = Field(
        default_factory=list
    )  # e.g. "reference is a dequantized Q4_1 model: quality is relative to it"

    def save(self, path: str | Path) -> Path:
        return save_atomic(self, path, "variant card")


def card_path_for(variant_path: str | Path) -> Path:
    p = Path(variant_path)
    return p.with_name(p.name + ".card.json")


def load_card(path: str | Path) -> VariantCard:
    return load_versioned(
        path,
        VariantCard,
        "variant card",
        CARD_SCHEMA_VERSION,
        remake="edgekit quantize SOURCE --to TYPE",
        missing_fix="run edgekit quantize to make the variant",
    )
