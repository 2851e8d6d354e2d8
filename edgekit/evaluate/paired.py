"""Paired comparisons of accuracy-table rows on the problems their tables share.

Per problem, a row's *expected correctness* is exactly what the row's accuracy averages
(:func:`edgekit.evaluate.estimators.problem_scores`): greedy -> 0/1 of the greedy sample within budget B,
majority@k -> the expected vote credit over a random k-subset, pass@k -> 1 - C(N-c, k)/C(N, k). Two
configurations measured on the same problems are compared by the mean of their per-problem differences, with a
95 % percentile bootstrap over problems (numpy, ``SEED``: the same tables give the same interval). The
problems' own difficulty cancels in the difference, so this separates configurations that two marginal
intervals cannot.

Two tables are paired only when that is sound: the same task, neither a different version of the task file
(``task_file_sha256``, or ``task_sha256`` where template and split agree, or a shared problem id with another
target), per-problem records in both, and at least ``MIN_SHARED`` shared problem ids. Otherwise the comparison
is unpaired: :func:`newcombe`'s interval for a difference of two independent proportions, built from the two
Wilson intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edgekit.evaluate.estimators import problem_scores
from edgekit.schemas.table import AccuracyTable

MIN_SHARED = 10  # fewer shared problems: compared unpaired (a bootstrap over < 10 problems is not trustworthy)
N_BOOT = 4000
SEED = 0
BOOT_HOW = f"paired bootstrap over the shared problems ({N_BOOT} resamples, seed {SEED}), 95 % percentile interval"


@dataclass(frozen=True)
class Pairing:
    ids: tuple[str, ...] | None  # the shared problem ids (sorted); None: unpaired
    why: str  # "paired on 30 shared problems" or why not
    warning: str | None = None  # one line when the tables were built on different versions of the task file

    @property
    def paired(self) -> bool:
        return self.ids is not None


def pairing(
    a: AccuracyTable, b: AccuracyTable, names: tuple[str, str] = ("A", "B"), min_shared: int = MIN_SHARED
) -> Pairing:
    """Can rows of tables ``a`` and ``b`` be compared problem by problem, and on which problems?"""
    na, nb = names
    if a.task != b.task:
        return Pairing(None, f"unpaired: {na} and {nb} are different tasks")
    if not a.problems or not b.problems:
        which = na if not a.problems else nb
        return Pairing(None, f"unpaired: {which} keeps no per-problem records")
    versions = None
    fa, fb = a.task_file_sha256, b.task_file_sha256
    if fa and fb and fa != fb:
        versions = f"task file sha256 {fa[:12]}… vs {fb[:12]}…"
    elif (
        a.task_sha256
        and b.task_sha256
        and a.task_sha256 != b.task_sha256
        and a.prompt_template == b.prompt_template
        and a.split == b.split
    ):
        versions = f"task_sha256 {a.task_sha256[:12]}… vs {b.task_sha256[:12]}… for the same template and split"
    ta = {p.id: p.target for p in a.problems}
    shared = sorted(set(ta) & {p.id for p in b.problems})
    if versions is None:
        tb = {p.id: p.target for p in b.problems}
        other = [i for i in shared if ta[i] != tb[i]]
        if other:
            versions = f"problem {other[0]} has target {ta[other[0]]!r} in one and {tb[other[0]]!r} in the other"
    if versions is not None:
        return Pairing(
            None,
            "unpaired: built on different versions of the task file",
            f"{na} and {nb} were built on different versions of {a.task} ({versions}): not compared problem "
            "by problem; rebuild one with `edgekit eval` on the current task file to pair them",
        )
    if len(shared) < min_shared:
        return Pairing(None, f"unpaired: only {len(shared)} shared problems (a paired comparison needs {min_shared})")
    return Pairing(tuple(shared), f"paired on {len(shared)} shared problems")


def table_scores(t: AccuracyTable, ids: tuple[str, ...], budget: int, aggregation: str, k: int) -> np.ndarray:
    """Per-problem expected correctness of row (budget, k, aggregation) of ``t`` on problems ``ids``."""
    by_id = {p.id: p for p in t.problems}
    s = problem_scores([by_id[i] for i in ids], budget, aggregation)
    return s[:, 0 if aggregation == "greedy" else k - 1]


@lru_cache(maxsize=64)
def boot_weights(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """(n, n_boot) resampling weights: column r holds how often each of n problems is drawn in resample r, / n."""
    rng = np.random.default_rng([seed, n])
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).T / n
    w.setflags(write=False)
    return w


def paired_diff(d: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean per-problem difference and its 95 % bootstrap interval, for each row of ``d`` (shape (m, problems),
    or one vector)."""
    d = np.atleast_2d(np.asarray(d, float))
    w = boot_weights(d.shape[1], n_boot, seed)
    lo, hi = np.empty(len(d)), np.empty(len(d))
    for s in range(0, len(d), 256):  # 256 x 4000 means at a time
        reps = d[s : s + 256] @ w
        lo[s : s + 256], hi[s : s + 256] = np.percentile(reps, [2.5, 97.5], axis=1)
    return d.mean(axis=1), lo, hi


def newcombe(p1, lo1, hi1, p2, lo2, hi2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p1 - p2 with Newcombe's hybrid score interval for independent proportions, from each one's 95 % interval."""
    p1, lo1, hi1, p2, lo2, hi2 = (np.asarray(x, float) for x in (p1, lo1, hi1, p2, lo2, hi2))
    d = p1 - p2
    return d, d - np.sqrt((p1 - lo1) ** 2 + (hi2 - p2) ** 2), d + np.sqrt((hi1 - p1) ** 2 + (p2 - lo2) ** 2)


def verdict(lo: float, hi: float) -> str:
    """Of the first configuration against the second: its difference's interval above 0, below 0, or across."""
    return "win" if lo > 0 else ("loss" if hi < 0 else "tie")


def separation(t: AccuracyTable) -> str | None:
    """One line for `edgekit eval`: can this table tell its rows (at its full budget) apart?"""
    rows = [r for r in t.rows if r.budget == t.max_tokens]
    if len(rows) < 2:
        return None
    if t.n_problems < MIN_SHARED or not t.problems:
        return (
            f"{t.n_problems} problems are too few to separate these rows (the 95 % intervals span about "
            f"±{100 * 1.96 * 0.5 / max(t.n_problems, 1) ** 0.5:.0f} points at 50 %): "
            "add problems (--limit, --target-width)"
        )
    best = max(rows, key=lambda r: r.accuracy)
    ids = tuple(p.id for p in t.problems)
    x0 = table_scores(t, ids, best.budget, best.aggregation, best.k)
    others = [r for r in rows if r is not best]
    d = np.stack([x0 - table_scores(t, ids, r.budget, r.aggregation, r.k) for r in others])
    _, lo, _ = paired_diff(d)
    below = int((lo > 0).sum())
    name = f"{best.aggregation}@{best.k}" if best.aggregation != "greedy" else "greedy"
    if below == 0:
        return (
            f"on {t.n_problems} problems no row is separated from the best ({name}, paired bootstrap, 95 %): the "
            "table cannot rank its rows; add problems (--limit, --target-width)"
        )
    return (
        f"{below} of {len(others)} rows are below the best ({name}) beyond noise "
        f"({t.n_problems} problems, paired bootstrap, 95 %)"
    )
