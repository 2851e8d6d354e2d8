"""Leave-one-model-out validation of cross-model predictions, from a recorded profile only.

For each complete, usable model M of a profile with >= 3 such models: fit the device model
(:func:`fit_device`) on the other models, predict M from its ModelInfo exactly as an unprofiled
model (or a quantized variant) is predicted, and compare with what the profile recorded for M:

- ``points``: every recorded sweep measurement of M (prefill time at each prompt length, decode
  step time at each (context, n)), against the predicted prefill / step time and its interval.
  These are measurements, nothing fitted.
- ``configs``: end-to-end latency of (I, B, n) configurations against M's *own* fitted model
  (``fit()`` of M's entry), i.e. what edgekit would predict had M been profiled. This is a
  reference, not a measurement: the live check is ``perfmodel_validation.py --unprofiled``.

No new timing is taken. Coverage = share of rows whose measured (reference) value lies inside the
predicted interval; MAPE = mean |predicted - measured| / measured.
"""

from __future__ import annotations

import statistics

from edgekit.errors import SchemaError
from edgekit.perfmodel.cross_model import fit_device, usable_models
from edgekit.perfmodel.fit import fit
from edgekit.schemas.profile import DeviceProfile

# (prompt tokens I, budget B, parallel samples n): perfmodel_validation.py's CONFIGS + UNPROFILED_CONFIGS
DEFAULT_CONFIGS = [
    (200, 24, 1),
    (350, 24, 6),
    (200, 48, 3),
    (200, 48, 6),
    (200, 48, 12),
    (200, 96, 1),
    (700, 48, 1),
    (700, 24, 1),
    (1500, 24, 1),
    (700, 48, 6),
    (1500, 96, 3),
    (200, 96, 12),
    (1500, 48, 12),
    (700, 96, 3),
    (200, 48, 1),
    (700, 24, 3),
    (350, 48, 6),
]


def _row(model: str, kind: str, what: str, pred: float, lo: float, hi: float, meas: float) -> dict:
    return {
        "model": model,
        "kind": kind,
        "config": what,
        "predicted_s": pred,
        "lo_s": lo,
        "hi_s": hi,
        "measured_s": meas,
        "error_pct": 100.0 * (pred - meas) / meas,
        "covered": bool(lo <= meas <= hi),
    }


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0, "mape_pct": None, "coverage": None, "max_abs_error_pct": None}
    return {
        "n": len(rows),
        "mape_pct": statistics.fmean(abs(r["error_pct"]) for r in rows),
        "coverage": sum(r["covered"] for r in rows) / len(rows),
        "max_abs_error_pct": max(abs(r["error_pct"]) for r in rows),
    }


def leave_one_out(profile: DeviceProfile, configs=None, source: str | None = None) -> dict:
    """Predict each profiled model from the others; compare with its recorded points and own fit."""
    configs = list(DEFAULT_CONFIGS if configs is None else configs)
    mps = usable_models(profile)
    if len(mps) < 3:
        raise SchemaError(
            f"leave-one-out needs >= 3 complete profiled models with size, parameters and KV bytes; "
            f"profile {source or ''} has {len(mps)}",
            fix="profile a third model on this device (`edgekit profile --model ... --quick --append`)",
        )
    rows: list[dict] = []
    per_model = {}
    for k, held in enumerate(mps):
        rest = [m for j, m in enumerate(mps) if j != k]
        sub = profile.model_copy(update={"models": rest})
        pm = fit_device(sub, source).predict_model(held.model)
        own = fit(held, source)
        mid = held.model.id
        mine: list[dict] = []
        for p in held.prefill:
            if p.prefill_s.value:
                t = float(pm.prefill_s(p.prompt_tokens))
                r = pm.rel_unc_prefill
                mine.append(
                    _row(mid, "point", f"prefill I={p.prompt_tokens}", t, t * (1 - r), t * (1 + r), p.prefill_s.value)
                )
        unified = held.kv_layout == "unified"
        for d in held.decode:
            if d.step_s.value:
                ctx = d.context_tokens + (d.n if unified else 1) * (max(d.steps, 1) - 1) / 2
                t = float(pm.step_s(d.n, ctx))
                r = pm.rel_unc_decode + pm.rel_unc_batch * (d.n > pm.max_n_measured)
                mine.append(
                    _row(
                        mid,
                        "point",
                        f"step ctx={d.context_tokens} n={d.n}",
                        t,
                        t * (1 - r),
                        t * (1 + r),
                        d.step_s.value,
                    )
                )
        for I, B, n in configs:
            e, ref = pm.predict(I, B, n), own.predict(I, B, n)
            mine.append(
                _row(mid, "config", f"I={I} B={B} n={n}", e.latency_s, e.latency_lo_s, e.latency_hi_s, ref.latency_s)
            )
        per_model[mid] = {
            "from": [m.model.id for m in rest],
            "interval": pm.interval_how,
            "points": _summary([r for r in mine if r["kind"] == "point"]),
            "configs": _summary([r for r in mine if r["kind"] == "config"]),
        }
        rows += mine
    return {
        "profile": source,
        "device": profile.device.name,
        "models": [m.model.id for m in mps],
        "points": _summary([r for r in rows if r["kind"] == "point"]),
        "configs": _summary([r for r in rows if r["kind"] == "config"]),
        "per_model": per_model,
        "rows": rows,
        "method": (
            "leave-one-model-out on recorded measurements: fit_device(profile minus M).predict_model(M.model); "
            "points = M's recorded sweep medians (measured); configs = end-to-end latency vs fit(M) "
            "(M's own profile model, a reference, not a live measurement)"
        ),
    }
