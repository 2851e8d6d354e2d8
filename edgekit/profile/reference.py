"""Reference device profile from published data: Jetson AGX Orin 64 GB (EdgeReasoning).

Source: EdgeReasoning (arXiv 2511.01866), repository edge-inference/edgereasoning,
``latency_model.py`` (latency fits) and ``config/analytic.yaml`` (power fits). Setup: Jetson AGX
Orin 64 GB, MAXN power mode, vLLM, FP16 weights, batch 1. Times in s, powers in W.

``ModelProfile.published_model`` layout (read by :mod:`edgekit.perfmodel.published`)::

    citation, source, setup, source_model_name, sweep_ranges {input_tokens, output_tokens}
    prefill_latency  {a, b, c, pad_to}   prefill = a*Ip^2 + b*Ip + c, Ip = ceil(I/pad_to)*pad_to
    decode_latency   {n, m}              O tokens after I: O*(n + m*I + m*(O-1)/2)
                                         (token j costs n + m*(I + j))
    prefill_power    {type: linear, slope, intercept}  or
                     {type: piecewise_log, threshold, constant, a, b}  constant for I <= threshold,
                                                                    else a*ln(I) + b
    decode_power     {a, b, switch_output_tokens}  a*ln(O) + b for O < switch; for O >= switch the
                     source uses P(t) = P_inf - dP*exp(-t/tau) whose per-model parameters are not
                     published in readable form: edgekit holds the O = switch-1 value constant.

The fits, as transcribed, are data: ``edgekit/data/edgereasoning_orin.json``.
Regenerate the committed JSON with ``python -m edgekit.profile.reference [path]``.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

from edgekit.figures import published, unavailable
from edgekit.perfmodel import published as pub
from edgekit.schemas import __version__
from edgekit.schemas.profile import (
    DecodePoint,
    DeviceInfo,
    DeviceProfile,
    EnergyInfo,
    ModelInfo,
    ModelProfile,
    PrefillPoint,
)

CITATION = "EdgeReasoning, arXiv 2511.01866"
SOURCE = (
    "EdgeReasoning: characterizing reasoning LLM deployment on edge GPUs, arXiv 2511.01866; "
    "github.com/edge-inference/edgereasoning latency_model.py (latency fits) and config/analytic.yaml "
    "(power fits). Jetson AGX Orin 64 GB, MAXN, vLLM, FP16, batch 1."
)
SETUP = "Jetson AGX Orin 64 GB, nvpmodel MAXN, vLLM, FP16 weights, batch 1"
REFERENCE_CREATED = "2026-11-27T00:00:00+00:00"  # when this reference was assembled (keeps the JSON reproducible)
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "profiles" / "jetson-agx-orin-64gb-published.json"

LONG_DECODE_NOTE = (
    "decode power for O >= 65 output tokens: the source models P(t) = P_inf - dP*exp(-t/tau), but "
    "the per-model P_inf, dP, tau are not published in readable form; edgekit uses the O < 65 fit "
    "a*ln(O) + b at O = 64 as a constant for long decodes"
)
ARCH_NOTE = (
    "architecture dimensions (layers, width, KV heads, head dim) are from the models' Hugging Face "
    "config.json, not from EdgeReasoning; KV bytes per token assume an FP16 cache"
)

# the source's fits, one record a model (architecture dimensions from Hugging Face, see ARCH_NOTE):
# prefill_latency_abc, decode_latency_nm, prefill_power, decode_power_ab, input_tokens (the input sweep)
FITS = resources.files("edgekit").joinpath("data", "edgereasoning_orin.json")

PREFILL_POINTS = (128, 256, 384, 512, 640, 768, 896, 1024, 1152, 2048, 4096)
DECODE_CONTEXTS = (0, 128, 256, 512, 1024, 2048, 4096)
REF_INPUT, REF_CONTEXT, REF_OUTPUT = 512, 512, 64  # where the single-number energy figures are evaluated


def published_model(row: dict) -> dict:
    (a, b, c), (n, m), (da, db) = row["prefill_latency_abc"], row["decode_latency_nm"], row["decode_power_ab"]
    return {
        "citation": CITATION,
        "source": SOURCE,
        "setup": SETUP,
        "source_model_name": row["source_model_name"],
        "hf_repo": row["hf_repo"],
        "units": {"time": "s", "power": "W", "length": "tokens"},
        "sweep_ranges": {"input_tokens": list(row["input_tokens"]), "output_tokens": [1, 2176]},
        "prefill_latency": {"a": a, "b": b, "c": c, "pad_to": 128, "form": "a*Ip^2 + b*Ip + c, Ip = ceil(I/128)*128"},
        "decode_latency": {"n": n, "m": m, "form": "O*(n + m*I + m*(O-1)/2); token j costs n + m*(I + j)"},
        "prefill_power": dict(row["prefill_power"]),
        "decode_power": {
            "a": da,
            "b": db,
            "switch_output_tokens": 65,
            "form": "a*ln(O) + b for O < 65",
            "long_decode": LONG_DECODE_NOTE,
        },
    }


def _model_profile(row: dict) -> ModelProfile:
    params, n_layer, n_kv, hd = row["n_params"], row["n_layer"], row["n_head_kv"], row["head_dim"]
    pm = published_model(row)
    in_lo, in_hi = pm["sweep_ranges"]["input_tokens"]
    prefill = []
    for I in PREFILL_POINTS:
        t = float(pub.prefill_s(pm, I))
        note = None if in_lo <= I <= in_hi else f"outside the source's input sweep {in_lo}-{in_hi}: extrapolated"
        prefill.append(
            PrefillPoint(
                prompt_tokens=I,
                prefill_s=published(t, "s", CITATION, note=note),
                prefill_tok_s=published(I / t, "tok/s", CITATION, note=note),
            )
        )
    decode = []
    for C in DECODE_CONTEXTS:
        t = float(pub.decode_token_s(pm, C))
        decode.append(
            DecodePoint(
                context_tokens=C,
                n=1,
                steps=1,
                step_s=published(t, "s", CITATION, note="n + m*context (per-token decode cost)"),
                decode_tok_s=published(1 / t, "tok/s", CITATION),
            )
        )
    p_pre = float(pub.prefill_power_w(pm, REF_INPUT))
    p_dec = float(pub.decode_power_w(pm, REF_OUTPUT))
    e_pre = float(pub.prefill_energy_j(pm, REF_INPUT)) / REF_INPUT
    e_dec = p_dec * float(pub.decode_token_s(pm, REF_CONTEXT))
    energy = EnergyInfo(
        meter="published",
        idle_power_mw=unavailable("mW", "idle power is not given by the source"),
        prefill_power_mw=published(
            p_pre * 1e3,
            "mW",
            CITATION,
            note=f"prefill power fit at I={REF_INPUT}; varies with I "
            "(published_model.prefill_power); whether idle power is included is not stated",
        ),
        decode_power_mw=published(p_dec * 1e3, "mW", CITATION, note=LONG_DECODE_NOTE),
        prefill_energy_per_token_mj=published(
            e_pre * 1e3, "mJ", CITATION, note=f"power x prefill time / I at I={REF_INPUT} (derived from the fits)"
        ),
        decode_energy_per_token_mj=published(
            e_dec * 1e3, "mJ", CITATION, note=f"decode power at O={REF_OUTPUT} x token time at context {REF_CONTEXT}"
        ),
        note="energies derived by edgekit as published power x published time; " + LONG_DECODE_NOTE,
    )
    info = ModelInfo(
        id=row["id"],
        arch=row["arch"],
        quant="FP16",
        n_params=params,
        size_bytes=int(round(2 * params)),
        n_layer=n_layer,
        n_embd=row["n_embd"],
        n_head_kv=n_kv,
        n_embd_head=hd,
        kv_bytes_per_token=float(2 * n_layer * n_kv * hd * 2),
    )
    return ModelProfile(
        model=info,
        prefill=prefill,
        decode=decode,
        energy=energy,
        published_model=pm,
        gaps=[
            "load time: not in the source",
            "peak memory: not in the source (edgekit estimates it)",
            "idle power: not in the source",
            "n > 1 parallel sequences: not in the source's latency model (batch 1)",
            LONG_DECODE_NOTE,
        ],
    )


def build_orin_reference(created: str = REFERENCE_CREATED) -> DeviceProfile:
    return DeviceProfile(
        kind="published",
        created=created,
        edgekit_version=__version__,
        device=DeviceInfo(
            name="Jetson AGX Orin 64GB", jetson_model="Jetson AGX Orin 64GB", nvpmodel_mode="MAXN", gpu_offload=True
        ),
        models=[_model_profile(r) for r in json.loads(FITS.read_text())],
        source=SOURCE,
        notes=[
            f"published reference: {SETUP}; every figure is from the source's fits or derived from them",
            LONG_DECODE_NOTE,
            ARCH_NOTE,
            "size_bytes = 2 bytes x parameters (FP16)",
            "prefill points above the source's input sweep (2048, 4096) are extrapolations of the fit",
        ],
    )


def _keep_null_values(obj):
    """Put back ``"value": null`` in unavailable figures (``exclude_none`` drops it, and Figure.value is required)."""
    if isinstance(obj, dict):
        if obj.get("method") == "unavailable" and "unit" in obj:
            obj.setdefault("value", None)
        for v in obj.values():
            _keep_null_values(v)
    elif isinstance(obj, list):
        for v in obj:
            _keep_null_values(v)
    return obj


def save_reference(profile: DeviceProfile, path: str | Path) -> Path:
    """Atomic write like DeviceProfile.save, keeping unavailable figures loadable."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(_keep_null_values(profile.model_dump(mode="json", exclude_none=True)), indent=2) + "\n")
    tmp.replace(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    save_reference(build_orin_reference(), path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
