"""Choosing among the feasible configurations: paired comparisons, ties and material savings.

The most accurate feasible configuration (highest table accuracy) is the default. With ``prefer="cheaper"`` a
cheaper configuration replaces it only when both hold:

(a) a tie: the 95 % interval of the accuracy difference contains 0 -- against the most accurate one and against
    every more accurate configuration on the feasible frontier. Paired (:mod:`edgekit.evaluate.paired`: per-problem
    expected correctness, bootstrap over the shared problems) where the two tables share problems, else Newcombe's
    unpaired interval from the two Wilson intervals (said so); a variant's accuracy prior is always unpaired and
    never wins a tie on its widened upper end;
(b) a material saving: its latency prediction interval lies wholly below the most accurate one's (the intervals
    do not overlap); with an energy cap, energy counts too (its interval taken as the latency interval's relative
    width); with a memory cap, memory, when at least ``MEMORY_MATERIAL`` lower.

Among the cheaper configurations that qualify, the most accurate (then the fastest) is taken. The chosen
configuration's table accuracy is the largest of many noisy estimates, so it is optimistic: :func:`optimism`
estimates by how much (bootstrap of the maximum over the feasible configurations measured on the same problems).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from edgekit.evaluate.chance import ChanceCheck, chance_checks, why_no_baseline
from edgekit.evaluate.estimators import problem_scores

if TYPE_CHECKING:  # planner imports this module: the type only, no import cycle at run time
    from edgekit.plan.planner import PlanResult

from edgekit.evaluate.paired import BOOT_HOW, MIN_SHARED, Pairing, boot_weights, newcombe, paired_diff, pairing, verdict

# ``"PlanResult"`` annotations name edgekit.plan.planner.PlanResult; not imported (planner imports this module)

MEMORY_MATERIAL = 0.10  # a memory saving counts (memory cap set) when at least 10 % of the larger prediction
MAX_COMPETITORS = 6
MAX_CHANCE_GROUPS = 12  # (table, budget, aggregation) groups a chance warning checks for an alternative
TIE_EPS = 1e-9
UNPAIRED_HOW = "unpaired: Newcombe interval from the two tables' 95 % Wilson intervals"


@dataclass
class Comparison:
    """Candidate ``ref`` against candidate ``other``: accuracy difference ref - other, and what ref saves."""

    ref: int
    other: int
    diff: float
    lo: float
    hi: float
    paired: bool
    n_shared: int  # problems the paired difference is over (0: unpaired)
    how: str
    verdict: str  # of ref against other: win | tie | loss
    latency_saving_s: float  # other's latency (at the plan's percentile) minus ref's: > 0, ref is faster
    material: bool  # the faster one's latency interval lies wholly below the other's
    saving_how: str  # the saving in words


class Comparator:
    """Per-problem scores of a plan's candidates and their pairwise comparisons (cached)."""

    def __init__(self, res: PlanResult):
        self.res = res
        self._pairs: dict[tuple[int, int], Pairing] = {}
        self._full: dict[tuple[int, int, str], np.ndarray] = {}
        self._pos = [{p.id: r for r, p in enumerate(t.problems)} for t in res.tables]
        self._chance: dict[tuple[int, int, str], list[ChanceCheck] | None] = {}
        self._no_baseline: dict[int, str | None] = {}  # per table: why it has no blind baseline (None: it has one)

    def name(self, ti: int) -> str:
        p = self.res.table_paths[ti] if self.res.table_paths and ti < len(self.res.table_paths) else None
        t = self.res.tables[ti]
        return p or f"the {t.model_id} {t.prompt_template} table"

    def table_pairing(self, ti: int, tj: int) -> Pairing:
        key = (min(ti, tj), max(ti, tj))
        if key not in self._pairs:
            a, b = self.res.tables[key[0]], self.res.tables[key[1]]
            if key[0] == key[1]:
                self._pairs[key] = (
                    Pairing(tuple(sorted(self._pos[ti])), f"paired on {len(a.problems)} problems (one table)")
                    if len(a.problems) >= MIN_SHARED
                    else pairing(a, b, (self.name(ti), self.name(tj)))
                )
            else:
                self._pairs[key] = pairing(a, b, (self.name(key[0]), self.name(key[1])))
        return self._pairs[key]

    def pair(self, i: int, j: int) -> Pairing:
        r = self.res
        for c in (i, j):
            v = r.variant(c)
            if v is not None and v.prior is not None:
                return Pairing(None, f"unpaired: {r.label(c)}'s accuracy is a prior")
        return self.table_pairing(int(r.table[i]), int(r.table[j]))

    def scores(self, i: int, ids: tuple[str, ...]) -> np.ndarray:
        r = self.res
        ti, row = int(r.table[i]), r.tables[int(r.table[i])].rows[int(r.row[i])]
        if row.stop_rule is not None and row._replay is not None and row.stop_rule != "decided":
            pos = self._pos[ti]  # a replayed stopping rule: its own per-problem correctness
            return row._replay.correct[[pos[x] for x in ids]]
        key = (ti, row.budget, row.aggregation)
        if key not in self._full:
            self._full[key] = problem_scores(r.tables[ti].problems, row.budget, row.aggregation)
        col = 0 if row.aggregation == "greedy" else row.k - 1
        pos = self._pos[ti]
        return self._full[key][[pos[x] for x in ids], col]

    def chance(self, i: int) -> ChanceCheck | None:
        """Candidate i's table accuracy against its blind baseline (:mod:`edgekit.evaluate.chance`) on its table's
        problems; None where there is none (a verifier task, an accuracy prior, too few records). A stopping rule's
        row is checked on its vote without stopping (the same samples' answers)."""
        r = self.res
        v = r.variant(i)
        if v is not None and v.prior is not None:
            return None
        ti = int(r.table[i])
        t, row = r.tables[ti], r.tables[ti].rows[int(r.row[i])]
        key = (ti, row.budget, row.aggregation)
        if ti not in self._no_baseline:  # one scan of the table's records, whatever the rows asked
            self._no_baseline[ti] = why_no_baseline(t)
        if key not in self._chance:
            ok = self._no_baseline[ti] is None
            self._chance[key] = chance_checks(t.problems, row.budget, row.aggregation) if ok else None
        checks = self._chance[key]
        if checks is None:
            return None
        c = checks[0 if row.aggregation == "greedy" else row.k - 1]
        if row.stop_rule not in (None, "decided"):  # decided gives the unstopped vote's answers; others may not
            c = replace(c, what=f"its vote without stopping ({row.aggregation}@{row.k})")
        return c

    def intervals(self, i: int, others) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Pairing]]:
        """Accuracy difference i - j and its 95 % interval for each j of ``others``, vectorised per table of j:
        (diff, lo, hi, the pairing used per j)."""
        r = self.res
        others = np.asarray(others, int)
        d, lo, hi = (np.empty(len(others)) for _ in range(3))
        pairs: list = [None] * len(others)
        for tj in np.unique(r.table[others]) if len(others) else []:
            sel = np.nonzero(r.table[others] == tj)[0]
            js = others[sel]
            p = self.pair(i, int(js[0]))
            if p.ids is not None:
                xi = self.scores(i, p.ids)
                d[sel], lo[sel], hi[sel] = paired_diff(np.stack([xi - self.scores(int(j), p.ids) for j in js]))
            else:
                a, lo_, hi_ = r.accuracy, r.acc_lo, r.acc_hi_tie
                d[sel], lo[sel], hi[sel] = newcombe(a[i], lo_[i], hi_[i], a[js], lo_[js], hi_[js])
            for n in sel:
                pairs[n] = p
        return d, lo, hi, pairs

    def compare(self, i: int, others) -> list[Comparison]:
        """Candidate i against each of ``others``."""
        others = [int(j) for j in others]
        d, lo, hi, pairs = self.intervals(i, others)
        out = []
        for n, (j, p) in enumerate(zip(others, pairs)):
            how = f"{p.why}; {BOOT_HOW if p.paired else UNPAIRED_HOW}"
            saving, material, what = savings(self.res, i, j)
            out.append(
                Comparison(
                    i,
                    j,
                    float(d[n]),
                    float(lo[n]),
                    float(hi[n]),
                    p.paired,
                    len(p.ids) if p.ids else 0,
                    how,
                    verdict(float(lo[n]), float(hi[n])),
                    saving,
                    material,
                    what,
                )
            )
        return out


