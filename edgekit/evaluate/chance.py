"""Does a configuration's accuracy come from reading the problem? Its *blind baseline* says.

A tiny model can score 21 % on a six-option task by answering "B" to every problem: its accuracy is then the
share of problems whose answer is B, and on problems with another mix of answers it is something else (it fell
to 11 % held out). Nothing in an accuracy table marks such a configuration -- unless its accuracy is compared
with what the same answers score when they have nothing to do with the problem.

The blind baseline of a row (budget B, aggregation, k) on problem j is the expected correctness of the row's
answers *on the other problems* against problem j's target: the answers shuffled across problems (a
leave-one-out permutation expectation), so it keeps the configuration's answer habits (its letter bias, its
"no answer" rate) and drops only what links an answer to its problem:

    blind_j = mean over i != j of P(the row answers t_j on problem i)

with P from the same exact estimators the accuracy uses (greedy: 0/1; majority@k: the vote's credit for t_j
over a random k-subset, ties shared; pass@k: 1 - C(N - c, k) / C(N, k) with c the samples answering t_j).
The row is *above chance* when a one-sided permutation test rejects "the answers do not depend on the
problem": fewer than 5 % of random shuffles of the answers over the problems score as well as the true
assignment (exact null, seeded; a bootstrap interval would be wrong at the low counts where this matters:
2 of 30 right where shuffles score 0.3 % is strong evidence, not a tie with zero).

Only where the table's judge is exact answer equality (multiple choice, yes/no, numbers, short text: every
finished, answered sample's ``correct`` equals ``answer == target``); code tasks (a verifier judges) have no
blind baseline.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.evaluate.estimators import majority_curve, pass_at_k, valid_at
from edgekit.evaluate.paired import MIN_SHARED, SEED
from edgekit.schemas.table import AccuracyTable, ProblemRecord

ALPHA = 0.05  # above chance: a random shuffle of the answers scores as well in fewer than 5 % of shuffles
N_PERM = 2000
PERM_CHUNK = 250
BLIND_HOW = (
    "blind baseline: the same answers scored against the other problems' targets (leave-one-out mean); above "
    f"chance when fewer than {ALPHA:.0%} of {N_PERM} random shuffles of the answers over the problems score as well "
    f"(one-sided permutation test, seed {SEED})"
)


def why_no_baseline(table: AccuracyTable) -> str | None:
    """Why ``table`` has no blind baseline (None: it has one)."""
    if table.has_verifier:
        return "a verifier judges this task (not answer equality)"
    if len(table.problems) < MIN_SHARED:
        return f"{len(table.problems)} per-problem records (a baseline needs {MIN_SHARED})"
    for p in table.problems:
        for s in (*p.samples, *((p.greedy,) if p.greedy is not None else ())):
            if s.finished and s.answer is not None and s.correct != (s.answer == p.target):
                return f"problem {p.id} is not judged by answer equality"
    return None


def _answer_credit(
    p: ProblemRecord, budget: int, aggregation: str, n: int, keep: Container[str] | None = None
) -> dict[str, np.ndarray]:
    """Per answer a the row gives on problem p (and in ``keep``): the probability (per k) that the row's answer is a."""
    if aggregation == "greedy":
        g = p.greedy
        ok = g is not None and g.answer is not None and valid_at(g, budget) and (keep is None or g.answer in keep)
        return {g.answer: np.ones(1)} if ok else {}
    answers = [s.answer if valid_at(s, budget) else None for s in p.samples]
    out = {}
    for a in {x for x in answers if x is not None and (keep is None or x in keep)}:
        if aggregation == "majority":
            curve = majority_curve(answers, {x: x == a for x in answers if x is not None}, range(1, n + 1))
            out[a] = np.array([curve[k] for k in range(1, n + 1)])
        else:  # pass@k, first_verified: some sample of the k answers a
            c = sum(x == a for x in answers)
            out[a] = np.array([pass_at_k(n, c, k) for k in range(1, n + 1)])
    return out


def _by_target(problems: Sequence[ProblemRecord], budget: int, aggregation: str) -> tuple[np.ndarray, np.ndarray]:
    """(A, code): A[i, v, k-1] is the probability that the row (k samples) answers target value v on problem i, and
    code[j] the value of problem j's target. Answers that are no problem's target cannot score: left out. Memory
    problems x distinct targets x N."""
    values = {t: v for v, t in enumerate(dict.fromkeys(p.target for p in problems))}
    n = 1 if aggregation == "greedy" else len(problems[0].samples)
    A = np.zeros((len(problems), len(values), n))
    for i, p in enumerate(problems):
        for a, credit in _answer_credit(p, budget, aggregation, n, values).items():  # no target: cannot score
            A[i, values[a]] = credit
    return A, np.array([values[p.target] for p in problems], int)


