"""Fit a :class:`PerfModel` from one model's profile points (numpy only).

Measured profiles: prefill a*I^2 + b*I + c and decode step alpha + beta*n + gamma*n*ctx are fitted
by non-negative least squares on relative errors (each point weighted by 1/time), where ctx is
the mean per-sequence KV depth during the timed steps (context_tokens + (steps-1)/2).

Interval half-width (relative), per part (prefill, decode):
    r = max(2 * relative RMSE of the fit, 2 * median CV of the measured repetitions, 1 %)
i.e. roughly a 95 % band if relative errors are normal. For n above the largest measured n,
``BATCH_EXTRAPOLATION_UNC`` is added to the decode part.

Published profiles (``published_model`` set): the closed form is used as is (no fit); the
source gives no error bands in readable form, so edgekit assumes +-10 % (``PUBLISHED_REL_UNC``),
+10 % more for n > 1, which the source does not cover (weights assumed streamed once per batched step).
"""

from __future__ import annotations

import statistics

import numpy as np

from edgekit.errors import SchemaError
from edgekit.figures import Figure
from edgekit.perfmodel import published as pub
from edgekit.perfmodel.model import PerfModel
from edgekit.perfmodel.nnls import nnls
from edgekit.schemas.profile import ModelInfo, ModelProfile

INTERVAL_K = 2.0
MIN_REL_UNC = 0.01
EXACT_FIT_UNC = 0.10  # when there are no more points than coefficients
BATCH_EXTRAPOLATION_UNC = 0.25
PUBLISHED_REL_UNC = 0.10
PUBLISHED_BATCH_UNC = 0.10
DEFAULT_OVERHEAD_FRAC = 0.10  # runtime buffers when peak memory was not measured (assumption)
F16_BYTES = 2


def _cv(f: Figure) -> float | None:
    if f.cv is not None:
        return float(f.cv)
    if f.samples and len(f.samples) > 1:
        m = statistics.fmean(f.samples)
        return statistics.stdev(f.samples) / m if m else None
    return None