def material_mask(res: PlanResult, cands: np.ndarray, ref: int) -> np.ndarray:
    """Which of ``cands`` are cheaper than ``ref`` beyond the predictions' own intervals (latency; energy with an
    energy cap; memory, by ``MEMORY_MATERIAL``, with a memory cap)."""
    p = res.pred
    ok = p["hi_s"][cands] < p["lo_s"][ref]
    if res.energy_cap_j is not None:
        e = p["energy_j"]
        with np.errstate(invalid="ignore", divide="ignore"):
            ok |= np.nan_to_num(e[cands] * p["hi_s"][cands] / p["total_s"][cands], nan=np.inf) < np.nan_to_num(
                e[ref] * p["lo_s"][ref] / p["total_s"][ref], nan=-np.inf
            )
    if res.memory_cap_gb is not None:
        ok |= p["memory_bytes"][cands] <= (1 - MEMORY_MATERIAL) * p["memory_bytes"][ref]
    return ok


def savings(res: PlanResult, i: int, j: int) -> tuple[float, bool, str]:
    """(latency of j minus latency of i, is the faster one's saving material, in words from i's side)."""
    lat, p = res.latency, res.pred
    s = float(lat[j] - lat[i])
    fast, slow = (i, j) if s >= 0 else (j, i)
    material = bool(p["hi_s"][fast] < p["lo_s"][slow])
    what = f"{abs(s):.2f} s {'faster' if s >= 0 else 'slower'}, " + (
        "beyond both prediction intervals" if material else "inside the prediction intervals (not material)"
    )
    if bool(material_mask(res, np.array([fast]), slow)[0]) and not material:
        material, what = True, what + "; cheaper in energy or memory beyond the threshold (cap set)"
    return s, material, what


