"""Tiny non-negative least squares for the handful of coefficients edgekit fits (numpy only).

With p <= 6 unknowns an exact NNLS is cheap by enumeration: the NNLS solution is the
unconstrained least-squares solution on some subset of the columns (its "passive set")
that is non-negative, and among those it has the smallest residual. We try every subset.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np


def nnls(A: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """argmin ||A x - y||_2 subject to x >= 0. Returns (x, residual sum of squares)."""
    A = np.asarray(A, dtype=float)
    y = np.asarray(y, dtype=float)
    if A.ndim != 2 or A.shape[0] != y.shape[0]:
        raise ValueError("nnls: A must be (m, p) and y (m,)")
    m, p = A.shape
    if p > 8:
        raise ValueError("nnls: enumeration is meant for p <= 8 coefficients")
    best_x = np.zeros(p)
    best_rss = float(y @ y)
    for size in range(1, p + 1):
        for cols in combinations(range(p), size):
            sub = A[:, cols]
            x_sub, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(x_sub < 0):
                continue
            r = sub @ x_sub - y
            rss = float(r @ r)
            if rss < best_rss * (1 - 1e-12) - 1e-300:
                best_rss = rss
                best_x = np.zeros(p)
                best_x[list(cols)] = x_sub
    return best_x, best_rss
