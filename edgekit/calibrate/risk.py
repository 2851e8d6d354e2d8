"""Choose the offload threshold with a finite-sample risk guarantee (Learn-then-Test).

Setting. Query i has a confidence score s_i and a label c_i (1 = the local answer was correct).
Threshold tau keeps a query local iff s >= tau. Risk R(tau) = P(s >= tau and c = 0): the share of
queries answered locally and wrong. Goal: with probability >= 1 - delta over the calibration set,
R(tau_hat) <= alpha.

Procedure (:func:`ltt_threshold`). Candidates strict to lenient: +inf (offload everything), then the
distinct calibration scores in decreasing order. For candidate tau, L(tau) = #{i: s_i >= tau, c_i = 0}
and p(tau) = P(Binomial(n, alpha) <= L(tau)) (or the Hoeffding-Bentkus p-value), a valid p-value for
H0(tau): R(tau) > alpha. Fixed-sequence testing: walk strict -> lenient, reject H0 while p <= delta,
stop at the first non-rejection; return the last rejected (most lenient certified) candidate.

Why it is valid, although the candidates are the data's own scores. The keep-sets are nested, so
L(tau) and hence p(tau) are non-increasing in tau; the walk therefore returns a tau_hat with
p(tau_hat) <= delta. Let B = {tau: R(tau) > alpha} (the "bad" thresholds; R is non-increasing, so B
is a half-line (-inf, t*) or (-inf, t*]). If tau_hat lands in B then, for every fixed tau' in B with
tau' >= tau_hat, L(tau') <= L(tau_hat), so p(tau') <= delta. If B has a largest point t*, that
single fixed t* has p(t*) <= delta, which under H0(t*) happens with probability <= delta. If B is
open at t*, the events {p(t_m) <= delta} for fixed t_m increasing to t* are increasing, each of
probability <= delta, and their union contains the violation, so it too has probability <= delta.
So P(R(tau_hat) > alpha) <= delta: a statement that holds uniformly over all thresholds at once,
which is why a data-dependent grid (the observed scores) costs nothing here. Fixed-sequence testing
over any pre-ordered list is the general LTT argument (Angelopoulos et al. 2021); monotonicity is
what makes it the same as "the most lenient threshold whose p-value is <= delta".

The guarantee is marginal over queries drawn like the calibration set (i.i.d.); a shift in the
query mix or a model/prompt change voids it. The score function must not be fitted on the
calibration set (see :mod:`edgekit.calibrate.combine`).
"""

from __future__ import annotations

import math

import numpy as np

from edgekit.calibrate.calibration import Calibration, ltt_sentence, pct
from edgekit.calibrate.inputs import as_cloud, as_labels, as_scores, check_budget, curve_rows, group_counts
from edgekit.calibrate.pvalues import binomial_cdf_table, check_level, hb_pvalues, min_calibration_size
from edgekit.errors import UsageError

PVALUES = ("binomial", "hb")


def loss_curve(scores, correct) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, kept, losses) per candidate, strict to lenient: ``thresholds[0] = +inf`` then
    the distinct scores descending; ``kept[j]`` / ``losses[j]`` count calibration queries with
    ``score >= thresholds[j]`` / those of them that are wrong."""
    s = as_scores(scores)
    g = group_counts(s, as_labels(correct, s.size), None)
    return g["thresholds"], g["kept"], g["losses"]


def ltt_pvalues(losses: np.ndarray, n: int, alpha: float, pvalue: str = "binomial") -> np.ndarray:
    """P-values of ``H0: risk > alpha`` for each candidate's loss count (``n`` queries in all)."""
    losses = np.asarray(losses, dtype=np.int64)
    if pvalue == "binomial":
        return binomial_cdf_table(n, alpha)[losses]
    if pvalue == "hb":
        return hb_pvalues(losses / n, n, alpha)
    raise UsageError(f"unknown p-value {pvalue!r}", fix="use pvalue='binomial' (binary losses) or 'hb'")


def fixed_sequence(pvalues, delta: float) -> int:
    """Index of the last hypothesis rejected by fixed-sequence testing at level ``delta`` (walk in
    the given order, reject while ``p <= delta``, stop at the first non-rejection); -1 if none."""
    p = np.asarray(pvalues, dtype=float)
    above = np.flatnonzero(~(p <= delta))
    return (int(above[0]) if above.size else p.size) - 1


