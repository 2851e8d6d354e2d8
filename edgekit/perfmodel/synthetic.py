"""Synthetic profiles with known coefficients (tests, benchmarks, examples).

Each point is ``reps`` repetitions of the true time times (1 + noise * N(0, 1)).
The decode sweep mirrors what ``edgekit profile`` runs: n = 1 over contexts, and n in
{1, 2, 4, 8, 16} at the prompt context.
"""

from __future__ import annotations

import numpy as np

from edgekit.figures import measured
from edgekit.schemas.profile import (
    DecodePoint,
    DeviceInfo,
    DeviceProfile,
    EnergyInfo,
    ModelInfo,
    ModelProfile,
    PrefillPoint,
)

PROMPTS = (16, 64, 128, 256, 512, 1024, 2048)
CONTEXTS = (0, 256, 1024, 4096)
NS = (1, 2, 4, 8, 16)
STEPS = 32


def true_prefill(t: dict, I):
    I = np.asarray(I, float)
    return t["a"] * I**2 + t["b"] * I + t["c"]


def true_step(t: dict, n, ctx):
    n = np.asarray(n, float)
    return t["alpha"] + t["beta"] * n + t["gamma"] * n * np.asarray(ctx, float)


def true_total(t: dict, I, S, n):
    """Brute-force sum over steps (independent of the closed form under test)."""
    s = np.arange(1, int(S) + 1)
    return float(true_prefill(t, I) + np.sum(true_step(t, n, I + s - 1)))


def model_profile(
    model_id: str,
    truth: dict,
    *,
    noise: float = 0.01,
    reps: int = 5,
    seed: int = 0,
    size_bytes: int | None = None,
    n_params: float | None = None,
    kv_bytes_per_token: float | None = None,
    n_layer: int | None = None,
    n_embd: int | None = None,
    prompt_ctx: int = 128,
    energy_mj: tuple[float, float] | None = None,
    peak_rss_mb: float | None = None,
) -> ModelProfile:
    rng = np.random.default_rng(seed)

    def fig(v: float, unit: str = "s"):
        return measured((v * (1 + noise * rng.standard_normal(reps))).tolist(), unit, source="synthetic")

    pre = []
    for I in PROMPTS:
        f = fig(float(true_prefill(truth, I)))
        pre.append(
            PrefillPoint(prompt_tokens=I, prefill_s=f, prefill_tok_s=measured([I / x for x in f.samples], "tok/s"))
        )
    dec = []
    pts = [(1, c) for c in CONTEXTS] + [(n, prompt_ctx) for n in NS]
    for n, c in pts:
        f = fig(float(true_step(truth, n, c + (STEPS - 1) / 2)))
        dec.append(
            DecodePoint(
                context_tokens=c, n=n, steps=STEPS, step_s=f, decode_tok_s=measured([n / x for x in f.samples], "tok/s")
            )
        )
    energy = None
    if energy_mj is not None:
        energy = EnergyInfo(
            meter="synthetic",
            idle_power_mw=measured([1000.0], "mW"),
            prefill_energy_per_token_mj=measured([energy_mj[0]], "mJ"),
            decode_energy_per_token_mj=measured([energy_mj[1]], "mJ"),
        )
    return ModelProfile(
        model=ModelInfo(
            id=model_id,
            quant="Q4_K_M",
            size_bytes=size_bytes,
            n_params=n_params,
            kv_bytes_per_token=kv_bytes_per_token,
            n_layer=n_layer,
            n_embd=n_embd,
        ),
        n_ctx=4096 + 512,
        prefill=pre,
        decode=dec,
        energy=energy,
        peak_rss_mb=None if peak_rss_mb is None else measured([peak_rss_mb], "MB"),
    )


def device_profile(models: list[ModelProfile], name: str = "synthetic device") -> DeviceProfile:
    return DeviceProfile(device=DeviceInfo(name=name), models=models, created="2026-01-01T00:00:00+00:00")


def device_truth(
    size_bytes: float,
    n_params: float,
    kv: float,
    n_layer: int,
    n_embd: int,
    *,
    bw=50e9,
    alpha0=0.002,
    k_beta=2e-13,
    bw_kv=20e9,
    flops=2e12,
    k_a=8e-18,
    k_c=1e-11,
) -> dict:
    """Coefficients of a model on a device that follows the cross-model structure of
    :mod:`edgekit.perfmodel.cross_model` exactly: prefill a, b, c proportional to the block parameters
    F = 12*L*E^2 (b: 2 FLOPs per parameter per token at ``flops``), step cost affine in file size."""
    F = 12.0 * n_layer * n_embd**2
    return {
        "alpha": size_bytes / bw + alpha0,
        "beta": k_beta * size_bytes,
        "gamma": kv / bw_kv,
        "b": 2 * F / flops,
        "a": k_a * F,
        "c": k_c * F,
    }
