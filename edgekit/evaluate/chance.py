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

import math
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edgekit.evaluate.estimators import majority_curve, pass_at_k, valid_at
from edgekit.evaluate.paired import MIN_SHARED, SEED
from edgekit.evaluate.tasks import normalize_text, to_number
from edgekit.schemas.table import AccuracyTable, ProblemRecord

ALPHA = 0.05  # above chance: a random shuffle of the answers scores as well in fewer than 5 % of shuffles
N_PERM = 2000
PERM_CHUNK = 100
BLIND_HOW = (
    "blind baseline: the same answers scored against the other problems' targets (leave-one-out mean); above "
    f"chance when fewer than {ALPHA:.0%} of {N_PERM} random shuffles of the answers over the problems score as well "
    f"(one-sided permutation test, seed {SEED})"
)


def answer_key(x: str) -> tuple:
    """What the judge compares: a number by value ("7", "7.0", "1,000"), anything else as normalised text
    (letters, yes/no, short text)."""
    v = to_number(x)
    return ("n", v) if v is not None else ("t", normalize_text(x))


def why_no_baseline(table: AccuracyTable) -> str | None:
    """Why ``table`` has no blind baseline (None: it has one)."""
    if table.has_verifier:
        return "a verifier judges this task (not answer equality)"
    probs = table.problems
    if len(probs) < MIN_SHARED:
        return f"{len(probs)} per-problem records (a baseline needs {MIN_SHARED})"
    if len({len(p.samples) for p in probs}) != 1:
        return "the problems hold different numbers of samples"
    for p in probs:
        t = answer_key(p.target)
        for s in (*p.samples, *((p.greedy,) if p.greedy is not None else ())):
            if s.finished and s.correct != (s.answer is not None and answer_key(s.answer) == t):
                return f"problem {p.id} is not judged by answer equality"
    counts = Counter(answer_key(p.target) for p in probs)
    floor = math.exp(sum(math.lgamma(c + 1) for c in counts.values()) - math.lgamma(len(probs) + 1))
    if floor >= ALPHA:  # even answers right on every problem: that share of shuffles scores as well
        return (
            f"the targets are too alike to test ({len(counts)} distinct over {len(probs)} problems: even a model "
            f"right on every problem has p >= {floor:.2f})"
        )
    return None


@lru_cache(maxsize=65536)
def _vote_credit(c: int, others: tuple[int, ...], n_none: int, n: int) -> np.ndarray:
    """P(a k-subset's majority vote is a given answer) for k = 1..n, the answer drawn c times, the other answers
    ``others`` times each, ``n_none`` samples without an answer (ties split, as the estimators)."""
    answers = ["a"] * c + [f"o{i}" for i, m in enumerate(others) for _ in range(m)] + [None] * n_none
    curve = majority_curve(answers, {"a": True} | {f"o{i}": False for i in range(len(others))}, range(1, n + 1))
    out = np.array([curve[k] for k in range(1, n + 1)])
    out.setflags(write=False)
    return out


@lru_cache(maxsize=4096)
def _pass_credit(c: int, n: int) -> np.ndarray:
    out = np.array([pass_at_k(n, c, k) for k in range(1, n + 1)])
    out.setflags(write=False)
    return out


def _answer_credit(p: ProblemRecord, budget: int, aggregation: str, n: int, keep: Container) -> dict:
    """Per answer key the row gives on problem p (and in ``keep``): the probability (per k) that it is the row's
    answer."""
    if aggregation == "greedy":
        g = p.greedy
        if g is None or g.answer is None or not valid_at(g, budget) or answer_key(g.answer) not in keep:
            return {}
        return {answer_key(g.answer): np.ones(1)}
    counts = Counter(answer_key(s.answer) for s in p.samples if s.answer is not None and valid_at(s, budget))
    n_none = n - sum(counts.values())
    out = {}
    for a, c in counts.items():
        if a not in keep:  # no problem's target: it can never score
            continue
        if aggregation == "majority":
            others = tuple(sorted(m for b, m in counts.items() if b != a))
            out[a] = _vote_credit(c, others, n_none, n)
        else:  # pass@k, first_verified: some sample of the k gives a
            out[a] = _pass_credit(c, n)
    return out


