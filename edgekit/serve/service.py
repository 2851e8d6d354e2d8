"""The daemon's state: one warm Runtime, a bounded queue in front of it, and the request -> job mapping.

Admission is a counter: at most ``max_queue`` requests wait beside the ``slots`` being generated
(``slots`` = the engine's ``Capabilities.concurrent``: the llama.cpp engine's rows under
``--max-seqs``, else 1); one more gets 503 with Retry-After (never dropped silently). With a
continuous-batching engine, concurrent requests share the engine's decode steps (one
``llama_decode`` for the rows of every request in flight; a request joins at the next step and
leaves when done); a request waits (``queue_s``) while no rows or KV space are free for it. With a
serialised engine, requests go one batch at a time through the Runtime's lock. A slot is released
when the worker thread finishes, not when the client leaves, so the count always matches the work
the model still has to do.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgekit.engines.base import Event
from edgekit.runtime import Runtime
from edgekit.schemas.options import MAX_N_CAP, CancelToken, SamplingOptions
from edgekit.schemas.plan import PlanFile
from edgekit.schemas.result import Result
from edgekit.serve.live import LiveLatency, LiveSettings
from edgekit.serve.metrics import Metrics
from edgekit.serve.tap import TapEngine
from edgekit.serve.wire import ApiError, ChatRequest, CompletionRequest, build_options, explicit_options


@dataclass
class Limits:
    max_queue: int = 16  # requests waiting beside the ones being generated
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = 2048
    max_tokens_cap: int = 1024
    max_n: int = 8
    deadline_s: float | None = None  # default per-request deadline (else the plan's latency target)
    stop_rule: str | None = None  # default stopping rule for requests that set none (else the plan's)


@dataclass
class Job:
    """One admitted request on its way through the model."""

    prompt: Any  # chat messages
    options: SamplingOptions
    chat: bool
    stream: bool = False
    want_logprobs: bool = False
    ignored: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    token: CancelToken = field(default_factory=CancelToken)
    max_prompt_tokens: int | None = None
    push: Callable[[tuple], None] | None = None  # streaming: events to the event loop
    started: bool = False
    announced: bool = False
    tokens: dict[int, list[tuple[str, float | None]]] = field(default_factory=dict)  # per sample: (piece, logprob)
    live: dict = field(default_factory=dict)  # live latency model: admission note, predicted / corrected / measured
    _svc: Service | None = None

    # -- Listener (called in the worker thread, under the runtime's lock) -------------------
    def on_start(self) -> None:
        if not self.started:
            self.started = True
            if self._svc is not None:
                self._svc._started()

    def cancelled(self) -> bool:
        return self.token.cancelled

    def on_event(self, ev: Event) -> None:
        if not self.announced and self.push is not None:  # setup errors (context, grammar) came before this
            self.announced = True
            self.push(("start",))
        if ev.kind == "token":
            if self.want_logprobs:
                self.tokens.setdefault(ev.seq, []).append((ev.text, ev.logprob))
            if self.push is not None and ev.text:
                self.push(("token", ev.seq, ev.text))


class Service:
    """A warm Runtime behind a bounded queue. ``runtime``'s engine is wrapped in a :class:`TapEngine`."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        limits: Limits | None = None,
        plan: PlanFile | None = None,
        plan_path: str | None = None,
        base_options: SamplingOptions | None = None,
        metrics: Metrics | None = None,
        log_prompts: bool = False,
        live: LiveSettings | None = None,
    ):
        self.rt = runtime
        if not isinstance(runtime.engine, TapEngine):
            runtime.engine = TapEngine(runtime.engine)
        self.tap: TapEngine = runtime.engine  # type: ignore[assignment]
        self.limits = limits or Limits()
        self.limits.max_n = min(self.limits.max_n, runtime.max_n, MAX_N_CAP)
        self.plan, self.plan_path = plan, plan_path
        self.base = base_options or (plan.chosen.options if plan is not None else SamplingOptions())
        self.model_id = runtime.model_id
        self.aliases = {self.model_id, runtime.engine.info.model}
        if plan is not None:
            self.aliases.add(plan.chosen.model_id)
        self.metrics = metrics or Metrics()
        self.log_prompts = log_prompts
        self.started_at = time.time()
        self.draining = False
        self._lock = threading.Lock()
        self.admitted = 0  # waiting + running
        self.waiting = 0
        self._ewma_s: float | None = None
        self.slots = max(1, runtime.engine.capabilities.concurrent)  # requests the engine decodes at once
        self.executor = ThreadPoolExecutor(
            max_workers=self.limits.max_queue + self.slots + 2, thread_name_prefix="edgekit-serve"
        )
        self.metrics.bind(self)
        self.live = LiveLatency(self, live)

    # -- admission ----------------------------------------------------------------------------
    def retry_after_s(self) -> int:
        per = self._ewma_s or 1.0
        return max(1, math.ceil(per * (self.waiting + 1) / self.slots))

    def admit(self, job: Job) -> None:
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            raise ApiError(
                503,
                "the server is shutting down (draining in-flight requests)",
                type="server_error",
                code="draining",
                headers={"Retry-After": "5", "Connection": "close"},
            )
        with self._lock:
            if self.admitted >= self.limits.max_queue + self.slots:
                full = True
            else:
                full = False
                self.admitted += 1
                self.waiting += 1
        if full:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                503,
                f"the queue is full ({self.limits.max_queue} request(s) waiting for the model, {self.slots} "
                f"in generation); retry later",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": str(self.retry_after_s())},
            )
        job._svc = self

    def _started(self) -> None:
        with self._lock:
            self.waiting -= 1

    def release(self, job: Job) -> None:
        with self._lock:
            self.admitted -= 1
            if not job.started:
                self.waiting -= 1

    @property
    def idle(self) -> bool:
        return self.admitted == 0

    # -- requests -> jobs ---------------------------------------------------------------------
    def check_model(self, model: str) -> None:
        if model not in self.aliases:
            raise ApiError(
                404,
                f"the model {model[:80]!r} does not exist on this server; it serves {self.model_id!r}",
                param="model",
                code="model_not_found",
            )

    def job(self, req: Any, prompt: Any, chat: bool) -> Job:
        lim = self.limits
        explicit, params = explicit_options(req, max_n=lim.max_n, max_tokens_cap=lim.max_tokens_cap)
        deadline = explicit.pop("deadline_s", None)
        overrides: list[str] = []
        if self.plan is not None:
            base = self.plan.chosen.options
            overrides = [
                f"{k}={v!r} (plan: {getattr(base, k)!r})" for k, v in explicit.items() if getattr(base, k) != v
            ]
        if deadline is None:
            deadline = lim.deadline_s if lim.deadline_s is not None else (self.plan.target_s if self.plan else None)
        if deadline is not None:
            explicit["deadline_s"] = deadline
        if lim.stop_rule is not None and "stop_rule" not in explicit:
            explicit["stop_rule"] = lim.stop_rule
        if not chat:
            explicit["chat"] = False
        opts = build_options(self.base, explicit, params)
        if opts.aggregate == "first_verified":
            raise ApiError(
                400,
                "aggregate first_verified needs a verifier, which an HTTP request cannot carry",
                param="edgekit.aggregate",
                code="unsupported_value",
            )
        if opts.max_tokens > lim.max_tokens_cap:  # the base (plan) may exceed a lowered cap
            raise ApiError(
                400,
                f"max_tokens={opts.max_tokens} exceeds this server's cap of {lim.max_tokens_cap}",
                param=params["max_tokens"],
                code="over_cap",
            )
        if opts.n > lim.max_n:
            raise ApiError(400, f"n={opts.n} exceeds this server's cap of {lim.max_n}", param="n", code="over_cap")
        if self.plan is not None:
            prompt = self._apply_template(prompt)
        opts, admission = self.live.admit(opts, prompt, "max_tokens" in explicit, params["max_tokens"])
        logprobs = (
            bool(req.logprobs)
            if isinstance(req, ChatRequest)
            else (isinstance(req, CompletionRequest) and req.logprobs == 0)
        )
        return Job(
            prompt=prompt,
            options=opts,
            chat=chat,
            stream=bool(req.stream),
            want_logprobs=logprobs,
            ignored=sorted(req.model_extra or {}),
            overrides=overrides,
            max_prompt_tokens=lim.max_prompt_tokens,
            live={"admission": admission} if admission else {},
        )

    def _apply_template(self, prompt: Any) -> Any:
        tmpl = self.plan.chosen.prompt  # type: ignore[union-attr]
        if tmpl == "{question}":
            return prompt
        if isinstance(prompt, str):
            return tmpl.replace("{question}", prompt)
        msgs = [dict(m) for m in prompt]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        msgs[last]["content"] = tmpl.replace("{question}", msgs[last]["content"])
        return msgs

    # -- work (in a worker thread) --------------------------------------------------------------
    def work(self, job: Job) -> Result:
        try:
            with self.tap.listening(job):
                res = self.rt.generate(job.prompt, job.options, cancel=job.token)
            self._record(job, res)
            return res
        finally:
            self.release(job)

    def _record(self, job: Job, res: Result) -> None:
        """Metrics of every generation, including those whose client has gone."""
        m, t = self.metrics, res.timings
        m.queue_wait.observe(t.queue_s)
        m.generation.observe(t.total_s)
        m.prompt_tokens.inc(t.prompt_tokens)
        m.completion_tokens.inc(t.generated_tokens)
        m.results.labels(res.source).inc()
        if "deadline" in res.flags:
            m.cancelled.labels("deadline").inc()
        if job.token.cancelled:
            m.cancelled.labels("client_disconnected").inc()
        self._ewma_s = t.total_s if self._ewma_s is None else 0.8 * self._ewma_s + 0.2 * t.total_s
        job.live.update(self.live.update(job, res) or {})

    def observe(self, job: Job, res: Result) -> dict:
        """The ``edgekit`` response object (and the plan's measured/predicted ratio)."""
        m, t = self.metrics, res.timings
        predicted = note = None
        if self.plan is not None:
            if job.overrides:
                note = (
                    "the plan's latency prediction does not apply: options differ from the plan's ("
                    + "; ".join(job.overrides)
                    + ")"
                )
            elif res.source != "local":
                note = "the plan's latency prediction is for local generation"
            else:
                predicted = self.plan.predicted.latency_at_percentile_s
                if predicted > 0 and t.total_s > 0:
                    m.latency_ratio.observe(t.total_s / predicted)
        off = res.offload
        c = res.confidence
        return {
            "source": res.source,
            "answer": res.answer,
            "confidence": {
                "votes": c.votes,
                "n": c.n,
                "vote_share": c.vote_share,
                "mean_logprob": c.mean_logprob,
                "low_logprob": c.low_logprob,
                "tied": c.tied,
            },
            "score": off.score if off else None,
            "score_value": off.score_value if off else None,
            "threshold": off.threshold if off else None,
            "offload_reason": off.reason if off else None,
            "timings": t.model_dump(),
            "latency": {
                "measured_s": t.total_s,
                "queue_s": t.queue_s,
                "predicted_s": predicted,
                "corrected_s": self.live.corrected_config_s() if predicted is not None and self.live.enabled else None,
                "percentile": self.plan.percentile if predicted is not None else None,
                "note": note,
            },
            "deadline_s": job.options.deadline_s,
            "finish_reasons": [s.finish_reason for s in res.samples],
            "stopping": res.stopping.model_dump() if res.stopping else None,
            "flags": res.flags,
            "plan": self.plan_path,
            "plan_config": self.live.config(),  # the configuration in force (a live re-plan may have changed it)
            "live": job.live or None,
            "ignored_fields": job.ignored,
        }

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)
