"""Closed-form latency and power models from a publication, evaluated from a profile's
``ModelProfile.published_model`` dict (layout documented in :mod:`edgekit.profile.reference`).

All functions accept numpy arrays (vectorised over candidates). Units: seconds, watts, tokens.
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import SchemaError


def _get(d: dict, *keys):
    cur = d
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            raise SchemaError(
                f"published_model is missing {'.'.join(keys)}",
                fix="regenerate the reference profile with `python -m edgekit.profile.reference`",
            )
        cur = cur[k]
    return cur


def padded_input(pm: dict, input_tokens):
    """Input length rounded up to a multiple of ``prefill_latency.pad_to`` (128 in EdgeReasoning)."""
    pad = int(_get(pm, "prefill_latency", "pad_to"))
    i = np.ceil(np.asarray(input_tokens, dtype=float))
    return np.ceil(i / pad) * pad


def prefill_s(pm: dict, input_tokens):
    """prefill = a*Ip^2 + b*Ip + c with Ip the padded input length."""
    a, b, c = (float(_get(pm, "prefill_latency", k)) for k in ("a", "b", "c"))
    ip = padded_input(pm, input_tokens)
    return a * ip**2 + b * ip + c


def decode_token_s(pm: dict, context_tokens):
    """Time of one decode token at KV depth ``context_tokens``: n + m*context."""
    n, m = float(_get(pm, "decode_latency", "n")), float(_get(pm, "decode_latency", "m"))
    return n + m * np.asarray(context_tokens, dtype=float)


def decode_s(pm: dict, input_tokens, output_tokens):
    """O output tokens after I input tokens: O*(n + m*I + m*(O-1)/2)."""
    n, m = float(_get(pm, "decode_latency", "n")), float(_get(pm, "decode_latency", "m"))
    i = np.asarray(input_tokens, dtype=float)
    o = np.asarray(output_tokens, dtype=float)
    return o * (n + m * i + m * (o - 1) / 2)


def prefill_power_w(pm: dict, input_tokens):
    """Prefill power: linear in I, or constant up to a threshold then a*ln(I) + b."""
    p = _get(pm, "prefill_power")
    i = np.maximum(np.asarray(input_tokens, dtype=float), 1.0)
    if p.get("type") == "linear":
        return float(p["intercept"]) + float(p["slope"]) * i
    if p.get("type") == "piecewise_log":
        thr = float(p["threshold"])
        return np.where(i <= thr, float(p["constant"]), float(p["a"]) * np.log(i) + float(p["b"]))
    raise SchemaError(
        f"published_model.prefill_power.type {p.get('type')!r} is unknown", fix="regenerate the reference profile"
    )


def decode_power_w(pm: dict, output_tokens):
    """Decode power a*ln(O) + b for O < switch; for O >= switch the log fit at O = switch-1 (constant).

    The source uses P(t) = P_inf - dP*exp(-t/tau) for long decodes, but does not publish those
    parameters in readable form, so long decodes are modelled with a constant (see the profile notes).
    """
    p = _get(pm, "decode_power")
    sw = float(p["switch_output_tokens"])
    o = np.clip(np.asarray(output_tokens, dtype=float), 1.0, sw - 1)
    return float(p["a"]) * np.log(o) + float(p["b"])


def prefill_energy_j(pm: dict, input_tokens):
    return prefill_power_w(pm, input_tokens) * prefill_s(pm, input_tokens)


def decode_energy_j(pm: dict, input_tokens, output_tokens):
    return decode_power_w(pm, output_tokens) * decode_s(pm, input_tokens, output_tokens)
