"""Choosing the offload threshold with a finite-sample guarantee.

* :func:`ltt_threshold` - Learn-then-Test: with probability >= 1 - delta over the calibration set,
  at most alpha of queries are answered locally and wrong (exact binomial or Hoeffding-Bentkus
  p-values, fixed-sequence testing).
* :func:`conformal_offload_threshold` - an offload budget only: P(offload) <= budget for a new
  exchangeable query (or, with ``delta``, with probability >= 1 - delta over the calibration set).
* :func:`min_calibration_size`, :func:`binomial_pvalue`, :func:`hb_pvalue` - the statistics.
* :func:`combined_score` / :func:`choose_score` - a logistic combination of the confidence scores,
  used only if cross-validation says it beats the best single score.

Depends on numpy and :mod:`math` only.
"""

from edgekit.calibrate.calibration import METHODS, Calibration
from edgekit.calibrate.combine import (
    FEATURES,
    FIT_MIN,
    ScoreChoice,
    auroc,
    check_disjoint,
    check_fit_size,
    choose_score,
    combined_score,
    selection_split,
)
from edgekit.calibrate.conformal import conformal_index, conformal_offload_threshold
from edgekit.calibrate.pvalues import (
    binomial_cdf_table,
    binomial_pvalue,
    hb_pvalue,
    hb_pvalues,
    log_binomial_pvalue,
    min_calibration_size,
)
from edgekit.calibrate.risk import fixed_sequence, loss_curve, ltt_pvalues, ltt_threshold, uncalibrated

__all__ = [
    "METHODS",
    "Calibration",
    "FEATURES",
    "FIT_MIN",
    "check_disjoint",
    "check_fit_size",
    "ScoreChoice",
    "auroc",
    "choose_score",
    "combined_score",
    "selection_split",
    "conformal_index",
    "conformal_offload_threshold",
    "binomial_cdf_table",
    "binomial_pvalue",
    "hb_pvalue",
    "hb_pvalues",
    "log_binomial_pvalue",
    "min_calibration_size",
    "fixed_sequence",
    "loss_curve",
    "ltt_pvalues",
    "ltt_threshold",
    "uncalibrated",
]