@dataclass(frozen=True)
class _Credits:
    """Sparse credits: ``vals[e]`` is the probability (per k) that the row answers target value v on problem i,
    for the sorted keys ``keys[e] = i * V + v``; ``code[j]``: problem j's target value."""

    keys: np.ndarray
    vals: np.ndarray
    code: np.ndarray
    V: int
    n: int

    def lookup(self, i: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Credits for problems ``i`` answering target values ``v`` (broadcast): shape (..., n)."""
        q = np.asarray(i) * self.V + np.asarray(v)
        if not len(self.keys):
            return np.zeros((*q.shape, self.n))
        at = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return np.where((self.keys[at] == q)[..., None], self.vals[at], 0.0)


def _credits(problems: Sequence[ProblemRecord], budget: int, aggregation: str) -> _Credits:
    values = {t: v for v, t in enumerate(dict.fromkeys(answer_key(p.target) for p in problems))}
    n = 1 if aggregation == "greedy" else len(problems[0].samples)
    keys, vals = [], []
    for i, p in enumerate(problems):
        for a, credit in _answer_credit(p, budget, aggregation, n, values).items():
            keys.append(i * len(values) + values[a])
            vals.append(credit)
    order = np.argsort(keys, kind="stable")
    return _Credits(
        np.asarray(keys, np.int64)[order],
        np.asarray(vals, float).reshape(-1, n)[order],
        np.array([values[answer_key(p.target)] for p in problems], int),
        len(values),
        n,
    )


def credit_matrix(problems: Sequence[ProblemRecord], budget: int, aggregation: str) -> np.ndarray:
    """C[i, j, k-1]: the probability that the row (k samples) answers problem j's target on problem i. Its diagonal
    is the row's per-problem expected correctness (where the judge is answer equality). Problems^2 x N memory: for
    inspection and tests; :func:`chance_checks` never builds it."""
    cr = _credits(problems, budget, aggregation)
    P = len(problems)
    i, j = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    return cr.lookup(i, cr.code[j])


def _diag_and_blind(cr: _Credits, P: int) -> tuple[np.ndarray, np.ndarray]:
    diag = cr.lookup(np.arange(P), cr.code)  # (P, n)
    col = np.zeros((cr.V, cr.n))  # per target value: the summed credit over all problems
    np.add.at(col, cr.keys % cr.V, cr.vals)
    return diag, (col[cr.code] - diag) / max(P - 1, 1)


def blind_scores(problems: Sequence[ProblemRecord], budget: int, aggregation: str) -> np.ndarray:
    """Per problem j, the row's blind expected correctness: the mean over i != j of C[i, j] (shape (problems, N)
    like :func:`edgekit.evaluate.estimators.problem_scores`; greedy: one column)."""
    return _diag_and_blind(_credits(problems, budget, aggregation), len(problems))[1]


@dataclass(frozen=True)
class ChanceCheck:
    """A row's accuracy against its blind baseline on the table's problems."""

    accuracy: float
    blind: float  # the blind baseline's accuracy (leave-one-out mean)
    p_value: float  # permutation test: P(a shuffle of the answers scores >= the accuracy)
    n_problems: int
    how: str = BLIND_HOW
    what: str = ""  # which answers were checked, when not the row's own (a stopping rule's row: its vote unstopped)

    @property
    def above(self) -> bool:
        return self.p_value < ALPHA

    def line(self) -> str:
        """One line for the terminal."""
        verdict = "above chance" if self.above else "NOT shown above chance"
        p = "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.3f}"
        return (
            (f"{self.what}: " if self.what else "")
            + f"{100 * self.accuracy:.1f} % vs {100 * self.blind:.1f} % answering blind (its answers scored against "
            f"the other problems' targets; permutation {p}, {self.n_problems} problems): {verdict}"
        )


def chance_checks(problems: Sequence[ProblemRecord], budget: int, aggregation: str) -> list[ChanceCheck]:
    """One check per k (greedy: one): the row's accuracy, its blind baseline and the permutation test's p-value
    (``N_PERM`` random shuffles of the answers over the problems, seeded: the same table gives the same p).
    Memory: the answers' credits (sparse) and ``PERM_CHUNK`` x problems per step."""
    if not problems:
        raise ValueError("no problems to check")
    cr = _credits(problems, budget, aggregation)
    P = len(problems)
    diag, blind = _diag_and_blind(cr, P)
    acc = diag.mean(axis=0)
    rng = np.random.default_rng([SEED, P])
    ge = np.zeros(cr.n, int)
    for start in range(0, N_PERM, PERM_CHUNK):  # row r of a chunk: problem j gets the answers of perms[r, j]
        perms = np.argsort(rng.random((min(PERM_CHUNK, N_PERM - start), P)), axis=1)
        ge += (cr.lookup(perms, cr.code[None, :]).mean(axis=1) >= acc - 1e-12).sum(axis=0)
    return [
        ChanceCheck(float(acc[c]), float(blind[:, c].mean()), float((1 + ge[c]) / (1 + N_PERM)), P) for c in range(cr.n)
    ]


def summary(t: AccuracyTable) -> str | None:
    """One line for `edgekit eval`: which of the table's rows at its full budget beat answering blind."""
    if why_no_baseline(t) is not None:
        return None
    rows = [r for r in t.rows if r.budget == t.max_tokens and r.stop_rule is None and r.aggregation != "pass@k"]
    if not rows:
        return None
    checks = {a: chance_checks(t.problems, t.max_tokens, a) for a in {r.aggregation for r in rows}}
    rated = [(r, checks[r.aggregation][0 if r.aggregation == "greedy" else r.k - 1]) for r in rows]
    above = [rc for rc in rated if rc[1].above]
    if not above:
        best, c = max(rated, key=lambda rc: rc[0].accuracy)
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
