"""A combined confidence score (L2 logistic regression, numpy Newton steps) and a cross-validated
decision whether it beats the best single score.

Keep the guarantee honest: a score fitted or *chosen* on the calibration set is data-dependent, and
Learn-then-Test assumes a fixed score. Use :func:`selection_split` to hold out a selection split,
run :func:`choose_score` on it, and calibrate the chosen score on the other, untouched split::

    sel, cal = selection_split(len(y), fraction=0.3, seed=0)
    choice = choose_score(X[sel], y[sel])
    cal_result = ltt_threshold(choice.apply(X[cal]), y[cal], alpha, delta, score_name=choice.name)

The comparison uses AUROC of the score for "the local answer is correct" (rank-based, so any
monotone rescaling of a score is the same score, as it is for thresholding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgekit.calibrate.inputs import as_labels
from edgekit.errors import UsageError

FEATURES = ("vote_share", "mean_logprob", "low_logprob")
FIT_MIN, FIT_MIN_CLASS = 20, 5  # a fit split needs this many answered problems, this many right and wrong


def check_fit_size(correct) -> None:
    """Refuse a fitting split too small to choose or fit a score on (one line, saying how many)."""
    y = np.asarray(correct, dtype=bool)
    right, wrong = int(y.sum()), int((~y).sum())
    if y.size < FIT_MIN or min(right, wrong) < FIT_MIN_CLASS:
        raise UsageError(
            f"the fitting split has {y.size} answered problems ({right} right, {wrong} wrong); choosing or "
            f"fitting a score needs at least {FIT_MIN} with {FIT_MIN_CLASS} right and {FIT_MIN_CLASS} wrong",
            fix="use more labelled problems (--split/--limit), or name one score with --score",
        )


def check_disjoint(fit_ids, calibration_ids) -> None:
    """The score's fitting problems must not be calibration problems (Learn-then-Test assumes a
    score fixed before the calibration data is seen)."""
    leaked = sorted(set(map(str, fit_ids)) & set(map(str, calibration_ids)))
    if leaked:
        raise UsageError(
            f"{len(leaked)} calibration problem(s) were used to fit or choose the score (e.g. {leaked[0]!r}): "
            "the guarantee would not hold",
            fix="fit the score on problems disjoint from the calibration split",
        )


def _as_features(features, n_names: int | None = None) -> np.ndarray:
    try:
        X = np.asarray(features, dtype=float)
    except (TypeError, ValueError):
        raise UsageError(
            "features must be a numeric matrix", fix="pass one row per query, one column per score"
        ) from None
    if X.ndim != 2 or X.shape[0] == 0:
        raise UsageError(
            f"features must be a non-empty 2-D matrix, got shape {X.shape}",
            fix="pass one row per query, one column per score",
        )
    if n_names is not None and X.shape[1] != n_names:
        raise UsageError(f"features have {X.shape[1]} columns for {n_names} names", fix="pass one name per column")
    if not np.all(np.isfinite(X)):
        raise UsageError(
            "features contain NaN or infinite values",
            fix="drop those queries or fill the missing score (e.g. vote_share needs n > 1 samples)",
        )
    return X


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> np.ndarray:
    """L2-penalised logistic regression by Newton's method on standardised columns. Returns raw-unit
    weights ``w`` (length d + 1, intercept last): ``P(correct | x) = sigmoid(x @ w[:-1] + w[-1])``."""
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    Z = np.column_stack([(X - mu) / sd, np.ones(X.shape[0])])
    pen = np.full(Z.shape[1], float(l2))
    pen[-1] = 0.0  # the intercept is not shrunk
    w = np.zeros(Z.shape[1])
    for _ in range(iters):
        p = _sigmoid(Z @ w)
        grad = Z.T @ (p - y) + pen * w
        H = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(pen) + 1e-9 * np.eye(Z.shape[1])
        step = np.linalg.solve(H, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    raw = w[:-1] / sd
    return np.concatenate([raw, [w[-1] - float(raw @ mu)]])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def combined_score(features, correct, *, l2: float = 1.0) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Fit the combination on these rows; returns ``(weights, fn)`` with ``fn(features) -> P(correct)``
    (higher = more confident). Fit it on a split that is not the calibration split."""
    X = _as_features(features)
    y = as_labels(correct, X.shape[0])
    if y.min() == y.max():
        raise UsageError(
            "all labels are the same, so there is nothing to combine for",
            fix="fit on a split with both correct and wrong local answers",
        )
    w = fit_logistic(X, y, l2=l2)

    def fn(f) -> np.ndarray:
        F = _as_features(f, w.size - 1)
        return _sigmoid(F @ w[:-1] + w[-1])

    return w, fn


