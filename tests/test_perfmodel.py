"""Performance model: fitting, closed-form sums, intervals, energy, memory, cross-model."""

import numpy as np
import pytest

from edgekit.errors import SchemaError
from edgekit.perfmodel import fit, fit_device
from edgekit.perfmodel import synthetic as sy
from edgekit.perfmodel.nnls import nnls

TRUTH = dict(a=1e-7, b=2e-4, c=0.02, alpha=0.03, beta=0.002, gamma=3e-7)
CONFIGS = [(50, 64, 1), (300, 512, 4), (1000, 1500, 16), (2000, 256, 8), (128, 1024, 2)]


def test_nnls_matches_lstsq_when_positive_and_clips_otherwise():
    rng = np.random.default_rng(0)
    A = rng.random((20, 3))
    x_true = np.array([1.0, 2.0, 0.5])
    x, rss = nnls(A, A @ x_true)
    assert np.allclose(x, x_true) and rss < 1e-20
    y = A @ np.array([1.0, -2.0, 0.5])
    x, _ = nnls(A, y)
    assert (x >= 0).all() and x[1] == 0.0
    # brute-force check: no non-negative grid point does better
    best = min(
        float(np.sum((A @ np.array([p, 0, q]) - y) ** 2)) for p in np.linspace(0, 2, 41) for q in np.linspace(0, 2, 41)
    )
    assert float(np.sum((A @ x - y) ** 2)) <= best + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_coefficients(seed):
    pm = fit(sy.model_profile("m", TRUTH, noise=0.01, seed=seed), source="synthetic.json")
    for k in ("a", "b", "c", "alpha", "beta"):
        assert getattr(pm, k) == pytest.approx(TRUTH[k], rel=0.05), k
    assert pm.gamma == pytest.approx(TRUTH["gamma"], rel=0.3)  # small share of the step time: weakly identified
    assert pm.method == "fitted from measured profile synthetic.json" and pm.max_n_measured == 16
    assert len(pm.residuals["decode"]["rel_err"]) == len(sy.CONTEXTS) + len(sy.NS)
    assert max(abs(r) for r in pm.residuals["prefill"]["rel_err"]) < 0.05


def test_noise_free_fit_is_exact_and_sum_is_closed_form():
    pm = fit(sy.model_profile("m", TRUTH, noise=0.0))
    for I, S, n in CONFIGS:
        assert pm.predict(I, S, n).latency_s == pytest.approx(sy.true_total(TRUTH, I, S, n), rel=1e-9)
    assert pm.rel_unc_decode == pytest.approx(0.01)  # floor


@pytest.mark.parametrize("seed", range(5))
def test_intervals_contain_truth(seed):
    pm = fit(sy.model_profile("m", TRUTH, noise=0.02, seed=seed))
    for I, S, n in CONFIGS:
        p = pm.predict(I, S, n)
        truth = sy.true_total(TRUTH, I, S, n)
        assert p.latency_lo_s <= truth <= p.latency_hi_s, (I, S, n, p.latency_s, truth)
        assert p.latency_lo_s < p.latency_s < p.latency_hi_s
    assert "RMSE" in pm.interval_how


def test_expected_steps_and_sequences_leaving():
    pm = fit(sy.model_profile("m", TRUTH, noise=0.0))
    assert pm.predict(100, 512, 4, expected_steps=200).latency_s == pytest.approx(
        sy.true_total(TRUTH, 100, 200, 4), rel=1e-9
    )
    full = pm.predict(100, 512, 4, expected_steps=200)
    same = pm.predict(100, 512, 4, expected_steps=200, mean_tokens=200)
    leave = pm.predict(100, 512, 4, expected_steps=200, mean_tokens=80)
    assert same.latency_s == pytest.approx(full.latency_s) and leave.latency_s < full.latency_s
    # alpha still paid for every step of the batch
    assert leave.decode_s > 200 * pm.alpha


def test_batch_extrapolation_widens_interval():
    pm = fit(sy.model_profile("m", TRUTH, noise=0.01))
    p16, p32 = pm.predict(100, 256, 16), pm.predict(100, 256, 32)
    assert (p32.latency_hi_s / p32.latency_s) > (p16.latency_hi_s / p16.latency_s) + 0.1
    assert "extrapolated" in p32.method and p16.method == pm.method


