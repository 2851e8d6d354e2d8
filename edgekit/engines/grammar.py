"""JSON schema -> GBNF grammar for the llama.cpp engine, failing closed.

llama.cpp's converter (llama-cpp-python's port, ``llama_cpp.llama_grammar``) silently drops
keywords it does not understand and then generates *less* constrained output (llama-server
does the same, issue #19051). edgekit refuses instead: every keyword in the schema must be one
the grammar enforces, or one that :func:`edgekit.runtime.aggregate.json_answer` checks after
generation with ``jsonschema`` (a sample that violates it carries no answer). Anything else is
refused with the keyword named.
"""

from __future__ import annotations

import json
from typing import Any

from edgekit.errors import UsageError
from edgekit.schemas.options import SamplingOptions

# enforced by the grammar itself
ENFORCED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "pattern",
    "minLength",
    "maxLength",
}
# not in the grammar, checked after generation (jsonschema): a violating sample has no answer
VALIDATED_AFTER = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems", "format"}
ANNOTATIONS = {
    "$schema",
    "$id",
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "readOnly",
    "writeOnly",
    "deprecated",
}
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _walk(schema: Any, path: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise UsageError(
            f"JSON schema at {path} is a {type(schema).__name__}, not an object",
            fix='pass a JSON schema object, e.g. {"type": "object", ...}',
        )
    for k, v in schema.items():
        if k in ANNOTATIONS or k in VALIDATED_AFTER:
            continue
        if k not in ENFORCED:
            raise UsageError(
                f"JSON schema keyword {k!r} at {path} cannot be enforced by a grammar; refusing to generate "
                "unconstrained",
                fix=f"remove {k!r} or express it with: {', '.join(sorted(ENFORCED))}",
            )
        if k in _SUBSCHEMA_MAPS and isinstance(v, dict):
            for name, sub in v.items():
                _walk(sub, f"{path}/{k}/{name}")
        elif k in _SUBSCHEMA_LISTS and isinstance(v, list):
            for i, sub in enumerate(v):
                _walk(sub, f"{path}/{k}/{i}")
        elif k in ("items", "additionalProperties") and isinstance(v, (dict, bool)):
            _walk(v, f"{path}/{k}")


def schema_to_grammar(schema: dict) -> str:
    """GBNF for ``schema``; UsageError (with the reason) when it cannot be enforced."""
    _walk(schema, "#")
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf  # only when constraining
    except ImportError as e:  # pragma: no cover - install problem
        raise UsageError(
            "JSON schema constraints need llama-cpp-python", fix='pip install "llama-cpp-python>=0.3.36,<0.4"'
        ) from e
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises AssertionError/ValueError/KeyError
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise UsageError(
            f"JSON schema cannot be turned into a grammar ({reason}); refusing to generate unconstrained",
            fix="simplify the schema (local $ref only; supported keywords: " + ", ".join(sorted(ENFORCED)) + ")",
        ) from None


def grammar_for(options: SamplingOptions) -> str | None:
    if options.grammar is not None:
        return options.grammar
    if options.json_schema is not None:
        return schema_to_grammar(options.json_schema)
    return None
