"""Offload: answer locally, or ask a cloud engine when local confidence is low.

Modes: ``never`` (local only), ``auto`` (local first; offload when the confidence score is below the
threshold and the cloud can still answer before the deadline), ``always`` (cloud first). In every
mode a cloud failure or timeout returns the local answer flagged ``local-fallback``. With a
predicted local latency (from a plan) above the deadline, ``auto`` routes to the cloud before
generating (pre-routing).

The threshold comes from a calibration (`edgekit calibrate`: Learn-then-Test, with a finite-sample
guarantee) or, failing that, a default that says so and promises nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from edgekit.engines.base import Engine
from edgekit.errors import EdgekitError, UsageError
from edgekit.schemas.offload import (
    DEFAULT_THRESHOLDS,
    NO_GUARANTEE,
    SCORES,
    SINGLE_SCORES,
    Mode,
    OffloadCalibration,
    OffloadInfo,
    reads_p_true,
)
from edgekit.schemas.result import Result

LEGACY_FEATURES = ("vote_share", "mean_logprob", "low_logprob")  # a "combined" calibration without features


def score_value(c, name: str) -> float | None:
    """Single score ``name`` (SINGLE_SCORES) from a :class:`Confidence`; None when not recorded."""
    if name == "low_entropy":
        return None if c.answer_entropy is None else -c.answer_entropy
    if name == "answered":
        return None if c.no_answer_share is None else 1.0 - c.no_answer_share
    if name in SINGLE_SCORES:
        return getattr(c, name)
    raise UsageError(f"unknown offload score {name!r}", fix=f"use one of {', '.join(SCORES)}")


def combine(feats: list[float | None], weights: list[float]) -> float | None:
    """The logistic combination (P(correct)) of feature values; None when one is missing."""
    if any(f is None or math.isnan(f) for f in feats):
        return None
    z = sum(w * f for w, f in zip(weights, feats)) + weights[-1]  # type: ignore[operator]
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def score_of(
    res: Result, name: str, weights: list[float] | None = None, features: list[str] | None = None
) -> float | None:
    """The confidence score ``name`` of a local result (None: no answer or not recorded -- offloaded)."""
    c = res.confidence
    if name == "auto":
        raise UsageError("score 'auto' is chosen by calibration", fix="run `edgekit calibrate --score auto` first")
    if res.answer is None:
        return None
    if name == "combined":
        names = features or LEGACY_FEATURES
        if weights is None or len(weights) != len(names) + 1:
            return None
        return combine([score_value(c, f) for f in names], weights)
    return score_value(c, name)


@dataclass
class Offload:
    """How a Runtime routes between its local engine and ``cloud``."""

    cloud: Engine
    mode: Mode = "auto"
    calibration: OffloadCalibration | None = None
    score: str | None = None  # default: the calibration's, else vote_share (n > 1) / mean_logprob (n = 1)
    threshold: float | None = None  # default: the calibration's, else DEFAULT_THRESHOLDS[score]
    local_predicted_s: float | None = None  # from a plan: pre-route when it exceeds the deadline
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("never", "auto", "always"):
            raise UsageError(f"unknown offload mode {self.mode!r}", fix="use never, auto or always")
        if self.score is not None and self.score not in SCORES:
            raise UsageError(f"unknown offload score {self.score!r}", fix=f"use one of {', '.join(SCORES)}")

    def rule(self, n: int) -> tuple[str, float, bool, str | None]:
        """(score, threshold, calibrated?, guarantee sentence)."""
        cal = self.calibration
        if cal is not None and self.threshold is None and (self.score is None or self.score == cal.score):
            return cal.score, cal.threshold, cal.method.startswith(("ltt", "conformal")), cal.guarantee
        score = self.score or (cal.score if cal else ("vote_share" if n > 1 else "mean_logprob"))
        if self.threshold is not None:
            return score, self.threshold, False, "no guarantee holds: the threshold was set by hand, not calibrated"
        if score not in DEFAULT_THRESHOLDS:
            raise UsageError(f"score {score!r} has no default threshold", fix="pass a threshold or calibrate")
        return score, DEFAULT_THRESHOLDS[score], False, NO_GUARANTEE

    def predicted_local_s(self, score: str) -> float | None:
        """The plan's local latency prediction, plus the P(True) self-check's prefill (measured by calibrate) when
        ``score`` reads it: every local answer then pays one more prefill."""
        cal = self.calibration
        if self.local_predicted_s is None:
            return None
        check = cal.self_check_s if cal is not None and cal.reads_p_true(score) else None
        return self.local_predicted_s + (check.value if check is not None and check.value is not None else 0.0)

    def expected_cloud_s(self) -> float | None:
        lat = getattr(self.cloud, "latency", None)
        return lat.p95() if lat is not None else None


def _one_line(e: BaseException) -> str:
    return e.one_line() if isinstance(e, EdgekitError) else f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"


def route(rt, prompt, opts, run_local, cloud_rt) -> Result:
    """Run one query under ``rt.offload`` (``run_local(options)`` runs on the local engine)."""
    off: Offload = rt.offload
    t_call = time.perf_counter()

    def left() -> float | None:
        return None if opts.deadline_s is None else opts.deadline_s - (time.perf_counter() - t_call)

    score_name, tau, calibrated, guarantee = off.rule(opts.n)
    info = OffloadInfo(
        mode=off.mode, score=score_name, threshold=tau, calibrated=calibrated, guarantee=guarantee, reason=""
    )
    cloud_opts = opts.replace(n=1, temperature=0.0, aggregate="majority", self_check=False)

    def ask_cloud() -> Result | None:
        remaining = left()
        o = cloud_opts if remaining is None else cloud_opts.model_copy(update={"deadline_s": max(0.05, remaining)})
        t0 = time.perf_counter()
        try:
            r = cloud_rt.generate(prompt, o)
        except Exception as e:  # any cloud failure falls back to the local answer
            info.cloud_s = time.perf_counter() - t0
            info.cloud_error = _one_line(e)
            return None
        info.cloud_s = time.perf_counter() - t0
        if r.answer is None and any(s.finish_reason == "cancelled" for s in r.samples):
            info.cloud_error = "the cloud answer did not arrive before the deadline"
            return None
        return r

    local_predicted_s = off.predicted_local_s(score_name)
    pre = off.mode == "always" or (
        off.mode == "auto"
        and local_predicted_s is not None
        and opts.deadline_s is not None
        and local_predicted_s > opts.deadline_s
    )
    if pre:
        info.reason = (
            "mode always"
            if off.mode == "always"
            else (
                f"pre-routed: the plan predicts {local_predicted_s:.2f} s locally"
                + (" (with the P(True) self-check)" if local_predicted_s != off.local_predicted_s else "")
                + ", above the "
                f"{opts.deadline_s:.2f} s deadline"
            )
        )
        r = ask_cloud()
        if r is not None:
            return _finish(r, "cloud", info)
        local = run_local(opts if left() is None else opts.model_copy(update={"deadline_s": max(0.05, left() or 0.05)}))
        info.local_s = local.timings.total_s
        info.reason += "; the cloud failed, answered locally"
        return _finish(local, "local-fallback", info)

    if reads_p_true(score_name, off.calibration.features if off.calibration else None) and not opts.self_check:
        opts = opts.replace(self_check=True)  # the score reads P(True): one extra prefill, timed
    local = run_local(opts)
    info.local_s = local.timings.queue_s + local.timings.total_s
    info.local_answer = local.answer
    cal = off.calibration
    s = score_of(local, score_name, cal.weights if cal else None, cal.features if cal else None)
    info.score_value = s
    if off.mode == "never":
        info.reason = "mode never"
        return _finish(local, "local", info)
    if s is not None and s >= tau:
        info.reason = f"confident: {score_name} {s:.3g} >= threshold {tau:.3g}"
        return _finish(local, "local", info)
    why = "no local answer" if s is None else f"{score_name} {s:.3g} < threshold {tau:.3g}"
    expected = off.expected_cloud_s()
    info.cloud_expected_s = expected
    remaining = left()
    if remaining is not None and (remaining <= 0.05 or (expected is not None and expected > remaining)):
        info.reason = f"{why}, but kept local: {remaining:.2f} s left before the deadline" + (
            f", the cloud's p95 is {expected:.2f} s" if expected is not None else ""
        )
        return _finish(local, "local", info, flag="offload skipped: deadline")
    r = ask_cloud()
    if r is None:
        info.reason = f"{why}; the cloud failed ({info.cloud_error}), local answer returned"
        return _finish(local, "local-fallback", info, flag="local-fallback: " + (info.cloud_error or "cloud failed"))
    info.reason = f"offloaded: {why}"
    return _finish(r, "cloud", info)


def _finish(res: Result, source: str, info: OffloadInfo, flag: str | None = None) -> Result:
    res.source = source  # type: ignore[assignment]
    res.offload = info
    if flag:
        res.flags.append(flag)
    if not info.calibrated and info.guarantee and info.mode == "auto":
        res.flags.append(info.guarantee)
    return res
