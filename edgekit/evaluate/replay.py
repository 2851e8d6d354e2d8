"""Replay a stopping rule over an accuracy table's samples: accuracy and the decode steps it uses.

A table keeps, per problem and sample, the extracted answer and ``tokens`` (+ ``finished``). In a
batch every sample takes one token per sampling step from the first step on, so a sample's finish
step is exactly :func:`~edgekit.schemas.table.budget_steps` (``tokens + 1`` when it ends within
the budget, its EOS step included; ``B`` when truncated) -- the finish order, and so what the
runtime's :class:`~edgekit.schemas.stopping.Tally` sees, follows from the table alone.

The replay walks the samples' finishes in step order (ties in sample order, as the runtime reads
them), feeds the same :class:`Tally` the runtime uses, and records per problem: the vote's
expected correctness (ties broken uniformly, as :mod:`edgekit.evaluate.estimators`), the steps the
batch ran, and how many steps ran with r rows live (the latency model prices each step by its
rows). A sample that joins late (adaptive growth decided at step t) finishes at ``t + steps``.

For k < N samples, or when the order matters (adaptive: which samples start first), the replay
averages ``R`` seeded random orderings of random k-subsets (``method = "resampled:R"``). For
``decided`` the accuracy is exactly majority@k's (same answer by construction), so the exact
estimator's value is used and only the steps are replayed; for ``beta`` and ``adaptive`` it is
majority@k's exact value plus the change the rule made to the vote on the same replayed subsets
(a control variate: a rule that never changes an answer gets exactly majority@k's accuracy, not
majority@k's plus the subsets' sampling noise, which the planner would read as a real gain).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.errors import UsageError
from edgekit.evaluate.estimators import majority_curve, valid_at
from edgekit.schemas.stopping import StopRule, Tally, parse_stop_rule
from edgekit.schemas.table import AccuracyRow, AccuracyTable, ProblemRecord, SampleRecord, budget_steps

DEFAULT_RESAMPLES = 24


@dataclass
class Replay:
    """One rule at one (budget, k) over a table's problems; arrays have one entry per problem."""

    rule: StopRule
    budget: int
    k: int
    correct: np.ndarray  # expected correctness per problem
    steps: np.ndarray  # mean sampling steps the batch ran
    live_steps: np.ndarray  # (problems, k): mean steps run with r = 1..k rows live
    method: str

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def row_steps(self) -> np.ndarray:
        """Per problem: row-steps decoded (sum over steps of the rows live)."""
        return self.live_steps @ np.arange(1, self.k + 1)


def _vote_credit(tally_votes: dict, ok: dict) -> float:
    if not tally_votes:
        return 0.0
    top = max(tally_votes.values())
    leaders = [a for a, v in tally_votes.items() if v == top]
    return sum(1.0 for a in leaders if ok.get(a, False)) / len(leaders)


def simulate(samples: Sequence[SampleRecord], budget: int, rule: StopRule) -> tuple[float, int, np.ndarray]:
    """One ordered batch of samples under ``rule``: (correctness credit, steps, steps with r rows live (index r-1))."""
    k = len(samples)
    fin = [budget_steps(s.tokens, s.finished, budget) for s in samples]
    ans = [s.answer if valid_at(s, budget) else None for s in samples]
    ok: dict = {}
    for s, a in zip(samples, ans):
        if a is not None:
            ok[a] = ok.get(a, False) or s.correct
    tally = Tally(rule, k)
    end = [fin[i] if i < tally.started else None for i in range(k)]  # finish step of started samples
    done = [False] * k
    live_hist = np.zeros(k)
    step = 0
    while True:
        pending = [end[i] for i in range(k) if end[i] is not None and not done[i]]
        if not pending:
            break
        nxt = min(pending)
        live = sum(1 for i in range(k) if end[i] is not None and not done[i])
        # steps step+1 .. nxt-1 run with `live` rows, and so does step nxt (its rows are decoded before they finish)
        live_hist[live - 1] += nxt - step
        step = nxt
        stop = False
        for i in range(k):
            if end[i] == step and not done[i]:
                done[i] = True
                tally.add(ans[i])
                if tally.should_stop():
                    stop = True
                    break
                if tally.should_grow():
                    first = tally.started
                    tally.grow()
                    for j in range(first, k):
                        end[j] = step + fin[j]
        if stop:
            break
    return _vote_credit(tally.votes, ok), step, live_hist


