"""edgekit.calibrate: p-values against scipy, the LTT guarantee and the conformal budget by simulation
(broken selectors must fail the same check), refusals, the curve, JSON, the combined score.

Monte-Carlo allowance. A check "violation rate <= delta" over D independent draws has to allow for
sampling noise. We accept rate <= delta + 3 * sqrt(delta (1 - delta) / D): a procedure whose true
violation probability is exactly delta fails it with probability ~0.13 % (one-sided normal tail of
the binomial proportion), ours sit below delta (the binomial test's attainable size), and the seeds
are fixed, so the suite is deterministic. The broken selectors must exceed the *same* bound.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edgekit.calibrate import (
    Calibration,
    auroc,
    binomial_cdf_table,
    binomial_pvalue,
    choose_score,
    combined_score,
    conformal_index,
    conformal_offload_threshold,
    fixed_sequence,
    hb_pvalue,
    hb_pvalues,
    log_binomial_pvalue,
    loss_curve,
    ltt_threshold,
    min_calibration_size,
    selection_split,
    uncalibrated,
)
from edgekit.errors import UsageError


@pytest.fixture(scope="module")
def stats():
    return pytest.importorskip("scipy.stats")


def allowance(delta: float, draws: int) -> float:
    return delta + 3.0 * math.sqrt(delta * (1.0 - delta) / draws)


# ----------------------------------------------------------------------------- p-values
def _ks(n: int, a: float) -> list[int]:
    m = int(n * a)
    return sorted(
        {
            k
            for k in (0, 1, 2, 3, n // 10, n // 4, m - 5, m - 2, m - 1, m, m + 1, m + 2, m + 5, n // 2, n - 1, n)
            if 0 <= k <= n
        }
    )


def test_binomial_pvalue_matches_scipy_cdf_over_a_grid(stats):
    checked = tiny = 0
    for n in (1, 2, 5, 17, 100, 301, 1000, 5000):
        for a in (1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 0.9, 0.999):
            table = binomial_cdf_table(n, a)
            for k in _ks(n, a):
                ref = float(stats.binom.cdf(k, n, a))
                ours = binomial_pvalue(k, n, a)
                if ref < 1e-300:  # scipy underflows; ours must be as small
                    assert ours < 1e-290
                    continue
                assert ours == pytest.approx(ref, rel=1e-9, abs=0), (k, n, a)
                assert table[k] == pytest.approx(ref, rel=1e-9, abs=0), (k, n, a)
                checked += 1
                tiny += ref < 1e-12
    assert checked > 600 and tiny > 60


def test_binomial_pvalue_equals_binomtest_less(stats):
    for n in (3, 40, 500, 5000):
        for a in (0.01, 0.1, 0.3):
            for k in _ks(n, a)[::2]:
                ref = stats.binomtest(k, n, a, alternative="less").pvalue
                if ref > 1e-300:
                    assert binomial_pvalue(k, n, a) == pytest.approx(ref, rel=1e-9, abs=0), (k, n, a)


def test_log_pvalue_is_exact_deep_in_the_tail():
    # alpha = 1/4: P(X <= k) = sum_j C(n, j) 3^(n-j) / 4^n, exact in integers; p ~ 1e-500 and below
    n = 5000
    for k in (0, 1, 50, 300, 900):
        exact = math.log(sum(math.comb(n, j) * 3 ** (n - j) for j in range(k + 1))) - n * math.log(4)
        assert log_binomial_pvalue(k, n, 0.25) == pytest.approx(exact, rel=1e-12)
    assert binomial_pvalue(0, n, 0.25) == 0.0  # underflows quietly, never negative or NaN


def test_cdf_table_matches_scipy_on_every_count(stats):
    for n, a in ((1, 0.5), (60, 0.02), (400, 0.1), (2500, 0.37)):
        k = np.arange(n + 1)
        ref = stats.binom.cdf(k, n, a)
        ok = ref > 1e-300
        np.testing.assert_allclose(binomial_cdf_table(n, a)[ok], ref[ok], rtol=1e-9, atol=0)


def test_hb_pvalue_is_valid_and_bounds_the_exact_binomial(stats):
    for n in (20, 100, 400, 2000):
        for a in (0.01, 0.05, 0.1, 0.3):
            k = np.arange(n + 1)
            hb = hb_pvalues(k / n, n, a)
            exact = binomial_cdf_table(n, a)
            assert np.all(hb >= exact * (1 - 1e-12))  # Chernoff and e * tail both bound the exact tail
            assert np.all(np.diff(hb) >= 0) and np.all(hb <= 1)
            assert hb[0] == pytest.approx((1 - a) ** n, rel=1e-12)
            r = np.linspace(0, 1, 997)  # non-integer n r too
            assert np.all(np.diff(hb_pvalues(r, n, a)) >= -1e-15)
            for rr in (0.0, a / 3, a / 2, 0.9 * a, a, 2 * a):  # against the formula with scipy's binomial
                h1 = (0 if rr == 0 else min(rr, a) * math.log(min(rr, a) / a)) + (1 - min(rr, a)) * math.log(
                    (1 - min(rr, a)) / (1 - a)
                )
                ref = min(math.exp(-n * h1), math.e * stats.binom.cdf(math.ceil(n * rr - 1e-9), n, a), 1.0)
                assert hb_pvalue(rr, n, a) == pytest.approx(ref, rel=1e-9)


def test_min_calibration_size_is_the_smallest_n_where_zero_losses_reject():
    assert min_calibration_size(0.1, 0.1) == 22 and min_calibration_size(0.1, 0.05) == 29
    assert min_calibration_size(0.01, 0.05) == 299 and min_calibration_size(0.5, 0.25) == 2
    for a in (0.001, 0.02, 0.1, 0.3, 0.9):
        for d in (0.001, 0.05, 0.1, 0.5):
            N = min_calibration_size(a, d)
            assert binomial_pvalue(0, N, a) <= d
            assert N == 1 or binomial_pvalue(0, N - 1, a) > d


# ----------------------------------------------------------------------------- the LTT guarantee
# Continuous world: s ~ U(0, 1), P(correct | s) = (1 + s) / 2, so R(tau) = int_tau^1 (1 - s)/2 ds = (1 - tau)^2 / 4.
def continuous_world(rng, draws, n):
    S = rng.random((draws, n))
    C = (rng.random((draws, n)) < (1 + S) / 2).astype(np.int8)
    return S, C


def continuous_risk(tau):
    return (1 - np.clip(np.asarray(tau, dtype=float), 0, 1)) ** 2 / 4


# Tie-heavy world: a vote share over 5 samples. R(0.6) = 0.083 sits just above alpha = 0.08.
LEVELS = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
P_LEVEL = np.array([0.10, 0.15, 0.20, 0.25, 0.30])
P_WRONG = np.array([0.70, 0.50, 0.23, 0.10, 0.04])


def vote_world(rng, draws, n):
    S = LEVELS[rng.choice(LEVELS.size, size=(draws, n), p=P_LEVEL)]
    C = (rng.random((draws, n)) >= P_WRONG[np.searchsorted(LEVELS, S)]).astype(np.int8)
    return S, C


def vote_risk(tau):
    tau = np.atleast_1d(np.asarray(tau, dtype=float))
    return ((LEVELS[None, :] >= tau[:, None]) * (P_LEVEL * P_WRONG)[None, :]).sum(axis=1)


def test_true_risk_formulas_agree_with_a_million_sample_monte_carlo():
    rng = np.random.default_rng(7)
    S, C = continuous_world(rng, 1, 1_000_000)
    V, W = vote_world(rng, 1, 1_000_000)
    for tau in (0.0, 0.2, 0.37, 0.6, 0.95, math.inf):
        mc = np.mean((S >= tau) & (C == 0))
        assert abs(mc - continuous_risk(tau)) < 4 * math.sqrt(0.25 / 1e6)
    for tau in (0.2, 0.5, 0.6, 0.8, 1.0, math.inf):
        assert abs(np.mean((V >= tau) & (W == 0)) - vote_risk(tau)[0]) < 4 * math.sqrt(0.25 / 1e6)


def select_ltt(S, C, alpha, delta, pvalue="binomial"):
    return np.array(
        [ltt_threshold(S[d], C[d], alpha, delta, score_name="s", pvalue=pvalue).threshold for d in range(S.shape[0])]
    )


def select_with(S, C, delta, pvalue_of_losses):
    """The same fixed-sequence walk as ltt_threshold, with another p-value: for the broken variants."""
    out = np.empty(S.shape[0])
    for d in range(S.shape[0]):
        thr, _, losses = loss_curve(S[d], C[d])
        out[d] = thr[max(fixed_sequence(pvalue_of_losses(losses, S.shape[1]), delta), 0)]
    return out


ALPHA, DELTA, N, DRAWS = 0.1, 0.1, 400, 2000


@pytest.fixture(scope="module")
def continuous_draws():
    return continuous_world(np.random.default_rng(2024), DRAWS, N)


@pytest.fixture(scope="module")
def ltt_taus(continuous_draws):
    return select_ltt(*continuous_draws, ALPHA, DELTA)


def test_ltt_selection_matches_an_independent_reference(continuous_draws, ltt_taus, stats):
    S, C = continuous_draws
    for d in range(0, DRAWS, 10):  # brute force: every candidate, scipy's binomial cdf, the walk
        cand = np.concatenate([[np.inf], np.sort(np.unique(S[d]))[::-1]])
        losses = ((S[d][None, :] >= cand[:, None]) & (C[d][None, :] == 0)).sum(axis=1)
        p = stats.binom.cdf(losses, N, ALPHA)
        stop = np.flatnonzero(p > DELTA)
        assert ltt_taus[d] == cand[(stop[0] if stop.size else cand.size) - 1]


def test_ltt_guarantee_holds_by_simulation(ltt_taus):
    """2000 calibration sets of n = 400; the true risk of each chosen threshold exceeds alpha in at
    most delta (+ allowance) of them. The exact binomial test here has attainable size
    P(Binom(400, .1) <= 31) = 0.0746, so the rate sits near 0.07, not at zero (the check has teeth)."""
    rate = float(np.mean(continuous_risk(ltt_taus) > ALPHA))
    assert 0.04 <= rate <= allowance(DELTA, DRAWS), rate
    assert np.mean(continuous_risk(ltt_taus)) > 0.7 * ALPHA  # it uses the budget: not "offload everything"


def test_ltt_hb_holds_and_is_never_more_lenient(continuous_draws, ltt_taus):
    S, C = continuous_draws
    hb = select_ltt(S[:1000], C[:1000], ALPHA, DELTA, pvalue="hb")
    assert np.all(hb >= ltt_taus[:1000])
    assert float(np.mean(continuous_risk(hb) > ALPHA)) <= allowance(DELTA, 1000)


def test_broken_selectors_fail_the_same_check(continuous_draws, stats):
    S, C = continuous_draws
    bound = allowance(DELTA, DRAWS)
    # 1. plug-in: the most lenient threshold whose empirical risk is <= alpha (no p-value)
    plug_in = select_with(S, C, DELTA, lambda L, n: np.where(L / n <= ALPHA, 0.0, 1.0))
    # 2. a wrong p-value: a one-sided p halved (as if converting a two-sided one), i.e. level 2 delta
    halved = select_with(S, C, DELTA, lambda L, n: stats.binom.cdf(L, n, ALPHA) / 2)
    r1 = float(np.mean(continuous_risk(plug_in) > ALPHA))
    r2 = float(np.mean(continuous_risk(halved) > ALPHA))
    assert r1 > 0.3 and r1 > bound, r1
    assert r2 > bound, r2


def test_ltt_guarantee_holds_with_tied_scores_and_a_barely_bad_level(stats):
    S, C = vote_world(np.random.default_rng(99), DRAWS, N)
    taus = select_ltt(S, C, 0.08, DELTA)
    assert set(np.unique(taus)) <= set(LEVELS) | {math.inf}
    rate = float(np.mean(vote_risk(taus) > 0.08))
    assert rate <= allowance(DELTA, DRAWS), rate
    plug_in = select_with(S, C, DELTA, lambda L, n: np.where(L / n <= 0.08, 0.0, 1.0))
    assert float(np.mean(vote_risk(plug_in) > 0.08)) > allowance(DELTA, DRAWS)


# ----------------------------------------------------------------------------- conformal offload budget
def test_conformal_index_is_floor_of_n_plus_one_times_budget():
    for n in range(1, 120):
        for pct in (0, 1, 5, 10, 15, 20, 33, 50, 90, 99, 100):
            k = conformal_index(n, pct / 100)
            assert k == ((n + 1) * pct) // 100  # integer arithmetic, no float noise
            assert k / (n + 1) <= pct / 100
    # the uncorrected rule "offload at most a b-fraction of the calibration set" and ceil((n+1) b)
    # both overshoot for some small n: their exact P(offload) for continuous scores is k / (n + 1)
    over = [
        (n, b)
        for n in range(5, 60)
        for b in (0.05, 0.1, 0.15, 0.2)
        if (math.floor(n * b) + 1) / (n + 1) > b and math.ceil((n + 1) * b) / (n + 1) > b
    ]
    assert (10, 0.15) in over and len(over) > 50


def test_conformal_budget_holds_on_fresh_queries_and_the_plus_one_matters():
    """n = 10, budget 0.15, 5000 calibration sets; uniform scores, so a threshold tau offloads a fresh
    query with probability clip(tau, 0, 1). Correct: k = floor(11 * .15) = 1, E = 1/11 = 0.091.
    Without the +1 (k = floor(10 * .15) + 1 = 2, "offload <= 15% of the calibration set"):
    E = 2/11 = 0.18 > 0.15."""
    n, b, draws = 10, 0.15, 5000
    rng = np.random.default_rng(5)
    S = rng.random((draws, n))
    taus = np.array([conformal_offload_threshold(S[d], b, score_name="s").threshold for d in range(draws)])
    p_off = np.clip(taus, 0, 1)
    se = p_off.std() / math.sqrt(draws)
    assert p_off.mean() <= b
    assert abs(p_off.mean() - 1 / 11) < 4 * se
    fresh = rng.random(draws)  # the marginal event itself: one new query per calibration set
    assert np.mean(fresh < taus) <= b + 3 * math.sqrt(b * (1 - b) / draws)
    naive = np.sort(S, axis=1)[:, math.floor(n * b)]  # the (floor(n b) + 1)-th smallest
    assert naive.mean() > b + 4 * naive.std() / math.sqrt(draws)
    assert abs(naive.mean() - 2 / 11) < 4 * naive.std() / math.sqrt(draws)


def test_conformal_budget_holds_with_ties():
    n, b, draws = 12, 0.3, 4000
    S, _ = vote_world(np.random.default_rng(6), draws, n)
    taus = np.array([conformal_offload_threshold(S[d], b, score_name="vote_share").threshold for d in range(draws)])
    p_off = np.array([P_LEVEL[LEVELS < t].sum() for t in taus])  # exact P(offload | tau)
    assert p_off.mean() <= b + 3 * p_off.std() / math.sqrt(draws)


def test_conformal_with_delta_bounds_the_realised_rate_with_high_probability():
    n, b, delta, draws = 200, 0.2, 0.1, 2000
    S = np.random.default_rng(8).random((draws, n))
    pac = np.array([conformal_offload_threshold(S[d], b, score_name="s", delta=delta).threshold for d in range(draws)])
    marginal = np.array([conformal_offload_threshold(S[d], b, score_name="s").threshold for d in range(draws)])
    assert float(np.mean(np.clip(pac, 0, 1) > b)) <= allowance(delta, draws)
    assert float(np.mean(np.clip(marginal, 0, 1) > b)) > 0.3  # marginal is only on average
    assert np.all(pac <= marginal)


# ----------------------------------------------------------------------------- refusals
def _refused(fn, *needles):
    with pytest.raises(UsageError) as e:
        fn()
    line = e.value.one_line()
    assert "\n" not in line and e.value.fix, line
    for needle in needles:
        assert needle in line, line
    return line


def test_refusals_name_the_fix():
    rng = np.random.default_rng(0)
    s, c = rng.random(100), rng.integers(0, 2, 100)
    for bad in (0, 1, -0.1, 1.5, float("nan"), "x"):
        _refused(lambda bad=bad: ltt_threshold(s, c, bad, 0.1, score_name="s"), "alpha")
        _refused(lambda bad=bad: ltt_threshold(s, c, 0.1, bad, score_name="s"), "delta")
        _refused(lambda bad=bad: min_calibration_size(bad, 0.1), "alpha")
    _refused(lambda: ltt_threshold(s, None, 0.1, 0.1, score_name="s"), "no labels")
    _refused(lambda: ltt_threshold(s, c[:-1], 0.1, 0.1, score_name="s"), "99 labels for 100 scores")
    _refused(lambda: ltt_threshold(np.where(np.arange(100) == 3, np.nan, s), c, 0.1, 0.1, score_name="s"), "NaN")
    _refused(lambda: ltt_threshold([], [], 0.1, 0.1, score_name="s"), "empty")
    _refused(lambda: ltt_threshold(s, np.full(100, 2), 0.1, 0.1, score_name="s"), "0/1")
    _refused(
        lambda: ltt_threshold(s[:10], c[:10], 0.1, 0.1, score_name="s"),
        "need at least 22 labelled examples for alpha=0.1, delta=0.1; you have 10",
    )
    _refused(lambda: ltt_threshold(s, c, 0.1, 0.1, score_name="s", pvalue="normal"), "p-value")
    for bad in (-0.1, 1.1, float("nan")):
        _refused(lambda bad=bad: conformal_offload_threshold(s, bad, score_name="s"), "offload_budget", "[0, 1]")
        _refused(lambda bad=bad: ltt_threshold(s, c, 0.1, 0.1, score_name="s", max_offload=bad), "max_offload")
    _refused(lambda: ltt_threshold(s, c, 0.1, 0.1, score_name="s", cloud_correct=1.2), "cloud")
    _refused(lambda: binomial_pvalue(-1, 10, 0.1), "losses")


def test_max_offload_passes_or_names_the_binding_constraint():
    S, C = continuous_world(np.random.default_rng(3), 1, 500)
    free = ltt_threshold(S[0], C[0], 0.1, 0.1, score_name="s")
    ok = ltt_threshold(S[0], C[0], 0.1, 0.1, score_name="s", max_offload=free.offload_rate + 0.01)
    assert ok.threshold == free.threshold
    line = _refused(
        lambda: ltt_threshold(S[0], C[0], 0.1, 0.1, score_name="s", max_offload=free.offload_rate - 0.05),
        "no threshold meets both constraints",
        "max_offload",
    )
    assert f"{free.offload_rate * 100:.4g}%" in line


# ----------------------------------------------------------------------------- the curve and the record
def test_curve_is_monotone_and_consistent_with_the_data():
    rng = np.random.default_rng(11)
    n = 300
    s = np.round(rng.random(n), 2)  # ties
    c = (rng.random(n) < (1 + s) / 2).astype(int)
    cloud = (rng.random(n) < 0.9).astype(int)
    cal = ltt_threshold(s, c, 0.1, 0.05, score_name="vote_share", cloud_correct=cloud)
    thr = np.array([r["threshold"] for r in cal.curve])
    assert thr[0] == math.inf and np.all(np.diff(thr) < 0) and set(thr[1:]) == set(s)
    for key, sign in (("offload_rate", -1), ("local_wrong_rate", 1), ("p_value", 1)):
        v = np.array([r[key] for r in cal.curve])
        assert np.all(sign * np.diff(v) >= 0), key
    for r in cal.curve:
        kept = s >= r["threshold"]
        assert r["offload_rate"] == pytest.approx(np.mean(~kept))
        assert r["local_wrong_rate"] == pytest.approx(np.mean(kept & (c == 0)))
        assert r["system_accuracy"] == pytest.approx(np.mean(np.where(kept, c, cloud)))
        assert r["p_value"] == pytest.approx(binomial_pvalue(int(np.sum(kept & (c == 0))), n, 0.1), rel=1e-9)
    j = [r["certified"] for r in cal.curve].index(False) - 1
    assert all(r["certified"] for r in cal.curve[: j + 1]) and not any(r["certified"] for r in cal.curve[j + 1 :])
    chosen = cal.curve[j]
    assert (
        cal.threshold == chosen["threshold"] and cal.p_value == chosen["p_value"] <= 0.05 < cal.curve[j + 1]["p_value"]
    )
    assert cal.offload_rate == chosen["offload_rate"] and cal.local_wrong_rate == chosen["local_wrong_rate"]
    assert cal.method == "ltt-binomial" and cal.n_calibration == n and cal.alpha == 0.1 and cal.delta == 0.05
    assert f"over {len(cal.curve)} thresholds" in cal.guarantee and "at most 10%" in cal.guarantee
    assert "probability >= 0.95" in cal.guarantee and "drift voids it" in cal.guarantee
    scalar = ltt_threshold(s, c, 0.1, 0.05, score_name="v", cloud_correct=0.9)
    assert scalar.curve[0]["system_accuracy"] == pytest.approx(0.9)


def test_json_round_trip_with_infinite_thresholds():
    rng = np.random.default_rng(1)
    s = rng.random(25)  # n = 25 >= 22, but one loss already fails: P(Binom(25, .1) <= 1) = 0.27 > 0.1
    nothing = ltt_threshold(s, np.zeros(25), 0.1, 0.1, score_name="mean_logprob")
    assert (
        nothing.threshold == math.inf
        and nothing.offload_rate == 1.0
        and "every query is offloaded" in nothing.guarantee
    )
    keep_all = conformal_offload_threshold(s, 0.0, score_name="s")
    assert keep_all.threshold == -math.inf and keep_all.offload_rate == 0.0
    assert conformal_offload_threshold(s, 1.0, score_name="s").threshold == math.inf
    for cal in (nothing, keep_all, uncalibrated("vote_share", 0.5, scores=s, correct=s > 0.3), uncalibrated("x")):
        text = json.dumps(cal.to_dict(), allow_nan=False)
        back = Calibration.from_dict(json.loads(text))
        assert back == cal
    assert nothing.keep_local(1e300) is False and keep_all.keep_local(-1e300) is True


# ----------------------------------------------------------------------------- combined score
def test_combined_score_helps_only_when_it_should():
    rng = np.random.default_rng(4)
    n = 3000
    z = rng.normal(size=(n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.2 * z[:, 0] + 1.2 * z[:, 1])))).astype(int)  # signal split over two
    w, fn = combined_score(z, y)
    assert w[0] > 0.5 and w[1] > 0.5 and abs(w[2]) < 0.2
    choice = choose_score(z, y)
    assert choice.name == "combined" and choice.auroc["combined"] > max(auroc(z[:, i], y) for i in range(3))
    np.testing.assert_allclose(
        choice.apply(z[:5]), 1 / (1 + np.exp(-(z[:5] @ choice.weights[:-1] + choice.weights[-1])))
    )
    y1 = (rng.random(n) < 1 / (1 + np.exp(-2 * z[:, 1]))).astype(int)  # one score carries everything
    single = choose_score(z, y1)
    assert single.name == "mean_logprob" and single.weights is None
    assert np.array_equal(single.apply(z), z[:, 1])
    sel, cal = selection_split(n, 0.3, seed=1)
    assert len(sel) == 900 and len(np.intersect1d(sel, cal)) == 0 and len(sel) + len(cal) == n
    _refused(lambda: combined_score(np.where(np.eye(3000, 3) > 0, np.nan, z), y), "NaN")


def test_the_product_does_not_import_scipy():
    code = (
        "import sys; sys.modules['scipy'] = None\n"
        "import edgekit.calibrate as c, numpy as np\n"
        "r = c.ltt_threshold(np.linspace(0, 1, 50), np.ones(50), 0.1, 0.1, score_name='s')\n"
        "assert r.threshold == 0.0 and 'scipy' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
