"""P-values for "the risk of this threshold exceeds alpha", and the smallest useful calibration set.

Pure Python (``math``) for the scalar functions, ``numpy`` for the per-threshold tables; no scipy.

Binomial p-value (binary losses). At a fixed threshold tau the number of calibration queries that
are kept local *and* wrong is ``L ~ Binomial(n, R(tau))``. Under ``H0: R(tau) > alpha`` the
binomial family is stochastically increasing in its success probability, so for every k

    P_H0(L <= k) <= P(Binomial(n, alpha) <= k) =: p(k),

i.e. ``p(L)`` is super-uniform under H0 (``P_H0(p(L) <= u) <= u`` for all u): a valid p-value,
and the smallest one that depends on L only through the lower tail (it is exact at R = alpha).

Hoeffding-Bentkus p-value (Bates et al. 2021, "Distribution-free, risk-controlling prediction
sets", Prop. 3; used by Angelopoulos et al. 2021, "Learn then Test"): valid for any loss in
[0, 1], hence conservative for binary losses:

    p_HB(r) = min( exp(-n h1(min(r, alpha), alpha)),  e * P(Binomial(n, alpha) <= ceil(n r)) ),
    h1(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b)).

For binary losses r = k/n, and both terms bound the exact binomial tail from above (the first is
the Chernoff bound, the second has the factor e >= 1), so ``hb_pvalue(k/n) >= binomial_pvalue(k)``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from edgekit.errors import UsageError


def check_level(name: str, value: float) -> float:
    """``value`` as a float strictly inside (0, 1), else a :class:`UsageError` naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number in (0, 1), got {value!r}", fix=f"pass e.g. {name}=0.1") from None
    if not (0.0 < v < 1.0):
        raise UsageError(f"{name} must be in (0, 1), got {value!r}", fix=f"pass e.g. {name}=0.1")
    return v


def _check_counts(losses: int, n: int) -> tuple[int, int]:
    if isinstance(losses, bool) or isinstance(n, bool) or int(losses) != losses or int(n) != n:
        raise UsageError(f"losses and n must be integers (got losses={losses!r}, n={n!r})", fix="pass counts")
    losses, n = int(losses), int(n)
    if n < 1 or losses < 0:
        raise UsageError(f"need n >= 1 and losses >= 0 (got losses={losses}, n={n})", fix="pass counts of queries")
    return losses, n


def _log_pmf(j: int, n: int, la: float, l1a: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * la + (n - j) * l1a


def log_binomial_pvalue(losses: int, n: int, alpha: float) -> float:
    """``log P(Binomial(n, alpha) <= losses)``, accurate far into the tail (no underflow)."""
    k, n = _check_counts(losses, n)
    alpha = check_level("alpha", alpha)
    if k >= n:
        return 0.0
    la, l1a = math.log(alpha), math.log1p(-alpha)
    ratio_down = (1.0 - alpha) / alpha  # pmf(j-1)/pmf(j) = j/(n-j+1) * (1-a)/a
    mode = math.floor((n + 1) * alpha)
    if k <= mode:
        # lower tail: terms shrink as j goes down from k (j <= mode); sum relative to pmf(k)
        s, t = 1.0, 1.0
        for j in range(k, 0, -1):
            t *= j / (n - j + 1) * ratio_down
            s += t
            if t < 1e-17 * s:
                break
        return _log_pmf(k, n, la, l1a) + math.log(s)
    # upper tail P(X >= k+1) <= ~1/2 here: terms shrink as j goes up from k+1 (> mode)
    s, t = 1.0, 1.0
    for j in range(k + 2, n + 1):
        t *= (n - j + 1) / j / ratio_down
        s += t
        if t < 1e-17 * s:
            break
    upper = math.exp(_log_pmf(k + 1, n, la, l1a)) * s
    return math.log1p(-min(upper, 1.0)) if upper < 1.0 else -math.inf


def binomial_pvalue(losses: int, n: int, alpha: float) -> float:
    """Exact p-value for ``H0: risk > alpha`` after ``losses`` losses in ``n`` binary trials:
    ``P(Binomial(n, alpha) <= losses)`` (= scipy's ``binom.cdf`` and ``binomtest(..., alternative="less")``)."""
    return math.exp(log_binomial_pvalue(losses, n, alpha))


@lru_cache(maxsize=64)
def _cdf_table(n: int, alpha: float) -> np.ndarray:
    lg = np.array([math.lgamma(i + 1) for i in range(n + 1)])
    j = np.arange(n + 1)
    logpmf = lg[n] - lg - lg[::-1] + j * math.log(alpha) + (n - j) * math.log1p(-alpha)
    logcdf = np.logaddexp.accumulate(logpmf)
    # the upper part (cdf near 1) from the complement, which is accurate there
    logsf = np.logaddexp.accumulate(logpmf[::-1])[::-1]  # log P(X >= j)
    cdf = np.exp(logcdf)
    upper = np.zeros(n + 1)
    upper[:-1] = np.exp(logsf[1:])  # P(X >= j+1)
    hi = j > math.floor((n + 1) * alpha)
    cdf[hi] = 1.0 - upper[hi]
    cdf[-1] = 1.0
    cdf.setflags(write=False)
    return cdf


def binomial_cdf_table(n: int, alpha: float) -> np.ndarray:
    """``P(Binomial(n, alpha) <= k)`` for k = 0..n as a read-only array (cached per (n, alpha))."""
    _, n = _check_counts(0, n)
    return _cdf_table(n, check_level("alpha", alpha))


def _h1(a: np.ndarray, b: float) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / b), 0.0)
        t2 = np.where(a < 1, (1 - a) * np.log(np.where(a < 1, 1 - a, 1.0) / (1 - b)), 0.0)
    return t1 + t2