def choose(
    res: PlanResult, cmp: Comparator, idx: np.ndarray, best: int, frontier: np.ndarray
) -> tuple[int, str | None]:
    """The configuration to run among feasible ``idx`` (``best``: the most accurate; ``frontier``: the feasible
    Pareto frontier) and why, when it is not ``best``."""
    if res.prefer != "cheaper":
        return best, None
    acc = res.accuracy
    cands = idx[(idx != best) & (acc[idx] <= acc[best] + TIE_EPS)]
    cheaper = cands[material_mask(res, cands, best)]
    if not cheaper.size:
        return best, None
    _, lo, hi, _ = cmp.intervals(best, cheaper)
    tied = cheaper[(lo <= 0) & (hi >= 0)]
    energy = np.nan_to_num(res.pred["energy_j"], nan=np.inf)
    for c in tied[np.lexsort((energy[tied], res.latency[tied], -acc[tied]))]:
        c = int(c)
        higher = [int(a) for a in frontier if a not in (best, c) and acc[a] > acc[c] + TIE_EPS]
        _, lo, hi, _ = cmp.intervals(c, higher)
        if ((lo <= 0) & (hi >= 0)).all():
            cm = cmp.compare(best, [c])[0]
            return c, (
                f"chose {res.label(c)} over the most accurate {res.label(best)}: a tie (its lead "
                f"{_pts(cm.diff)} points [{_pts(cm.lo)}, {_pts(cm.hi)}], {cm.how.split(';')[0]}) and a material "
                f"saving ({savings(res, c, best)[2]}); --prefer most-accurate to override"
            )
    return best, None