def _wfit(X: np.ndarray, t: np.ndarray, cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """NNLS on relative errors using columns ``cols``; returns (coef over all columns, relative residuals)."""
    w = 1.0 / t
    x_sub, _ = nnls(X[:, cols] * w[:, None], np.ones_like(t))
    coef = np.zeros(X.shape[1])
    coef[cols] = x_sub
    return [float(x) for x in coef], (X @ coef - t) / t


def _rel_unc(rel_res: np.ndarray, n_coef: int, cvs: list[float]) -> tuple[float, str]:
    n = len(rel_res)
    spread = statistics.median(cvs) if cvs else 0.0
    if n > n_coef:
        rmse = float(np.sqrt(np.sum(rel_res**2) / (n - n_coef)))
        r = max(INTERVAL_K * rmse, INTERVAL_K * spread, MIN_REL_UNC)
        return r, f"2 x max(fit relative RMSE {rmse:.2%}, median repetition CV {spread:.2%})"
    r = max(EXACT_FIT_UNC, INTERVAL_K * spread)
    return r, f"exactly determined fit ({n} points): assumed +-{EXACT_FIT_UNC:.0%} or 2 x repetition CV"


def kv_bytes(info: ModelInfo) -> tuple[float | None, str]:
    if info.kv_bytes_per_token:
        return float(info.kv_bytes_per_token), "kv_bytes_per_token from the profile"
    if info.n_layer and info.n_head_kv and info.n_embd_head:
        return (
            2.0 * info.n_layer * info.n_head_kv * info.n_embd_head * F16_BYTES,
            "KV bytes estimated as 2 x n_layer x n_head_kv x head_dim x 2 B (f16 cache)",
        )
    return None, "KV bytes per token unknown"


def memory_terms(mp: ModelProfile) -> tuple[float | None, float | None, float | None, str]:
    info = mp.model
    kv, kv_how = kv_bytes(info)
    if info.size_bytes is None or kv is None:
        return None, kv, None, "unavailable: model size or KV bytes per token not in the profile"
    w = float(info.size_bytes)
    total = 0.0
    have = False
    for f in (mp.peak_rss_mb, mp.peak_vram_mb):
        if f is not None and f.value is not None and f.method == "measured":
            total += f.value * 1e6 if f.unit.lower() in ("mb",) else f.value * 2**20
            have = True
    if have:
        kv_alloc = kv * (mp.n_ctx or 0)
        over = max(0.0, total - w - kv_alloc)
        how = (
            f"weights + KV ({kv_how}) x (I + n*B) + runtime overhead {over / 1e6:.0f} MB from measured peak memory "
            f"minus weights and the n_ctx={mp.n_ctx} KV cache"
        )
        return w, kv, over, how
    return (
        w,
        kv,
        DEFAULT_OVERHEAD_FRAC * w,
        (
            f"estimated: weights + KV ({kv_how}) x (I + n*B) + {DEFAULT_OVERHEAD_FRAC:.0%} of weights "
            "for runtime buffers "
            "(peak memory not measured)"
        ),
    )


def _identity_and_memory(mp: ModelProfile, source: str | None) -> dict:
    """The fields of a PerfModel that do not depend on how its latency was obtained: the model file,
    the memory terms (:func:`memory_terms`) and the profile it came from."""
    w, kv, over, mem_how = memory_terms(mp)
    return dict(
        model_id=mp.model.id,
        quant=mp.model.quant,
        sha256=mp.model.sha256,
        weights_bytes=w,
        kv_bytes_per_token=kv,
        overhead_bytes=over,
        memory_how=mem_how,
        source=source,
    )


def fit(model_profile: ModelProfile, source: str | None = None) -> PerfModel:
    """Fit (or, for published profiles, transcribe) the performance model of one profiled model."""
    if model_profile.published_model:
        return _from_published(model_profile, source)
    mp = model_profile
    mid = mp.model.id
    where = f" in {source}" if source else ""
    pre = [
        (p.prompt_tokens, p.prefill_s.value, _cv(p.prefill_s))
        for p in mp.prefill
        if p.prefill_s.value is not None and p.prefill_s.value > 0
    ]
    unified = mp.kv_layout == "unified"
    # KV cells each sequence attends during the timed steps (mean): its own depth, or, with a
    # unified cache, the shared prompt plus all n sequences' generated tokens
    dec = [
        (d.n, d.context_tokens + (d.n if unified else 1) * (max(d.steps, 1) - 1) / 2, d.step_s.value, _cv(d.step_s))
        for d in mp.decode
        if d.step_s.value is not None and d.step_s.value > 0
    ]
    if not pre or not dec:
        raise SchemaError(
            f"profile{where} has no measured {'prefill' if not pre else 'decode'} points for model {mid!r}",
            fix=f"re-run `edgekit profile --model {mid}`",
        )
    notes: list[str] = []
    # prefill: columns I^2, I, 1
    I = np.array([p[0] for p in pre], float)
    t = np.array([p[1] for p in pre], float)
    Xp = np.stack([I**2, I, np.ones_like(I)], axis=1)
    n_distinct = len(set(I.tolist()))
    cols_p = [0, 1, 2] if n_distinct >= 3 else ([1, 2] if n_distinct == 2 else [1])
    if n_distinct < 3:
        notes.append(f"prefill measured at {n_distinct} prompt length(s): quadratic term not fitted")
    (a, b, c), rel_p = _wfit(Xp, t, cols_p)
    r_p, how_p = _rel_unc(rel_p, len(cols_p), [p[2] for p in pre if p[2] is not None])
    # decode: columns 1, n, n*ctx
    n = np.array([d[0] for d in dec], float)
    ctx = np.array([d[1] for d in dec], float)
    td = np.array([d[2] for d in dec], float)
    Xd = np.stack([np.ones_like(n), n, n * ctx], axis=1)
    cols_d = [0, 1, 2]
    for drop, why in (
        (1, "beta (per-sequence cost) not separable: no n > 1 points; weights assumed streamed once per step"),
        (2, "gamma (per-KV-token cost) not separable: no spread of contexts"),
    ):
        if np.linalg.matrix_rank(Xd[:, cols_d] / np.abs(Xd[:, cols_d]).max(axis=0)) < len(cols_d):
            cols_d.remove(drop)
            notes.append(why)
    (alpha, beta, gamma), rel_d = _wfit(Xd, td, cols_d)
    r_d, how_d = _rel_unc(rel_d, len(cols_d), [d[3] for d in dec if d[3] is not None])
    # measured batch sizes: base cost (attention removed) at the shallowest context of each n
    knots: dict[float, float] = {}
    for nn, cc, tt, _ in sorted(dec, key=lambda d: (d[0], d[1])):
        knots.setdefault(nn, tt - gamma * nn * cc)
    n_knots = sorted(knots) if len(knots) >= 2 else None
    if n_knots:
        notes.append(f"step base cost interpolated between measured n = {', '.join(f'{k:g}' for k in n_knots)}")
    if unified:
        notes.append("unified KV cache: attention term gamma*n*(prompt + n*generated)")
    pm = PerfModel(
        **_identity_and_memory(mp, source),
        a=a,
        b=b,
        c=c,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        method=f"fitted from measured profile {source or '(unsaved)'}",
        figure_method="estimated",
        rel_unc_prefill=r_p,
        rel_unc_decode=r_d,
        rel_unc_batch=BATCH_EXTRAPOLATION_UNC,
        max_n_measured=int(n.max()),
        interval_how=f"prefill +-{r_p:.1%}: {how_p}; decode +-{r_d:.1%}: {how_d}; "
        f"+{BATCH_EXTRAPOLATION_UNC:.0%} for n > {int(n.max())}",
        notes=notes,
        n_knots=n_knots,
        base_knots=[knots[k] for k in n_knots] if n_knots else None,
        kv_unified=unified,
        residuals={
            "prefill": {"prompt_tokens": I.tolist(), "measured_s": t.tolist(), "rel_err": rel_p.tolist()},
            "decode": {
                "n": n.tolist(),
                "context_tokens": ctx.tolist(),
                "measured_s": td.tolist(),
                "rel_err": rel_d.tolist(),
            },
        },
    )
    if mp.estimate is not None:  # points timed on block slices, extrapolated to the whole depth
        est = mp.estimate
        pm.method = (
            f"estimated (block slices: blocks {est.blocks_one} and {est.blocks_k} of {est.n_layer} timed on this "
            f"device, extrapolated to {est.n_layer} blocks, in {source or '(unsaved)'})"
        )
        pm.rel_unc_prefill += est.rel_unc_prefill
        pm.rel_unc_decode += est.rel_unc_decode
        pm.interval_how += (
            f"; + prefill {est.rel_unc_prefill:.0%}, decode {est.rel_unc_decode:.0%} for the "
            f"extrapolation from slices ({est.how})"
        )
    e = mp.energy
    if (
        e is not None
        and e.prefill_energy_per_token_mj.value is not None
        and e.decode_energy_per_token_mj.value is not None
    ):
        pm.energy_mode = "per_token"
        pm.e_prefill_tok_j = e.prefill_energy_per_token_mj.value / 1e3
        pm.e_decode_tok_j = e.decode_energy_per_token_mj.value / 1e3
        pm.energy_how = (
            f"profile energy per token ({e.prefill_energy_per_token_mj.method}, meter {e.meter}) x tokens; "
            "decode scaled with n by the step-time ratio (assumption)"
        )
    elif e is not None:
        pm.energy_how = f"unavailable: energy per token not measured (meter {e.meter})"
    return pm


def _from_published(mp: ModelProfile, source: str | None) -> PerfModel:
    d = mp.published_model or {}
    cite = d.get("citation", "published")
    pl, dl = d.get("prefill_latency", {}), d.get("decode_latency", {})
    try:
        a, b, c, pad = float(pl["a"]), float(pl["b"]), float(pl["c"]), int(pl["pad_to"])
        n0, m = float(dl["n"]), float(dl["m"])
    except (KeyError, TypeError, ValueError) as ex:
        raise SchemaError(
            f"published_model of {mp.model.id!r}{' in ' + source if source else ''} lacks {ex}",
            fix="regenerate the reference profile with `python -m edgekit.profile.reference`",
        ) from ex
    pm = PerfModel(
        **_identity_and_memory(mp, source),
        a=a,
        b=b,
        c=c,
        pad_to=pad,
        alpha=n0,
        beta=0.0,
        gamma=m,
        method=f"published ({cite})",
        figure_method="published",
        rel_unc_prefill=PUBLISHED_REL_UNC,
        rel_unc_decode=PUBLISHED_REL_UNC,
        rel_unc_batch=PUBLISHED_BATCH_UNC,
        max_n_measured=1,
        interval_how=(
            f"assumed +-{PUBLISHED_REL_UNC:.0%} (the source publishes no error band in readable form), "
            f"+{PUBLISHED_BATCH_UNC:.0%} for n > 1 (not covered by the source)"
        ),
        notes=[
            "n > 1: the published n=1 step cost is paid once per batched step, the context term per sequence "
            "(edgekit assumption; the source covers batch 1 only)"
        ],
    )
    if "prefill_power" in d and "decode_power" in d:
        pm.energy_mode = "published_power"
        pm.published_model = d
        pm.energy_how = (
            f"published power fits x predicted time ({cite}); decode power for O >= "
            f"{d['decode_power'].get('switch_output_tokens')} held at its O = 64 value (the source's "
            "long-decode parameters are not published in readable form); same power assumed for n > 1"
        )
    if mp.prefill:
        ip = np.array([p.prompt_tokens for p in mp.prefill], float)
        tp = np.array([p.prefill_s.value for p in mp.prefill], float)
        pm.residuals["prefill"] = {"prompt_tokens": ip.tolist(), "rel_err": ((pub.prefill_s(d, ip) - tp) / tp).tolist()}
    return pm
