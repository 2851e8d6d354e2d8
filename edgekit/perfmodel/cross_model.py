"""Cross-model estimates: a device model fitted over >= 2 profiled models, used to predict
an unprofiled model (or a quantized variant) from its GGUF facts: file size S, layer count L,
width E, KV bytes per token.

    prefill(I) = F * mean_m(prefill_m(I) / F_m)    F = 12*L*E^2, the per-token matmul parameters
                                                   of the transformer blocks (embeddings are a lookup
                                                   in prefill); n_params when L or E is unknown
    base(n)    = k_n * S + c_n  at each measured n  decode step: weights streamed once per step
                                                   (bytes), plus a per-step overhead; fitted per n
                                                   across the profiled models (NNLS, relative errors)
    gamma      = kv_bytes_per_token / BW_kv         KV read per attended token
    alpha      = S / BW_weights + alpha0            (only used when finished sequences leave)
    beta       = b1 * S + b0                        per-sequence slope beyond the largest measured n
    overhead   = o1 * S + o0                        runtime memory, from measured peak memory
    power      = p0 + p1 * S                        (W, prefill and decode separately)

Rough on CPUs: a quant type's kernel speed depends on the matrix shape (benchmarks/kernel_shapes.py),
so on the CI VM these estimates were ~80 % off on quantized variants (benchmarks/README.md). An entry
estimated from two block slices of the file itself (``edgekit profile --slices``,
:mod:`edgekit.profile.slice_estimate`) was within 15 % there; the planner prefers any profile entry to this.

A quantized variant of a profiled model (same n_layer, n_embd, KV bytes) is predicted by
:func:`predict_variant` instead: the base model's own measured fit, decode step shifted by k_n x
(S_variant - S_base), prefill unchanged.

Why: on the recorded 2-core profile, prefill per token does not follow n_params (gemma-3-270m has
168 M embedding parameters that cost nothing in prefill), and the old per-sequence term
beta = k * n_params over-predicted the 0.5B's step by 40-60 % (leave-one-out). Step time at fixed n
is affine in the bytes read (weight-streaming roofline plus fixed per-step work).

Interval (relative, per part): with >= 3 usable models, 2 x the RMS of leave-one-model-out errors
of that part on the models' recorded sweep points, floored at 10 %; with 2 models (no residual
can be computed) the assumed ``TWO_MODEL_UNC`` (set from leave-one-out on profiles/ci-2core-amd-epyc.json,
see benchmarks/README.md). A model whose quant type family (legacy / k-quant / i-quant / float)
no profiled model shares gets ``UNSEEN_TYPE_UNC`` more: dequantization cost per family is not fitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import SchemaError
from edgekit.perfmodel import published as pub
from edgekit.perfmodel.fit import DEFAULT_OVERHEAD_FRAC, fit, kv_bytes
from edgekit.perfmodel.model import PerfModel
from edgekit.perfmodel.nnls import nnls
from edgekit.schemas.profile import DeviceProfile, ModelInfo, ModelProfile

CROSS_MODEL_UNC = 0.25  # kept for callers; see TWO_MODEL_UNC
TWO_MODEL_UNC = {"prefill": 0.35, "decode": 0.20}
LOO_FLOOR = 0.10
UNSEEN_TYPE_UNC = 0.15
VARIANT_TYPE_UNC = 0.10  # decode, a variant of another quant type than its measured anchor
# prefill of a variant of another quant type: llama.cpp's CPU kernels differ by type (Q4_0/Q8_0 have repacked
# GEMM paths, Q4_1 and the K-quants do not): benchmarks/quantize_ladder.py measured SmolLM2's prefill at
# 425-1213 tok/s across types of one model on the 2-core CI VM (2026-11-27), a factor of ~3, so the anchor's
# prefill says little about the variant's. Point estimate unchanged; the interval says so. --confirm measures it.
VARIANT_TYPE_PREFILL_UNC = 0.60
_REF_I, _REF_S = 256, 256  # reference configuration for power


def quant_family(quant: str | None) -> str:
    """legacy (Q4_0, Q8_0 ...), k-quant (Q4_K_M, Q2_K ...), i-quant (IQ...), float (F16, BF16, F32), or unknown."""
    q = (quant or "").upper()
    if not q:
        return "unknown"
    if q.startswith("IQ") or q.startswith("TQ"):
        return "i-quant"
    if q in ("F16", "FP16", "BF16", "F32", "FP32"):
        return "float"
    if "_K" in q:
        return "k-quant"
    if q.startswith("Q"):
        return "legacy"
    return "unknown"


def layer_params(info: ModelInfo) -> tuple[float, str]:
    """Per-token matmul parameters of the transformer blocks, 12*L*E^2; n_params when L or E is unknown."""
    if info.n_layer and info.n_embd:
        return 12.0 * info.n_layer * info.n_embd**2, "12*n_layer*n_embd^2"
    return float(info.n_params or 0.0), "n_params"


def usable_models(profile: DeviceProfile) -> list[ModelProfile]:
    """Measured entries with the size, parameter count and KV bytes a cross-model fit needs (an entry
    estimated from slices is not a measurement to fit the device on)."""
    return [
        mp
        for mp in profile.measured_models()
        if mp.model.size_bytes and mp.model.n_params and kv_bytes(mp.model)[0] and not mp.published_model
    ]


@dataclass
class DeviceModel:
    device: str
    models: list[str]
    coef: dict  # see the module docstring
    use_dims: bool
    rel_unc: dict  # {"prefill": r, "decode": r}
    interval_how: str
    source: str | None = None
    notes: list[str] = field(default_factory=list)
    families: set = field(default_factory=set)  # quant type families of the profiled models
    batch_shape: tuple | None = None  # (n knots, [k_n, c_n] per knot)
    kv_unified: bool = False

    @property
    def bw_weights_bytes_s(self) -> float:
        k = self.coef["alpha"][0]
        return 1.0 / k if k > 0 else float("inf")

    @property
    def bw_kv_bytes_s(self) -> float:
        k = self.coef["gamma"][0]
        return 1.0 / k if k > 0 else float("inf")

    @property
    def prefill_flops(self) -> float:
        """Effective prefill FLOP/s: 2 FLOPs per block parameter per prompt token."""
        k = self.coef["b"][0]
        return 2.0 / k if k > 0 else float("inf")

    def predict_model(self, info: ModelInfo) -> PerfModel:
        kv, kv_how = kv_bytes(info)
        if info.size_bytes is None or info.n_params is None or kv is None:
            raise SchemaError(
                f"cannot estimate model {info.id!r} across models: size_bytes, n_params and KV bytes per token are "
                "needed",
                fix=f"profile {info.id} on this device (`edgekit profile --model {info.id} --quick --append`)",
            )
        if self.use_dims and not (info.n_layer and info.n_embd):
            raise SchemaError(
                f"cannot estimate model {info.id!r}: n_layer and n_embd are needed",
                fix=f"profile {info.id} on this device",
            )
        size = float(info.size_bytes)
        F, _ = layer_params(info)
        cf = self.coef
        r_p, r_d = self.rel_unc["prefill"], self.rel_unc["decode"]
        how = self.interval_how
        notes = list(self.notes)
        fam = quant_family(info.quant)
        if fam not in self.families:
            r_p, r_d = r_p + UNSEEN_TYPE_UNC, r_d + UNSEEN_TYPE_UNC
            how += (
                f"; +{UNSEEN_TYPE_UNC:.0%}: type {info.quant} ({fam}) shares no quant family with the profiled "
                f"models ({', '.join(sorted(self.families))}), its dequantization cost is not fitted"
            )
            notes.append(f"quant family {fam} not profiled on this device")
        alpha = cf["alpha"][0] * size + cf["alpha"][1]
        pm = PerfModel(
            model_id=info.id,
            quant=info.quant,
            sha256=info.sha256,
            a=cf["a"][0] * F,
            b=cf["b"][0] * F,
            c=cf["c"][0] * F,
            alpha=alpha,
            beta=cf["beta"][0] * size + cf["beta"][1],
            gamma=cf["gamma"][0] * kv,
            method=f"estimated (cross-model from {', '.join(self.models)} on {self.device}"
            f"{' in ' + self.source if self.source else ''})",
            figure_method="estimated",
            rel_unc_prefill=r_p,
            rel_unc_decode=r_d,
            rel_unc_batch=0.0,
            max_n_measured=10**9,
            interval_how=how,
            weights_bytes=size,
            kv_bytes_per_token=kv,
            overhead_bytes=cf["overhead"][0] * size + cf["overhead"][1]
            if "overhead" in cf
            else DEFAULT_OVERHEAD_FRAC * size,
            memory_how=(
                f"estimated: weights + KV ({kv_how}) x (I + n*B) + runtime overhead affine in file size, fitted to "
                f"the measured peak memory of {', '.join(self.models)}"
                if "overhead" in cf
                else f"estimated: weights + KV ({kv_how}) x (I + n*B) + {DEFAULT_OVERHEAD_FRAC:.0%} of weights"
            ),
            source=self.source,
            notes=notes,
        )
        if self.batch_shape:  # step base cost per measured n, affine in the bytes read
            knots, kc = self.batch_shape
            base = [max(k * size + c, 1e-9) for k, c in kc]
            pm.n_knots, pm.base_knots = list(knots), base
            pm.alpha = min(alpha, base[0])
            if len(knots) >= 2:
                pm.beta = max((base[-1] - base[-2]) / (knots[-1] - knots[-2]), 0.0)
            pm.notes.append("step cost at each measured n: affine in file size across " + ", ".join(self.models))
        else:
            pm.max_n_measured = 1
            pm.rel_unc_batch = 0.25
        pm.kv_unified = self.kv_unified
        if "p_prefill" in cf and "p_decode" in cf:
            pm.energy_mode = "power"
            pm.p_prefill_w = cf["p_prefill"][0] + cf["p_prefill"][1] * size
            pm.p_decode_w = cf["p_decode"][0] + cf["p_decode"][1] * size
            pm.energy_how = (
                f"estimated: device power (linear in model size across {', '.join(self.models)}) x predicted time"
            )
        else:
            pm.energy_how = "unavailable: the profiled models have no energy figures"
        return pm


def _lin(x: np.ndarray, y: np.ndarray, intercept: bool) -> list[float]:
    """NNLS fit y = k*x (+ y0) on relative errors; returns [k, y0]."""
    X = np.stack([x, np.ones_like(x)], axis=1) if intercept else x[:, None]
    top = float(np.max(np.abs(y)))
    if top == 0.0:
        return [0.0, 0.0]
    w = 1.0 / np.maximum(np.abs(y), 1e-6 * top)
    coef, _ = nnls(X * w[:, None], y * w)
    return [float(coef[0]), float(coef[1]) if intercept else 0.0]


def _avg_powers(pm: PerfModel) -> tuple[float, float] | None:
    r = pm.predict_arrays(np.array([_REF_I]), np.array([_REF_S]), np.array([1.0]), np.array([_REF_S]))
    if pm.energy_mode is None or np.isnan(r["energy_j"][0]):
        return None
    if pm.energy_mode == "power":
        return pm.p_prefill_w, pm.p_decode_w
    if pm.energy_mode == "per_token":
        return (
            pm.e_prefill_tok_j * _REF_I / float(r["prefill_s"][0]),
            pm.e_decode_tok_j * _REF_S / float(r["decode_s"][0]),
        )

    return float(pub.prefill_power_w(pm.published_model, _REF_I)), float(pub.decode_power_w(pm.published_model, _REF_S))


def _device(profile: DeviceProfile, mps: list[ModelProfile], source: str | None) -> DeviceModel:
    infos = [m.model for m in mps]
    pms = [fit(m, source) for m in mps]
    size = np.array([float(i.size_bytes) for i in infos])
    F = np.array([layer_params(i)[0] for i in infos])
    kv = np.array([kv_bytes(i)[0] for i in infos])
    g = lambda k: np.array([getattr(p, k) for p in pms])
    # prefill: the device's curve per unit of block parameters, averaged over the profiled models
    cf = {k: [float(np.mean(g(k) / F)), 0.0] for k in ("a", "b", "c")}
    cf.update(
        {
            "alpha": _lin(size, g("alpha"), True),
            "beta": _lin(size, g("beta"), True),
            "gamma": _lin(kv, g("gamma"), False),
        }
    )
    pw = [_avg_powers(p) for p in pms]
    if all(x is not None for x in pw):
        cf["p_prefill"] = _lin(size, np.array([x[0] for x in pw]), True)[::-1]
        cf["p_decode"] = _lin(size, np.array([x[1] for x in pw]), True)[::-1]
    if all(m.peak_rss_mb is not None and m.peak_rss_mb.method == "measured" for m in mps):
        cf["overhead"] = _lin(size, g("overhead_bytes"), True)  # measured peak minus weights and KV, per model
    use_dims = all(i.n_layer and i.n_embd for i in infos)
    dm = DeviceModel(
        device=profile.device.name,
        models=[i.id for i in infos],
        coef=cf,
        use_dims=use_dims,
        rel_unc=dict(TWO_MODEL_UNC),
        interval_how="",
        source=source,
        families={quant_family(i.quant) for i in infos},
    )
    knotted = [pm for pm in pms if pm.n_knots and len(pm.n_knots) >= 1]
    if len(knotted) == len(pms):
        common = sorted(set.intersection(*(set(pm.n_knots) for pm in pms)))
        if common:
            kc = [_lin(size, np.array([pm.base_knots[pm.n_knots.index(k)] for pm in pms]), True) for k in common]
            dm.batch_shape = (common, kc)
    if dm.batch_shape is None:  # no common measured n: n=1 step = alpha + beta, affine in size
        dm.notes.append("no batch size measured in common: n > 1 extrapolated")
    dm.kv_unified = bool(pms) and all(pm.kv_unified for pm in pms)
    return dm


def _loo_errors(profile: DeviceProfile, mps: list[ModelProfile], source: str | None) -> dict:
    """Relative errors of each part when each model is predicted from the others, on its recorded points."""
    err: dict[str, list[float]] = {"prefill": [], "decode": []}
    for k, held in enumerate(mps):
        pm = _device(profile, [m for j, m in enumerate(mps) if j != k], source).predict_model(held.model)
        for p in held.prefill:
            if p.prefill_s.value:
                err["prefill"].append(float(pm.prefill_s(p.prompt_tokens)) / p.prefill_s.value - 1)
        unified = held.kv_layout == "unified"
        for d in held.decode:
            if d.step_s.value:
                ctx = d.context_tokens + (d.n if unified else 1) * (max(d.steps, 1) - 1) / 2
                err["decode"].append(float(pm.step_s(d.n, ctx)) / d.step_s.value - 1)
    return err


def fit_device(profile: DeviceProfile, source: str | None = None) -> DeviceModel:
    """Fit the cross-model device model from every complete profiled model with size, params and KV bytes."""
    mps = usable_models(profile)
    where = f" {source}" if source else ""
    if len(mps) < 2:
        raise SchemaError(
            f"profile{where} has {len(mps)} model(s) with size, parameter count and KV bytes; a cross-model estimate "
            "needs 2",
            fix="profile a second model on this device (`edgekit profile --model ... --quick --append`)",
        )
    dm = _device(profile, mps, source)
    if len(mps) >= 3:
        err = _loo_errors(profile, mps, source)
        parts = []
        for part, e in err.items():
            rms = float(np.sqrt(np.mean(np.square(e)))) if e else 0.0
            dm.rel_unc[part] = max(LOO_FLOOR, 2 * rms)
            parts.append(
                f"{part} +-{dm.rel_unc[part]:.0%} (2 x leave-one-model-out RMS {rms:.1%} over {len(e)} "
                f"recorded points, floor {LOO_FLOOR:.0%})"
            )
        dm.interval_how = "; ".join(parts)
    else:
        dm.interval_how = (
            f"assumed prefill +-{TWO_MODEL_UNC['prefill']:.0%}, decode +-{TWO_MODEL_UNC['decode']:.0%} "
            "(2 models: no residual; widths from leave-one-out on the recorded CI profile)"
        )
    return dm


def same_architecture(a: ModelInfo, b: ModelInfo) -> bool:
    """Same block structure and KV layout (a quantized variant of the same model): n_layer, n_embd, KV bytes."""
    return bool(
        a.n_layer and a.n_embd and a.n_layer == b.n_layer and a.n_embd == b.n_embd and kv_bytes(a)[0] == kv_bytes(b)[0]
    )


def predict_variant(dm: DeviceModel, info: ModelInfo, anchor_info: ModelInfo, anchor: PerfModel) -> PerfModel:
    """A variant of a profiled model (same architecture, another file): the anchor's measured model,
    with the decode step shifted by the device's per-byte step cost (k_n, fitted across models) times
    the difference in file size, prefill unchanged (same FLOPs per token). Each part's interval is the
    anchor's plus ``VARIANT_TYPE_UNC`` when the quant type differs (dequantization cost is not fitted),
    plus ``UNSEEN_TYPE_UNC`` when no profiled model shares the type's family."""
    import copy

    dS = float(info.size_bytes) - float(anchor_info.size_bytes)
    pm = copy.deepcopy(anchor)
    other_type = (info.quant or "").upper() != (anchor_info.quant or "").upper()
    extra = VARIANT_TYPE_UNC if other_type else 0.0
    extra_prefill = VARIANT_TYPE_PREFILL_UNC if other_type else 0.0
    fam = quant_family(info.quant)
    if fam not in dm.families:
        extra += UNSEEN_TYPE_UNC
        extra_prefill += UNSEEN_TYPE_UNC
    if dm.batch_shape and pm.n_knots:
        knots, kc = dm.batch_shape
        slope = dict(zip(knots, (k for k, _ in kc)))
        ks = [slope.get(n, kc[-1][0] if n > knots[-1] else kc[0][0]) for n in pm.n_knots]
        pm.base_knots = [max(b + k * dS, 1e-9) for b, k in zip(pm.base_knots, ks)]
    pm.alpha = max(pm.alpha + dm.coef["alpha"][0] * dS, 1e-9)
    pm.model_id, pm.quant, pm.sha256 = info.id, info.quant, info.sha256
    shift = dm.rel_unc["decode"] * abs(dS) / float(anchor_info.size_bytes)  # the fitted per-byte cost is uncertain too
    pm.rel_unc_prefill += extra_prefill
    pm.rel_unc_decode += extra + shift
    pm.method = (
        f"estimated (cross-model: {anchor_info.id} {anchor_info.quant} measured in {dm.source or 'the profile'}, "
        f"decode step shifted by {dS / 1e6:+.0f} MB x the per-byte step cost fitted across {', '.join(dm.models)})"
    )
    pm.figure_method = "estimated"
    pm.interval_how = (
        f"{anchor.interval_how}; prefill +{extra_prefill:.0%}, decode +{extra:.0%} for type {info.quant} vs "
        f"{anchor_info.quant} (per-type CPU kernels); decode "
        f"+{shift:.1%} = cross-model decode +-{dm.rel_unc['decode']:.0%} x |size change| / anchor size"
        f"{' (family ' + fam + ' not profiled)' if fam not in dm.families else ''}"
    )
    pm.weights_bytes = float(info.size_bytes)
    pm.memory_how = f"{anchor.memory_how} (weights = the variant's file size)"
    pm.notes = list(anchor.notes) + [f"variant of {anchor_info.id}: prefill as measured for it (same FLOPs per token)"]
    return pm


def predict_model(device_model: DeviceModel, info: ModelInfo) -> PerfModel:
    return device_model.predict_model(info)