def auroc(scores, correct) -> float:
    """P(score of a correct query > score of a wrong one), ties counting one half (Mann-Whitney)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(correct, dtype=float)
    pos, neg = int(y.sum()), int(y.size - y.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # average ranks, 1-based
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def selection_split(n: int, fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random disjoint (selection, calibration) index arrays; ``fraction`` of the rows go to selection."""
    if not (0.0 < fraction < 1.0):
        raise UsageError(f"fraction must be in (0, 1), got {fraction!r}", fix="pass e.g. fraction=0.3")
    idx = np.random.default_rng(seed).permutation(int(n))
    m = int(round(fraction * n))
    return np.sort(idx[:m]), np.sort(idx[m:])


@dataclass
class ScoreChoice:
    """Which score to threshold: one feature, or ``"combined"`` with ``weights``."""

    name: str
    column: int | None
    weights: np.ndarray | None
    auroc: dict = field(default_factory=dict)  # out-of-fold for "combined", plain for the single scores
    reason: str = ""
    names: tuple[str, ...] = FEATURES  # the feature columns it was chosen / fitted over

    def apply(self, features) -> np.ndarray:
        X = _as_features(features)
        if self.weights is None:
            return X[:, self.column]
        return _sigmoid(X @ self.weights[:-1] + self.weights[-1])


def choose_score(
    features,
    correct,
    names: Sequence[str] = FEATURES,
    *,
    folds: int = 5,
    margin: float = 0.01,
    l2: float = 1.0,
    seed: int = 0,
) -> ScoreChoice:
    """Use the combined score only if it helps: its ``folds``-fold out-of-fold AUROC must beat the
    best single score's AUROC by more than ``margin`` (the single scores need no fitting, and picking
    the best of them on the same rows already favours them). Run it on a selection split."""
    X = _as_features(features, len(names))
    y = as_labels(correct, X.shape[0])
    if folds < 2 or X.shape[0] < 2 * folds:
        raise UsageError(
            f"cross-validation needs folds >= 2 and at least 2 rows per fold (n={X.shape[0]}, folds={folds})",
            fix="pass more rows or fewer folds",
        )
    single = {nm: auroc(X[:, i], y) for i, nm in enumerate(names)}
    if any(np.isnan(v) for v in single.values()):
        raise UsageError(
            "all labels are the same, so scores cannot be compared",
            fix="select on a split with both correct and wrong local answers",
        )
    best = max(single, key=lambda nm: single[nm])
    # stratified folds, so every training fold has both classes
    rng = np.random.default_rng(seed)
    fold = np.empty(y.size, dtype=int)
    for cls in (0.0, 1.0):
        idx = rng.permutation(np.flatnonzero(y == cls))
        fold[idx] = np.arange(idx.size) % folds
    oof = np.empty(y.size)
    for f in range(folds):
        tr, te = fold != f, fold == f
        w = fit_logistic(X[tr], y[tr], l2=l2)
        oof[te] = X[te] @ w[:-1] + w[-1]  # logits: AUROC is rank-based
    comb = auroc(oof, y)
    scores = {**single, "combined": comb}
    if comb > single[best] + margin:
        w = fit_logistic(X, y, l2=l2)
        return ScoreChoice(
            "combined",
            None,
            w,
            scores,
            f"combined out-of-fold AUROC {comb:.3f} beats {best} {single[best]:.3f} by more than {margin:g}",
            tuple(names),
        )
    return ScoreChoice(
        best,
        names.index(best),
        None,
        scores,
        f"{best} AUROC {single[best]:.3f}; combined out-of-fold {comb:.3f} does not beat it by more than {margin:g}",
        tuple(names),
    )
