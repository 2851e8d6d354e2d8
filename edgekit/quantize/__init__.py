"""Make quantized variants of a model: a GGUF ladder through llama.cpp, an F16 reference.

    from edgekit.quantize import quantize, dequantize, list_variants
    ref = dequantize("smollm2-135m-instruct")                     # variant smollm2-135m-instruct-f16
    for r in quantize(ref.variant_id, to="Q8_0,Q4_K_M"):          # variants ...-q8_0, ...-q4_k_m
        print(r.variant_id, r.path, r.card.sha256)

Every output is a file under ``<cache>/models/variants/`` with a card (:class:`VariantCard`) and
a sha256 manifest; its id works wherever a catalogue id does. Other output formats register with
:func:`register_format` (``--to <name>``). Quality against a reference (perplexity, KL divergence,
top-1 agreement, stored in the cards): :mod:`edgekit.quantize.quality`.
"""

from edgekit.models.variants import find_variant, list_variants
from edgekit.quantize.dequant import dequantize, reference_note
from edgekit.quantize.ladder import (
    OUTPUT_FORMATS,
    QuantizeOptions,
    QuantizeResult,
    gguf_types,
    parse_targets,
    quantize,
    register_format,
)
from edgekit.quantize.source import Source, estimate_bytes, resolve_source

__all__ = [
    "quantize",
    "dequantize",
    "list_variants",
    "find_variant",
    "QuantizeResult",
    "QuantizeOptions",
    "OUTPUT_FORMATS",
    "register_format",
    "gguf_types",
    "parse_targets",
    "resolve_source",
    "Source",
    "estimate_bytes",
    "reference_note",
]
