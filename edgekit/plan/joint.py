"""Joint planning of the local configuration and the offload threshold.

For every feasible local candidate (a majority or greedy row of an accuracy table), the table's
sample pool gives, per problem, the local answer's correctness and confidence score for random
k-subsets of its samples (the same vote and tie rule as the runtime; ``subsets`` draws, seeded);
the cloud's accuracy table (``edgekit eval --engine openai`` on the same problems) gives the
cloud's correctness. For each threshold on the score this yields the offload rate and the system
accuracy (kept: local correct; offloaded: cloud correct), and with the cloud's measured latency
the expected and p95 latency of the local/cloud mixture. The planner keeps the (configuration,
threshold) pairs within the latency target and the offload budget and maximises system accuracy;
among pairs whose 95 % Wilson intervals overlap the best's, the cheapest (expected latency) wins.

The score: vote share for k > 1, mean token logprob for k = 1 (the runtime's default rule). A
threshold chosen this way carries no guarantee: `edgekit calibrate` on held-out data gives one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import SchemaError, UsageError
from edgekit.evaluate.estimators import valid_at
from edgekit.figures import wilson
from edgekit.plan.planner import PlanResult
from edgekit.schemas.offload import OffloadCalibration
from edgekit.schemas.table import AccuracyTable, ProblemRecord

P95_OFFLOAD = 0.05  # above this offload rate the mixture's p95 includes a cloud call


@dataclass
class JointChoice:
    candidate: int
    score: str
    threshold: float
    offload_rate: float
    local_wrong_rate: float
    system_accuracy: float
    accuracy_lo: float
    accuracy_hi: float
    expected_s: float
    p95_s: float
    notes: list[str] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)

    def calibration(self, model_sha256: str | None) -> OffloadCalibration:
        return OffloadCalibration(
            method="planned-from-tables",
            score=self.score,
            threshold=self.threshold,
            n_calibration=0,
            offload_rate=self.offload_rate,
            local_wrong_rate=self.local_wrong_rate,
            guarantee="no guarantee holds: the threshold was chosen on the accuracy tables' problems by the planner "
            "(run `edgekit calibrate` on held-out data for one)",
            model_sha256=model_sha256,
            curve=self.curve,
        )


def cloud_correctness(table: AccuracyTable) -> dict[str, bool]:
    """Per problem: the cloud answered correctly (greedy sample if the table has one, else the first)."""
    out = {}
    for p in table.problems:
        s = p.greedy if p.greedy is not None else (p.samples[0] if p.samples else None)
        out[p.id] = bool(s is not None and s.correct and s.finished)
    return out


def _pool(p: ProblemRecord, budget: int, k: int, greedy: bool, rng: random.Random, subsets: int):
    """[(local correct, score)] over random k-subsets of a problem's samples at budget B."""
    if greedy:
        s = p.greedy
        ok = s is not None and valid_at(s, budget)
        return [(bool(ok and s.correct), s.mean_logprob if ok and s.answer is not None else None)]  # type: ignore[union-attr]
    out = []
    n = len(p.samples)
    for _ in range(subsets if n > k else 1):
        sub = rng.sample(p.samples, k) if n > k else list(p.samples)
        votes: dict[str, list] = {}
        for s in sub:
            if valid_at(s, budget) and s.answer is not None:
                votes.setdefault(s.answer, []).append(s)
        if not votes:
            out.append((False, None))
            continue
        top = max(len(v) for v in votes.values())
        winner = rng.choice(sorted(a for a, v in votes.items() if len(v) == top))
        out.append((bool(votes[winner][0].correct), top / k))
    return out