def pareto(lat: np.ndarray, acc: np.ndarray, idx: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Non-dominated (lower latency, higher accuracy) among ``idx``; one per duplicate point; by latency."""
    if idx.size == 0:
        return idx
    e = np.where(np.isnan(energy[idx]), np.inf, energy[idx])
    order = idx[np.lexsort((e, -acc[idx], lat[idx]))]
    a = acc[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(a)[:-1]])
    return order[a > best_before]


def cheapest(cands: np.ndarray, lat: np.ndarray, energy: np.ndarray) -> int:
    """The fastest of ``cands`` (then the least energy)."""
    e = np.nan_to_num(energy[cands], nan=np.inf)
    return int(cands[np.lexsort((e, lat[cands]))[0]])


def chance_warning(res: PlanResult, cmp: Comparator, idx: np.ndarray, chosen: int) -> str | None:
    """One warning line when the chosen configuration is not shown above its blind baseline (its answers may not
    depend on the problem), naming the most accurate feasible configuration that is, if any. A diagnosis, not a
    rule: such a configuration's table accuracy is still the best estimate of what it scores on problems with the
    same answer mix, and one above chance may well score less (a model that rarely answers, but rightly)."""
    chk = cmp.chance(chosen)
    if chk is None or chk.above:
        return None
    acc = res.accuracy
    order = idx[np.lexsort((res.latency[idx], -acc[idx]))]
    groups: set = set()  # each (table, budget, aggregation) costs one check: the most accurate MAX_CHANCE_GROUPS
    other, untested = None, set()
    for j in (int(j) for j in order if j != chosen):
        t = int(res.table[j])
        row = res.tables[t].rows[int(res.row[j])]
        groups.add((t, row.budget, row.aggregation))
        if len(groups) > MAX_CHANCE_GROUPS:
            break
        c = cmp.chance(j)
        if c is None:
            untested.add(res.label(j))
        elif c.above:
            other = j
            break
    if other is not None:
        alt = f"the most accurate feasible configuration above chance is {res.label(other)}: {cmp.chance(other).line()}"
    else:
        alt = "no feasible configuration " + ("that could be tested " if untested else "") + "is above chance"
        if len(groups) > MAX_CHANCE_GROUPS:
            alt += f" among the {MAX_CHANCE_GROUPS} most accurate groups checked"
        if untested:
            alt += f" ({len(untested)} could not be tested: no baseline, e.g. {sorted(untested)[0]})"
    return (
        f"the chosen {res.label(chosen)} scores {chk.line()}: the table does not show that its answers depend on the "
        f"problem, so its accuracy may be the answer mix of these problems (one answer given to every problem scores "
        f"the share of that answer); {alt}"
    )


def competitors(res: PlanResult, cmp: Comparator, chosen: int) -> list[Comparison]:
    """The chosen configuration against the feasible competitors within reach: the most accurate and the feasible
    frontier, the closest in accuracy first (at most ``MAX_COMPETITORS``)."""
    feas = np.nonzero(res.feasible)[0]
    pool = [int(j) for j in res.frontier if res.feasible[j]]
    if res.most_accurate is not None:
        pool.append(int(res.most_accurate))
    pool = [j for j in dict.fromkeys(pool) if j != chosen and j in set(feas.tolist())]
    pool.sort(key=lambda j: (j != res.most_accurate, abs(res.accuracy[j] - res.accuracy[chosen]), res.latency[j]))
    return cmp.compare(chosen, pool[:MAX_COMPETITORS])


def optimism(res: PlanResult, cmp: Comparator, chosen: int) -> tuple[float, int] | None:
    """Bootstrap estimate of the chosen table accuracy's selection optimism (fraction) and how many feasible
    configurations it is the best of: E*[max over configurations of the resampled accuracy] minus the observed
    maximum, over the feasible configurations paired with the chosen one on all its table's problems."""
    ti = int(res.table[chosen])
    ids = tuple(sorted(cmp._pos[ti]))
    if len(ids) < MIN_SHARED or "accuracy: prior" in res.rests_on(chosen):
        return None
    group = [int(j) for j in np.nonzero(res.feasible)[0] if cmp.pair(chosen, int(j)).ids == ids]
    if len(group) < 2:
        return None
    x = np.unique(np.stack([cmp.scores(j, ids) for j in group]), axis=0)
    m = x @ boot_weights(len(ids))
    return float(m.max(axis=0).mean() - x.mean(axis=1).max()), len(group)


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"
