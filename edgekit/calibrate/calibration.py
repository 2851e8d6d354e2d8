"""What a calibration produces and a plan stores: the threshold, the statement it carries, the curve.

JSON: :meth:`Calibration.to_dict` gives plain JSON values (``json.dumps(d, allow_nan=False)``
works); the infinite thresholds are written as the strings ``"inf"`` / ``"-inf"``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgekit.errors import SchemaError

METHODS = ("ltt-binomial", "ltt-hb", "conformal-offload-budget", "default-uncalibrated")


def _enc(v: Any) -> Any:
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _dec_float(v: Any, what: str) -> float:
    if v in ("inf", "+inf", "Infinity"):
        return math.inf
    if v in ("-inf", "-Infinity"):
        return -math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SchemaError(
            f"calibration field {what} must be a number or 'inf'/'-inf', got {v!r}", fix="re-create the calibration"
        )
    return float(v)


def pct(x: float) -> str:
    """0.1 -> '10%', 0.025 -> '2.5%'."""
    return f"{x * 100:.4g}%"


@dataclass
class Calibration:
    """A chosen offload threshold: keep a query local iff ``score >= threshold``.

    ``threshold`` may be ``+inf`` (offload everything) or ``-inf`` (keep everything).
    ``offload_rate`` / ``local_wrong_rate`` are measured on the calibration set at ``threshold``
    (``None`` when there was no data / no labels); ``p_value`` is the LTT p-value of the chosen
    threshold (``None`` for the other methods); ``curve`` lists, per candidate threshold from strict
    (more offload) to lenient, ``threshold, offload_rate, local_wrong_rate, p_value`` and, when the
    cloud's correctness was given, ``system_accuracy``.
    """

    method: str
    score: str
    threshold: float
    alpha: float | None
    delta: float | None
    n_calibration: int
    offload_rate: float | None
    local_wrong_rate: float | None
    p_value: float | None
    guarantee: str
    curve: list[dict] = field(default_factory=list)

    def keep_local(self, score: float) -> bool:
        """True when a query with this score stays on the device."""
        return bool(score >= self.threshold)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threshold"] = _enc(self.threshold)
        d["curve"] = [{k: _enc(v) for k, v in row.items()} for row in self.curve]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        if not isinstance(d, dict):
            raise SchemaError(
                f"a calibration must be a JSON object, got {type(d).__name__}", fix="re-create the calibration"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(names - {"curve"} - set(d))
        if missing:
            raise SchemaError(f"calibration is missing field(s) {', '.join(missing)}", fix="re-create the calibration")
        if d["method"] not in METHODS:
            raise SchemaError(f"calibration method {d['method']!r} is unknown", fix=f"use one of {', '.join(METHODS)}")
        kw = {k: d[k] for k in names if k in d}
        kw["threshold"] = _dec_float(d["threshold"], "threshold")
        kw["curve"] = [
            {k: (_dec_float(v, f"curve.{k}") if k == "threshold" else v) for k, v in row.items()}
            for row in d.get("curve", [])
        ]
        return cls(**kw)


def ltt_sentence(alpha: float, delta: float, pvalue: str, n_thresholds: int, offload_all: bool) -> str:
    how = "exact binomial p-values" if pvalue == "binomial" else "Hoeffding-Bentkus p-values"
    s = (
        f"with probability >= {1 - delta:.6g} over the calibration set, at most {pct(alpha)} of queries like these "
        f"are answered locally and wrong (Learn-then-Test, {how}, fixed-sequence testing over {n_thresholds} "
        f"thresholds); marginal over queries like the calibration set; drift voids it"
    )
    if offload_all:
        s += (
            "; no finite threshold could be certified, so every query is offloaded "
            "(more labelled data, a better score or a larger alpha would keep some local)"
        )
    return s


def conformal_sentence(budget: float, bound: float, k: int, n: int, delta: float | None) -> str:
    if delta is None:
        return (
            f"a new query exchangeable with the {n} calibration queries is offloaded with probability "
            f"<= {bound:.4g} <= {pct(budget)} (conformal quantile: the floor((n+1)*budget) = {k}-th smallest "
            f"calibration score); on average over calibration sets, not for every one; drift voids it"
        )
    return (
        f"with probability >= {1 - delta:.6g} over the calibration set, at most {pct(budget)} of queries like "
        f"these are offloaded (order statistic {k} of {n}, exact binomial bound); drift voids it"
    )
