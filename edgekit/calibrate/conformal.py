"""An offload budget with a finite-sample guarantee (split-conformal quantile of the scores).

A query is offloaded iff ``score < tau``. With n calibration scores and budget b in [0, 1]:

    k = floor((n + 1) * b),   tau = s_(k) (the k-th smallest calibration score),
    tau = -inf if k = 0 (offload nothing), tau = +inf if k = n + 1 (b = 1: offload everything).

Claim: for a new score s_{n+1} exchangeable with s_1..s_n, P(s_{n+1} < tau) <= k / (n + 1) <= b,
with equality k / (n + 1) when scores have no ties.

Proof. s_{n+1} < s_(k) iff fewer than k calibration scores are <= s_{n+1}, i.e.
N := #{i <= n: s_i <= s_{n+1}} <= k - 1. Break ties among the n + 1 scores uniformly at random and
let rho be the rank of s_{n+1} (1 = smallest); by exchangeability rho is uniform on {1, .., n + 1},
and N >= rho - 1 (every score ranked below s_{n+1} is <= it). So P(N <= k - 1) <= P(rho <= k) =
k / (n + 1), with equality without ties. Since k <= (n + 1) b, the bound is <= b. []

The direction and the +1 matter. The k-th smallest score offloads k - 1 calibration queries but a
fresh query with probability k / (n + 1). The tempting rule "offload at most a b-fraction of the
calibration set" (k = floor(n b) + 1, i.e. no +1 correction) gives (floor(n b) + 1) / (n + 1), which
exceeds b for small n (n = 10, b = 0.15: 2/11 = 0.18); so does ceil((n + 1) b) (the conformal
*coverage* index, which rounds the wrong way for a budget). The guarantee is marginal: averaged
over calibration sets, not conditional on the one at hand. Pass ``delta`` for that stronger
statement: the realised offload rate F(tau-) = P(s < tau | calibration) is at most the k-th
uniform order statistic U_(k) ~ Beta(k, n + 1 - k) (quantile transform; ties only lower it), and
P(U_(k) > b) = P(Binomial(n, b) <= k - 1); the largest k with that <= delta gives, with
probability >= 1 - delta over the calibration set, an offload rate <= b.
"""

from __future__ import annotations

import math

import numpy as np

from edgekit.calibrate.calibration import Calibration, conformal_sentence
from edgekit.calibrate.inputs import as_cloud, as_labels, as_scores, check_budget, curve_rows, group_counts
from edgekit.calibrate.pvalues import binomial_cdf_table, check_level


def _floor_product(n1: int, b: float) -> int:
    # floor((n+1) b), except that a product within float noise of an integer is that integer
    x = n1 * b
    r = round(x)
    return int(r) if abs(x - r) < 1e-9 else math.floor(x)


def conformal_index(n: int, budget: float, delta: float | None = None) -> int:
    """The order-statistic index k (0..n+1) used by :func:`conformal_offload_threshold`."""
    b = check_budget(budget, "offload_budget")
    if b >= 1.0:
        return n + 1
    if b <= 0.0:
        return 0
    if delta is None:
        return min(_floor_product(n + 1, b), n)
    delta = check_level("delta", delta)
    # P(U_(k) > b) = P(Binomial(n, b) <= k - 1) is increasing in k: the largest k with it <= delta
    return int(np.searchsorted(binomial_cdf_table(n, b)[:n], delta, side="right"))


def conformal_offload_threshold(
    scores, offload_budget: float, *, score_name: str, cloud_correct=None, correct=None, delta: float | None = None
) -> Calibration:
    """Threshold whose offload rate on new exchangeable queries is at most ``offload_budget``:
    on average over calibration sets (default), or with probability >= 1 - ``delta`` over the
    calibration set when ``delta`` is given. Labels are optional (``correct`` fills the local-wrong
    rates on the curve, ``cloud_correct`` the system accuracy); no risk guarantee is made."""
    b = check_budget(offload_budget, "offload_budget")
    s = as_scores(scores)
    n = s.size
    c = None if correct is None else as_labels(correct, n)
    cloud = as_cloud(cloud_correct, n) if c is not None else None
    if delta is not None:
        delta = check_level("delta", delta)
    k = conformal_index(n, b, delta)
    srt = np.sort(s)
    tau = -math.inf if k == 0 else (math.inf if k > n else float(srt[k - 1]))

    kept = s >= tau
    return Calibration(
        method="conformal-offload-budget",
        score=score_name,
        threshold=tau,
        alpha=None,
        delta=delta,
        n_calibration=n,
        offload_rate=float(np.mean(~kept)),
        local_wrong_rate=float(np.mean(kept & (c == 0))) if c is not None else None,
        p_value=None,
        guarantee=conformal_sentence(b, min(k, n + 1) / (n + 1), k, n, delta),
        curve=curve_rows(group_counts(s, c, cloud)),
    )
