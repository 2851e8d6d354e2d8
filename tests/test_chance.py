"""The blind baseline (issue #24): a configuration whose answers do not depend on the problem is told apart from one
that reads it, exactly, reproducibly, and the plan and eval say which the chosen one is."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgekit.evaluate import chance
from edgekit.evaluate.estimators import accuracy_rows, problem_scores
from edgekit.perfmodel import synthetic as sy
from edgekit.plan import plan, to_plan_file
from edgekit.schemas.table import AccuracyTable, ProblemRecord, SampleRecord, load_table

ROOT = Path(__file__).resolve().parents[1]
LETTERS = "ABCDEF"
FAST = dict(a=0.0, b=1e-3, c=0.05, alpha=0.01, beta=0.001, gamma=0.0)
SLOW = dict(a=0.0, b=3e-3, c=0.10, alpha=0.04, beta=0.002, gamma=0.0)


def choice_table(model_id: str, answers, targets, samples=None, has_verifier=False) -> AccuracyTable:
    """A six-option table: ``answers[j]`` is the greedy answer to problem j, ``samples[j]`` its sampled answers."""
    samples = samples or [[a] * 4 for a in answers]
    probs = []
    for j, (a, t, ss) in enumerate(zip(answers, targets, samples)):
        rec = [SampleRecord(answer=x, correct=x == t, tokens=2, finished=x is not None) for x in ss]
        g = SampleRecord(answer=a, correct=a == t, tokens=2, finished=True)
        probs.append(ProblemRecord(id=f"date_understanding/{j}", target=t, prompt_tokens=150, samples=rec, greedy=g))
    return AccuracyTable(
        task="bigbench:date_understanding",
        model_id=model_id,
        quant="Q4_K_M",
        prompt_template="terse",
        temperature=0.8,
        n_samples=len(samples[0]),
        seed=0,
        max_tokens=32,
        n_problems=len(probs),
        prompt_tokens_mean=150.0,
        has_verifier=has_verifier,
        task_file_sha256="f" * 64,
        problems=probs,
        rows=accuracy_rows(probs, [32], None, ["greedy", "majority"]),
    )


def targets(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [LETTERS[i] for i in rng.integers(0, 6, n)]


def test_one_answer_to_every_problem_scores_its_share_and_is_not_above_chance():
    ts = targets()
    t = choice_table("constant", ["B"] * len(ts), ts)
    (g,) = chance.chance_checks(t.problems, 32, "greedy")
    share = ts.count("B") / len(ts)
    assert g.accuracy == pytest.approx(share) and g.blind == pytest.approx(share)  # exact: leave-one-out mean
    assert g.p_value == 1.0 and not g.above and "NOT shown above chance" in g.line()


def test_answers_that_follow_the_problem_are_above_chance_and_rare_right_answers_count():
    ts = targets()
    reads = [t if j % 5 < 3 else "A" for j, t in enumerate(ts)]  # right on 60 %
    (g,) = chance.chance_checks(choice_table("reads", reads, ts).problems, 32, "greedy")
    assert g.above and g.p_value < 0.001 and g.accuracy > g.blind + 0.3
    # 3 right answers of 60 where a shuffle scores ~0: strong evidence (a bootstrap interval would touch zero)
    rare = [t if j < 3 else None for j, t in enumerate(ts)]
    (g,) = chance.chance_checks(choice_table("rare", rare, ts).problems, 32, "greedy")
    assert g.accuracy == pytest.approx(3 / 60) and g.blind < 0.01 and g.above


def _brute_vote_credit(answers, target, k):
    """Expected majority credit for ``target`` over all k-subsets, ties split, None never votes."""
    total = 0.0
    subsets = list(itertools.combinations(range(len(answers)), k))
    for sub in subsets:
        votes = {}
        for i in sub:
            if answers[i] is not None:
                votes[answers[i]] = votes.get(answers[i], 0) + 1
        if votes:
            top = max(votes.values())
            lead = [a for a, v in votes.items() if v == top]
            total += (target in lead) / len(lead)
    return total / len(subsets)


def test_blind_majority_scores_match_a_brute_force_count():
    rng = np.random.default_rng(3)
    ts = targets(12, seed=3)
    samples = [[rng.choice([*LETTERS[:3], None]) for _ in range(5)] for _ in ts]
    t = choice_table("mixed", [s[0] or "A" for s in samples], ts, samples=samples)
    blind = chance.blind_scores(t.problems, 32, "majority")
    for j, tj in enumerate(ts):
        for k in (1, 2, 3, 5):
            want = np.mean([_brute_vote_credit(samples[i], tj, k) for i in range(len(ts)) if i != j])
            assert blind[j, k - 1] == pytest.approx(want, abs=1e-12)
    # the credit matrix's diagonal is the accuracy estimators' own per-problem correctness
    for agg in ("greedy", "majority", "pass@k"):
        C = chance.credit_matrix(t.problems, 32, agg)
        assert np.allclose(C[np.arange(len(ts)), np.arange(len(ts))], problem_scores(t.problems, 32, agg))


def test_the_permutation_p_value_matches_the_exact_test_and_is_reproducible():
    ts = ["A", "B", "C", "A", "B", "C", "A"]
    ans = ["A", "B", "A", "C", "B", "A", "B"]  # 3 of 7 right
    t = choice_table("small", ans, ts)
    (g,) = chance.chance_checks(t.problems, 32, "greedy")
    obs = sum(a == b for a, b in zip(ans, ts))
    perms = list(itertools.permutations(range(7)))
    exact = sum(sum(ans[p[j]] == ts[j] for j in range(7)) >= obs for p in perms) / len(perms)
    assert g.p_value == pytest.approx(exact, abs=0.03)
    assert chance.chance_checks(t.problems, 32, "greedy")[0].p_value == g.p_value  # seeded


def test_no_baseline_where_a_verifier_judges_or_the_judge_is_not_answer_equality():
    ts = targets(20)
    t = choice_table("v", ts, ts, has_verifier=True)
    assert "verifier" in chance.why_no_baseline(t)
    t = choice_table("ok", ts, ts)
    assert chance.why_no_baseline(t) is None
    p0 = t.problems[0]
    odd = p0.model_copy(update={"greedy": p0.greedy.model_copy(update={"correct": False})})  # same answer, judged wrong
    assert "answer equality" in chance.why_no_baseline(t.model_copy(update={"problems": [odd, *t.problems[1:]]}))
    assert "per-problem records" in chance.why_no_baseline(t.model_copy(update={"problems": t.problems[:5]}))


@pytest.fixture(scope="module")
def prof():
    return sy.device_profile(
        [
            sy.model_profile("small", FAST, noise=0.02, size_bytes=500_000_000),
            sy.model_profile("big", SLOW, noise=0.02, size_bytes=1_500_000_000, seed=1),
        ]
    )


def test_a_plan_on_a_constant_answer_says_so_and_names_the_configuration_that_reads_the_problems(prof):
    ts = targets(60, seed=1)
    top = max(LETTERS, key=ts.count)
    small = choice_table("small", [top] * 60, ts)  # the answer mix's best letter: about 1 in 4
    big_ans = [t if j % 10 == 0 else None for j, t in enumerate(ts)]  # reads the problem, but answers 1 in 10
    big = choice_table("big", big_ans, ts, samples=[[a] * 4 for a in big_ans])
    res = plan(prof, [small, big], 10.0)
    assert res.config(res.chosen)["model_id"] == "small"  # a diagnosis, not a rule: the choice is the same
    c = res.chance()
    assert not c.above and c.accuracy == pytest.approx(ts.count(top) / 60)
    (w,) = [w for w in res.all_warnings() if "answering blind" in w]
    assert "NOT shown above chance" in w and "big" in w and "above chance" in w.split("most accurate feasible")[1]
    pf = to_plan_file(res)
    assert pf.predicted.above_chance is False and pf.predicted.blind_p_value == 1.0
    assert pf.predicted.blind_accuracy == pytest.approx(c.blind) and "permutation" in pf.predicted.blind_how
    assert any(b.startswith("warning: ") and "answering blind" in b for b in pf.based_on)
    # a plan whose chosen configuration reads the problems: no warning, the figure in the plan
    res = plan(prof, [choice_table("small", [t if j % 2 else "A" for j, t in enumerate(ts)], ts)], 10.0)
    assert res.chance().above and not [w for w in res.all_warnings() if "answering blind" in w]
    assert to_plan_file(res).predicted.above_chance is True


def test_shipped_tables_and_eval_say_which_rows_beat_answering_blind(monkeypatch):
    shipped = [load_table(ROOT / "tables" / f"object_counting-qwen{m}-terse.json") for m in ("0.5b", "1.5b")]
    p = sy.device_profile([sy.model_profile(t.model_id, c, noise=0.02) for t, c in zip(shipped, (FAST, SLOW))])
    pf = to_plan_file(plan(p, shipped, 3.0))
    assert pf.predicted.above_chance is True and pf.predicted.blind_p_value < 0.001
    assert pf.competitors and all(cm.above_chance is not None for cm in pf.competitors)
    t = shipped[1]
    line = chance.summary(t)
    assert line.startswith("5 of 5 rows above chance") and "p < 0.001" in line
    ts = targets(30)
    line = chance.summary(choice_table("constant", ["C"] * 30, ts))
    assert line.startswith("no row beats answering blind") and "answer mix" in line
    from edgekit.cli import eval_cmd

    printed = []
    monkeypatch.setattr(eval_cmd.console, "print", lambda *a, **k: printed.append(str(a[0]) if a else ""))
    eval_cmd.render_table(choice_table("constant", ["C"] * 30, ts))
    assert any(p.startswith("no row beats answering blind") for p in printed)
    assert json.dumps(chance.BLIND_HOW) and math.isclose(chance.ALPHA, 0.05)


def test_the_search_for_an_alternative_checks_a_bounded_number_of_groups(prof, monkeypatch):
    from edgekit.plan import compare

    ts = targets(40, seed=2)
    t = choice_table("small", ["D"] * 40, ts)
    t = t.model_copy(update={"rows": accuracy_rows(t.problems, list(range(4, 33, 2)), None, ["greedy", "majority"])})
    calls = []
    real = compare.chance_checks
    monkeypatch.setattr(compare, "chance_checks", lambda *a: calls.append(a[1:]) or real(*a))
    res = plan(prof, [t], 10.0)
    (w,) = [w for w in res.all_warnings() if "answering blind" in w]
    assert w.endswith(
        f"no feasible configuration is above chance among the {compare.MAX_CHANCE_GROUPS} most accurate groups checked"
    )
    assert len(set(calls)) <= compare.MAX_CHANCE_GROUPS + 1  # the chosen one's group, then at most the bound


def test_what_the_review_found_is_refused_or_keyed_as_the_judge_keys_it():
    ts = targets(30, seed=4)
    t = choice_table("ok", ts, ts)
    p0 = t.problems[0]
    # a finished sample with no answer marked correct: not judged by answer equality
    nothing = p0.greedy.model_copy(update={"answer": None, "correct": True})
    assert "answer equality" in chance.why_no_baseline(
        t.model_copy(update={"problems": [p0.model_copy(update={"greedy": nothing}), *t.problems[1:]]})
    )
    # problems with different sample counts
    short = p0.model_copy(update={"samples": p0.samples[:2]})
    assert "different numbers" in chance.why_no_baseline(t.model_copy(update={"problems": [short, *t.problems[1:]]}))
    # targets too alike for any shuffle test: 9 of 10 "yes"
    yn = ["yes"] * 9 + ["no"]
    why = chance.why_no_baseline(choice_table("yn", yn, yn).model_copy(update={"task": "bigbench:strategyqa"}))
    assert why is not None and "too alike" in why and "p >= 0.10" in why
    # numbers keyed by value, as the judge compares them: "1000" answers a "1,000" target
    tg = [f"{1000 + 7 * j:,}" for j in range(30)]
    ans = [f"{1000 + 7 * j}" if j % 2 else "3" for j in range(30)]
    num = choice_table("num", ans, tg)

    def judged(p, s):
        return s.model_copy(update={"correct": chance.answer_key(s.answer) == chance.answer_key(p.target)})

    fixed = [
        p.model_copy(update={"greedy": judged(p, p.greedy), "samples": [judged(p, s) for s in p.samples]})
        for p in num.problems
    ]
    num = num.model_copy(update={"problems": fixed})
    assert chance.why_no_baseline(num) is None
    (g,) = chance.chance_checks(num.problems, 32, "greedy")
    assert g.accuracy == pytest.approx(0.5) and g.above


def test_a_stopping_rule_row_names_the_vote_it_was_checked_on_and_untestable_tables_are_said(prof):
    ts = targets(40, seed=5)
    t = choice_table("small", [t if j % 3 == 0 else "A" for j, t in enumerate(ts)], ts)
    res = plan(prof, [t], 10.0, stop_rules=["decided", "beta:0.6"])
    i = next(i for i in range(len(res)) if res.config(i)["stop_rule"] == "beta:0.6")
    assert res.comparator.chance(i).line().startswith("its vote without stopping (majority@")
    j = next(i for i in range(len(res)) if res.config(i)["stop_rule"] == "decided")
    assert not res.comparator.chance(j).what
    const = choice_table("small", ["D"] * 40, ts)
    few = choice_table("big", [None] * 8, ts[:8])  # 8 records: no baseline (and never right)
    res = plan(prof, [const, few], 10.0)
    assert res.config(res.chosen)["model_id"] == "small"
    (w,) = [w for w in res.all_warnings() if "answering blind" in w]
    assert "that could be tested" in w and "could not be tested" in w and "big" in w.split("could not be tested")[1]