def test_energy_and_memory():
    mp = sy.model_profile(
        "m",
        TRUTH,
        noise=0.0,
        size_bytes=2_000_000_000,
        n_params=3e9,
        kv_bytes_per_token=100_000,
        energy_mj=(2.0, 50.0),
        peak_rss_mb=3000.0,
    )
    pm = fit(mp)
    p1 = pm.predict(200, 128, 1)
    assert p1.energy_j == pytest.approx(2e-3 * 200 + 50e-3 * 128)
    p4 = pm.predict(200, 128, 4)
    ratio = (sy.true_total(TRUTH, 200, 128, 4) - sy.true_prefill(TRUTH, 200)) / (
        sy.true_total(TRUTH, 200, 128, 1) - sy.true_prefill(TRUTH, 200)
    )
    assert p4.energy_j == pytest.approx(2e-3 * 200 + 50e-3 * 128 * ratio, rel=1e-6)
    over = 3000e6 - 2e9 - 100_000 * mp.n_ctx
    assert p4.memory_bytes == pytest.approx(2e9 + 100_000 * (200 + 4 * 128) + over)
    assert "measured peak" in p4.memory_how
    no_e = fit(sy.model_profile("m", TRUTH)).predict(200, 128, 1)
    assert no_e.energy_j is None and no_e.energy_figure().method == "unavailable"
    assert no_e.memory_bytes is None


def test_memory_estimated_without_rss():
    pm = fit(sy.model_profile("m", TRUTH, size_bytes=1_000_000_000, kv_bytes_per_token=50_000))
    p = pm.predict(100, 100, 2)
    assert p.memory_bytes == pytest.approx(1e9 * 1.1 + 50_000 * 300)
    assert p.memory_how.startswith("estimated") and p.memory_figure().method == "estimated"


def test_missing_points_is_schema_error():
    mp = sy.model_profile("m", TRUTH)
    with pytest.raises(SchemaError, match="no measured decode points for model 'm'"):
        fit(mp.model_copy(update={"decode": []}), source="p.json")


def test_only_n1_points_drops_beta():
    mp = sy.model_profile("m", TRUTH, noise=0.0)
    mp = mp.model_copy(update={"decode": [d for d in mp.decode if d.n == 1]})
    pm = fit(mp)
    assert pm.beta == 0.0 and pm.alpha == pytest.approx(TRUTH["alpha"] + TRUTH["beta"], rel=1e-6)
    assert any("beta" in n for n in pm.notes) and pm.max_n_measured == 1


def _three_models(noise=0.01):
    out = []
    for i, (P, L, E) in enumerate([(1e9, 24, 2048), (3e9, 28, 3072), (7e9, 32, 4096)]):
        kv, size = 2 * L * 8 * 128 * 2, int(P * 0.6)
        t = sy.device_truth(size, P, kv, L, E)
        out.append(
            (
                sy.model_profile(
                    f"m{i}",
                    t,
                    noise=noise,
                    seed=i,
                    size_bytes=size,
                    n_params=P,
                    kv_bytes_per_token=kv,
                    n_layer=L,
                    n_embd=E,
                    energy_mj=(1.0 + i, 20.0 + 10 * i),
                ),
                t,
            )
        )
    return out


def test_cross_model_recovers_third_model():
    ms = _three_models()
    dm = fit_device(sy.device_profile([ms[0][0], ms[2][0]]), source="two.json")
    assert dm.bw_weights_bytes_s == pytest.approx(50e9, rel=0.05)
    assert dm.prefill_flops == pytest.approx(2e12, rel=0.05)
    assert dm.bw_kv_bytes_s == pytest.approx(20e9, rel=0.3)
    mid, truth = ms[1]
    pm = dm.predict_model(mid.model)
    for k in ("alpha", "beta", "b", "c"):
        assert getattr(pm, k) == pytest.approx(truth[k], rel=0.05), k
    for I, S, n in CONFIGS:
        p = pm.predict(I, S, n)
        assert p.latency_s == pytest.approx(sy.true_total(truth, I, S, n), rel=0.05)
        assert p.latency_lo_s <= sy.true_total(truth, I, S, n) <= p.latency_hi_s
    assert pm.method.startswith("estimated (cross-model from m0, m2 on synthetic device")
    assert p.energy_j is not None and "estimated" in pm.energy_how


def test_cross_model_needs_two_models_and_leave_one_out():
    ms = _three_models()
    with pytest.raises(SchemaError, match="needs 2"):
        fit_device(sy.device_profile([ms[0][0]]))
    dm = fit_device(sy.device_profile([m for m, _ in ms]))
    # exact synthetic structure: the leave-one-out residual is ~0, so the floor applies
    assert dm.rel_unc["prefill"] >= 0.10 and dm.rel_unc["decode"] >= 0.10 and "leave-one-model-out" in dm.interval_how