def credit_matrix(problems: Sequence[ProblemRecord], budget: int, aggregation: str) -> np.ndarray:
    """C[i, j, k-1]: the probability that the row (k samples) answers problem j's target on problem i. Its diagonal
    is the row's per-problem expected correctness (where the judge is answer equality). Problems^2 x N memory: for
    inspection and tests; :func:`chance_checks` never builds it."""
    A, code = _by_target(problems, budget, aggregation)
    return A[:, code, :]


def blind_scores(problems: Sequence[ProblemRecord], budget: int, aggregation: str) -> np.ndarray:
    """Per problem j, the row's blind expected correctness: the mean over i != j of C[i, j] (shape (problems, N)
    like :func:`edgekit.evaluate.estimators.problem_scores`; greedy: one column)."""
    A, code = _by_target(problems, budget, aggregation)
    P = len(problems)
    return (A.sum(axis=0)[code] - A[np.arange(P), code]) / max(P - 1, 1)


@dataclass(frozen=True)
class ChanceCheck:
    """A row's accuracy against its blind baseline on the table's problems."""

    accuracy: float
    blind: float  # the blind baseline's accuracy (leave-one-out mean)
    p_value: float  # permutation test: P(a shuffle of the answers scores >= the accuracy)
    n_problems: int
    how: str = BLIND_HOW

    @property
    def above(self) -> bool:
        return self.p_value < ALPHA

    def line(self) -> str:
        """One line for the terminal."""
        verdict = "above chance" if self.above else "NOT shown above chance"
        p = "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.3f}"
        return (
            f"{100 * self.accuracy:.1f} % vs {100 * self.blind:.1f} % answering blind (its answers scored against the "
            f"other problems' targets; permutation {p}, {self.n_problems} problems): {verdict}"
        )


def chance_checks(problems: Sequence[ProblemRecord], budget: int, aggregation: str) -> list[ChanceCheck]:
    """One check per k (greedy: one): the row's accuracy, its blind baseline and the permutation test's p-value
    (``N_PERM`` random shuffles of the answers over the problems, seeded: the same table gives the same p).
    Memory: problems x distinct targets x N, and ``PERM_CHUNK`` x problems per step."""
    A, code = _by_target(problems, budget, aggregation)
    P, n = len(problems), A.shape[2]
    diag = A[np.arange(P), code]  # (P, n): per-problem expected correctness
    blind = (A.sum(axis=0)[code] - diag) / max(P - 1, 1)
    acc = diag.mean(axis=0)
    rng = np.random.default_rng([SEED, P])
    ge = np.zeros(n, int)
    for start in range(0, N_PERM, PERM_CHUNK):  # row r of a chunk: problem j gets the answers of perms[r, j]
        perms = np.argsort(rng.random((min(PERM_CHUNK, N_PERM - start), P)), axis=1)
        for k in range(n):
            ge[k] += int((A[perms, code, k].mean(axis=1) >= acc[k] - 1e-12).sum())
    return [
        ChanceCheck(float(acc[c]), float(blind[:, c].mean()), float((1 + ge[c]) / (1 + N_PERM)), P) for c in range(n)
    ]


def summary(t: AccuracyTable) -> str | None:
    """One line for `edgekit eval`: which of the table's rows at its full budget beat answering blind."""
    if why_no_baseline(t) is not None:
        return None
    rows = [r for r in t.rows if r.budget == t.max_tokens and r.stop_rule is None and r.aggregation != "pass@k"]
    checks: dict[str, list[ChanceCheck]] = {}
    above = []
    for r in rows:
        if r.aggregation not in checks:
            checks[r.aggregation] = chance_checks(t.problems, t.max_tokens, r.aggregation)
        c = checks[r.aggregation][0 if r.aggregation == "greedy" else r.k - 1]
        if c.above:
            above.append((r, c))
    if not rows:
        return None
    if not above:
        best = max(rows, key=lambda r: r.accuracy)
        c = checks[best.aggregation][0 if best.aggregation == "greedy" else best.k - 1]
        return (
            f"no row beats answering blind at budget {t.max_tokens}: the best, {_name(best)}, scores {c.line()}; "
            "these accuracies may be the answer mix of the problems, not the model reading them"
        )
    r, c = max(above, key=lambda rc: rc[1].accuracy)
    return (
        f"{len(above)} of {len(rows)} rows above chance at budget {t.max_tokens}; the most accurate, {_name(r)}: "
        f"{c.line()}"
    )


def _name(r) -> str:
    return "greedy" if r.aggregation == "greedy" else f"{r.aggregation}@{r.k}"
