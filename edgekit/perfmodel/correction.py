"""Live correction of a performance model: how much slower (or faster) the device runs right now.

A profile is measured once; the device then drifts (thermal throttling, a noisy neighbour, a VM
whose speed moves 30-45 % between minutes). :class:`LiveCorrection` keeps two factors, one for
prefill (per prompt token: the whole prefill curve is scaled) and one per decode step, each an
exponentially weighted moving average of measured / predicted over recent requests:

    r      = clamp(measured / predicted, lo, hi)             one request, one part
    log k  = median(log r) of the first ``min_samples`` requests (warm-up)
    log k <- (1 - alpha) * log k + alpha * log r             every request after that

The average is taken in log space (a geometric mean: a 2x slowdown and a 2x speed-up weigh the
same), and every ratio is clamped to [lo, hi] before it enters, so one outlier (a page fault, a
request that waited on swap) moves k by at most a factor (hi)**alpha, and k itself never leaves
[lo, hi]. Until ``min_samples`` requests have been seen a factor is not applied (k = 1: the plan's
model as is); the median over those first requests starts the average, so one slow first request
(page cache still cold after loading the model) does not set it. Thread-safe; ``snapshot()`` is a
plain dict and ``restore()`` reads it back.
"""

from __future__ import annotations

import math
import statistics
import threading
from dataclasses import replace
from typing import Any

from edgekit.figures import Figure, estimated
from edgekit.perfmodel.model import PerfModel

PARTS = ("prefill", "decode")
MIN_PART_S = 1e-4  # a part predicted (or measured) shorter than this carries no information


def _finite_pos(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


class LiveCorrection:
    def __init__(self, alpha: float = 0.2, lo: float = 0.25, hi: float = 4.0, min_samples: int = 3):
        if not (0 < alpha <= 1):
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if not (0 < lo <= 1 <= hi and math.isfinite(hi)):
            raise ValueError(f"the clamp must satisfy 0 < lo <= 1 <= hi < inf, got [{lo}, {hi}]")
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.alpha, self.lo, self.hi, self.min_samples = float(alpha), float(lo), float(hi), int(min_samples)
        self._lock = threading.Lock()
        self._log = {p: 0.0 for p in PARTS}
        self._n = {p: 0 for p in PARTS}
        self._last = {p: None for p in PARTS}  # last raw (unclamped) ratio
        self._warm: dict[str, list[float]] = {p: [] for p in PARTS}  # log ratios before min_samples
        self.requests = 0

    # -- updates ---------------------------------------------------------------------------------
    def update(
        self,
        *,
        measured_prefill_s: float | None = None,
        predicted_prefill_s: float | None = None,
        measured_decode_s: float | None = None,
        predicted_decode_s: float | None = None,
    ) -> dict:
        """One request. A part enters only when both its times are finite and >= MIN_PART_S.
        Returns the raw ratios that entered ({part: ratio}); empty when nothing did."""
        pairs = {
            "prefill": (measured_prefill_s, predicted_prefill_s),
            "decode": (measured_decode_s, predicted_decode_s),
        }
        used = {}
        with self._lock:
            for p, (m, pr) in pairs.items():
                if not (_finite_pos(m) and _finite_pos(pr) and m >= MIN_PART_S and pr >= MIN_PART_S):
                    continue
                r = m / pr
                lr = math.log(min(self.hi, max(self.lo, r)))
                if self._n[p] < self.min_samples:
                    self._warm[p].append(lr)
                    self._log[p] = statistics.median(self._warm[p])
                else:
                    self._log[p] = (1 - self.alpha) * self._log[p] + self.alpha * lr
                self._n[p] += 1
                self._last[p] = r
                used[p] = r
            if used:
                self.requests += 1
        return used

    # -- reading -----------------------------------------------------------------------------------
    def raw(self, part: str) -> float:
        """The EWMA factor, whether or not it has enough samples to act."""
        with self._lock:
            return math.exp(self._log[part])

    def samples(self, part: str) -> int:
        return self._n[part]

    def active(self, part: str) -> bool:
        return self._n[part] >= self.min_samples

    def factor(self, part: str) -> float:
        """The factor in force: the EWMA once ``min_samples`` requests fed this part, else 1."""
        with self._lock:
            return math.exp(self._log[part]) if self._n[part] >= self.min_samples else 1.0

    def factors(self) -> tuple[float, float]:
        return self.factor("prefill"), self.factor("decode")

    @property
    def any_active(self) -> bool:
        return any(self.active(p) for p in PARTS)

    def corrected_s(self, prefill_s: float, decode_s: float) -> float:
        kp, kd = self.factors()
        return prefill_s * kp + decode_s * kd

    def label(self) -> str:
        kp, kd = self.factors()
        return f"k=prefill {kp:.3g}, decode {kd:.3g}, from {self.requests} request(s)"

    def corrected(self, prediction: Any, note: str | None = None) -> Figure:
        """A prediction with ``prefill_s`` and ``decode_s`` (a perfmodel Prediction or a plan's Predicted),
        corrected: an estimated Figure that says so."""
        v = self.corrected_s(float(prediction.prefill_s), float(prediction.decode_s))
        return estimated(v, "s", f"plan model x live correction ({self.label()})", note=note)

    # -- (de)serialisation -------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            return {
                "alpha": self.alpha,
                "clamp": [self.lo, self.hi],
                "min_samples": self.min_samples,
                "requests": self.requests,
                **{
                    p: {
                        "factor": math.exp(self._log[p]) if self._n[p] >= self.min_samples else 1.0,
                        "ewma": math.exp(self._log[p]),
                        "samples": self._n[p],
                        "active": self._n[p] >= self.min_samples,
                        "last_ratio": self._last[p],
                        "warmup_log_ratios": list(self._warm[p]),
                    }
                    for p in PARTS
                },
            }

    @classmethod
    def restore(cls, snap: dict) -> LiveCorrection:
        c = cls(alpha=snap["alpha"], lo=snap["clamp"][0], hi=snap["clamp"][1], min_samples=snap["min_samples"])
        for p in PARTS:
            s = snap[p]
            c._log[p] = math.log(min(c.hi, max(c.lo, float(s["ewma"]))))
            c._n[p] = int(s["samples"])
            c._last[p] = s.get("last_ratio")
            c._warm[p] = [float(x) for x in s.get("warmup_log_ratios", [])]
        c.requests = int(snap.get("requests", 0))
        return c


def scale_model(pm: PerfModel, prefill: float, decode: float, why: str = "live correction") -> PerfModel:
    """``pm`` on a device ``prefill`` x slower at prefill and ``decode`` x slower per decode step."""
    if prefill == 1.0 and decode == 1.0:
        return pm
    return replace(
        pm,
        a=pm.a * prefill,
        b=pm.b * prefill,
        c=pm.c * prefill,
        alpha=pm.alpha * decode,
        beta=pm.beta * decode,
        gamma=pm.gamma * decode,
        base_knots=[x * decode for x in pm.base_knots] if pm.base_knots else pm.base_knots,
        method=f"{pm.method}, x {why} (prefill {prefill:.3g}, decode {decode:.3g})",
        figure_method="estimated",
    )
