"""Checks on calibration inputs; every refusal is a one-line :class:`UsageError` naming the fix."""

from __future__ import annotations

import numpy as np

from edgekit.errors import UsageError


def as_scores(scores, what: str = "scores") -> np.ndarray:
    try:
        s = np.asarray(scores, dtype=float)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be numbers", fix="pass one numeric confidence score per query") from None
    if s.ndim != 1:
        raise UsageError(f"{what} must be one-dimensional, got shape {s.shape}", fix="pass one score per query")
    if s.size == 0:
        raise UsageError(f"no {what}: the calibration set is empty", fix="pass labelled calibration queries")
    bad = int(np.count_nonzero(~np.isfinite(s)))
    if bad:
        raise UsageError(
            f"{bad} of {s.size} {what} are NaN or infinite",
            fix="drop those queries or clip the score to a finite floor (e.g. a very low logprob)",
        )
    return s


def as_labels(correct, n: int, what: str = "correct") -> np.ndarray:
    if correct is None:
        raise UsageError(
            "no labels: the calibration needs whether each local answer was correct",
            fix=f"pass {what}=[0/1 per query] from a labelled evaluation run",
        )
    try:
        c = np.asarray(correct, dtype=float)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be 0/1 or booleans", fix=f"pass {what} as 0/1 per query") from None
    if c.ndim != 1 or c.size != n:
        raise UsageError(f"{what} has {c.size} labels for {n} scores", fix="pass exactly one label per score")
    if np.any(~np.isfinite(c)) or np.any((c != 0) & (c != 1)):
        raise UsageError(
            f"{what} must be 0/1 or booleans (missing labels are not allowed)",
            fix="drop unlabelled queries and pass 0/1 per query",
        )
    return c


def as_cloud(cloud_correct, n: int) -> np.ndarray | float | None:
    """``None``, a cloud accuracy in [0, 1], or 0/1 per query."""
    if cloud_correct is None:
        return None
    if np.ndim(cloud_correct) == 0:
        q = _unit(cloud_correct)
        if q is None:
            raise UsageError(
                f"cloud_correct as a single number is the cloud's accuracy and must be in [0, 1], "
                f"got {cloud_correct!r}",
                fix="pass an accuracy such as 0.92, or 0/1 per query",
            )
        return q
    return as_labels(cloud_correct, n, what="cloud_correct")


def _unit(x) -> float | None:
    """``x`` as a float in [0, 1], or None (not a number, NaN, or outside)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if 0.0 <= v <= 1.0 else None


def check_budget(budget, name: str) -> float:
    b = _unit(budget)
    if b is None:
        raise UsageError(
            f"{name} must be a fraction of queries in [0, 1], got {budget!r}",
            fix=f"pass e.g. {name}=0.3 for at most 30% offloaded",
        )
    return b


def group_counts(s: np.ndarray, c: np.ndarray | None, cloud) -> dict:
    """Per candidate threshold, strict to lenient (``+inf`` then the distinct scores descending):
    queries kept, kept-and-wrong, and (with ``cloud``) cloud-correct among the offloaded."""
    n = s.size
    uniq, inv = np.unique(s, return_inverse=True)
    order = slice(None, None, -1)  # descending
    kept = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=uniq.size)[order])])
    out = {"thresholds": np.concatenate([[np.inf], uniq[order]]), "kept": kept, "n": n}
    if c is not None:
        wrong = np.bincount(inv, weights=1.0 - c, minlength=uniq.size)[order]
        out["losses"] = np.concatenate([[0], np.cumsum(wrong)]).round().astype(np.int64)
        if cloud is not None:
            if isinstance(cloud, float):
                cloud_off = (n - kept) * cloud
            else:
                kept_cloud = np.concatenate(
                    [[0], np.cumsum(np.bincount(inv, weights=cloud, minlength=uniq.size)[order])]
                )
                cloud_off = cloud.sum() - kept_cloud
            out["system_accuracy"] = ((kept - out["losses"]) + cloud_off) / n
    return out


def curve_rows(g: dict, p_values=None, certified: int | None = None) -> list[dict]:
    """A Calibration's curve from :func:`group_counts`: per threshold, strict to lenient, its offload rate,
    local-wrong rate (None without labels), p_value (None unless ``p_values``), ``certified`` (with the last
    certified index ``certified``) and, when the cloud's correctness was given, the system accuracy."""
    n = g["n"]
    rows = []
    for i in range(g["thresholds"].size):
        row = {
            "threshold": float(g["thresholds"][i]),
            "offload_rate": float(1 - g["kept"][i] / n),
            "local_wrong_rate": float(g["losses"][i] / n) if "losses" in g else None,
            "p_value": None if p_values is None else float(p_values[i]),
        }
        if certified is not None:
            row["certified"] = bool(i <= certified)
        if "system_accuracy" in g:
            row["system_accuracy"] = float(g["system_accuracy"][i])
        rows.append(row)
    return rows