def _check_size(n: int, alpha: float, delta: float) -> None:
    need = min_calibration_size(alpha, delta)
    if n < need:
        raise UsageError(
            f"need at least {need} labelled examples for alpha={alpha:g}, delta={delta:g}; you have {n}",
            fix=f"label {need - n} more queries, or raise alpha or delta",
        )


def ltt_threshold(
    scores,
    correct,
    alpha: float,
    delta: float,
    *,
    score_name: str,
    pvalue: str = "binomial",
    cloud_correct=None,
    max_offload: float | None = None,
) -> Calibration:
    """The most lenient threshold certified by Learn-then-Test: with probability >= 1 - delta over
    the calibration set, at most ``alpha`` of queries are kept local and answered wrong.

    ``scores``: confidence per query (higher = more confident); ``correct``: 0/1 per query;
    ``pvalue``: ``"binomial"`` (exact, binary losses) or ``"hb"`` (Hoeffding-Bentkus, any loss in
    [0, 1], more conservative); ``cloud_correct``: 0/1 per query or the cloud's accuracy, for
    ``system_accuracy`` on the curve; ``max_offload``: also require the calibration offload rate
    to be at most this (empirical, no guarantee; see :func:`conformal_offload_threshold`).
    """
    alpha, delta = check_level("alpha", alpha), check_level("delta", delta)
    if pvalue not in PVALUES:
        raise UsageError(f"unknown p-value {pvalue!r}", fix="use pvalue='binomial' (binary losses) or 'hb'")
    s = as_scores(scores)
    c = as_labels(correct, s.size)
    cloud = as_cloud(cloud_correct, s.size)
    budget = None if max_offload is None else check_budget(max_offload, "max_offload")
    n = s.size
    _check_size(n, alpha, delta)

    g = group_counts(s, c, cloud)
    thr, kept, losses = g["thresholds"], g["kept"], g["losses"]
    p = ltt_pvalues(losses, n, alpha, pvalue)
    j = fixed_sequence(p, delta)
    if j < 0:  # +inf has zero losses: p = (1 - alpha)^n <= delta once n >= min_calibration_size (an ulp aside)
        raise UsageError(
            f"need at least {n + 1} labelled examples for alpha={alpha:g}, delta={delta:g}; you have {n}",
            fix="label more queries, or raise alpha or delta",
        )
    offload = 1.0 - kept / n
    risk = losses / n

    if budget is not None and offload[j] > budget + 1e-12:
        raise UsageError(
            f"no threshold meets both constraints: certifying at most {pct(alpha)} local-and-wrong at delta={delta:g} "
            f"needs offloading at least {pct(offload[j])} of calibration queries, above max_offload={pct(budget)}",
            fix="raise alpha or max_offload, use a better score, or label more queries",
        )

    return Calibration(
        method=f"ltt-{pvalue}",
        score=score_name,
        threshold=float(thr[j]),
        alpha=alpha,
        delta=delta,
        n_calibration=n,
        offload_rate=float(offload[j]),
        local_wrong_rate=float(risk[j]),
        p_value=float(p[j]),
        guarantee=ltt_sentence(alpha, delta, pvalue, int(thr.size), offload_all=math.isinf(thr[j])),
        curve=curve_rows(g, p, certified=j),
    )


def uncalibrated(
    score_name: str, threshold: float = -math.inf, *, scores=None, correct=None, cloud_correct=None
) -> Calibration:
    """A threshold set by hand (default: keep everything local), with no guarantee. With ``scores``
    (and ``correct``) its offload and local-wrong rates on that data are filled in for reference."""
    t = float(threshold)
    if math.isnan(t):
        raise UsageError("threshold is NaN", fix="pass a number, or -inf to keep every query local")
    offload = risk = None
    n, curve = 0, []
    if scores is not None:
        s = as_scores(scores)
        n = s.size
        offload = float(np.mean(s < t))
        if correct is not None:
            c = as_labels(correct, n)
            risk = float(np.mean((s >= t) & (c == 0)))
            curve = curve_rows(group_counts(s, c, as_cloud(cloud_correct, n)))
    return Calibration(
        method="default-uncalibrated",
        score=score_name,
        threshold=t,
        alpha=None,
        delta=None,
        n_calibration=n,
        offload_rate=offload,
        local_wrong_rate=risk,
        p_value=None,
        guarantee="none: the threshold was not calibrated on labelled data",
        curve=curve,
    )
