"""How every figure was obtained: measured, estimated, published, or unavailable.

Every number edgekit prints or saves is a :class:`Figure`. Units are in the ``unit`` field
and in the names of the fields that hold figures (``decode_tok_s``, ``energy_mj``...).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

Method = Literal["measured", "estimated", "published", "unavailable"]


class Figure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: float | None = None
    unit: str
    method: Method
    reps: int | None = None  # measured: number of repetitions
    samples: list[float] | None = None  # measured: the raw repetitions
    iqr: float | None = None  # measured: interquartile range (same unit)
    cv: float | None = None  # measured: coefficient of variation (stdev / mean)
    source: str | None = None  # sensor / model / citation that produced it
    note: str | None = None  # e.g. why unavailable

    def describe(self) -> str:
        """A short human label of how the figure was obtained."""
        if self.method == "measured":
            s = f"measured, median of {self.reps}"
            if self.iqr is not None:
                s += f", IQR {self.iqr:.3g}"
            if self.source:
                s += f", {self.source}"
            return s
        if self.method == "unavailable":
            return f"unavailable ({self.note or 'no sensor'})"
        return f"{self.method} ({self.source or '?'})"

    def fmt(self, digits: int = 3) -> str:
        if self.value is None:
            return "unavailable"
        return f"{self.value:.{digits}g} {self.unit}"


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measured(samples: Sequence[float], unit: str, source: str | None = None, note: str | None = None) -> Figure:
    xs = [float(x) for x in samples]
    if not xs:
        return unavailable(unit, note or "no repetitions completed")
    med = statistics.median(xs)
    mean = statistics.fmean(xs)
    cv = (statistics.stdev(xs) / mean) if len(xs) > 1 and mean else None
    return Figure(
        value=med,
        unit=unit,
        method="measured",
        reps=len(xs),
        samples=xs,
        iqr=_quantile(xs, 0.75) - _quantile(xs, 0.25),
        cv=cv,
        source=source,
        note=note,
    )


def estimated(value: float, unit: str, how: str, note: str | None = None) -> Figure:
    return Figure(value=float(value), unit=unit, method="estimated", source=how, note=note)


def published(value: float, unit: str, source: str, note: str | None = None) -> Figure:
    return Figure(value=float(value), unit=unit, method="published", source=source, note=note)


def unavailable(unit: str, why: str) -> Figure:
    return Figure(value=None, unit=unit, method="unavailable", note=why)


def wilson(p: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """95 % Wilson score interval of a proportion p measured on n problems (vectorised)."""
    p = np.clip(np.asarray(p, float), 0.0, 1.0)
    n = np.maximum(np.asarray(n, float), 1.0)
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