def joint_plan(
    res: PlanResult,
    cloud: AccuracyTable,
    cloud_latency_s: float,
    offload_budget: float | None = None,
    subsets: int = 32,
    seed: int = 0,
) -> JointChoice:
    if cloud_latency_s is None or not cloud_latency_s > 0:
        raise UsageError("joint planning needs the cloud's measured latency", fix="pass --cloud-latency 1.2s")
    if offload_budget is not None and not 0 <= offload_budget <= 1:
        raise UsageError(f"offload budget must be in [0, 1], got {offload_budget}", fix="pass --offload-budget 0.2")
    cc = cloud_correctness(cloud)
    rng = random.Random(seed)
    best: list = []
    for i in np.nonzero(res.caps_ok)[0]:
        i = int(i)
        t = res.tables[int(res.table[i])]
        r = t.rows[int(res.row[i])]
        if r.aggregation not in ("majority", "greedy"):
            continue
        missing = [p.id for p in t.problems if p.id not in cc]
        if missing:
            raise SchemaError(
                f"the cloud table {cloud.task} ({cloud.model_id}) lacks {len(missing)} of the problems of "
                f"{t.model_id}'s table (e.g. {missing[0]})",
                fix="evaluate the cloud on the same task and split (`edgekit eval --engine openai --split ...`)",
            )
        rows = [
            (lc, s, cc[p.id])
            for p in t.problems
            for lc, s in _pool(p, r.budget, r.k, r.aggregation == "greedy", rng, subsets)
        ]
        lc = np.array([x[0] for x in rows], bool)
        cl = np.array([x[2] for x in rows], bool)
        sc = np.array([-np.inf if x[1] is None else x[1] for x in rows], float)
        taus = np.unique(np.concatenate([sc[np.isfinite(sc)], [np.inf]]))
        for tau in taus:
            off = sc < tau
            rate = float(off.mean())
            acc = float(np.where(off, cl, lc).mean())
            exp_s = float(res.pred["total_s"][i]) + rate * cloud_latency_s
            p95_s = float(res.pred["hi_s"][i]) + (cloud_latency_s if rate > P95_OFFLOAD else 0.0)
            lat = exp_s if res.percentile == 50 else p95_s
            if lat > res.target_s or (offload_budget is not None and rate > offload_budget + 1e-12):
                continue
            best.append((acc, -exp_s, i, float(tau), rate, float((~off & ~lc).mean()), exp_s, p95_s))
    if not best:
        raise UsageError(
            f"no local configuration and threshold meet {res.target_s:g} s"
            + (f" within an offload budget of {offload_budget:g}" if offload_budget is not None else ""),
            fix="raise the latency target or the offload budget",
        )
    n_prob = {int(res.table[b[2]]): res.tables[int(res.table[b[2]])].n_problems for b in best}
    accs = np.array([b[0] for b in best])
    lo, hi = wilson(accs, np.array([n_prob[int(res.table[b[2]])] for b in best]))
    top = int(np.lexsort(([-b[1] for b in best], -accs))[0])
    near = [j for j in range(len(best)) if hi[j] >= lo[top]]
    pick = min(near, key=lambda j: (best[j][6], -best[j][0]))
    acc, _, i, tau, rate, wrong, exp_s, p95_s = best[pick]
    score = "mean_logprob" if int(res.n[i]) == 1 else "vote_share"
    notes = [
        f"offload planned jointly: keep local iff {score} >= {tau:.4g}; offload rate {rate:.0%}, system accuracy "
        f"{acc:.3f} [{lo[pick]:.3f}, {hi[pick]:.3f}] on the tables' problems, expected latency {exp_s:.3g} s "
        f"(local + offload rate x cloud {cloud_latency_s:.3g} s), p95 {p95_s:.3g} s"
    ]
    if pick != top:
        notes.append(
            f"the most accurate pair ({best[top][0]:.3f}, {best[top][6]:.3g} s) is inside the noise of the chosen "
            "one: the cheaper pair is taken"
        )
    curve = [
        {"threshold": b[3], "offload_rate": b[4], "local_wrong_rate": b[5], "system_accuracy": b[0]}
        for b in sorted(best, key=lambda b: -b[3])
        if b[2] == i
    ]
    return JointChoice(
        candidate=i,
        score=score,
        threshold=tau,
        offload_rate=rate,
        local_wrong_rate=wrong,
        system_accuracy=acc,
        accuracy_lo=float(lo[pick]),
        accuracy_hi=float(hi[pick]),
        expected_s=exp_s,
        p95_s=p95_s,
        notes=notes,
        curve=curve,
    )
