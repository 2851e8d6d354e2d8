"""Cross-model estimates: a device model fitted over >= 2 profiled models, used to predict
an unprofiled model from its size, parameter count and KV bytes per token.

    alpha  = size_bytes / BW_weights + alpha0      weights streamed once per decode step
    beta   = k_beta * n_params                     per-sequence compute per step
    gamma  = kv_bytes_per_token / BW_kv            KV read per attended token
    b      = 2 * n_params / FLOPS_prefill          2 FLOPs per parameter per prompt token
    a      = k_a * n_layer * n_embd                attention (falls back to kv_bytes_per_token)
    c      = c1 * size_bytes + c0                  fixed prefill overhead
    power  = p0 + p1 * size_bytes                  (W, prefill and decode separately)

Each is a non-negative least-squares fit over the profiled models' own fitted coefficients.
Predictions are marked "estimated (cross-model from ...)"; the interval is
max(25 %, 2 x the worst leave-one-out error) when >= 3 models, else an assumed 25 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgekit.errors import SchemaError
from edgekit.perfmodel.fit import DEFAULT_OVERHEAD_FRAC, fit, kv_bytes
from edgekit.perfmodel import published as pub
from edgekit.perfmodel.model import PerfModel
from edgekit.perfmodel.nnls import nnls
from edgekit.schemas.profile import DeviceProfile, ModelInfo

CROSS_MODEL_UNC = 0.25
_REF_I, _REF_S = 256, 256  # reference configuration for leave-one-out errors and power


def _attn_feature(info: ModelInfo, use_dims: bool) -> float:
    if use_dims:
        return float(info.n_layer * info.n_embd)
    kv, _ = kv_bytes(info)
    return float(kv)


@dataclass
class DeviceModel:
    device: str
    models: list[str]
    coef: dict  # name -> list of coefficients (see module docstring)
    use_dims: bool
    rel_unc: float
    interval_how: str
    source: Optional[str] = None
    notes: list[str] = field(default_factory=list)

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
        k = self.coef["b"][0]
        return 2.0 / k if k > 0 else float("inf")

    def predict_model(self, info: ModelInfo) -> PerfModel:
        kv, kv_how = kv_bytes(info)
        if info.size_bytes is None or info.n_params is None or kv is None:
            raise SchemaError(
                f"cannot estimate model {info.id!r} across models: size_bytes, n_params and KV bytes per token are needed",
                fix=f"profile {info.id} on this device (`edgekit profile --model {info.id}`)")
        if self.use_dims and not (info.n_layer and info.n_embd):
            raise SchemaError(f"cannot estimate model {info.id!r}: n_layer and n_embd are needed",
                              fix=f"profile {info.id} on this device")
        size, P = float(info.size_bytes), float(info.n_params)
        cf = self.coef
        pm = PerfModel(
            model_id=info.id, quant=info.quant, sha256=info.sha256,
            a=cf["a"][0] * _attn_feature(info, self.use_dims), b=cf["b"][0] * P, c=cf["c"][0] * size + cf["c"][1],
            alpha=cf["alpha"][0] * size + cf["alpha"][1], beta=cf["beta"][0] * P, gamma=cf["gamma"][0] * kv,
            method=f"estimated (cross-model from {', '.join(self.models)} on {self.device}"
                   f"{' in ' + self.source if self.source else ''})",
            figure_method="estimated", rel_unc_prefill=self.rel_unc, rel_unc_decode=self.rel_unc,
            rel_unc_batch=0.0, max_n_measured=10**9, interval_how=self.interval_how,
            weights_bytes=size, kv_bytes_per_token=kv, overhead_bytes=DEFAULT_OVERHEAD_FRAC * size,
            memory_how=f"estimated: weights + KV ({kv_how}) x (I + n*B) + {DEFAULT_OVERHEAD_FRAC:.0%} of weights",
            source=self.source, notes=list(self.notes),
        )
        shape = getattr(self, "batch_shape", None)
        if shape:  # batch scaling is a device/kernel property: reuse the profiled models' mean shape
            pm.n_knots = list(shape[0])
            pm.base_knots = [(pm.alpha + pm.beta) * r for r in shape[1]]
            pm.notes.append("step cost vs n: mean measured shape of " + ", ".join(self.models))
        pm.kv_unified = bool(getattr(self, "kv_unified", False))
        if "p_prefill" in cf and "p_decode" in cf:
            pm.energy_mode = "power"
            pm.p_prefill_w = cf["p_prefill"][0] + cf["p_prefill"][1] * size
            pm.p_decode_w = cf["p_decode"][0] + cf["p_decode"][1] * size
            pm.energy_how = f"estimated: device power (linear in model size across {', '.join(self.models)}) x predicted time"
        else:
            pm.energy_how = "unavailable: the profiled models have no energy figures"
        return pm


def _lin(x: np.ndarray, y: np.ndarray, intercept: bool) -> list[float]:
    """NNLS fit y = k*x (+ y0); returns [k, y0]."""
    X = np.stack([x, np.ones_like(x)], axis=1) if intercept else x[:, None]
    top = float(np.max(np.abs(y)))
    if top == 0.0:
        return [0.0, 0.0]
    w = 1.0 / np.maximum(np.abs(y), 1e-6 * top)
    coef, _ = nnls(X * w[:, None], y * w)
    return [float(coef[0]), float(coef[1]) if intercept else 0.0]


def _avg_powers(pm: PerfModel) -> Optional[tuple[float, float]]:
    r = pm.predict_arrays(np.array([_REF_I]), np.array([_REF_S]), np.array([1.0]), np.array([_REF_S]))
    if pm.energy_mode is None or np.isnan(r["energy_j"][0]):
        return None
    if pm.energy_mode == "power":
        return pm.p_prefill_w, pm.p_decode_w
    if pm.energy_mode == "per_token":
        return (pm.e_prefill_tok_j * _REF_I / float(r["prefill_s"][0]),
                pm.e_decode_tok_j * _REF_S / float(r["decode_s"][0]))

    return float(pub.prefill_power_w(pm.published_model, _REF_I)), float(pub.decode_power_w(pm.published_model, _REF_S))


def _coefs(infos: list[ModelInfo], pms: list[PerfModel], use_dims: bool) -> dict:
    size = np.array([float(i.size_bytes) for i in infos])
    P = np.array([float(i.n_params) for i in infos])
    kv = np.array([kv_bytes(i)[0] for i in infos])
    attn = np.array([_attn_feature(i, use_dims) for i in infos])
    g = lambda k: np.array([getattr(p, k) for p in pms])  # noqa: E731
    cf = {"alpha": _lin(size, g("alpha"), True), "beta": _lin(P, g("beta"), False),
          "gamma": _lin(kv, g("gamma"), False), "b": _lin(P, g("b"), False),
          "a": _lin(attn, g("a"), False), "c": _lin(size, g("c"), True)}
    pw = [_avg_powers(p) for p in pms]
    if all(x is not None for x in pw):
        cf["p_prefill"] = _lin(size, np.array([x[0] for x in pw]), True)[::-1]
        cf["p_decode"] = _lin(size, np.array([x[1] for x in pw]), True)[::-1]
    return cf


def fit_device(profile: DeviceProfile, source: str | None = None) -> DeviceModel:
    """Fit the cross-model device model from every profiled model with size, params and KV bytes."""
    infos, pms = [], []
    for mp in profile.complete_models():
        i = mp.model
        if i.size_bytes and i.n_params and kv_bytes(i)[0]:
            infos.append(i)
            pms.append(fit(mp, source))
    where = f" {source}" if source else ""
    if len(infos) < 2:
        raise SchemaError(
            f"profile{where} has {len(infos)} model(s) with size, parameter count and KV bytes; a cross-model estimate needs 2",
            fix="profile a second model on this device (`edgekit profile --model ...`)")
    use_dims = all(i.n_layer and i.n_embd for i in infos)
    cf = _coefs(infos, pms, use_dims)
    dm = DeviceModel(device=profile.device.name, models=[i.id for i in infos], coef=cf, use_dims=use_dims,
                     rel_unc=CROSS_MODEL_UNC, interval_how=f"assumed +-{CROSS_MODEL_UNC:.0%} (2 models: no residual)",
                     source=source)
    knotted = [pm for pm in pms if pm.n_knots and len(pm.n_knots) >= 2 and pm.base_knots[0] > 0]
    common = sorted(set.intersection(*(set(pm.n_knots) for pm in knotted))) if knotted else []
    if len(common) >= 2:
        ratios = [[pm.base_knots[pm.n_knots.index(k)] / pm.base_knots[pm.n_knots.index(common[0])] for k in common]
                  for pm in knotted]
        dm.batch_shape = (common, [float(np.mean(col)) for col in zip(*ratios)])
    dm.kv_unified = bool(pms) and all(pm.kv_unified for pm in pms)
    if len(infos) >= 3:
        worst = 0.0
        for k in range(len(infos)):
            rest = [j for j in range(len(infos)) if j != k]
            sub = DeviceModel(dm.device, [infos[j].id for j in rest], _coefs([infos[j] for j in rest],
                              [pms[j] for j in rest], use_dims), use_dims, CROSS_MODEL_UNC, "")
            est = sub.predict_model(infos[k]).predict(_REF_I, _REF_S, 1).latency_s
            true = pms[k].predict(_REF_I, _REF_S, 1).latency_s
            worst = max(worst, abs(est - true) / true)
        dm.rel_unc = max(CROSS_MODEL_UNC, 2 * worst)
        dm.interval_how = (f"+-{dm.rel_unc:.0%}: max(25 % floor, 2 x worst leave-one-out error {worst:.1%} "
                           f"at I={_REF_I}, S={_REF_S}, n=1)")
    return dm


def predict_model(device_model: DeviceModel, info: ModelInfo) -> PerfModel:
    return device_model.predict_model(info)
