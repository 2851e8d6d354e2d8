"""Estimators against brute force: enumerate every k-subset of small pools."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from edgekit.errors import UsageError
from edgekit.evaluate.estimators import (
    accuracy_rows,
    default_aggregations,
    default_budgets,
    expected_max,
    majority_at_k,
    majority_curve,
    pass_at_k,
)
from edgekit.schemas.table import ProblemRecord, SampleRecord


# ----------------------------------------------------------------------------- brute force
def vote_credit(answers, ok) -> Fraction:
    """Majority vote with the documented tie rule: 1/t credit if the correct answer is among t tied."""
    counts = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return Fraction(0)
    top = max(counts.values())
    tied = [a for a, c in counts.items() if c == top]
    return Fraction(sum(ok[a] for a in tied), len(tied))


def brute_majority(answers, ok, k) -> float:
    subs = list(itertools.combinations(range(len(answers)), k))
    return float(sum(vote_credit([answers[i] for i in s], ok) for s in subs) / len(subs))


def brute_pass(correct, k) -> float:
    subs = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subs) / len(subs)


def brute_max(values, k) -> float:
    subs = list(itertools.combinations(values, k))
    return sum(max(s) for s in subs) / len(subs)


def random_pool(rng: random.Random, n: int):
    alphabet = ["a", "b", "c", "d"][: rng.randint(1, 4)]
    answers = [rng.choice(alphabet + [None]) for _ in range(n)]
    ok = {a: rng.random() < 0.5 for a in alphabet}
    return answers, ok


# ----------------------------------------------------------------------------- pass@k
def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)


def test_pass_at_k_matches_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            correct = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass(correct, k), abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_stable_and_matches_binomials():
    n, c, k = 500, 7, 40
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("args", [(3, 1, 4), (3, 4, 1), (3, 1, 0), (3, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(args):
    with pytest.raises(UsageError):
        pass_at_k(*args)


# ----------------------------------------------------------------------------- majority
def test_majority_hand_computed():
    answers, ok = ["a", "a", "b"], {"a": True, "b": False}
    # k=1: 2/3. k=2: {a,a} wins 1, two {a,b} ties score 1/2 each -> 2/3. k=3: a wins.
    assert majority_curve(answers, ok, [1, 2, 3]) == pytest.approx({1: 2 / 3, 2: 2 / 3, 3: 1.0})
    assert majority_at_k(["b", "b", "a"], ok, 3) == (0.0, "exact")
    # None never wins: {a, None} -> a wins.
    assert majority_at_k(["a", None], ok, 2)[0] == 1.0
    assert majority_at_k([None, None], {}, 2)[0] == 0.0
    # Tie of three with one correct: 1/3.
    assert majority_at_k(["a", "b", "c"], {"a": True, "b": False, "c": False}, 3)[0] == pytest.approx(1 / 3)
    # Two correct answers tied: full credit.
    assert majority_at_k(["a", "b"], {"a": True, "b": True}, 2)[0] == 1.0


def test_majority_matches_enumeration_on_random_pools():
    rng = random.Random(1234)
    for _ in range(400):
        n = rng.randint(1, 7)
        answers, ok = random_pool(rng, n)
        curve = majority_curve(answers, ok, range(1, n + 1))
        for k in range(1, n + 1):
            assert curve[k] == pytest.approx(brute_majority(answers, ok, k), abs=1e-12), (answers, ok, k)


def test_majority_accepts_per_sample_flags():
    answers = ["7", "7", None, "8", "9"]
    flags = [True, True, False, False, False]
    ok = {"7": True, "8": False, "9": False}
    for k in range(1, 6):
        assert majority_at_k(answers, flags, k)[0] == pytest.approx(majority_at_k(answers, ok, k)[0])
    with pytest.raises(UsageError):
        majority_at_k(answers, flags[:-1], 2)
    with pytest.raises(UsageError):
        majority_at_k(answers, flags, 6)


def test_majority_agrees_with_runtime_vote():
    """The runtime's seeded tie-break, averaged over subsets and seeds, gives the estimator's value."""
    from edgekit.runtime.aggregate import majority_vote

    answers = ["a", "b", "b", "c", "a", None, "c", "a"]
    ok = {"a": True, "b": False, "c": False}
    rng = random.Random(7)
    for k in (2, 3, 4):
        trials = 6000
        hits = 0
        for t in range(trials):
            sub = rng.sample(answers, k)
            winner, _, _ = majority_vote(sub, seed=t)
            hits += bool(winner is not None and ok[winner])
        assert hits / trials == pytest.approx(majority_at_k(answers, ok, k)[0], abs=0.025), k


def test_majority_large_pool_is_fast_and_bounded():
    rng = random.Random(5)
    answers = [rng.choice(["1", "2", "3", None]) for _ in range(64)] + [str(i) for i in range(100, 132)]
    curve = majority_curve(answers, {"1": True}, range(1, len(answers) + 1))
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in curve.values())


# ----------------------------------------------------------------------------- order statistics
def test_expected_max_matches_enumeration():
    rng = random.Random(99)
    for _ in range(200):
        vals = [rng.randint(0, 50) for _ in range(rng.randint(1, 7))]
        got = expected_max(vals, range(1, len(vals) + 1))
        for k in range(1, len(vals) + 1):
            assert got[k] == pytest.approx(brute_max(vals, k), abs=1e-12)
    assert expected_max([5, 1, 9], [1, 3]) == pytest.approx({1: 5.0, 3: 9.0})


# ----------------------------------------------------------------------------- accuracy rows
def random_problem(rng: random.Random, n: int, pid: str, max_tokens: int, greedy: bool = True) -> ProblemRecord:
    def sample():
        a = rng.choice(["x", "y", "z", None])
        tokens = rng.randint(1, max_tokens)
        return SampleRecord(answer=a, correct=a == "x", tokens=tokens, finished=rng.random() < 0.85)

    return ProblemRecord(
        id=pid, target="x", prompt_tokens=10, samples=[sample() for _ in range(n)], greedy=sample() if greedy else None
    )


def brute_rows(problems, budgets):
    """(aggregation, B, k) -> (accuracy, expected_steps, mean_tokens) by enumerating subsets."""
    n = len(problems[0].samples)
    out = {}
    for b in budgets:
        for k in range(1, n + 1):
            acc_m = acc_p = steps = mean = 0.0
            for p in problems:
                valid = [s.finished and s.tokens < b for s in p.samples]  # EOS needs a budget step
                answers = [s.answer if v else None for s, v in zip(p.samples, valid)]
                ok = {s.answer: s.correct for s, v in zip(p.samples, valid) if v and s.answer is not None}
                acc_m += brute_majority(answers, ok, k)
                acc_p += brute_pass([v and s.correct for s, v in zip(p.samples, valid)], k)
                used = [min(s.tokens + 1, b) if s.finished else min(s.tokens, b) for s in p.samples]  # EOS step
                steps += brute_max(used, k)
                mean += sum(used) / n
            P = len(problems)
            out[("majority", b, k)] = (acc_m / P, steps / P, mean / P)
            out[("pass@k", b, k)] = (acc_p / P, steps / P, mean / P)
        g = [p.greedy for p in problems]
        used = [min(s.tokens + 1, b) if s.finished else min(s.tokens, b) for s in g]
        out[("greedy", b, 1)] = (
            sum(s.finished and s.tokens < b and s.correct for s in g) / len(g),
            sum(used) / len(g),
            sum(used) / len(g),
        )
    return out


def test_accuracy_rows_match_brute_force():
    rng = random.Random(2024)
    for trial in range(25):
        n = rng.randint(1, 6)
        problems = [random_problem(rng, n, f"p{i}", 40) for i in range(rng.randint(1, 4))]
        budgets = [8, 16, 40]
        rows = accuracy_rows(problems, budgets, None, ["greedy", "majority", "pass@k", "first_verified"])
        want = brute_rows(problems, budgets)
        seen = set()
        for r in rows:
            key = ("pass@k" if r.aggregation == "first_verified" else r.aggregation, r.budget, r.k)
            acc, steps, mean = want[key]
            assert r.accuracy == pytest.approx(acc, abs=1e-12), (trial, r)
            assert r.expected_steps == pytest.approx(steps, abs=1e-9), (trial, r)
            assert r.mean_tokens == pytest.approx(mean, abs=1e-9), (trial, r)
            assert r.method == "exact"
            seen.add((r.aggregation, r.budget, r.k))
        assert len(seen) == len(rows) == len(budgets) * (1 + 3 * n)


def test_truncation_invalidates_long_and_unfinished_samples():
    s = [
        SampleRecord(answer="x", correct=True, tokens=29, finished=True),
        SampleRecord(answer="x", correct=True, tokens=5, finished=False),
    ]
    p = ProblemRecord(id="p", target="x", prompt_tokens=1, samples=s)
    rows = {(r.aggregation, r.budget, r.k): r for r in accuracy_rows([p], [10, 29, 30], None, ["majority", "pass@k"])}
    assert rows[("pass@k", 10, 2)].accuracy == 0.0  # 29 > 10, the other never finished
    assert rows[("pass@k", 30, 1)].accuracy == pytest.approx(0.5)
    assert rows[("majority", 30, 2)].accuracy == 1.0
    # 29 tokens + EOS need 30 sampled tokens: at max_tokens=29 the runtime stops it as "budget"
    assert rows[("pass@k", 29, 2)].accuracy == 0.0
    assert rows[("majority", 10, 2)].expected_steps == 10.0
    assert rows[("majority", 30, 2)].expected_steps == 30.0  # 29 tokens + the EOS step
    assert rows[("majority", 30, 1)].mean_tokens == pytest.approx((30 + 5) / 2)


def test_accuracy_rows_skip_greedy_without_greedy_samples_and_check_inputs():
    rng = random.Random(3)
    probs = [random_problem(rng, 3, "a", 20, greedy=False), random_problem(rng, 3, "b", 20)]
    rows = accuracy_rows(probs, [20], None, ["greedy", "pass@k"])
    assert {r.aggregation for r in rows} == {"pass@k"}
    with pytest.raises(UsageError):
        accuracy_rows(probs + [random_problem(rng, 2, "c", 20)], [20])
    with pytest.raises(UsageError):
        accuracy_rows(probs, [20], None, ["best"])
    with pytest.raises(UsageError):
        accuracy_rows([], [20])
    with pytest.raises(UsageError):
        accuracy_rows(probs, [20], [4])


def test_default_budgets_and_aggregations():
    assert default_budgets(256) == [16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert default_budgets(100) == [16, 24, 32, 48, 64, 96, 100]
    assert default_budgets(10) == [10]
    with pytest.raises(UsageError):
        default_budgets(0)
    assert default_aggregations(False) == ["greedy", "majority", "pass@k"]
    assert "first_verified" in default_aggregations(True)
    assert "greedy" not in default_aggregations(True, has_greedy=False)
