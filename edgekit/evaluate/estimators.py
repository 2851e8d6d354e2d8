"""Accuracy estimators over a sample pool: exact, no Monte Carlo.

Per problem we hold N samples drawn at ``max_tokens``. Everything the planner needs for
k <= N samples and budget B <= max_tokens follows from that pool:

* validity at B: :func:`edgekit.schemas.table.within_budget` -- the runtime's rule: a sample
  counts at budget B iff it ``finished`` and ``tokens < B`` (its end-of-sequence is a sampled
  token too: with max_tokens=B a sample of exactly B tokens ends "budget", no answer).
  An invalid sample has no answer (None) and is incorrect.
* ``pass@k`` (coverage, "oracle verifier"): unbiased 1 - C(N-c, k)/C(N, k).
* ``majority``: expected accuracy of a majority vote over a uniformly random k-subset.
  Tie rule (the runtime uses the same): ties are broken uniformly at random, so a subset
  whose vote ties t answers, one of them correct, scores 1/t. None (nothing extracted)
  never takes part in the vote; a subset of only None answers is incorrect.
* ``expected_steps``: E[max over a random k-subset of :func:`~edgekit.schemas.table.budget_steps`]
  -- the sampling steps the batch of k runs, each finishing sample's EOS step included
  (``tokens + 1`` when within B, else B); exact via order statistics. ``mean_tokens`` is the
  mean of the same per-sample count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from edgekit.errors import UsageError
from edgekit.schemas.table import AccuracyRow, ProblemRecord, SampleRecord, budget_steps, within_budget

AGGREGATIONS = ("greedy", "majority", "pass@k", "first_verified")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: probability that a random k-subset of n samples (c correct) holds a correct one."""
    if not (0 <= c <= n) or k < 1:
        raise UsageError(f"pass_at_k needs 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise UsageError(f"pass_at_k: k={k} exceeds the {n} samples drawn", fix="draw at least k samples per problem")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): stable, no big binomials.
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _answer_correctness(answers: Sequence[str | None], correct) -> dict[str, bool]:
    if isinstance(correct, Mapping):
        return {a: bool(correct.get(a, False)) for a in answers if a is not None}
    if len(correct) != len(answers):
        raise UsageError(f"majority: {len(answers)} answers but {len(correct)} correctness flags")
    # An answer is correct if any sample giving it was judged correct (a flaky unit test
    # can judge the same program differently; the vote is over answers, not samples).
    out: dict[str, bool] = {}
    for a, c in zip(answers, correct):
        if a is not None:
            out[a] = out.get(a, False) or bool(c)
    return out


def majority_curve(answers: Sequence[str | None], correct, ks: Iterable[int]) -> dict[int, float]:
    """Exact expected majority-vote accuracy for each k in ``ks`` (see the module doc for ties).

    Works on answer counts, not index subsets: for each correct answer a drawn j times, the
    generating polynomial of the other answers (each drawn < j times, or exactly j = a tie)
    gives the number of k-subsets in which a wins alone or ties with t others.
    """
    ks = list(ks)
    n = len(answers)
    for k in ks:
        if not 1 <= k <= n:
            raise UsageError(f"majority: k={k} outside 1..{n} (samples drawn)")
    ok = _answer_correctness(answers, correct)
    counts: dict[str | None, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    n_none = counts.pop(None, 0)
    groups = list(counts.items())
    m = len(groups)
    total = np.zeros(n + 1)  # total[s]: sum over subsets of size s of the vote credit
    for ai, (a, na) in enumerate(groups):
        if not ok[a]:
            continue
        others = [nb for bi, (_, nb) in enumerate(groups) if bi != ai]
        for j in range(1, na + 1):
            # P[s, t]: ways to draw s samples from the other groups with t answers tied at j.
            P = np.zeros((n + 1, m + 1))
            P[:, 0] = [math.comb(n_none, s) for s in range(n + 1)]
            for nb in others:
                Q = np.zeros_like(P)
                for x in range(0, min(nb, j - 1) + 1):
                    Q[x:, :] += math.comb(nb, x) * P[: n + 1 - x, :]
                if nb >= j:
                    Q[j:, 1:] += math.comb(nb, j) * P[: n + 1 - j, :-1]
                P = Q
            credit = P @ (1.0 / np.arange(1, m + 2))
            total[j:] += math.comb(na, j) * credit[: n + 1 - j]
    return {k: float(total[k] / math.comb(n, k)) for k in ks}


def majority_at_k(answers: Sequence[str | None], correct, k: int) -> tuple[float, str]:
    """Expected accuracy of majority vote over a random k-subset; returns (value, method).

    ``correct`` is a per-sample list of bools or a mapping answer -> bool. The computation is
    always exact (method "exact")."""
    return majority_curve(answers, correct, [k])[k], "exact"


def expected_max(values: Sequence[float], ks: Iterable[int]) -> dict[int, float]:
    """E[max of a uniformly random k-subset of ``values``] for each k (order statistics)."""
    v = sorted(values)
    n = len(v)
    out = {}
    for k in ks:
        if not 1 <= k <= n:
            raise UsageError(f"expected_max: k={k} outside 1..{n}")
        denom = math.comb(n, k)
        # P(max = v_(i)) = C(i-1, k-1) / C(n, k), i = 1..n
        out[k] = float(sum(math.comb(i - 1, k - 1) * v[i - 1] for i in range(k, n + 1)) / denom)
    return out


def default_budgets(max_tokens: int, smallest: int = 16) -> list[int]:
    """Powers of two and 1.5x powers of two from ``smallest`` up to ``max_tokens`` (always included)."""
    if max_tokens < 1:
        raise UsageError(f"max_tokens must be >= 1 (got {max_tokens})")
    out = set()
    p = smallest
    while p < max_tokens:
        out.add(p)
        if p * 3 // 2 < max_tokens:
            out.add(p * 3 // 2)
        p *= 2
    out.add(max_tokens)
    return sorted(out)


def default_aggregations(has_verifier: bool, has_greedy: bool = True) -> list[str]:
    aggs = ["majority", "pass@k"]
    if has_verifier:
        aggs.append("first_verified")
    if has_greedy:
        aggs.insert(0, "greedy")
    return aggs


def valid_at(s: SampleRecord, budget: int) -> bool:
    """Does this sample carry an answer at budget B? (the shared rule: schemas.table.within_budget)"""
    return within_budget(s.tokens, s.finished, budget)


def _steps(s: SampleRecord, budget: int) -> int:
    return budget_steps(s.tokens, s.finished, budget)


def accuracy_rows(
    problems: Sequence[ProblemRecord],
    budgets: Sequence[int],
    ks: Sequence[int] | None = None,
    aggregations: Sequence[str] = ("majority", "pass@k"),
) -> list[AccuracyRow]:
    """Rows for every (aggregation, budget, k), averaged over ``problems``.

    ``ks`` defaults to 1..N. "first_verified" equals pass@k (a perfect verifier picks a correct
    sample when there is one); pass it only for tasks that have a verifier. "greedy" gives one
    k=1 row per budget from each problem's greedy sample, and is skipped when any problem
    lacks one."""
    if not problems:
        raise UsageError("no problems to score", fix="evaluate at least one problem")
    ns = {len(p.samples) for p in problems}
    if len(ns) != 1 or 0 in ns:
        raise UsageError(f"every problem needs the same number (>= 1) of samples, got {sorted(ns)}")
    n = ns.pop()
    ks = list(range(1, n + 1)) if ks is None else list(ks)
    for a in aggregations:
        if a not in AGGREGATIONS:
            raise UsageError(f"unknown aggregation {a!r}", fix=f"use one of {', '.join(AGGREGATIONS)}")
    if any(k < 1 or k > n for k in ks):
        raise UsageError(f"ks must lie in 1..{n} (samples drawn), got {ks}")
    P = len(problems)
    rows: list[AccuracyRow] = []
    for agg in aggregations:
        if agg == "greedy":
            if any(p.greedy is None for p in problems):
                continue
            for b in budgets:
                acc = sum(valid_at(p.greedy, b) and p.greedy.correct for p in problems) / P
                mt = sum(_steps(p.greedy, b) for p in problems) / P
                rows.append(
                    AccuracyRow(budget=b, k=1, aggregation="greedy", accuracy=acc, expected_steps=mt, mean_tokens=mt)
                )
            continue
        for b in budgets:
            acc = {k: 0.0 for k in ks}
            steps = {k: 0.0 for k in ks}
            mean_tok = 0.0
            for p in problems:
                capped = [_steps(s, b) for s in p.samples]
                mean_tok += sum(capped) / n
                for k, v in expected_max(capped, ks).items():
                    steps[k] += v
                valid = [valid_at(s, b) for s in p.samples]
                if agg == "majority":
                    answers = [s.answer if v else None for s, v in zip(p.samples, valid)]
                    corr = [v and s.correct for s, v in zip(p.samples, valid)]
                    for k, v in majority_curve(answers, corr, ks).items():
                        acc[k] += v
                else:  # pass@k, first_verified
                    c = sum(v and s.correct for s, v in zip(p.samples, valid))
                    for k in ks:
                        acc[k] += pass_at_k(n, c, k)
            for k in ks:
                rows.append(
                    AccuracyRow(
                        budget=b,
                        k=k,
                        aggregation=agg,
                        accuracy=min(1.0, acc[k] / P),
                        expected_steps=steps[k] / P,
                        mean_tokens=mean_tok / P,
                    )
                )
    return rows


def problem_scores(problems: Sequence[ProblemRecord], budget: int, aggregation: str) -> np.ndarray:
    """Per problem, the expected correctness each row of ``aggregation`` at ``budget`` averages: an array of shape
    (problems, N) whose column k-1 is the k-sample value (greedy: one column, 0/1). Its column means are exactly
    :func:`accuracy_rows`' accuracies; the planner compares configurations problem by problem with them."""
    if aggregation not in AGGREGATIONS:
        raise UsageError(f"unknown aggregation {aggregation!r}", fix=f"use one of {', '.join(AGGREGATIONS)}")
    if aggregation == "greedy":
        if any(p.greedy is None for p in problems):
            raise UsageError(
                "greedy scores need every problem's greedy sample", fix="rebuild the table with greedy samples"
            )
        return np.array([[float(valid_at(p.greedy, budget) and p.greedy.correct)] for p in problems])
    n = len(problems[0].samples) if problems else 0
    out = np.zeros((len(problems), n))
    for i, p in enumerate(problems):
        valid = [valid_at(s, budget) for s in p.samples]
        if aggregation == "majority":
            answers = [s.answer if v else None for s, v in zip(p.samples, valid)]
            curve = majority_curve(answers, [v and s.correct for s, v in zip(p.samples, valid)], range(1, n + 1))
            out[i] = [curve[k] for k in range(1, n + 1)]
        else:  # pass@k, first_verified
            c = sum(v and s.correct for s, v in zip(p.samples, valid))
            out[i] = [pass_at_k(n, c, k) for k in range(1, n + 1)]
    return out