def replay(
    problems: Sequence[ProblemRecord],
    budget: int,
    k: int,
    rule: StopRule | str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Replay:
    """Replay ``rule`` at ``budget`` with ``k`` samples over every problem (see the module doc)."""
    rule = parse_stop_rule(rule) if isinstance(rule, str) else rule
    if not problems or any(not p.samples for p in problems):
        raise UsageError(
            "this accuracy table has no per-sample records to replay a stopping rule from",
            fix="rebuild it with `edgekit eval` (it keeps every sample's answer and token count)",
        )
    n = min(len(p.samples) for p in problems)
    if rule.kind == "adaptive" and rule.n_max != k:
        raise UsageError(
            f"stopping rule {rule} draws {rule.n_max} samples, not k={k}", fix=f"replay it at k={rule.n_max}"
        )
    if not 1 <= k <= n:
        raise UsageError(f"k={k} outside 1..{n} (samples drawn per problem)", fix=f"replay at k <= {n}")
    exact = k == n and rule.kind in ("none", "decided", "beta")  # the finish order does not depend on sample order
    R = 1 if exact else resamples
    correct, steps, hist = np.zeros(len(problems)), np.zeros(len(problems)), np.zeros((len(problems), k))
    none = StopRule("none")
    for pi, p in enumerate(problems):
        rng = random.Random(seed * 1_000_003 + pi)
        valid = [valid_at(s, budget) for s in p.samples]
        answers = [s.answer if v else None for s, v in zip(p.samples, valid)]
        exact_maj = majority_curve(answers, [v and s.correct for s, v in zip(p.samples, valid)], [k])[k]
        shift = 0.0  # the rule's credit minus the full vote's, on the same orderings (a control variate)
        for _ in range(R):
            chosen = list(p.samples) if exact else rng.sample(list(p.samples), k)
            c, s, h = simulate(chosen, budget, rule)
            if rule.kind not in ("none", "decided"):
                shift += (c - simulate(chosen, budget, none)[0]) / R
            steps[pi] += s / R
            hist[pi] += h / R
        # none / decided: the vote's answer is majority@k's, exactly; beta / adaptive: majority@k's exact value
        # plus how much the rule changed the vote on the replayed orderings (the subsets' own noise cancels)
        correct[pi] = min(1.0, max(0.0, exact_maj + shift))
    return Replay(rule, budget, k, correct, steps, hist, "exact" if exact else f"resampled:{R}")


def replay_table(table: AccuracyTable, rules: Sequence[str], budgets=None, ks=None, **kw) -> list[Replay]:
    """Replays of ``rules`` at every budget (default: the table's majority rows') and k >= 2."""
    rows = [r for r in table.rows if r.aggregation == "majority" and r.k >= 2 and r.stop_rule is None]
    pairs = sorted({(r.budget, r.k) for r in rows})
    if budgets is not None:
        pairs = [x for x in pairs if x[0] in set(budgets)]
    if ks is not None:
        pairs = [x for x in pairs if x[1] in set(ks)]
    out = []
    for text in rules:
        rule = parse_stop_rule(text)
        if not rule.stops:
            continue
        for b, k in pairs:
            if rule.kind == "adaptive" and k != rule.n_max:
                continue
            out.append(replay(table.problems, b, k, rule, **kw))
    return out


def add_stop_rows(table: AccuracyTable, rules: Sequence[str]) -> AccuracyTable:
    """The table with a replayed row per stopping rule and majority row's (budget, k >= 2) (adaptive: k = n_max),
    rows of earlier replays replaced. Each row keeps its :class:`Replay` in memory (``row._replay``)."""
    extra = []
    for rep in replay_table(table, rules):
        row = AccuracyRow(
            budget=rep.budget,
            k=rep.k,
            aggregation="majority",
            accuracy=rep.accuracy,
            expected_steps=float(rep.steps.mean()),
            mean_tokens=float(rep.row_steps.mean() / rep.k),
            method=rep.method,
            stop_rule=str(rep.rule),
            live_steps=[float(x) for x in rep.live_steps.mean(axis=0)],
            steps_p95=float(np.percentile(rep.steps, 95)),
        )
        row._replay = rep
        extra.append(row)
    keep = [r for r in table.rows if r.stop_rule is None]
    return table.model_copy(update={"rows": keep + extra})
