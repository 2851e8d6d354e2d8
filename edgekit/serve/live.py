"""The daemon's live latency model: the plan's performance model x a correction learned from requests.

After every local generation the daemon compares the measured prefill and decode times with what
the plan's performance model (fitted from the plan's profile) predicts for *that* request (its
prompt tokens, decode steps and n) and feeds the ratios to a bounded EWMA
(:class:`edgekit.perfmodel.correction.LiveCorrection`). The corrected model is then used for

- the response's ``edgekit.live`` object: predicted (plan model), corrected prediction, measured;
- ``/metrics``: correction factors, per-request ratios, the corrected latency of the plan config
  in force, re-plans and admission decisions;
- deadline admission (``admit``): when the corrected prediction for a request exceeds its deadline,
  a request that left ``max_tokens`` to the server (plan or default) gets the largest budget that
  fits (said in ``edgekit.live.admission``); one that set ``max_tokens`` itself, or one for which no
  budget fits, is refused upfront with 503 ``deadline_unmeetable`` (OpenAI error format, the largest
  budget that fits in the message, Retry-After), before it occupies the model. It acts only once
  the correction has ``min_samples`` requests behind it and no offload is configured (with
  offload, the runtime pre-routes to the cloud using the corrected local prediction instead);
- re-planning (``replan``): the planner re-runs on the plan's profile scaled by the correction
  (:mod:`edgekit.plan.replan`); a new configuration of the same model is swapped in (sampling
  options, budget, n, prompt template). Triggers: ``POST /admin/replan``, SIGHUP, and with
  ``--replan`` automatically, when the corrected latency of the configuration in force exceeds the
  target by more than ``margin`` for ``after`` consecutive requests (or, after a re-plan, the
  original configuration would fit again with the same margin below the target). Hysteresis: an
  automatic re-plan needs the correction to have moved by more than ``margin`` since the last one.

``EDGEKIT_TEST_SLOWDOWN=F`` (tests only) multiplies the measured times fed to the correction by F,
to simulate a slowed device deterministically; the daemon logs a warning when it is set.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.perfmodel import PerfModel, fit
from edgekit.perfmodel.correction import LiveCorrection
from edgekit.plan.replan import config_label, find_input
from edgekit.plan.replan import replan as plan_replan
from edgekit.runtime.core import as_messages
from edgekit.schemas.options import SamplingOptions
from edgekit.schemas.plan import PlanFile
from edgekit.schemas.profile import load_profile
from edgekit.serve.wire import ApiError

if TYPE_CHECKING:
    from edgekit.schemas.result import Result

log = logging.getLogger("edgekit.serve")
ENV_SLOWDOWN = "EDGEKIT_TEST_SLOWDOWN"
BYTES_PER_TOKEN = 4  # admission estimates prompt tokens from UTF-8 bytes (the exact count needs the model's lock)


@dataclass
class LiveSettings:
    alpha: float = 0.2  # EWMA weight of the newest request
    min_samples: int = 3  # requests before the correction acts
    clamp: tuple[float, float] = (0.25, 4.0)
    auto_replan: bool = False  # --replan
    margin: float = 0.2  # auto re-plan when corrected latency > target x (1 + margin) ...
    after: int = 5  # ... for this many consecutive requests
    slowdown: float = 1.0  # test hook (EDGEKIT_TEST_SLOWDOWN)

    @classmethod
    def from_env(cls, **kw: Any) -> LiveSettings:
        s = cls(**kw)
        raw = os.environ.get(ENV_SLOWDOWN)
        if raw:
            try:
                s.slowdown = float(raw)
            except ValueError:
                s.slowdown = 1.0
            if not (math.isfinite(s.slowdown) and s.slowdown > 0):
                s.slowdown = 1.0
        return s


def _prompt_bytes(prompt: Any, system: str | None) -> int:
    if isinstance(prompt, str):
        return len(prompt.encode())
    return sum(len(str(m.get("content", "")).encode()) for m in prompt) + len((system or "").encode())


class LiveLatency:
    def __init__(self, svc: Any, settings: LiveSettings | None = None):
        self.svc = svc
        self.s = settings or LiveSettings()
        self.corr = LiveCorrection(
            alpha=self.s.alpha, lo=self.s.clamp[0], hi=self.s.clamp[1], min_samples=self.s.min_samples
        )
        self.original: PlanFile | None = svc.plan
        self.pm: PerfModel | None = None
        self.disabled: str | None = None
        self._over = self._under = 0
        self._k_at_replan: tuple[float, float] | None = None
        self._busy = threading.Lock()
        self._count_lock = threading.Lock()  # requests finish in several worker threads (continuous batching)
        self.last_replan: dict | None = None
        m = svc.metrics
        for p in ("prefill", "decode"):
            m.live_factor.labels(p).set_function(lambda p=p: self.corr.factor(p))
            m.live_samples.labels(p).set_function(lambda p=p: self.corr.samples(p))
        if svc.plan is None:
            self.disabled = "no plan: the live latency model needs the plan's profile"
            return
        m.live_target.set(svc.plan.target_s)
        m.live_corrected.set_function(lambda: self.corrected_config_s() or 0.0)
        try:
            self.pm = self._fit(svc.plan, svc.plan_path)
        except (EdgekitError, OSError, ValueError) as e:
            self.disabled = f"live latency model off: {e}"
            log.warning("%s", self.disabled)
        else:  # the deadline-aware batch cap starts from the profile's step costs, then measures its own
            rows = max(1, svc.slots)
            svc.tap.seed_step_costs({r: float(self.pm.step_s(r, 512)) for r in range(1, rows + 1)})
        if self.s.slowdown != 1.0:
            log.warning(
                "%s=%g: measured times fed to the live correction are scaled (a test hook)",
                ENV_SLOWDOWN,
                self.s.slowdown,
            )

    @staticmethod
    def _fit(plan: PlanFile, plan_path: str | None) -> PerfModel:
        if not plan.profile.path:
            raise EdgekitError("the plan does not record its profile file")
        path = find_input(plan.profile.path, plan_path, "profile")
        prof = load_profile(path)
        c = plan.chosen
        mp = next(
            (
                m
                for m in prof.complete_models()
                if m.model.id == c.model_id or (c.model_sha256 and m.model.sha256 == c.model_sha256)
            ),
            None,
        )
        if mp is None:
            raise EdgekitError(f"profile {path} has no measured entry for {c.model_id}")
        return fit(mp, path)

    @property
    def enabled(self) -> bool:
        return self.disabled is None

    # -- the configuration in force ------------------------------------------------------------------
    def config(self) -> str | None:
        return config_label(self.svc.plan) if self.svc.plan is not None else None

    def corrected_config_s(self, plan: PlanFile | None = None) -> float | None:
        """A plan's predicted latency at its percentile x the live correction (the interval is scaled with it).
        A re-planned plan's predictions already assume a slowed device (``planner.perf_scale``): that scale
        is divided out first, so the correction is applied once."""
        p = plan or self.svc.plan
        if p is None:
            return None
        pr = p.predicted
        point = pr.prefill_s + pr.decode_s
        if point <= 0:
            return pr.latency_at_percentile_s
        s0 = p.planner.perf_scale if p.planner is not None and p.planner.perf_scale else (1.0, 1.0)
        return pr.latency_at_percentile_s * self.corr.corrected_s(pr.prefill_s / s0[0], pr.decode_s / s0[1]) / point

    # -- admission ------------------------------------------------------------------------------------
    def admit(
        self, opts: SamplingOptions, prompt: Any, explicit_max_tokens: bool, param: str
    ) -> tuple[SamplingOptions, str | None]:
        dl = opts.deadline_s
        if (
            not self.enabled
            or dl is None
            or not self.corr.any_active
            or self.svc.rt.offload is not None
            or self.pm is None
        ):
            return opts, None
        i = math.ceil(_prompt_bytes(prompt, opts.system) / BYTES_PER_TOKEN)
        cached = min(self._cached(prompt, opts), i - 1)  # the prefix cache's tokens are not prefilled
        kp, kd = self.corr.factors()
        steps = np.arange(1, opts.max_tokens + 1, dtype=float)
        c = float(self.pm.prefill_s(i - cached)) * kp + self.pm.decode_s(i, steps, opts.n) * kd
        if c[-1] <= dl:
            return opts, None
        fits = np.nonzero(c <= dl)[0]
        best = int(fits[-1]) + 1 if fits.size else 0
        why = (
            f"the corrected prediction for max_tokens={opts.max_tokens}, n={opts.n} is {c[-1]:.3g} s, above the "
            f"{dl:g} s deadline ({self.corr.label()})"
        )
        if best >= 1 and not explicit_max_tokens:
            self.svc.metrics.admission.labels("shrunk").inc()
            return opts.model_copy(update={"max_tokens": best}), f"max_tokens {opts.max_tokens} -> {best}: {why}"
        self.svc.metrics.admission.labels("refused").inc()
        fix = f"; max_tokens <= {best} fits" if best >= 1 else "; no budget fits: raise the deadline"
        raise ApiError(
            503,
            f"refused before any work: {why}{fix}",
            param=param if best >= 1 else "edgekit.deadline_s",
            type="server_error",
            code="deadline_unmeetable",
            headers={"Retry-After": str(max(1, math.ceil(float(c[-1]) - dl)))},
        )

    def _cached(self, prompt: Any, opts: SamplingOptions) -> int:
        peek = getattr(self.svc.rt.engine, "cached_prefix", None)
        if peek is None:
            return 0
        try:
            return int(peek(as_messages(prompt), opts))
        except Exception:  # a prediction aid only: never fail admission over it
            return 0

    # -- after each generation (worker thread) ------------------------------------------------------------
    def update(self, job: Any, res: Result) -> dict | None:
        t = res.timings
        if not self.enabled or self.pm is None or res.source == "cloud" or t.steps <= 0 or not res.samples:
            return None
        n = len(res.samples)
        i = t.prompt_tokens
        s = max(t.steps - 1, 0)  # measured decode_s starts after the first token (prefill_s includes it)
        mean = max(float(np.mean([x.tokens for x in res.samples])) - 1, 0.0)
        pre = float(self.pm.prefill_s(max(i - t.cached_prompt_tokens, 1)))  # only the uncached tokens were prefilled
        dec = float(self.pm.decode_s(i, s, n, min(mean, s) if n > 1 else None))
        corrected = self.corr.corrected(_Parts(pre, dec), note="made before this request's own measurement")
        m_pre, m_dec = t.prefill_s * self.s.slowdown, t.decode_s * self.s.slowdown
        used = self.corr.update(
            measured_prefill_s=m_pre,
            predicted_prefill_s=pre,
            measured_decode_s=m_dec if s > 0 else None,
            predicted_decode_s=dec if s > 0 else None,
        )
        for part, r in used.items():
            self.svc.metrics.live_ratio.labels(part).observe(r)
        self._offload_prediction()
        self._maybe_auto()
        return {
            "predicted_s": pre + dec,
            "predicted_how": f"plan model ({self.pm.method}) at this request's "
            f"{i} prompt tokens ({t.cached_prompt_tokens} from the prefix cache), {s} decode steps after the "
            f"first token, n={n}",
            "corrected": corrected.model_dump(),
            "measured_s": m_pre + m_dec,
            "measured_how": "timings.prefill_s + timings.decode_s"
            + (f" x {self.s.slowdown:g} ({ENV_SLOWDOWN}, a test hook)" if self.s.slowdown != 1.0 else ""),
            "ratio": {k: round(v, 4) for k, v in used.items()},
            "correction": self.corr.snapshot(),
        }

    def _offload_prediction(self) -> None:
        off = self.svc.rt.offload
        if off is not None and off.local_predicted_s is not None:
            off.local_predicted_s = (
                self.corrected_config_s()
            )  # the runtime's pre-route decision uses the corrected model

    def _maybe_auto(self) -> None:
        p = self.svc.plan
        if not self.s.auto_replan or p is None or not self.corr.any_active:
            return
        target = p.target_s
        cur = self.corrected_config_s() or 0.0
        back = (
            self.original is not None
            and p is not self.original
            and (self.corrected_config_s(self.original) or math.inf) < target * (1 - self.s.margin)
        )
        k = self.corr.factors()
        with self._count_lock:
            self._over = self._over + 1 if cur > target * (1 + self.s.margin) else 0
            self._under = self._under + 1 if back else 0
            if max(self._over, self._under) < self.s.after:
                return
            if self._k_at_replan is not None and max(
                abs(math.log(a / b)) for a, b in zip(k, self._k_at_replan)
            ) <= math.log(1 + self.s.margin):
                return  # hysteresis: the device has not changed enough since the last re-plan
            self._over = self._under = 0
        threading.Thread(target=self.replan, args=("auto",), name="edgekit-replan", daemon=True).start()

    # -- re-planning -----------------------------------------------------------------------------------------
    def replan(self, trigger: str) -> dict:
        """Re-run the planner at the corrected speed; swap a new configuration of the same model in."""
        if not self._busy.acquire(blocking=False):
            return {"outcome": "busy", "message": "a re-plan is already running", "config": self.config()}
        try:
            return self._replan(trigger)
        finally:
            self._busy.release()

    def _replan(self, trigger: str) -> dict:
        svc, m = self.svc, self.svc.metrics
        if self.original is None or not self.enabled:
            m.replans.labels(trigger, "failed").inc()
            return {"outcome": "failed", "message": f"cannot re-plan: {self.disabled}", "config": self.config()}
        k = self.corr.factors()
        why = f"{trigger}: corrected {self.corrected_config_s() or 0:.3g} s vs target {svc.plan.target_s:g} s"
        try:
            r = plan_replan(self.original, svc.plan_path, self.original.chosen.model_id, k, why)
        except EdgekitError as e:
            m.replans.labels(trigger, "failed").inc()
            log.warning("live re-plan (%s) failed: %s", trigger, e)
            return {"outcome": "failed", "message": str(e), "config": self.config()}
        self._k_at_replan = k
        outcome, msg = r.outcome, r.message
        new = r.plan.chosen.options
        swap = r.config != self.config()
        if swap and new.n > svc.limits.max_n:
            swap, outcome = False, "failed"
            msg = f"{msg}; not applied: n={new.n} exceeds this server's --max-n {svc.limits.max_n}"
        m.replans.labels(trigger, outcome).inc()
        log.warning("live %s", msg)
        self.last_replan = {
            "trigger": trigger,
            "outcome": outcome,
            "message": msg,
            "config": r.config if swap else self.config(),
            "previous": r.previous,
            "other_model": r.other_model,
            "meets_target": r.meets_target,
            "factors": {"prefill": k[0], "decode": k[1]},
        }
        if swap:
            svc.limits.max_tokens_cap = max(svc.limits.max_tokens_cap, new.max_tokens)
            m.plan_predicted.set(r.plan.predicted.latency_at_percentile_s)
            svc.plan, svc.base = r.plan, new  # requests admitted from now on use it
        return self.last_replan

    def status(self) -> dict:
        return {
            "enabled": self.enabled,
            "disabled": self.disabled,
            "config": self.config(),
            "target_s": self.svc.plan.target_s if self.svc.plan else None,
            "corrected_config_s": self.corrected_config_s(),
            "correction": self.corr.snapshot(),
            "auto_replan": self.s.auto_replan,
            "last_replan": self.last_replan,
        }


@dataclass
class _Parts:
    prefill_s: float
    decode_s: float