def _ceil_count(nr: np.ndarray) -> np.ndarray:
    # ceil(n r) where n r is an integer up to float rounding (r = k/n) must give k, not k + 1
    near = np.round(nr)
    return np.where(np.abs(nr - near) < 1e-9 * np.maximum(1.0, np.abs(nr)), near, np.ceil(nr)).astype(np.int64)


def hb_pvalues(risk_hat, n: int, alpha: float) -> np.ndarray:
    """Vectorised :func:`hb_pvalue` over an array of empirical risks in [0, 1]."""
    _, n = _check_counts(0, n)
    alpha = check_level("alpha", alpha)
    r = np.asarray(risk_hat, dtype=float)
    if np.any(~np.isfinite(r)) or np.any(r < 0) or np.any(r > 1):
        raise UsageError("empirical risks must be in [0, 1]", fix="pass mean losses of losses bounded in [0, 1]")
    hoeffding = np.exp(-n * _h1(np.minimum(r, alpha), alpha))
    k = np.clip(_ceil_count(n * r), 0, n)
    bentkus = math.e * binomial_cdf_table(n, alpha)[k]
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def hb_pvalue(risk_hat: float, n: int, alpha: float) -> float:
    """Hoeffding-Bentkus p-value for ``H0: risk > alpha`` given the empirical risk ``risk_hat`` of
    ``n`` losses in [0, 1]: ``min(exp(-n h1(min(r, alpha), alpha)), e * P(Binom(n, alpha) <= ceil(n r)))``."""
    return float(hb_pvalues(np.array([risk_hat]), n, alpha)[0])


def min_calibration_size(alpha: float, delta: float) -> int:
    """Smallest n at which even zero losses reject ``H0: risk > alpha`` at level delta:
    ``(1 - alpha)^n <= delta``, i.e. ``n >= log(delta) / log(1 - alpha)``. Below it no threshold
    other than "offload everything" can ever be certified (same bound for the HB p-value)."""
    alpha, delta = check_level("alpha", alpha), check_level("delta", delta)
    l1a = math.log1p(-alpha)
    n = max(1, math.ceil(math.log(delta) / l1a))
    # the same float expression as the p-value of zero losses, so the two never disagree by an ulp
    while n > 1 and math.exp((n - 1) * l1a) <= delta:
        n -= 1
    while math.exp(n * l1a) > delta:
        n += 1
    return n
