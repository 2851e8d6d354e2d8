"""The live correction (edgekit.perfmodel.correction): a bounded log-space EWMA of measured / predicted."""

from __future__ import annotations

import math
import threading

import pytest

from edgekit.perfmodel.correction import LiveCorrection, scale_model


def feed(c: LiveCorrection, ratio: float, times: int = 1, part: str = "both") -> None:
    for _ in range(times):
        kw = {}
        if part in ("both", "prefill"):
            kw.update(measured_prefill_s=0.1 * ratio, predicted_prefill_s=0.1)
        if part in ("both", "decode"):
            kw.update(measured_decode_s=1.0 * ratio, predicted_decode_s=1.0)
        c.update(**kw)


def test_inactive_until_min_samples_then_converges():
    c = LiveCorrection(alpha=0.3, min_samples=3)
    feed(c, 2.0, 2)
    assert c.factors() == (1.0, 1.0) and not c.any_active  # the plan's model as is
    assert c.raw("decode") == pytest.approx(2.0)
    feed(c, 2.0)
    assert c.factors() == pytest.approx((2.0, 2.0))
    feed(c, 1.3, 40)  # the device recovers partly: the factor follows
    assert c.factor("decode") == pytest.approx(1.3, rel=1e-3)
    assert c.corrected_s(0.5, 2.0) == pytest.approx(1.3 * 2.5, rel=1e-3)


def test_a_slow_first_request_does_not_set_the_factor():
    c = LiveCorrection(alpha=0.2, min_samples=3)
    feed(c, 50.0)  # cold page cache after loading the model
    feed(c, 1.1, 2)
    assert c.factor("decode") == pytest.approx(1.1)  # the median of the warm-up, not the first sample


def test_bounded_and_one_outlier_moves_it_at_most_clamp_to_the_alpha():
    c = LiveCorrection(alpha=0.2, lo=0.25, hi=4.0, min_samples=1)
    feed(c, 1.0, 10)
    feed(c, 1000.0)  # a page fault: clamped to 4 before it enters
    assert c.factor("decode") == pytest.approx(4.0**0.2)
    feed(c, 1e6, 50)
    assert 3.99 < c.factor("decode") <= 4.0  # never beyond the clamp
    feed(c, 0.01, 80)  # far faster than predicted: clamped to 0.25
    assert 0.25 <= c.factor("prefill") < 0.251


def test_ignores_missing_nan_and_tiny_parts_and_parts_are_separate():
    c = LiveCorrection(min_samples=1)
    assert c.update(measured_prefill_s=float("nan"), predicted_prefill_s=0.1) == {}
    assert c.update(measured_decode_s=1.0, predicted_decode_s=0.0) == {}
    assert c.update(measured_decode_s=1e-7, predicted_decode_s=1e-7) == {}
    assert c.requests == 0 and c.factors() == (1.0, 1.0)
    feed(c, 3.0, 5, part="decode")
    assert c.factor("prefill") == 1.0 and c.factor("decode") == pytest.approx(3.0)


def test_corrected_figure_says_how_and_snapshot_round_trips():
    c = LiveCorrection(min_samples=2)
    feed(c, 1.5, 4)

    class P:
        prefill_s, decode_s = 0.2, 0.8

    f = c.corrected(P())
    assert f.method == "estimated" and f.value == pytest.approx(1.5)
    assert "live correction" in f.source and "from 4 request(s)" in f.source
    snap = c.snapshot()
    d = LiveCorrection.restore(snap)
    assert d.snapshot() == snap and d.factors() == c.factors()


def test_thread_safe_updates_count_every_request():
    c = LiveCorrection(min_samples=1)
    ts = [threading.Thread(target=feed, args=(c, 2.0, 500)) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert c.requests == 2000 and c.samples("decode") == 2000 and c.factor("decode") == pytest.approx(2.0)


def test_bad_settings_are_refused():
    for kw in ({"alpha": 0}, {"alpha": 1.5}, {"lo": 2.0}, {"hi": math.inf}, {"min_samples": 0}):
        with pytest.raises(ValueError):
            LiveCorrection(**kw)


def test_scale_model_scales_prefill_and_decode_separately():
    from edgekit.perfmodel import PerfModel

    pm = PerfModel(model_id="m", a=0.0, b=1e-3, c=0.01, alpha=0.01, beta=0.002, gamma=1e-6, method="fitted")
    s = scale_model(pm, 2.0, 3.0)
    assert float(s.prefill_s(100)) == pytest.approx(2 * float(pm.prefill_s(100)))
    assert float(s.decode_s(100, 50, 2)) == pytest.approx(3 * float(pm.decode_s(100, 50, 2)))
    assert "live correction" in s.method and scale_model(pm, 1.0, 1.0) is pm
